#!/usr/bin/env node
'use strict';

// Drives html/upload.html in Debian's headless Chromium with playwright-core,
// for t/210-browser.t:
//
//   node t/browser/upload.js '{"url": "http://127.0.0.1:N/",
//       "steps": [{"pick": ["/dir/a.bin", "/dir/b.bin"]},
//                 {"drop": ["/dir/c.txt"]}],
//       "screenshot": "/dir/page.png", "timeout": 20000}'
//
// "pick" steps go through the file chooser opened from the keyboard (Tab to
// the picker, Space), "drop" steps through a drop event carrying the files.
// After each step it waits until every listed upload has ended.  Prints one
// JSON document: what the page listed (file, state, status, error text,
// objects with bucket, name, size, crc32c, url and the link's href), its
// summary line, the element the keyboard reached, and the page's console
// errors.  Exits non-zero, with the reason on stderr, when the browser cannot
// run or the page does not finish in time.
//
// For t/212-http3.t:
//
//   "quic": "127.0.0.1:N", "spki": "BASE64"
//       Chromium forced onto QUIC (HTTP/3) for that origin, the server's
//       certificate taken by the SHA-256 of its public key
//   "fetches": [{"url": "/api/x", "method": "PUT", "src": "/files/a.bin",
//                "form": "file", "mode": "no-cors", "timeout": 20000}]
//       fetch() calls made in the page before the steps, one after the
//       other, the body the bytes at "src" (fetched by the page first; or
//       "file", a local file's, sent through playwright), as a
//       multipart/form-data field named "form" when given; each gives
//       status, type, body, the response headers, how long it took, or the
//       error (aborted after "timeout" ms, the page's by default, then
//       "aborted" is true)
//
// and the output has "protocols": the page's and its requests' URLs with
// the protocol each went by (nextHopProtocol: "h3", "http/1.1", ...).

const fs = require('fs');
const path = require('path');

let chromium;
try {
    ({ chromium } = require('playwright-core'));
} catch (e) {
    console.error('playwright-core is missing: run "tools/deps.sh test" '
                  + '(it installs it into t/browser/node_modules): '
                  + e.message);
    process.exit(2);
}

const opt = JSON.parse(process.argv[2] || '{}');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const timeout = opt.timeout || 20000;

async function main() {
    if (!fs.existsSync(executablePath)) {
        throw new Error(`${executablePath} is missing: run "tools/deps.sh test"`
                        + ' (Debian package chromium)');
    }

    const browser = await chromium.launch({
        executablePath,
        headless: true,
        timeout,
        args: ['--no-sandbox', '--disable-gpu',
               '--no-first-run', '--disable-background-networking',
               '--disable-component-update', '--disable-sync'].concat(
                  opt.quic ? ['--enable-quic',
                              `--origin-to-force-quic-on=${opt.quic}`,
                              '--ignore-certificate-errors-spki-list='
                              + opt.spki]
                           : ['--disable-quic']),
    });

    const out = { console: [], steps: [], fetches: [] };

    try {
        const page = await browser.newPage();
        page.setDefaultTimeout(timeout);

        page.on('console', m => {
            if (m.type() === 'error') out.console.push(m.text());
        });
        page.on('pageerror', e => out.console.push(String(e)));

        const res = await page.goto(opt.url);
        out.status = res.status();
        out.title = await page.title();

        for (const f of opt.fetches || []) {
            const data = f.file ? fs.readFileSync(f.file).toString('base64')
                                : null;
            out.fetches.push(await page.evaluate(fetchIn, {
                f: { timeout, ...f }, data }));
        }

        let expect = 0;

        for (const step of opt.steps || []) {
            const files = step.pick || step.drop;
            expect += files.length;

            if (step.pick) {
                // the keyboard's way: Tab reaches the picker, Space opens it
                await page.locator('body').focus();
                const chooser = page.waitForEvent('filechooser');
                let tabs = 0;
                while (tabs++ < 10) {
                    await page.keyboard.press('Tab');
                    if (await page.evaluate(
                            () => document.activeElement
                                  && document.activeElement.id === 'files'))
                    {
                        break;
                    }
                }
                out.focused = await page.evaluate(
                    () => document.activeElement && document.activeElement.id);
                await page.keyboard.press('Space');
                (await chooser).setFiles(files);

            } else {
                const list = files.map(f => ({
                    name: path.basename(f),
                    data: fs.readFileSync(f).toString('base64'),
                }));
                const dt = await page.evaluateHandle(list => {
                    const dt = new DataTransfer();
                    for (const f of list) {
                        const bin = atob(f.data);
                        const bytes = new Uint8Array(bin.length);
                        for (let i = 0; i < bin.length; i++) {
                            bytes[i] = bin.charCodeAt(i);
                        }
                        dt.items.add(new File([bytes], f.name,
                                              { type: 'text/plain' }));
                    }
                    return dt;
                }, list);
                await page.dispatchEvent('#drop', 'dragenter',
                                         { dataTransfer: dt });
                await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
            }

            // every upload listed so far has ended, one way or the other
            await page.waitForFunction(n => {
                const li = document.querySelectorAll('#list li');
                return li.length === n && [...li].every(
                    l => l.dataset.state === 'done'
                         || l.dataset.state === 'error');
            }, expect);

            out.steps.push(await page.locator('#summary').textContent());
        }

        out.items = await page.$$eval('#list li', lis => lis.map(li => ({
            file: li.dataset.file,
            state: li.dataset.state,
            status: li.querySelector('.status').textContent,
            progress: li.querySelector('progress').value,
            error: li.classList.contains('error')
                   ? li.querySelector('.result').textContent : null,
            objects: [...li.querySelectorAll('.object')].map(o => ({
                bucket: o.dataset.bucket,
                name: o.dataset.name,
                size: o.dataset.size,
                crc32c: o.dataset.crc32c,
                url: o.querySelector('.url').textContent,
                href: o.querySelector('a') && o.querySelector('a').href,
            })),
        })));
        out.summary = await page.locator('#summary').textContent();

        out.protocols = await page.evaluate(() =>
            performance.getEntriesByType('navigation')
                .concat(performance.getEntriesByType('resource'))
                .map(e => ({ url: e.name, protocol: e.nextHopProtocol })));

        if (opt.screenshot) {
            await page.screenshot({ path: opt.screenshot, fullPage: true });
        }

    } finally {
        await browser.close();
    }

    process.stdout.write(JSON.stringify(out) + '\n');
}

// one fetch() in the page: { f: {url, method, src, file, form, mode,
// timeout}, data: the file's bytes in base64 }
async function fetchIn({ f, data }) {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), f.timeout || 20000);
    const start = performance.now();
    const r = { url: f.url, method: f.method || 'GET' };
    let body, bytes;

    try {
        if (f.src) {
            const res = await fetch(f.src, { signal: ac.signal });
            if (!res.ok) {
                throw new Error(`${f.src}: ${res.status}`);
            }
            bytes = new Uint8Array(await res.arrayBuffer());

        } else if (data !== null) {
            const bin = atob(data);
            bytes = new Uint8Array(bin.length);
            for (let i = 0; i < bin.length; i++) {
                bytes[i] = bin.charCodeAt(i);
            }
        }

        if (bytes) {
            body = bytes;

            if (f.form) {
                const name = (f.src || f.file).replace(/.*\//, '');
                body = new FormData();
                body.append(f.form, new File([bytes], name,
                                    { type: 'application/octet-stream' }));
            }
        }

        const res = await fetch(f.url, { method: r.method, body,
                                         mode: f.mode || 'cors',
                                         signal: ac.signal });
        r.status = res.status;
        r.type = res.type;
        r.headers = Object.fromEntries(res.headers.entries());
        r.body = await res.text();
    } catch (e) {
        r.error = String(e);
        r.aborted = ac.signal.aborted;
    } finally {
        clearTimeout(timer);
    }

    r.ms = Math.round(performance.now() - start);
    return r;
}

main().catch(e => {
    console.error(`browser: ${e.stack || e}`);
    process.exit(1);
});
