// Unit tests of lib/web/rtclient.js in Node, without a browser or a server:
// the backoff schedule, de-duplication across reconnects, the transport
// fallback order, resume positions and resync, with fake EventSource,
// WebSocket, fetch and timers that the test drives by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RealtimeClient, backoffDelay, SeenIds, EventGate, transportOrder, fromSse,
  BACKOFF_MIN_MS, BACKOFF_MAX_MS,
} from '../../lib/web/rtclient.js';

// ---- fakes ---------------------------------------------------------------------------

// Timers that run only when the test says so.
function fakeTimers() {
  let now = 1000000;
  let seq = 0;
  const pending = new Map();
  return {
    now: () => now,
    setTimeout: (fn, ms) => { const id = ++seq; pending.set(id, { fn, at: now + ms, ms }); return id; },
    clearTimeout: (id) => { pending.delete(id); },
    pending,
    // Runs the earliest timer; returns its delay.
    fire() {
      const [id, t] = [...pending.entries()].sort((a, b) => a[1].at - b[1].at)[0] || [];
      assert.ok(id, 'a timer is pending');
      pending.delete(id);
      now = t.at;
      t.fn();
      return t.ms;
    },
  };
}

function fakeEventSource(log) {
  return class FakeES {
    constructor(url) { this.url = url; this.listeners = {}; this.closed = false; log.push(this); }
    addEventListener(t, fn) { (this.listeners[t] ||= []).push(fn); }
    close() { this.closed = true; }
    emit(type, data, lastEventId = '') {
      for (const fn of this.listeners[type] || []) fn({ data: JSON.stringify(data), lastEventId });
    }
  };
}

function fakeWebSocket(log) {
  return class FakeWS {
    constructor(url) { this.url = url; this.sent = []; this.closed = false; log.push(this); }
    send(s) { this.sent.push(JSON.parse(s)); }
    close() { this.closed = true; }
    msg(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
  };
}

// A fetch whose answers the test supplies one by one.
function fakeFetch(log) {
  return (url, init) => new Promise((resolve, reject) => {
    log.push({ url, init, resolve: (status, body) => resolve({ ok: status >= 200 && status < 300, status, json: async () => body }), reject });
  });
}

function client(opts) {
  const timers = fakeTimers();
  const es = [];
  const ws = [];
  const polls = [];
  const c = new RealtimeClient({
    url: 'http://127.0.0.1:9', EventSource: fakeEventSource(es), WebSocket: fakeWebSocket(ws),
    fetch: fakeFetch(polls), setTimeout: timers.setTimeout, clearTimeout: timers.clearTimeout,
    now: timers.now, random: () => 0.5, autoConnect: false, ...opts,
  });
  const got = [];
  const statuses = [];
  const resyncs = [];
  c.on('*', (e) => got.push(e.id));
  c.on('status', (s) => statuses.push(s));
  c.on('resync', (r) => resyncs.push(r));
  c.connect();
  return { c, timers, es, ws, polls, got, statuses, resyncs };
}

const ev = (id, type = 'intent_update', data = { intent_id: 'a' }) => ({ type, id, data, timestamp: null });
const flush = () => new Promise((r) => setImmediate(r));

// ---- backoff -------------------------------------------------------------------------

test('backoff doubles from 1 s and stops at 30 s, always within [1 s, 30 s] whatever the jitter', () => {
  const mid = [0, 1, 2, 3, 4, 5, 6, 10].map((a) => backoffDelay(a, { random: () => 0.5 }));
  assert.deepEqual(mid, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  for (let a = 0; a < 40; a++) {
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const d = backoffDelay(a, { random: () => r });
      assert.ok(d >= BACKOFF_MIN_MS && d <= BACKOFF_MAX_MS, `attempt ${a}, random ${r}: ${d}`);
    }
  }
});

test('backoff jitter spreads clients: ±20 % around the doubled delay', () => {
  assert.equal(backoffDelay(3, { random: () => 0 }), 6400);
  assert.equal(backoffDelay(3, { random: () => 0.999999 }), 9600);
  const seen = new Set();
  for (let i = 0; i < 200; i++) seen.add(backoffDelay(2));
  assert.ok(seen.size > 50, `only ${seen.size} distinct delays out of 200`);
});

// ---- de-duplication ------------------------------------------------------------------

test('SeenIds remembers the last N ids and forgets the oldest first', () => {
  const s = new SeenIds(3);
  assert.equal(s.add(1), true);
  assert.equal(s.add(1), false);
  s.add(2); s.add(3); s.add(4);
  assert.equal(s.has(1), false);
  assert.deepEqual([2, 3, 4].map((x) => s.has(x)), [true, true, true]);
  assert.equal(s.size, 3);
  assert.throws(() => new SeenIds(0), RangeError);
});

test('EventGate delivers each id once, in any order, and tracks the last id received', () => {
  const g = new EventGate(100);
  const out = [5, 7, 6, 7, 5, 8, 6].filter((id) => g.accept(ev(id)));
  assert.deepEqual(out, [5, 7, 6, 8]);
  assert.equal(g.lastId, 8);
  assert.equal(g.duplicates, 3);
  // Out of order: the last id received, not the largest, is where to resume.
  g.accept(ev(4));
  assert.equal(g.lastId, 4);
  // Control messages without an id always pass.
  assert.equal(g.accept({ type: 'x', id: null }), true);
  // Events that are not journaled carry id 0: every one passes, none moves lastId.
  assert.equal(g.accept({ type: 'stats_updated', id: 0 }), true);
  assert.equal(g.accept({ type: 'stats_updated', id: 0 }), true);
  assert.equal(g.lastId, 4);
});

test('EventGate: ids older than the window are rejected, not re-delivered', () => {
  const g = new EventGate(4);
  for (const id of [1, 2, 3, 4, 5, 6]) assert.equal(g.accept(ev(id)), true);
  // 1 and 2 left the window; a replay of them is still a duplicate.
  assert.equal(g.accept(ev(1)), false);
  assert.equal(g.accept(ev(2)), false);
  assert.equal(g.accept(ev(7)), true);
});

test('fromSse gives the WebSocket message shape; resync has no id', () => {
  assert.deepEqual(fromSse('audit_log', '{"log_id":3}', '42'), { type: 'audit_log', id: 42, data: { log_id: 3 }, timestamp: null });
  assert.equal(fromSse('intent_update', '{}', '').id, null);
  assert.equal(fromSse('resync', '{"type":"resync"}', '9').id, null);
});

test('transportOrder: auto tries SSE, WebSocket, polling; a named one alone; a bad name throws', () => {
  assert.deepEqual(transportOrder(), ['sse', 'ws', 'poll']);
  assert.deepEqual(transportOrder('auto'), ['sse', 'ws', 'poll']);
  assert.deepEqual(transportOrder('ws'), ['ws']);
  assert.throws(() => transportOrder('carrier-pigeon'), /transport must be one of/);
});

// ---- the client with fake transports ---------------------------------------------------

test('autoConnect: listeners added right after the constructor see the first status', async () => {
  const es = [];
  const c = new RealtimeClient({ url: 'http://127.0.0.1:9', EventSource: fakeEventSource(es) });
  const states = [];
  c.on('status', (s) => states.push(`${s.state}/${s.transport}`));
  assert.equal(es.length, 0);
  await flush();
  assert.equal(es.length, 1);
  assert.deepEqual(states, ['connecting/sse']);
  c.close();
});

test('SSE: events once each across a reconnect that replays, resuming from the last id', () => {
  const t = client({ types: ['intent_update', 'audit_log'] });
  assert.equal(t.es.length, 1);
  assert.match(t.es[0].url, /\/api\/v2\/events\/stream\?types=intent_update%2Caudit_log$/);
  t.es[0].onopen();
  t.es[0].emit('intent_update', { intent_id: 'a' }, '10');
  t.es[0].emit('audit_log', { log_id: 1 }, '11');
  t.es[0].onerror(); // the stream dropped
  assert.equal(t.es[0].closed, true, 'the client closes the source; the browser would retry on its own');
  const st = t.statuses.at(-1);
  assert.equal(st.state, 'reconnecting');
  assert.equal(st.transport, 'sse');
  assert.equal(t.timers.fire(), 1000, 'first reconnect after 1 s');
  assert.equal(t.es.length, 2);
  assert.match(t.es[1].url, /last_event_id=11/);
  t.es[1].onopen();
  // The server's replay overlaps what was delivered.
  t.es[1].emit('audit_log', { log_id: 1 }, '11');
  t.es[1].emit('intent_update', { intent_id: 'a' }, '12');
  assert.deepEqual(t.got, [10, 11, 12]);
  t.c.close();
  assert.equal(t.es[1].closed, true);
  assert.equal(t.timers.pending.size, 0);
});

test('SSE: an event without an id: line (lastEventId carried over) is delivered, not taken for a duplicate', () => {
  const t = client({ transport: 'sse' });
  t.es[0].onopen();
  t.es[0].emit('intent_update', { intent_id: 'a' }, '7');
  t.es[0].emit('stats_updated', { total_intents: 1 }, '7'); // what EventSource reports without id:
  t.es[0].emit('stats_updated', { total_intents: 2 }, '0'); // the server's id: 0 for unjournaled events
  t.es[0].emit('alert_firing', { rule: 'r' }, '0');
  t.es[0].emit('intent_update', { intent_id: 'a' }, '8');
  assert.deepEqual(t.got, [7, null, 0, null, 8]);
  t.es[0].onerror();
  t.timers.fire();
  assert.match(t.es[1].url, /last_event_id=8/);
  t.c.close();
});

test('backoff grows while reconnects fail and resets after a success', () => {
  const t = client({ transport: 'sse' });
  t.es[0].onopen();
  const delays = [];
  t.es[0].onerror();
  for (let i = 0; i < 6; i++) {
    delays.push(t.timers.fire());
    t.es.at(-1).onerror(); // never opens
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000]);
  assert.equal(t.es.length, 7, 'only SSE is tried when it is named');
  t.timers.fire();
  t.es.at(-1).onopen();
  t.es.at(-1).onerror();
  assert.equal(t.timers.fire(), 1000);
  t.c.close();
});

test('fallback: SSE that never opens → WebSocket at once; both failing → polling; all failing → backoff, then SSE again', async () => {
  const t = client({});
  t.es[0].onerror();
  assert.equal(t.ws.length, 1, 'WebSocket tried at once');
  assert.deepEqual(t.statuses.filter((s) => s.state === 'fallback').map((s) => [s.from, s.to]), [['sse', 'ws']]);
  assert.match(t.ws[0].url, /^ws:\/\/127\.0\.0\.1:9\/ws\/dashboard$/);
  t.ws[0].onclose({ code: 1006 });
  assert.equal(t.polls.length, 1, 'polling tried at once');
  assert.match(t.polls[0].url, /\/api\/v1\/events\?/);
  t.polls[0].resolve(404, { error: 'not found' });
  await flush();
  assert.equal(t.statuses.at(-1).state, 'reconnecting');
  assert.equal(t.timers.fire(), 1000);
  assert.equal(t.es.length, 2, 'the cycle starts again from SSE');
  t.c.close();
});

test('WebSocket: token as the first message, open only once authenticated; resume in the URL; resync emitted', () => {
  const t = client({ transport: 'ws', token: 's3cret' });
  const w = t.ws[0];
  assert.doesNotMatch(w.url, /s3cret/, 'no token in a WebSocket URL');
  w.onopen();
  assert.deepEqual(w.sent, [{ type: 'auth', token: 's3cret' }]);
  assert.notEqual(t.statuses.at(-1).state, 'open');
  w.msg({ type: 'authenticated' });
  assert.equal(t.statuses.at(-1).state, 'open');
  w.msg({ type: 'intent_update', id: 3, data: { intent_id: 'a' }, timestamp: 'T' });
  w.msg({ type: 'pong' });
  w.msg({ type: 'stats_updated', id: 0, data: { total_intents: 1 }, timestamp: 'T' });
  w.msg({ type: 'intent_update', id: 3, data: { intent_id: 'a' }, timestamp: 'T' });
  w.onclose({ code: 1001 });
  t.timers.fire();
  assert.match(t.ws[1].url, /\/ws\/dashboard\?last_event_id=3$/);
  t.ws[1].onopen();
  t.ws[1].msg({ type: 'authenticated' });
  t.ws[1].msg({ type: 'resync', last_event_id: 3, reason: 'past retention' });
  assert.equal(t.resyncs.length, 1);
  assert.equal(t.resyncs[0].reason, 'past retention');
  assert.deepEqual(t.got, [3, 0]);
  t.c.close();
});

test('SSE passes the token as access_token (EventSource cannot send headers)', () => {
  const t = client({ transport: 'sse', token: 'tok en' });
  assert.match(t.es[0].url, /access_token=tok\+en/);
  t.c.close();
});

test('polling: Authorization header, cursor from last_id, long-poll wait, no duplicates, resync marker', async () => {
  const t = client({ transport: 'poll', token: 'abc', pollWait: 20, types: ['intent_update'] });
  const p0 = t.polls[0];
  assert.equal(p0.init.headers.Authorization, 'Bearer abc');
  assert.doesNotMatch(p0.url, /abc/);
  assert.match(p0.url, /wait=0/);
  p0.resolve(200, { events: [], last_id: 40 });
  await flush();
  assert.equal(t.statuses.at(-1).state, 'open');
  const p1 = t.polls[1];
  assert.match(p1.url, /after=40/);
  assert.match(p1.url, /wait=20/);
  p1.resolve(200, { events: [ev(41), ev(42)], last_id: 42 });
  await flush();
  assert.match(t.polls[2].url, /after=42/);
  t.polls[2].resolve(200, { events: [ev(42), ev(43)], last_id: 43 });
  await flush();
  t.polls[3].resolve(200, { events: [], last_id: 90, resync: true, reason: 'past retention' });
  await flush();
  assert.deepEqual(t.got, [41, 42, 43]);
  assert.equal(t.resyncs.length, 1);
  assert.equal(t.resyncs[0].reason, 'past retention');
  assert.match(t.polls[4].url, /after=90/);
  // A failing request: backoff, then the next poll resumes from the cursor.
  t.polls[4].reject(new Error('network down'));
  await flush();
  assert.equal(t.statuses.at(-1).state, 'reconnecting');
  t.timers.fire();
  assert.match(t.polls[5].url, /after=90/);
  // The journal unavailable: a resync that does not move the cursor is
  // retried after a backoff, not at once.
  t.polls[5].resolve(200, { events: [], last_id: 90, resync: true, reason: 'journal unavailable' });
  await flush();
  assert.equal(t.resyncs.length, 2);
  assert.equal(t.polls.length, 6);
  assert.equal(t.statuses.at(-1).state, 'reconnecting');
  t.c.close();
});

test('polling: a last_id of 0 is no position: wait for live events without after=, never replay from 0', async () => {
  const t = client({ transport: 'poll', pollWait: 20 });
  assert.doesNotMatch(t.polls[0].url, /after=/);
  assert.match(t.polls[0].url, /wait=0/);
  t.polls[0].resolve(200, { events: [], last_id: 0 });
  await flush();
  assert.doesNotMatch(t.polls[1].url, /after=/);
  assert.match(t.polls[1].url, /wait=20/);
  t.polls[1].resolve(200, { events: [ev(7)], last_id: 7 });
  await flush();
  assert.match(t.polls[2].url, /after=7&/);
  assert.deepEqual(t.got, [7]);
  t.c.close();
});

test('switching transports keeps de-duplication: an event seen on SSE is not delivered again by WebSocket', () => {
  const t = client({});
  t.es[0].onopen();
  t.es[0].emit('intent_update', { intent_id: 'a' }, '5');
  t.es[0].onerror();
  t.timers.fire();
  t.es[1].onerror(); // SSE now fails to connect: hand over to WebSocket
  assert.match(t.ws[0].url, /last_event_id=5/);
  t.ws[0].onopen();
  t.ws[0].msg({ type: 'intent_update', id: 5, data: { intent_id: 'a' } });
  t.ws[0].msg({ type: 'intent_update', id: 6, data: { intent_id: 'a' } });
  assert.deepEqual(t.got, [5, 6]);
  t.c.close();
});

test('intentIds filters intent updates and audit logs, not other types', () => {
  const t = client({ transport: 'ws', intentIds: ['x'] });
  t.ws[0].onopen();
  t.ws[0].msg({ type: 'intent_update', id: 1, data: { intent_id: 'y' } });
  t.ws[0].msg({ type: 'audit_log', id: 2, data: { intent_id: 'x' } });
  t.ws[0].msg({ type: 'alert_firing', id: 3, data: { rule: 'r' } });
  assert.deepEqual(t.got, [2, 3]);
  t.c.close();
});

test('a listener that throws does not stop delivery to the others', () => {
  const t = client({ transport: 'ws' });
  t.c.on('intent_update', () => { throw new Error('page bug'); });
  t.ws[0].onopen();
  t.ws[0].msg({ type: 'intent_update', id: 1, data: { intent_id: 'a' } });
  t.ws[0].msg({ type: 'intent_update', id: 2, data: { intent_id: 'a' } });
  assert.deepEqual(t.got, [1, 2]);
  // The errors are rethrown from timers, so they still reach the console.
  const rethrows = [...t.timers.pending.values()].filter((p) => p.ms === 0);
  assert.equal(rethrows.length, 2);
  t.timers.pending.clear();
  t.c.close();
});

test('after close() nothing is delivered and nothing reconnects', () => {
  const t = client({ transport: 'sse' });
  t.es[0].onopen();
  t.c.close();
  t.es[0].emit('intent_update', { intent_id: 'a' }, '1');
  t.es[0].onerror();
  assert.deepEqual(t.got, []);
  assert.equal(t.timers.pending.size, 0);
  assert.equal(t.statuses.at(-1).state, 'closed');
});
