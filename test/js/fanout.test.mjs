// Fan-out end to end: real PostgreSQL, the real server binary, npm ws and npm
// eventsource as clients. Delivery, filters, subscriptions, resume, slow
// clients, broadcast to 100 clients, graceful shutdown.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { freshDb, startServer, wsClient, sseClient, waitUntil, insertIntents, journalSeqs } from './lib.mjs';

let db;
let srv;

before(async () => {
  db = await freshDb('fanout');
  srv = await startServer(db.url);
});

after(async () => {
  if (srv) assert.equal(await srv.stop(), 0, srv.log());
  if (db) await db.close();
});

test('WebSocket /ws/intents receives INSERT and UPDATE events in the DESIGN message format', async () => {
  const c = wsClient(srv.wsUrl('/ws/intents'));
  await c.opened;
  const id = '33333333-3333-3333-3333-333333333333';
  await db.sql(`INSERT INTO intents(id, status, data) VALUES ($1, 'pending', '{"k": 1}')`, [id]);
  await db.sql(`UPDATE intents SET status = 'completed', version = 2 WHERE id = $1`, [id]);
  const [s1, s2] = await journalSeqs(db, `routing_key = '${id}'`);
  await waitUntil(() => c.events().length >= 2, 5000, 'two events');
  const [a, b] = c.events();
  assert.deepEqual(Object.keys(a), ['type', 'id', 'data', 'timestamp']);
  assert.equal(a.type, 'intent_update');
  assert.equal(a.id, s1);
  assert.equal(b.id, s2);
  assert.equal(a.data.intent_id, id);
  assert.equal(a.data.event_type, 'INSERT');
  assert.equal(b.data.event_type, 'UPDATE');
  assert.equal(b.data.status, 'completed');
  assert.deepEqual(a.data.data, { k: 1 });
  assert.match(a.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  await c.close();
});

test('intent_ids filter: only the listed intents, audit logs never', async () => {
  const ids = ['44444444-0000-0000-0000-000000000001', '44444444-0000-0000-0000-000000000002',
    '44444444-0000-0000-0000-000000000003'];
  const c = wsClient(srv.wsUrl(`/ws/intents?intent_ids=${ids[0]}&intent_ids=${ids[2]}`));
  await c.opened;
  for (const id of ids) await db.sql(`INSERT INTO intents(id, status) VALUES ($1, 's')`, [id]);
  await db.sql(`INSERT INTO audit_logs(event_type, intent_id) VALUES ('e', $1)`, [ids[0]]);
  await db.sql(`UPDATE intents SET status = 't' WHERE id = ANY($1)`, [ids]);
  const want = await journalSeqs(db, `routing_key IN ('${ids[0]}', '${ids[2]}') AND channel = 'intent_changed'`);
  await waitUntil(() => c.events().length >= want.length, 5000, `${want.length} events`);
  // Anything else would have arrived by now: the last wanted event was committed last.
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(c.events().map((m) => m.id), want);
  assert.ok(c.events().every((m) => m.data.intent_id === ids[0] || m.data.intent_id === ids[2]));
  await c.close();
});

test('subscribe and unsubscribe at run time; ping; malformed messages get an error and the connection stays', async () => {
  const c = wsClient(srv.wsUrl('/ws/intents?intent_ids=none'));
  await c.opened;
  const a = '55555555-0000-0000-0000-00000000000a';
  const b = '55555555-0000-0000-0000-00000000000b';
  c.send({ type: 'subscribe', intent_ids: [a, b] });
  const sub = await c.next((m) => m.type === 'subscribed');
  assert.deepEqual(sub.intent_ids.sort(), ['none', a, b].sort());
  c.send({ type: 'unsubscribe', intent_ids: [b] });
  const unsub = await c.next((m) => m.type === 'unsubscribed');
  assert.deepEqual(unsub.intent_ids.sort(), ['none', a].sort());
  c.send({ type: 'ping' });
  await c.next((m) => m.type === 'pong');
  c.send('{not json');
  const err = await c.next((m) => m.type === 'error');
  assert.match(err.message, /JSON/);
  c.send({ type: 'subscribe', intent_ids: 'x' });
  await waitUntil(() => c.messages.filter((m) => m.type === 'error').length === 2, 5000, 'second error');
  await db.sql(`INSERT INTO intents(id, status) VALUES ($1, 's'), ($2, 's')`, [a, b]);
  const [sa] = await journalSeqs(db, `routing_key = '${a}'`);
  await waitUntil(() => c.events().length >= 1, 5000, 'the event for a');
  await db.sql(`UPDATE intents SET status = 'u' WHERE id = $1`, [a]);
  await waitUntil(() => c.events().length >= 2, 5000, 'the update for a');
  assert.equal(c.events()[0].id, sa);
  assert.ok(c.events().every((m) => m.data.intent_id === a));
  assert.equal(c.ws.readyState, c.ws.OPEN);
  await c.close();
});

test('SSE per-intent and audit-log streams (npm eventsource), with the SSE headers', async () => {
  const id = '66666666-0000-0000-0000-000000000001';
  const other = '66666666-0000-0000-0000-000000000002';
  const res = await fetch(srv.url(`/events/intents/${id}`));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  assert.equal(res.headers.get('x-accel-buffering'), 'no');
  const reader = res.body.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.match(first, /^retry: 3000\n\n/);
  await reader.cancel();

  const one = sseClient(srv.url(`/events/intents/${id}`));
  const audit = sseClient(srv.url('/events/audit-logs'));
  await Promise.all([one.opened, audit.opened]);
  await db.sql(`INSERT INTO intents(id, status) VALUES ($1, 'a'), ($2, 'b')`, [id, other]);
  await db.sql(`INSERT INTO audit_logs(event_type, intent_id, actor) VALUES ('status_change', $1, 'z')`, [id]);
  const [seqIntent] = await journalSeqs(db, `routing_key = '${id}' AND channel = 'intent_changed'`);
  const [seqAudit] = await journalSeqs(db, `routing_key = '${id}' AND channel = 'audit_log_created'`);
  await waitUntil(() => one.events.length >= 1 && audit.events.length >= 1, 5000, 'SSE events');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(one.events.map((e) => [e.type, Number(e.id)]), [['intent_update', seqIntent]]);
  assert.equal(one.events[0].data.intent_id, id);
  assert.deepEqual(audit.events.map((e) => [e.type, Number(e.id)]), [['audit_log', seqAudit]]);
  assert.equal(audit.events[0].data.actor, 'z');
  one.close();
  audit.close();
});

test('types filters on /api/v2/events/stream and /ws/dashboard; unknown type is a 400', async () => {
  const sse = sseClient(srv.url('/api/v2/events/stream?types=audit_log'));
  const ws = wsClient(srv.wsUrl('/ws/dashboard?types=intent_update'));
  const all = wsClient(srv.wsUrl('/ws/dashboard'));
  await Promise.all([sse.opened, ws.opened, all.opened]);
  await db.sql(`INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'x')`);
  await db.sql(`INSERT INTO audit_logs(event_type) VALUES ('y')`);
  await waitUntil(() => all.events().length >= 2 && sse.events.length >= 1 && ws.events().length >= 1, 5000, 'events');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(sse.events.map((e) => e.type), ['audit_log']);
  assert.deepEqual(ws.events().map((e) => e.type), ['intent_update']);
  assert.deepEqual(all.events().map((e) => e.type), ['intent_update', 'audit_log']);
  const bad = await fetch(srv.url('/api/v2/events/stream?types=nope'));
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /nope/);
  sse.close();
  await ws.close();
  await all.close();
});

test('SSE resume with Last-Event-ID after 1 000 events committed while away: all once, in order', async () => {
  const first = sseClient(srv.url('/events/audit-logs'));
  await first.opened;
  await db.sql(`INSERT INTO audit_logs(event_type) VALUES ('before')`);
  await waitUntil(() => first.events.length === 1, 5000, 'the first event');
  const last = first.events[0].id;
  first.close();
  for (let i = 0; i < 10; i++)
    await db.sql(`INSERT INTO audit_logs(event_type) SELECT 'away' FROM generate_series(1, 100)`);
  const want = await journalSeqs(db, `channel = 'audit_log_created' AND seq > ${last}`);
  assert.equal(want.length, 1000);
  // The server must have seen them all before we resume (window path).
  await waitUntil(async () => (await (await fetch(srv.url('/health/realtime'))).json()).listener.last_seq >= want.at(-1), 5000, 'listener');
  const again = sseClient(srv.url('/events/audit-logs'), { headers: { 'Last-Event-ID': last } });
  await again.opened;
  await db.sql(`INSERT INTO audit_logs(event_type) VALUES ('after')`);
  const afterSeq = (await journalSeqs(db, `channel = 'audit_log_created'`)).at(-1);
  await waitUntil(() => again.events.length >= 1001, 10000, '1001 events');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(again.events.map((e) => Number(e.id)), [...want, afterSeq]);
  again.close();
});

test('WS resume message and last_event_id from the journal (fresh server, empty window): all once, in order', async () => {
  const c = wsClient(srv.wsUrl('/ws/dashboard?types=intent_update'));
  await c.opened;
  await insertIntents(db, 1);
  await waitUntil(() => c.events().length === 1, 5000, 'one event');
  const last = c.events()[0].id;
  await c.close();
  await insertIntents(db, 500);
  await insertIntents(db, 500);
  const want = await journalSeqs(db, `channel = 'intent_changed' AND seq > ${last}`);
  // A second server has none of this in its window: resume must read the journal.
  const other = await startServer(db.url);
  try {
    const r = wsClient(other.wsUrl('/ws/dashboard?types=intent_update'));
    await r.opened;
    r.send({ type: 'resume', last_event_id: last });
    await waitUntil(() => r.events().length >= want.length, 10000, `${want.length} replayed events`);
    await insertIntents(db, 1);
    await waitUntil(() => r.events().length >= want.length + 1, 5000, 'the live event');
    await new Promise((res) => setTimeout(res, 100));
    const got = r.events().map((m) => m.id);
    assert.deepEqual(got.slice(0, want.length), want);
    assert.equal(new Set(got).size, got.length, 'no duplicates');
    await r.close();
    const q = wsClient(other.wsUrl(`/ws/intents?last_event_id=${last}`));
    await q.opened;
    await waitUntil(() => q.events().length >= want.length + 1, 10000, 'events after last_event_id');
    assert.deepEqual(q.events().slice(0, want.length).map((m) => m.id), want);
    await q.close();
  } finally {
    assert.equal(await other.stop(), 0);
  }
});

test('resume past the journal retention gets one resync event', async () => {
  await insertIntents(db, 3);
  const seqs = await journalSeqs(db);
  const old = seqs[0];
  // What a prune would do: rows after `old` are gone and the watermark says so.
  await db.sql(`DELETE FROM rt_journal WHERE seq <= $1`, [seqs.at(-1)]);
  await db.sql(`UPDATE rt_journal_state SET pruned_through = $1`, [seqs.at(-1)]);
  const other = await startServer(db.url);
  try {
    const c = wsClient(other.wsUrl(`/ws/intents?last_event_id=${old}`));
    await c.opened;
    const rs = await c.next((m) => m.type === 'resync');
    assert.equal(rs.last_event_id, old);
    assert.equal(c.messages.filter((m) => m.type === 'resync').length, 1);
    const s = sseClient(other.url('/api/v2/events/stream'), { headers: { 'Last-Event-ID': String(old) } });
    await s.opened;
    await waitUntil(() => s.events.some((e) => e.type === 'resync'), 5000, 'SSE resync');
    s.close();
    await c.close();
  } finally {
    assert.equal(await other.stop(), 0);
  }
});

// A raw client that upgrades, then never reads (see stalled_client.py).
function stalledWsClient(port, path) {
  const script = new URL('./stalled_client.py', import.meta.url).pathname;
  const proc = spawn('python3', [script, String(port), path], { stdio: ['pipe', 'pipe', 'inherit'] });
  const c = { proc, out: '' };
  proc.stdout.on('data', (d) => { c.out += d; });
  c.upgraded = waitUntil(() => c.out.includes('upgraded'), 5000, 'the stalled client to upgrade');
  c.drain = () => proc.stdin.end('\n');
  return c;
}

test('a client that stops reading is disconnected while 100 others receive everything', async () => {
  const other = await startServer(db.url, ['--client-max-queued', '256k']);
  let stalled;
  try {
    const clients = [];
    for (let i = 0; i < 100; i++) clients.push(wsClient(other.wsUrl('/ws/intents'), { idsOnly: true }));
    await Promise.all(clients.map((c) => c.opened));
    // The stalled client takes the big audit-log events (~6 KB each, 900 of
    // them: 5.4 MB, past what the kernel holds for a non-reading peer, whose
    // send buffer grows to 4 MiB, plus the 256 KiB bound). The 100 readers
    // take small intent events committed in between, so what they must read
    // stays light even on a loaded machine.
    stalled = stalledWsClient(other.port, '/ws/dashboard?types=audit_log');
    await stalled.upgraded;
    const before = (await journalSeqs(db)).at(-1) ?? 0;
    for (let i = 0; i < 9; i++) {
      await db.sql(`INSERT INTO audit_logs(event_type, payload)
                    SELECT 'big', jsonb_build_object('blob', repeat('x', 6000)) FROM generate_series(1, 100)`);
      await insertIntents(db, 100);
    }
    const want = await journalSeqs(db, `seq > ${before} AND channel = 'intent_changed'`);
    assert.equal(want.length, 900);
    await waitUntil(() => clients.every((c) => c.events().length >= want.length), 30000, 'all clients to get everything');
    for (const c of clients) assert.deepEqual(c.events().map((m) => m.id), want);
    await waitUntil(async () => (await (await fetch(other.url('/health/realtime'))).json()).slow_consumer_disconnects === 1,
      10000, 'the slow client to be counted');
    stalled.drain();
    await waitUntil(() => stalled.out.includes('closed'), 10000, 'the stalled client to see the server hang up');
    await Promise.all(clients.map((c) => c.close()));
  } finally {
    if (stalled) stalled.proc.kill();
    assert.equal(await other.stop(), 0);
  }
});

test('100 WebSocket clients each receive all of 1 000 events', async () => {
  const clients = [];
  for (let i = 0; i < 100; i++) clients.push(wsClient(srv.wsUrl('/ws/intents')));
  await Promise.all(clients.map((c) => c.opened));
  const before = (await journalSeqs(db)).at(-1) ?? 0;
  for (let i = 0; i < 10; i++) await insertIntents(db, 100);
  const want = await journalSeqs(db, `seq > ${before}`);
  assert.equal(want.length, 1000);
  await waitUntil(() => clients.every((c) => c.events().length >= 1000), 20000, '100 x 1000 deliveries');
  for (const c of clients) assert.deepEqual(c.events().map((m) => m.id), want);
  await Promise.all(clients.map((c) => c.close()));
});

test('curl -N receives SSE events (a second client implementation)', async () => {
  const curl = execFile('curl', ['-sN', '--max-time', '5', srv.url('/events/audit-logs')]);
  let out = '';
  curl.stdout.on('data', (d) => { out += d; });
  await waitUntil(async () => (await (await fetch(srv.url('/health/realtime'))).json()).connections.sse >= 1, 5000, 'curl to connect');
  await db.sql(`INSERT INTO audit_logs(event_type, actor) VALUES ('via_curl', 'c')`);
  const [seq] = await journalSeqs(db, `payload LIKE '%via_curl%'`);
  await waitUntil(() => out.includes(`id: ${seq}\nevent: audit_log\ndata: `), 5000, 'the event in curl output');
  curl.kill('SIGTERM');
});

test('SIGTERM: WebSocket clients see 1001, SSE streams end, the process exits 0', async () => {
  const other = await startServer(db.url);
  const c = wsClient(other.wsUrl('/ws/intents'));
  const s = sseClient(other.url('/events/audit-logs'));
  await Promise.all([c.opened, s.opened]);
  const code = await other.stop('SIGTERM');
  assert.equal(code, 0, other.log());
  assert.equal(await c.closed, 1001);
  assert.match(c.closeReason, /shutting down/);
  s.close();
});
