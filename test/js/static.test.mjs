// The dashboard's files over real HTTP: GET / and /static/* from the binary
// (content types, caching and security headers, 404s, nothing outside the
// web root however the path is spelled), --web-root from disk, and a bad
// --web-root refused at start with a usage error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freshDb, startServer, BIN } from './lib.mjs';

let db;
let srv;
let root;

before(async () => {
  db = await freshDb('static');
  srv = await startServer(db.url);
});

after(async () => {
  if (srv) assert.equal(await srv.stop(), 0, srv.log());
  if (db) await db.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

// curl sends the path as written (fetch would normalise "/static/../x").
function curl(url) {
  const out = execFileSync('curl', ['-s', '-i', '--path-as-is', '--max-time', '5', url], { encoding: 'latin1' });
  const [head, ...rest] = out.split('\r\n\r\n');
  const status = Number(head.split(' ')[1]);
  const headers = {};
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status, headers, body: rest.join('\r\n\r\n') };
}

test('GET / and /static/* serve the embedded files with their content types', () => {
  const cases = [
    ['/', 'lib/web/index.html', 'text/html; charset=utf-8'],
    ['/static/rtclient.js', 'lib/web/rtclient.js', 'text/javascript; charset=utf-8'],
    ['/static/app.js', 'lib/web/app.js', 'text/javascript; charset=utf-8'],
    ['/static/style.css', 'lib/web/style.css', 'text/css; charset=utf-8'],
  ];
  for (const [path, file, type] of cases) {
    const r = curl(srv.url(path));
    assert.equal(r.status, 200, path);
    assert.equal(r.headers['content-type'], type, path);
    assert.equal(r.headers['cache-control'], 'no-cache', path);
    assert.equal(r.headers['x-content-type-options'], 'nosniff', path);
    assert.equal(r.body, readFileSync(new URL(`../../${file}`, import.meta.url), 'latin1'), path);
    assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body, 'latin1'), path);
  }
  assert.match(curl(srv.url('/')).headers['content-security-policy'], /default-src 'self'/);
});

test('unknown files and every way out of the directory get a JSON 404', () => {
  for (const path of ['/static/nope.js', '/static/', '/static/../Makefile', '/static/..%2fMakefile',
    '/static/%2e%2e/Makefile', '/static/.hidden', '/static/a/b.js', '/index.html',
    '/static/..%2f..%2fetc%2fpasswd']) {
    const r = curl(srv.url(path));
    assert.equal(r.status, 404, path);
    assert.equal(r.headers['content-type'], 'application/json', path);
  }
  // A NUL cannot reach a handler: the fan-out refuses the path itself.
  assert.equal(curl(srv.url('/static/app.js%00.html')).status, 400);
});

test('--web-root serves from disk (edits show without a rebuild); a bad one is refused at start', async () => {
  root = mkdtempSync(join(tmpdir(), 'rt-web-'));
  mkdirSync(join(root, 'web'));
  writeFileSync(join(root, 'web', 'index.html'), '<p>v1</p>');
  writeFileSync(join(root, 'secret.txt'), 'secret');
  const s = await startServer(db.url, ['--web-root', join(root, 'web')]);
  try {
    assert.equal(curl(s.url('/')).body, '<p>v1</p>');
    writeFileSync(join(root, 'web', 'index.html'), '<p>v2</p>');
    assert.equal(curl(s.url('/')).body, '<p>v2</p>');
    assert.equal(curl(s.url('/static/app.js')).status, 404, 'only what is in the directory');
    assert.equal(curl(s.url('/static/..%2fsecret.txt')).status, 404);
    assert.equal(curl(s.url('/static/../secret.txt')).status, 404);
  } finally {
    assert.equal(await s.stop(), 0, s.log());
  }
  for (const [dir, why] of [[join(root, 'missing'), /No such file or directory/], [join(root, 'secret.txt'), /not a directory/]]) {
    const r = spawnSync(BIN, ['serve', '--listen', '127.0.0.1:0', '--web-root', dir], {
      env: { ...process.env, DATABASE_URL: db.url }, encoding: 'utf8', timeout: 10000,
    });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`^rtbridge: --web-root: ${dir}: `));
    assert.match(r.stderr, why);
  }
});
