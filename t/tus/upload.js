#!/usr/bin/env node
'use strict';

// One upload by tus-js-client (t/tus/node_modules, pinned by
// package-lock.json; tools/deps.sh test installs it), for
// t/221-tus-js-client.t:
//
//   node t/tus/upload.js '{"endpoint": "http://127.0.0.1:N/files/",
//       "file": "/dir/data.bin", "chunkSize": null,
//       "retryDelays": [0, 200, 500], "metadata": {"filename": "x.bin",
//       "filetype": "application/octet-stream"}, "timeout": 120000,
//       "protocol": "ietf-draft-05"}'
//
// chunkSize null is Infinity (the whole rest of the file in each PATCH).
// Prints one JSON document: ok, error, the upload URL, every request
// (method, Upload-Offset sent, status, Upload-Offset answered), every
// retry tus-js-client decided on (with the error that caused it), and the
// final answer's Cloudauth-Object-* headers, and its body (the IETF
// draft's last answer is the object's JSON).  "protocol": tus-js-client's
// (tus-v1 by default, ietf-draft-03, ietf-draft-05).  Exits non-zero when the
// client cannot run.

const fs = require('fs');

let tus;
try {
    tus = require('tus-js-client');
} catch (e) {
    console.error('tus-js-client is missing: run "tools/deps.sh test" '
                  + '(it installs it into t/tus/node_modules): '
                  + e.message);
    process.exit(2);
}

const opt = JSON.parse(process.argv[2] || '{}');
const data = fs.readFileSync(opt.file);
const out = { ok: false, requests: [], retries: [], object: {} };

const timer = setTimeout(() => {
    out.error = `no end in ${opt.timeout || 120000} ms`;
    finish(1);
}, opt.timeout || 120000);

function finish(rc) {
    clearTimeout(timer);
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(rc);
}

// the default rule of tus-js-client (4.x): any failure but a 4xx other
// than 409 and 423 is retried; recorded here
function shouldRetry(err, attempt) {
    const res = err.originalResponse;
    const status = res ? res.getStatus() : 0;
    const again = !(status >= 400 && status < 500)
                  || status === 409 || status === 423;

    out.retries.push({ attempt, status, again,
                       error: String(err.message || err).split('\n')[0] });
    return again;
}

const upload = new tus.Upload(data, {
    endpoint: opt.endpoint,
    protocol: opt.protocol || 'tus-v1',
    chunkSize: opt.chunkSize == null ? Infinity : opt.chunkSize,
    retryDelays: opt.retryDelays || [0, 200, 500, 1000, 2000],
    metadata: opt.metadata || {},
    uploadDataDuringCreation: !!opt.uploadDataDuringCreation,
    removeFingerprintOnSuccess: true,

    onShouldRetry: shouldRetry,

    onBeforeRequest(req) {
        req._entry = { method: req.getMethod(),
                       offset: req.getHeader('Upload-Offset') ?? null };
        out.requests.push(req._entry);
    },

    onAfterResponse(req, res) {
        const e = req._entry || {};
        e.status = res.getStatus();
        e.answer_offset = res.getHeader('Upload-Offset') ?? null;
    },

    onError(err) {
        out.error = String(err.message || err);
        finish(0);
    },

    onSuccess(payload) {
        const res = payload && payload.lastResponse;

        out.ok = true;
        out.url = upload.url;
        out.body = res ? res.getBody() ?? null : null;
        for (const h of ['Name', 'Size', 'Generation', 'Crc32c', 'Url']) {
            out.object[h.toLowerCase()] =
                res ? res.getHeader('Cloudauth-Object-' + h) ?? null : null;
        }
        finish(0);
    },
});

upload.start();
