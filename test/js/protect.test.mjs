// Protections and error codes end to end (issue #3): WebSocket handshake
// checks, HTTP errors (404, 405, 400, 431, 408), CORS and origins,
// connection limits (total and per address), bearer tokens and HS256 JWTs,
// WebSocket protocol violations (1007, 1003, 1009, 1008), ping timeouts, SSE
// keep-alive, and the health endpoints. Clients that are not ours: npm ws,
// npm eventsource, fetch, and raw node:net sockets for what a library would
// not send. One server per flag set; each is stopped and must exit 0.
import { test as nodeTest, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { freshDb, startServer, wsClient, sseClient, waitUntil, insertIntents } from './lib.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves with p's value, or with `value` after ms (the timer is cleared).
function orAfter(p, ms, value) {
  let timer;
  return Promise.race([p, new Promise((r) => { timer = setTimeout(() => r(value), ms); })])
    .finally(() => clearTimeout(timer));
}

// Every test has a deadline, so a server that never answers or never closes
// fails the test instead of hanging the run.
const test = (name, opts, fn) => (fn ? nodeTest(name, { timeout: 15000, ...opts }, fn) : nodeTest(name, { timeout: 15000 }, opts));

// SIGTERM, and the server must exit 0 within 15 s (else SIGKILL and fail).
async function stopServer(srv) {
  if (!srv) return;
  const code = await orAfter(srv.stop(), 15000, 'timeout');
  if (code === 'timeout') {
    srv.proc.kill('SIGKILL');
    assert.fail(`the server did not exit within 15 s of SIGTERM:\n${srv.log()}`);
  }
  assert.equal(code, 0, srv.log());
}

let db;
before(async () => { db = await freshDb('protect'); });
after(async () => { if (db) await db.close(); });

// ---- helpers ------------------------------------------------------------------------------

// Splits a raw HTTP response into status, lower-cased headers and body.
function parseResponse(raw) {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return { status: 0, headers: {}, body: '', text };
  const lines = text.slice(0, end).split('\r\n');
  const m = lines[0].match(/^HTTP\/1\.[01] (\d{3})/);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: m ? Number(m[1]) : 0, headers, body: text.slice(end + 4), text };
}

// Sends raw bytes on a fresh TCP connection and resolves once the server
// closes it, with the parsed response and how long the server took to close.
// Rejects if the server keeps the connection open past timeoutMs.
function rawHttp(port, data, { timeoutMs = 3000, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    const chunks = [];
    let firstByteMs = null;
    s.on('connect', () => { if (data) s.write(data); });
    s.on('data', (d) => { if (firstByteMs === null) firstByteMs = Date.now() - t0; chunks.push(d); });
    s.on('error', () => {}); // a reset after the response still counts: 'close' follows
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`server did not close within ${timeoutMs} ms; got: ${Buffer.concat(chunks).toString('latin1')}`));
    }, timeoutMs);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ ...parseResponse(Buffer.concat(chunks)), firstByteMs, closedMs: Date.now() - t0 });
    });
  });
}

const wsKey = () => crypto.randomBytes(16).toString('base64');
const wsAccept = (key) => crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');

// Parses the unmasked frames a server sends; returns frames and leftover bytes.
function parseFrames(buf) {
  const frames = [];
  let off = 0;
  while (off + 2 <= buf.length) {
    const b0 = buf[off];
    const b1 = buf[off + 1];
    let len = b1 & 0x7f;
    let p = off + 2;
    if (len === 126) { if (p + 2 > buf.length) break; len = buf.readUInt16BE(p); p += 2; }
    else if (len === 127) { if (p + 8 > buf.length) break; len = Number(buf.readBigUInt64BE(p)); p += 8; }
    if (b1 & 0x80) p += 4;
    if (p + len > buf.length) break;
    frames.push({ opcode: b0 & 0x0f, payload: Buffer.from(buf.subarray(p, p + len)) });
    off = p + len;
  }
  return { frames, rest: buf.subarray(off) };
}

// A WebSocket client written by hand on node:net: it does the handshake and
// records frames, and never answers anything (in particular not pings).
function rawWsClient(port, path) {
  const key = wsKey();
  const s = net.connect({ port, host: '127.0.0.1' });
  const c = { socket: s, frames: [], status: 0, headers: {}, closedAt: null, upgradedAt: null };
  let buf = Buffer.alloc(0);
  let upgraded = false;
  s.on('connect', () => s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n`
    + `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (!upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const r = parseResponse(buf.subarray(0, end + 4));
      c.status = r.status;
      c.headers = r.headers;
      upgraded = true;
      c.upgradedAt = Date.now();
      buf = buf.subarray(end + 4);
    }
    const { frames, rest } = parseFrames(buf);
    c.frames.push(...frames);
    buf = Buffer.from(rest);
  });
  s.on('error', () => {});
  c.closed = new Promise((resolve) => s.on('close', () => { c.closedAt = Date.now(); resolve(); }));
  c.upgraded = waitUntil(() => upgraded, 5000, 'the raw WebSocket handshake').then(() => {
    assert.equal(c.status, 101);
    assert.equal(c.headers['sec-websocket-accept'], wsAccept(key));
  });
  c.destroy = () => s.destroy();
  return c;
}

// A WebSocket handshake that the server must refuse: resolves with the HTTP
// status, headers and body npm ws saw instead of the upgrade.
function wsRefused(url, options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.on('error', (e) => reject(new Error(`no HTTP response to the refused upgrade: ${e.message}`)));
    ws.on('open', () => { ws.terminate(); reject(new Error(`upgrade to ${url} was accepted`)); });
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => { resolve({ status: res.statusCode, headers: res.headers, body }); req.destroy(); });
    });
  });
}

// Reads an HTTP streaming body until pred(text) holds; returns the text.
async function readUntil(res, pred, timeoutMs) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  const deadline = Date.now() + timeoutMs;
  try {
    while (!pred(text)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; stream so far: ${JSON.stringify(text)}`);
      const r = await orAfter(reader.read(), left, { timeout: true });
      if (r.timeout) continue;
      if (r.done) throw new Error(`stream ended; got: ${JSON.stringify(text)}`);
      text += dec.decode(r.value, { stream: true });
    }
    return text;
  } finally {
    reader.cancel().catch(() => {});
  }
}

// A JWT signed here with node:crypto: HS256 by default, HS512 too, or
// unsigned (alg none).
function jwt(payload, secret, header = { alg: 'HS256', typ: 'JWT' }) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signing = `${b64(header)}.${b64(payload)}`;
  const hash = { HS256: 'sha256', HS512: 'sha512' }[header.alg];
  const sig = hash ? crypto.createHmac(hash, secret).update(signing).digest('base64url') : '';
  return `${signing}.${sig}`;
}

async function health(srv) {
  return (await fetch(srv.url('/health/realtime'))).json();
}

// ---- the default server: handshake checks, HTTP errors, health -------------------------------

describe('default server: HTTP and handshake errors, health', () => {
  let srv;
  before(async () => { srv = await startServer(db.url); });
  after(() => stopServer(srv));

  const upgrade = (extra, { method = 'GET', path = '/ws/intents' } = {}) =>
    `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n${extra}\r\n`;

  test('WebSocket handshake without Sec-WebSocket-Key, or with an invalid one: 400', async () => {
    const missing = await rawHttp(srv.port, upgrade('Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'));
    assert.equal(missing.status, 400, missing.text);
    assert.match(JSON.parse(missing.body).error, /Sec-WebSocket-Key/);
    for (const key of ['abc', 'not-base64-of-16-bytes!!', crypto.randomBytes(15).toString('base64')]) {
      const bad = await rawHttp(srv.port, upgrade(`Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`));
      assert.equal(bad.status, 400, `key ${key}: ${bad.text}`);
      assert.equal(bad.headers.upgrade, undefined);
    }
  });

  test('WebSocket version 8: 426 with Sec-WebSocket-Version: 13 (raw and npm ws)', async () => {
    const r = await rawHttp(srv.port, upgrade(`Connection: Upgrade\r\nSec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 8\r\n`));
    assert.equal(r.status, 426, r.text);
    assert.equal(r.headers['sec-websocket-version'], '13');
    const w = await wsRefused(srv.wsUrl('/ws/intents'), { protocolVersion: 8 });
    assert.equal(w.status, 426);
    assert.equal(w.headers['sec-websocket-version'], '13');
  });

  test('POST with upgrade headers to /ws/intents: 405 with Allow', async () => {
    const r = await rawHttp(srv.port, upgrade(`Connection: Upgrade\r\nSec-WebSocket-Key: ${wsKey()}\r\n`
      + 'Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n', { method: 'POST' }));
    assert.equal(r.status, 405, r.text);
    assert.match(r.headers.allow, /\bGET\b/);
    assert.doesNotMatch(r.headers.allow, /POST/);
  });

  test('Upgrade: websocket without Connection: upgrade is a 400, not served as plain HTTP', async () => {
    const r = await rawHttp(srv.port, upgrade(`Sec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 13\r\n`));
    assert.equal(r.status, 400, r.text);
    assert.match(JSON.parse(r.body).error, /Connection/);
    // A plain GET of a WebSocket path (no upgrade at all) is not served either.
    const plain = await fetch(srv.url('/ws/intents'));
    assert.equal(plain.status, 400);
    await plain.body?.cancel();
  });

  test('unknown path: 404 with a JSON body', async () => {
    const res = await fetch(srv.url('/no/such/thing'));
    assert.equal(res.status, 404);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    const body = await res.json();
    assert.equal(body.status, 404);
    assert.match(body.error, /not found/);
  });

  test('wrong method on a stream: 405 with Allow', async () => {
    for (const [method, path] of [['POST', '/events/audit-logs'], ['DELETE', '/api/v2/events/stream'], ['PUT', '/healthz']]) {
      const res = await fetch(srv.url(path), { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.match(res.headers.get('allow'), /\bGET\b/);
      assert.equal((await res.json()).status, 405);
    }
  });

  test('malformed HTTP (garbage request line): 400 and the connection is closed', async () => {
    for (const garbage of ['GARBAGE\r\n\r\n', 'GET\r\n\r\n', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n']) {
      const r = await rawHttp(srv.port, garbage);
      assert.equal(r.status, 400, JSON.stringify(garbage) + ': ' + r.text);
      assert.equal(r.headers.connection, 'close');
    }
  });

  test('a header block over 8 KiB: 431; one just under is served', async () => {
    const big = await rawHttp(srv.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(9000)}\r\n\r\n`);
    assert.equal(big.status, 431, big.text);
    const many = await rawHttp(srv.port, `GET /healthz HTTP/1.1\r\nHost: x\r\n${'X-H: 0123456789abcdef0123456789\r\n'.repeat(300)}\r\n`);
    assert.equal(many.status, 431, many.text);
    const ok = await rawHttp(srv.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ${'a'.repeat(7000)}\r\n\r\n`);
    assert.equal(ok.status, 200, ok.text);
  });

  test('OPTIONS preflight: 204 with Access-Control-Allow-Methods', async () => {
    const res = await fetch(srv.url('/events/audit-logs'), {
      method: 'OPTIONS',
      headers: { Origin: 'https://any.example', 'Access-Control-Request-Method': 'GET',
        'Access-Control-Request-Headers': 'authorization, last-event-id' },
    });
    assert.equal(res.status, 204);
    assert.match(res.headers.get('access-control-allow-methods'), /\bGET\b/);
    assert.match(res.headers.get('access-control-allow-headers'), /authorization/i);
    assert.match(res.headers.get('access-control-allow-headers'), /last-event-id/i);
    // No --allowed-origins: every origin is allowed.
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
  });

  test('/healthz and /readyz answer 200 while the listener is connected', async () => {
    const h = await fetch(srv.url('/healthz'));
    assert.equal(h.status, 200);
    assert.equal((await h.json()).status, 'ok');
    const r = await fetch(srv.url('/readyz'));
    assert.equal(r.status, 200);
    assert.equal((await r.json()).status, 'ready');
    const rt = await health(srv);
    assert.equal(rt.listener.connected, true);
  });

  test('/health/realtime counts connections per transport (2 WebSocket, 1 SSE)', async () => {
    await waitUntil(async () => { const h = await health(srv); return h.connections.websocket === 0 && h.connections.sse === 0; },
      5000, 'earlier clients to be gone');
    const a = wsClient(srv.wsUrl('/ws/intents'));
    const b = wsClient(srv.wsUrl('/ws/dashboard'));
    const s = sseClient(srv.url('/events/audit-logs'));
    await Promise.all([a.opened, b.opened, s.opened]);
    const h = await waitUntil(async () => { const x = await health(srv); return x.connections.websocket === 2 && x.connections.sse === 1 && x; },
      5000, '2 WebSocket and 1 SSE connections to be counted');
    assert.ok(h.connections.http >= 1, 'this request itself is an HTTP connection');
    s.close();
    await a.close();
    await b.close();
    await waitUntil(async () => { const x = await health(srv); return x.connections.websocket === 0 && x.connections.sse === 0; },
      5000, 'the counts to go back to 0');
  });

  test('refusals are counted by reason in /health/realtime', async () => {
    const before = (await health(srv)).refused;
    await fetch(srv.url('/no/such/thing')).then((r) => r.body?.cancel());
    await fetch(srv.url('/ws/intents'), { method: 'POST' }).then((r) => r.body?.cancel());
    const after = await waitUntil(async () => { const h = await health(srv); return h.refused.not_found > before.not_found && h; },
      5000, 'the 404 to be counted');
    assert.equal(after.refused.not_found, before.not_found + 1);
    assert.equal(after.refused.method, before.method + 1);
    assert.equal(after.refused.auth, before.auth);
  });
});

// ---- timers and per-message limits -------------------------------------------------------------

describe('timers and WebSocket protocol limits', () => {
  let srv;
  before(async () => {
    srv = await startServer(db.url, ['--header-timeout', '300ms', '--ping-interval', '200ms',
      '--keepalive-interval', '200ms', '--ws-max-message', '1k', '--client-msg-rate', '5']);
  });
  after(() => stopServer(srv));

  test('a request line and headers not completed within --header-timeout: 408, then closed', async () => {
    const r = await rawHttp(srv.port, 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n', { timeoutMs: 3000 });
    assert.equal(r.status, 408, r.text);
    assert.ok(r.firstByteMs >= 250, `408 after ${r.firstByteMs} ms: before the timeout`);
    assert.ok(r.closedMs <= 1000, `closed after ${r.closedMs} ms`);
    // Nothing sent at all: the same.
    const idle = await rawHttp(srv.port, '', { timeoutMs: 3000 });
    assert.equal(idle.status, 408, idle.text);
    assert.ok(idle.closedMs <= 1000, `closed after ${idle.closedMs} ms`);
  });

  test('invalid UTF-8 in a text frame: close 1007', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    c.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
    assert.equal(await c.closed, 1007);
  });

  test('a binary message: close 1003', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    c.ws.send(Buffer.from('{"type":"ping"}'), { binary: true });
    assert.equal(await c.closed, 1003);
  });

  test('a message over --ws-max-message (1k): close 1009; one under it is answered', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    c.send({ type: 'ping', pad: 'x'.repeat(900) });
    await c.next((m) => m.type === 'pong');
    c.send({ type: 'ping', pad: 'x'.repeat(2000) });
    assert.equal(await c.closed, 1009);
  });

  test('more than --client-msg-rate (5/s) messages: close 1008; 4 are fine', async () => {
    const ok = wsClient(srv.wsUrl('/ws/intents'));
    const flood = wsClient(srv.wsUrl('/ws/intents'));
    await Promise.all([ok.opened, flood.opened]);
    for (let i = 0; i < 4; i++) ok.send({ type: 'ping' });
    for (let i = 0; i < 50; i++) flood.send({ type: 'ping' });
    // And it keeps sending: the server must still deliver its close frame
    // (not reset the connection under input it has not read).
    const more = setInterval(() => { if (flood.ws.readyState === WebSocket.OPEN) flood.send({ type: 'ping' }); }, 1);
    const code = await flood.closed;
    clearInterval(more);
    assert.equal(code, 1008);
    assert.match(flood.closeReason, /rate/);
    assert.ok(flood.messages.filter((m) => m.type === 'pong').length <= 5, 'at most the burst is answered');
    await waitUntil(() => ok.messages.filter((m) => m.type === 'pong').length === 4, 5000, '4 pongs');
    assert.equal(ok.ws.readyState, WebSocket.OPEN);
    await ok.close();
  });

  test('a client that never answers pings is closed (1001) after two missed pongs; npm ws stays', async () => {
    const good = wsClient(srv.wsUrl('/ws/intents'));
    let pings = 0;
    good.ws.on('ping', () => { pings++; });
    const raw = rawWsClient(srv.port, '/ws/intents');
    await Promise.all([raw.upgraded, good.opened]);
    await orAfter(raw.closed, 3000);
    assert.ok(raw.closedAt, 'the server did not close the silent client within 3 s');
    const after = raw.closedAt - raw.upgradedAt;
    assert.ok(after >= 350 && after <= 1200, `closed ${after} ms after the upgrade (ping interval 200 ms)`);
    const ops = raw.frames.map((f) => f.opcode);
    assert.ok(ops.filter((o) => o === 0x9).length >= 2, `pings before the close: ${ops}`);
    const close = raw.frames.find((f) => f.opcode === 0x8);
    assert.ok(close, `no close frame: ${ops}`);
    assert.equal(close.payload.readUInt16BE(0), 1001);
    assert.match(close.payload.subarray(2).toString(), /ping/);
    // The same time again for the client that answers its pings.
    await sleep(600);
    assert.equal(good.ws.readyState, WebSocket.OPEN);
    assert.ok(pings >= 4, `npm ws got ${pings} pings`);
    await good.close();
  });

  test('SSE keep-alive: a ": keepalive" comment line on an idle stream within ~1 s', async () => {
    const t0 = Date.now();
    const res = await fetch(srv.url('/events/audit-logs'));
    assert.equal(res.status, 200);
    const text = await readUntil(res, (t) => t.includes('\n: keepalive\n'), 1000);
    assert.match(text, /^retry: 3000\n\n: keepalive\n\n/);
    assert.ok(Date.now() - t0 <= 1000);
  });
});

// ---- origins and CORS ---------------------------------------------------------------------------

describe('--allowed-origins https://ok.example', () => {
  let srv;
  before(async () => { srv = await startServer(db.url, ['--allowed-origins', 'https://ok.example']); });
  after(() => stopServer(srv));

  test('WebSocket from another origin: 403; from the allowed one: upgraded and served', async () => {
    const evil = await wsRefused(srv.wsUrl('/ws/intents'), { origin: 'https://evil.example' });
    assert.equal(evil.status, 403);
    assert.match(JSON.parse(evil.body).error, /origin/);
    const also = await wsRefused(srv.wsUrl('/ws/dashboard'), { origin: 'https://ok.example.evil.example' });
    assert.equal(also.status, 403);
    const c = wsClient(srv.wsUrl('/ws/intents'), { origin: 'https://ok.example' });
    await c.opened;
    const [id] = await insertIntents(db, 1);
    const ev = await c.next((m) => m.data?.intent_id === id);
    assert.equal(ev.type, 'intent_update');
    await c.close();
  });

  test('WebSocket without an Origin header (not a browser) is let through', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents')); // npm ws sends no Origin by default
    await c.opened;
    const [id] = await insertIntents(db, 1);
    await c.next((m) => m.data?.intent_id === id);
    await c.close();
  });

  test('SSE: the allowed origin gets Access-Control-Allow-Origin, another origin none', async () => {
    const ok = await fetch(srv.url('/events/audit-logs'), { headers: { Origin: 'https://ok.example' } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('access-control-allow-origin'), 'https://ok.example');
    assert.match(ok.headers.get('vary') ?? '', /Origin/);
    await ok.body.cancel();
    const other = await fetch(srv.url('/events/audit-logs'), { headers: { Origin: 'https://evil.example' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
    await other.body.cancel();
    const none = await fetch(srv.url('/events/audit-logs'));
    assert.equal(none.headers.get('access-control-allow-origin'), null);
    await none.body.cancel();
  });

  test('OPTIONS preflight names the allowed origin only', async () => {
    const pre = (origin) => fetch(srv.url('/api/v2/events/stream'), {
      method: 'OPTIONS', headers: { Origin: origin, 'Access-Control-Request-Method': 'GET' } });
    const ok = await pre('https://ok.example');
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get('access-control-allow-origin'), 'https://ok.example');
    assert.match(ok.headers.get('access-control-allow-methods'), /\bGET\b/);
    const evil = await pre('https://evil.example');
    assert.equal(evil.headers.get('access-control-allow-origin'), null);
  });
});

// ---- connection limits --------------------------------------------------------------------------

describe('--max-conns 5', () => {
  let srv;
  before(async () => { srv = await startServer(db.url, ['--max-conns', '5']); });
  after(() => stopServer(srv));

  test('the 6th connection gets 503 while 5 WebSocket clients are open; after one leaves, a new one is let in', async () => {
    // Refused and finished requests first: none of them may keep a slot.
    for (const req of ['GARBAGE\r\n\r\n', 'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 'POST /ws/intents HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n'])
      for (let i = 0; i < 3; i++) await rawHttp(srv.port, req);
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(wsClient(srv.wsUrl('/ws/intents')));
    await Promise.all(clients.map((c) => c.opened));
    const r = await wsRefused(srv.wsUrl('/ws/intents'));
    assert.equal(r.status, 503);
    assert.ok(r.headers['retry-after'], 'Retry-After');
    assert.match(JSON.parse(r.body).error, /limit/);
    const plain = await rawHttp(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(plain.status, 503, 'any request past the limit, not only upgrades');
    // The 5 that were let in are still served.
    const [id] = await insertIntents(db, 1);
    await waitUntil(() => clients.every((c) => c.events().some((m) => m.data.intent_id === id)), 5000, 'all 5 to get the event');
    await clients.pop().close();
    const again = await waitUntil(async () => {
      const c = wsClient(srv.wsUrl('/ws/intents'));
      try { await c.opened; return c; } catch { return null; }
    }, 5000, 'a new connection to be accepted');
    clients.push(again);
    await Promise.all(clients.map((c) => c.close()));
  });
});

describe('--max-conns-per-ip 3', () => {
  let srv;
  before(async () => { srv = await startServer(db.url, ['--max-conns-per-ip', '3']); });
  after(() => stopServer(srv));

  test('the 4th from 127.0.0.1 gets 429, 127.0.0.2 is still let in, and a slot freed is reused', async () => {
    // Refused and finished requests first: none of them may keep a slot.
    for (const req of ['GARBAGE\r\n\r\n', 'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'])
      for (let i = 0; i < 3; i++) await rawHttp(srv.port, req, { localAddress: '127.0.0.1' });
    const mine = [];
    for (let i = 0; i < 3; i++) mine.push(wsClient(srv.wsUrl('/ws/intents'), { localAddress: '127.0.0.1' }));
    await Promise.all(mine.map((c) => c.opened));
    const r = await wsRefused(srv.wsUrl('/ws/intents'), { localAddress: '127.0.0.1' });
    assert.equal(r.status, 429);
    assert.ok(r.headers['retry-after'], 'Retry-After');
    const sse = await rawHttp(srv.port, 'GET /events/audit-logs HTTP/1.1\r\nHost: x\r\n\r\n', { localAddress: '127.0.0.1' });
    assert.equal(sse.status, 429);
    const other = wsClient(srv.wsUrl('/ws/intents'), { localAddress: '127.0.0.2' });
    await other.opened;
    const otherRaw = await rawHttp(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { localAddress: '127.0.0.2' });
    assert.equal(otherRaw.status, 200);
    await mine.pop().close();
    const again = await waitUntil(async () => {
      const c = wsClient(srv.wsUrl('/ws/intents'), { localAddress: '127.0.0.1' });
      try { await c.opened; return c; } catch { return null; }
    }, 5000, 'a new connection from 127.0.0.1 to be accepted');
    mine.push(again);
    // And the limit holds again.
    assert.equal((await wsRefused(srv.wsUrl('/ws/intents'), { localAddress: '127.0.0.1' })).status, 429);
    await Promise.all([...mine, other].map((c) => c.close()));
  });
});

// ---- bearer token ---------------------------------------------------------------------------------

describe('--auth-token s3cret', () => {
  const TOKEN = 's3cret';
  let srv;
  before(async () => { srv = await startServer(db.url, ['--auth-token', TOKEN, '--log-level', 'debug']); });
  after(async () => {
    if (!srv) return;
    await stopServer(srv);
    assert.ok(!srv.log().includes(TOKEN), `the token appears in the log:\n${srv.log()}`);
  });

  test('SSE: no token 401, Bearer header 200, ?access_token 200, wrong token 401', async () => {
    const none = await fetch(srv.url('/events/audit-logs'));
    assert.equal(none.status, 401);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
    assert.match((await none.json()).error, /missing/);
    const bearer = await fetch(srv.url('/events/audit-logs'), { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(bearer.status, 200);
    assert.equal(bearer.headers.get('content-type'), 'text/event-stream');
    await readUntil(bearer, (t) => t.startsWith('retry: 3000\n\n'), 2000);
    const query = await fetch(srv.url(`/api/v2/events/stream?access_token=${TOKEN}`));
    assert.equal(query.status, 200);
    await query.body.cancel();
    for (const headers of [{ Authorization: 'Bearer s3cre' }, { Authorization: 'Bearer s3cretX' }, { Authorization: `Basic ${TOKEN}` }]) {
      const wrong = await fetch(srv.url('/events/audit-logs'), { headers });
      assert.equal(wrong.status, 401, JSON.stringify(headers));
      await wrong.body.cancel();
    }
    const wrongQuery = await fetch(srv.url('/events/audit-logs?access_token=nope'));
    assert.equal(wrongQuery.status, 401);
    await wrongQuery.body.cancel();
  });

  test('SSE with the token gets events (npm eventsource)', async () => {
    const s = sseClient(srv.url('/events/audit-logs'), { headers: { Authorization: `Bearer ${TOKEN}` } });
    await s.opened;
    await db.sql(`INSERT INTO audit_logs(event_type, actor) VALUES ('authed_sse', 'a')`);
    await waitUntil(() => s.events.some((e) => e.data.event_type === 'authed_sse'), 5000, 'the event');
    s.close();
  });

  test('WebSocket with a Bearer header or ?access_token: events arrive; a wrong one is a 401', async () => {
    const h = wsClient(srv.wsUrl('/ws/intents'), { headers: { Authorization: `Bearer ${TOKEN}` } });
    const q = wsClient(srv.wsUrl(`/ws/intents?access_token=${TOKEN}`));
    await Promise.all([h.opened, q.opened]);
    const [id] = await insertIntents(db, 1);
    await h.next((m) => m.data?.intent_id === id);
    await q.next((m) => m.data?.intent_id === id);
    await h.close();
    await q.close();
    const wrong = await wsRefused(srv.wsUrl('/ws/intents'), { headers: { Authorization: 'Bearer nope' } });
    assert.equal(wrong.status, 401);
  });

  test('WebSocket without a token: upgraded, nothing before the auth message, events after it', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    const [before] = await insertIntents(db, 1);
    // A control client proves the event was delivered by now.
    const control = wsClient(srv.wsUrl(`/ws/intents?access_token=${TOKEN}`));
    await control.opened;
    const [before2] = await insertIntents(db, 1);
    await control.next((m) => m.data?.intent_id === before2);
    await sleep(100);
    assert.deepEqual(c.messages, [], 'nothing is sent before the auth message');
    c.send({ type: 'auth', token: TOKEN });
    await c.next((m) => m.type === 'authenticated');
    const [id] = await insertIntents(db, 1);
    await c.next((m) => m.data?.intent_id === id);
    assert.ok(!c.events().some((m) => m.data.intent_id === before || m.data.intent_id === before2));
    await c.close();
    await control.close();
  });

  test('WebSocket: a wrong auth message, or another message first, closes with 1008', async () => {
    const wrong = wsClient(srv.wsUrl('/ws/intents'));
    await wrong.opened;
    wrong.send({ type: 'auth', token: 'nope' });
    assert.equal(await wrong.closed, 1008);
    const ping = wsClient(srv.wsUrl('/ws/intents'));
    await ping.opened;
    ping.send({ type: 'ping' });
    assert.equal(await ping.closed, 1008);
    assert.deepEqual(ping.messages, [], 'no pong before auth');
  });

  test('WebSocket: no auth message within 5 s closes with 1008', async () => {
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    const t0 = Date.now();
    const code = await orAfter(c.closed, 8000, 'still open');
    const ms = Date.now() - t0;
    assert.equal(code, 1008);
    assert.match(c.closeReason, /auth/);
    assert.ok(ms >= 4500 && ms <= 7000, `closed after ${ms} ms`);
  });
});

// ---- JWT ------------------------------------------------------------------------------------------

describe('--jwt-secret k', () => {
  const SECRET = 'k';
  let srv;
  const now = () => Math.floor(Date.now() / 1000);
  const tokens = [];
  before(async () => { srv = await startServer(db.url, ['--jwt-secret', SECRET, '--log-level', 'debug']); });
  after(async () => {
    if (!srv) return;
    await stopServer(srv);
    for (const t of tokens) {
      assert.ok(!srv.log().includes(t), `a token appears in the log:\n${srv.log()}`);
      const sig = t.split('.')[2];
      if (sig) assert.ok(!srv.log().includes(sig), `a token's signature appears in the log:\n${srv.log()}`);
    }
  });

  const sse = (token) => fetch(srv.url('/events/audit-logs'), { headers: { Authorization: `Bearer ${token}` } });

  test('an HS256 JWT with exp in the future is accepted (SSE header, WebSocket query and auth message)', async () => {
    const t = jwt({ sub: 'u1', exp: now() + 300 }, SECRET);
    tokens.push(t);
    const res = await sse(t);
    assert.equal(res.status, 200);
    await res.body.cancel();
    const q = wsClient(srv.wsUrl(`/ws/intents?access_token=${t}`));
    const m = wsClient(srv.wsUrl('/ws/intents'));
    await Promise.all([q.opened, m.opened]);
    m.send({ type: 'auth', token: t });
    await m.next((x) => x.type === 'authenticated');
    const [id] = await insertIntents(db, 1);
    await q.next((x) => x.data?.intent_id === id);
    await m.next((x) => x.data?.intent_id === id);
    await q.close();
    await m.close();
  });

  test('an expired JWT: 401 with "expired" in the JSON error; WebSocket auth message: 1008', async () => {
    const t = jwt({ sub: 'u1', exp: now() - 60 }, SECRET);
    tokens.push(t);
    const res = await sse(t);
    assert.equal(res.status, 401);
    assert.match((await res.json()).error, /expired/);
    const c = wsClient(srv.wsUrl('/ws/intents'));
    await c.opened;
    c.send({ type: 'auth', token: t });
    assert.equal(await c.closed, 1008);
    assert.match(c.closeReason, /expired/);
  });

  test('a JWT signed with another secret, with HS512, with alg none, or not yet valid (nbf): 401', async () => {
    const other = jwt({ sub: 'u1', exp: now() + 300 }, 'not-k');
    const none = jwt({ sub: 'u1', exp: now() + 300 }, SECRET, { alg: 'none', typ: 'JWT' });
    const hs512 = jwt({ sub: 'u1', exp: now() + 300 }, SECRET, { alg: 'HS512', typ: 'JWT' });
    const nbf = jwt({ sub: 'u1', nbf: now() + 300, exp: now() + 600 }, SECRET);
    tokens.push(other, none, hs512, nbf);
    for (const [what, t] of [['other secret', other], ['alg none', none], ['HS512', hs512], ['nbf', nbf], ['garbage', 'a.b.c']]) {
      const res = await sse(t);
      assert.equal(res.status, 401, what);
      assert.equal((await res.json()).status, 401, what);
    }
    const ws = await wsRefused(srv.wsUrl(`/ws/intents?access_token=${none}`));
    assert.equal(ws.status, 401);
  });
});
