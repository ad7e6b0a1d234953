// Shared harness for rtbridge's integration tests in Node: a fresh database
// per test file, the real server binary on a free port, and clients that are
// not ours (npm ws, npm eventsource, curl). Every process started here is
// stopped by its PID when the test ends.
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import pg from 'pg';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';

export const BIN = process.env.RT_BIN;
export const BASE_URL = process.env.RT_TEST_DATABASE_URL;
if (!BIN || !BASE_URL) throw new Error('RT_BIN and RT_TEST_DATABASE_URL must be set (test/run.sh sets them)');

let dbCounter = 0;

// Creates a fresh, migrated database. Returns { url, sql(text, params), close() }.
export async function freshDb(prefix) {
  const name = `${prefix}_${process.pid}_${++dbCounter}`;
  const admin = new pg.Client({ connectionString: BASE_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = BASE_URL.replace(/\/[^/]*$/, `/${name}`);
  execFileSync(BIN, ['migrate'], { env: { ...process.env, DATABASE_URL: url }, stdio: 'pipe' });
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return {
    url,
    sql: (text, params) => client.query(text, params),
    async close() {
      await client.end();
      const a = new pg.Client({ connectionString: BASE_URL });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

// Polls fn until it returns a truthy value or timeoutMs passes.
export async function waitUntil(fn, timeoutMs = 10000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// Starts `rtbridge serve` on 127.0.0.1 with a kernel-chosen port and waits
// until it is listening and its listener is connected.
export async function startServer(dbUrl, args = [], env = {}) {
  const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--fanout-threads', '2',
    '--max-conns-per-ip', '0', ...args], {
    env: { ...process.env, DATABASE_URL: dbUrl, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  proc.stdout.on('data', (d) => { log += d; });
  const exited = once(proc, 'exit');
  const server = {
    proc,
    port: 0,
    log: () => log,
    url: (path) => `http://127.0.0.1:${server.port}${path}`,
    wsUrl: (path) => `ws://127.0.0.1:${server.port}${path}`,
    // Sends sig and resolves with the exit code. A server that has not
    // exited 15 s later is killed and reported as 'killed' (never 0), so a
    // hang fails the test instead of blocking the run.
    async stop(sig = 'SIGTERM') {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(sig);
      let timer;
      const late = new Promise((resolve) => { timer = setTimeout(() => resolve('late'), 15000); });
      const r = await Promise.race([exited, late]);
      clearTimeout(timer);
      if (r === 'late') {
        proc.kill('SIGKILL');
        await exited;
        return 'killed';
      }
      return r[0];
    },
  };
  await waitUntil(() => {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}:\n${log}`);
    const m = log.match(/listening on \S+ \(port (\d+)/);
    if (m) server.port = Number(m[1]);
    return server.port && /listener: (re)?connected/.test(log);
  }, 10000, 'the server to start');
  return server;
}

// A WebSocket client (npm ws) that records every message it receives.
// options.idsOnly: record only {type, id} of events (cheap, for volume tests).
export function wsClient(url, options = {}) {
  const { idsOnly, ...wsOptions } = options;
  const ws = new WebSocket(url, wsOptions);
  const c = {
    ws,
    messages: [],
    closeCode: null,
    closeReason: null,
    opened: new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); }),
    closed: null,
    events: () => c.messages.filter((m) => typeof m.id === 'number' && m.data),
    send: (obj) => ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)),
    // Waits for a message matching pred (searching what arrived already too).
    next: (pred, timeoutMs = 5000) => waitUntil(() => c.messages.find(pred), timeoutMs, 'a WebSocket message'),
    close: () => { ws.close(); return c.closed; },
  };
  c.closed = new Promise((resolve) => ws.once('close', (code, reason) => {
    c.closeCode = code;
    c.closeReason = reason.toString();
    resolve(code);
  }));
  if (idsOnly) {
    // For volume tests: keep only each event's id, read from the fixed
    // message prefix, instead of parsing kilobytes of JSON per message.
    ws.on('message', (data) => {
      const m = /^\{"type":"([a-z_]+)","id":(\d+),/.exec(data.toString('latin1', 0, 64));
      c.messages.push(m ? { type: m[1], id: Number(m[2]), data: true } : JSON.parse(data.toString()));
    });
  } else {
    ws.on('message', (data) => { c.messages.push(JSON.parse(data.toString())); });
  }
  ws.on('error', () => {});
  return c;
}

// An SSE client (npm eventsource) recording every event.
export function sseClient(url, { headers = {}, types = [] } = {}) {
  const es = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
  });
  const c = { es, events: [], errors: 0 };
  const record = (e) => c.events.push({ type: e.type, id: e.lastEventId, data: JSON.parse(e.data) });
  for (const t of ['intent_update', 'audit_log', 'stats_updated', 'alert_firing', 'alert_resolved',
    'health_changed', 'system_notification', 'resync', ...types]) es.addEventListener(t, record);
  es.onerror = () => { c.errors++; };
  c.opened = new Promise((resolve, reject) => {
    es.onopen = resolve;
    setTimeout(() => reject(new Error('SSE did not open')), 5000);
  });
  c.close = () => es.close();
  return c;
}

// Inserts n intents in one statement; returns their ids in insertion order.
export async function insertIntents(db, n, { status = 'pending', dataBytes = 0 } = {}) {
  const r = await db.sql(
    `INSERT INTO intents(id, status, data)
     SELECT gen_random_uuid(), $1, CASE WHEN $3 > 0 THEN jsonb_build_object('blob', repeat('x', $3)) END
     FROM generate_series(1, $2) RETURNING id`, [status, n, dataBytes]);
  return r.rows.map((x) => x.id);
}

// The journal's seqs, in order (what every subscriber should get).
export async function journalSeqs(db, where = 'true') {
  const r = await db.sql(`SELECT seq FROM rt_journal WHERE ${where} ORDER BY seq`);
  return r.rows.map((x) => Number(x.seq));
}
