#!/usr/bin/env node
'use strict';

// Drives html/upload.html through a resumable upload in Debian's headless
// Chromium with playwright-core, for t/211-browser-resume.t:
//
//   node t/browser/resume.js '{"url": "http://127.0.0.1:N/",
//       "steps": [...], "screenshot": "/dir/page.png", "timeout": 20000}'
//
// Steps, in order:
//   {"pick": ["/dir/a.bin"]}          through the file input
//   {"wait": "progress", "file": "a.bin", "at": 0.5}
//                                     until a.bin's progress bar is there
//   {"wait": "state", "file": "a.bin", "state": "paused"}
//   {"wait": "seen", "file": "a.bin", "state": "retrying"}
//                                     until the row has been in that state
//                                     (since the page was loaded)
//   {"wait": "end", "n": 2}           until 2 rows are done or failed
//   {"click": "pause", "file": "a.bin"}   (or "resume")
//   {"reload": true}                  reloads the page, whatever it does
//   {"storage": {"file": "/dir/b.bin", "url": "upload/x"}}
//                                     keeps an upload URL for that file as
//                                     the page would (its key: endpoint,
//                                     name, size, modification time)
//   {"record": "NAME"}                a snapshot into out.records.NAME
//
// Prints one JSON document: records (rows as t/browser/upload.js gives
// them, the summary, the "not finished" list), states (every change of a
// row's data-state, with its status text, in order, across reloads),
// requests (method, path, Upload-Offset and Upload-Length sent, status or
// failure, body bytes, in order) and the page's console errors.

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

// every change of a row's state, kept in the page until collected
function watchStates() {
    window.__states = [];
    const seen = new WeakMap();
    const note = li => {
        const s = li.dataset.state;
        if (!s || seen.get(li) === s) return;
        seen.set(li, s);
        const st = li.querySelector('.status');
        window.__states.push({ file: li.dataset.file, state: s,
                               status: st ? st.textContent : '',
                               progress: li.querySelector('progress')
                                         ? li.querySelector('progress').value
                                         : null });
    };
    new MutationObserver(ms => {
        for (const m of ms) {
            if (m.type === 'attributes' && m.target.matches('#list li')) {
                note(m.target);
            }
            for (const n of m.addedNodes || []) {
                if (n.nodeType === 1 && n.matches('#list li')) note(n);
            }
        }
    }).observe(document, { subtree: true, childList: true,
                           attributes: true,
                           attributeFilter: ['data-state'] });
}

async function snapshot(page) {
    return page.evaluate(() => ({
        items: [...document.querySelectorAll('#list li')].map(li => ({
            file: li.dataset.file,
            state: li.dataset.state,
            status: li.querySelector('.status').textContent,
            progress: li.querySelector('progress').value,
            pause: !li.querySelector('.pause').hidden,
            resume: !li.querySelector('.resume').hidden,
            error: li.classList.contains('error')
                   ? li.querySelector('.result').textContent : null,
            objects: [...li.querySelectorAll('.object')].map(o => ({
                bucket: o.dataset.bucket,
                name: o.dataset.name,
                size: o.dataset.size,
                crc32c: o.dataset.crc32c,
                url: o.querySelector('.url').textContent,
            })),
        })),
        summary: document.querySelector('#summary').textContent,
        pending: document.querySelector('#pending').hidden ? []
                 : [...document.querySelectorAll('#pending-list li')]
                   .map(li => li.dataset.file),
    }));
}

async function main() {
    if (!fs.existsSync(executablePath)) {
        throw new Error(`${executablePath} is missing: run "tools/deps.sh test"`
                        + ' (Debian package chromium)');
    }

    const browser = await chromium.launch({
        executablePath,
        headless: true,
        timeout,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic',
               '--no-first-run', '--disable-background-networking',
               '--disable-component-update', '--disable-sync'],
    });

    const out = { console: [], states: [], requests: [], records: {} };

    try {
        const context = await browser.newContext();
        await context.addInitScript(watchStates);

        const page = await context.newPage();
        page.setDefaultTimeout(timeout);

        page.on('console', m => {
            if (m.type() === 'error') out.console.push(m.text());
        });
        page.on('pageerror', e => out.console.push(String(e)));

        const reqs = new Map();
        page.on('request', r => {
            const h = r.headers();
            const e = { method: r.method(), path: new URL(r.url()).pathname,
                        offset: h['upload-offset'] ?? null,
                        length: h['upload-length'] ?? null,
                        status: null, failure: null };
            reqs.set(r, e);
            out.requests.push(e);
        });
        page.on('requestfinished', async r => {
            const e = reqs.get(r);
            const res = await r.response().catch(() => null);
            if (e) e.status = res ? res.status() : 0;
            if (e && res) e.answer_offset = res.headers()['upload-offset']
                                            ?? null;
        });
        page.on('requestfailed', r => {
            const e = reqs.get(r);
            if (e) e.failure = (r.failure() || {}).errorText || 'failed';
        });

        const collect = async () => {
            const s = await page.evaluate(() => {
                const s = window.__states || [];
                window.__seen = (window.__seen || []).concat(s);
                window.__states = [];
                return s;
            }).catch(() => []);
            out.states.push(...s);
        };

        const res = await page.goto(opt.url);
        out.status = res.status();

        const row = f => `#list li[data-file="${f}"]`;

        for (const step of opt.steps || []) {
            if (step.pick) {
                await page.setInputFiles('#files', step.pick);

            } else if (step.wait === 'progress') {
                await page.waitForFunction(([sel, at]) => {
                    const p = document.querySelector(sel + ' progress');
                    return p && p.value >= at;
                }, [row(step.file), step.at], { polling: 20 });

            } else if (step.wait === 'state') {
                await page.waitForFunction(([sel, st]) => {
                    const li = document.querySelector(sel);
                    return li && li.dataset.state === st;
                }, [row(step.file), step.state], { polling: 20 });

            } else if (step.wait === 'seen') {
                await page.waitForFunction(([f, st]) =>
                    (window.__states || []).some(
                        s => s.file === f && s.state === st)
                    || (window.__seen || []).some(
                        s => s.file === f && s.state === st),
                    [step.file, step.state], { polling: 20 });

            } else if (step.wait === 'end') {
                await page.waitForFunction(n => {
                    const li = document.querySelectorAll('#list li');
                    return li.length === n && [...li].every(
                        l => l.dataset.state === 'done'
                             || l.dataset.state === 'error');
                }, step.n);

            } else if (step.click) {
                await page.locator(`${row(step.file)} button.${step.click}`)
                          .click();

            } else if (step.reload) {
                await collect();
                out.states.push({ reload: true });
                await page.reload();

            } else if (step.storage) {
                const f = step.storage.file;
                const st = fs.statSync(f);
                await page.evaluate(([name, size, mtime, url]) => {
                    const ep = document.getElementById('form').action;
                    localStorage.setItem('cloudauth-tus:'
                        + JSON.stringify([ep, name, size, mtime]),
                        JSON.stringify({ url: new URL(url, ep).href,
                                         offset: 0, name, size }));
                }, [path.basename(f), st.size, Math.floor(st.mtimeMs),
                    step.storage.url]);

            } else if (step.record) {
                out.records[step.record] = await snapshot(page);
            }
        }

        await collect();

        if (opt.screenshot) {
            await page.screenshot({ path: opt.screenshot, fullPage: true });
        }

    } finally {
        await browser.close();
    }

    process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch(e => {
    console.error(`browser: ${e.stack || e}`);
    process.exit(1);
});
