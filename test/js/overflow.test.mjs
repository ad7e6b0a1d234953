// A fan-out loop that falls behind the bus (its ring overflows) must not lose
// events for its clients: it sends them away with close 1013, and they resume
// with their last id from the journal.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { freshDb, startServer, wsClient, waitUntil, journalSeqs } from './lib.mjs';

let db;
after(async () => { if (db) await db.close(); });

// A client that reconnects with ?last_event_id= after a 1013 close, like
// rtclient.js does, and keeps every event it got across connections.
function resumingClient(srv) {
  const r = { ids: [], closes: [], conn: null };
  const connect = () => {
    const last = r.ids.length ? r.ids.at(-1) : null;
    const c = wsClient(srv.wsUrl(`/ws/intents${last !== null ? `?last_event_id=${last}` : ''}`), { idsOnly: true });
    c.ws.on('message', () => {
      const m = c.messages.at(-1);
      if (typeof m.id === 'number') r.ids.push(m.id);
    });
    c.closed.then((code) => {
      r.closes.push(code);
      if (code === 1013) r.conn = connect();
    });
    return c;
  };
  r.conn = connect();
  return r;
}

test('a loop whose ring overflows sends its clients away with 1013; resuming, they lose nothing', async () => {
  db = await freshDb('overflow');
  const srv = await startServer(db.url, ['--bus-ring-size', '16', '--fanout-threads', '1']);
  try {
    const clients = [];
    for (let i = 0; i < 100; i++) clients.push(resumingClient(srv));
    await Promise.all(clients.map((c) => c.conn.opened));
    // Every client first holds a position to resume from (a client that has
    // seen nothing has none: it would start from the live stream).
    await db.sql(`INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'first')`);
    await waitUntil(() => clients.every((c) => c.ids.length === 1), 10000, 'every client to have the first event');
    // Freeze the server while 10 000 rows commit; on SIGCONT the listener
    // publishes them in bursts of hundreds into a ring that holds 15, far
    // faster than one loop writes to 100 clients. (With a 1024-event ring a
    // sanitizer build's slower listener let the loop keep up once.)
    srv.proc.kill('SIGSTOP');
    await db.sql(`INSERT INTO intents(id, status) SELECT gen_random_uuid(), 'x' FROM generate_series(1, 10000)`);
    srv.proc.kill('SIGCONT');
    const want = await journalSeqs(db);
    try {
      await waitUntil(() => clients.every((c) => c.ids.length >= want.length), 30000, 'every client to have every event');
    } catch (e) {
      const lens = clients.map((c) => c.ids.length).sort((a, b) => a - b);
      const h = await (await fetch(srv.url('/health/realtime'))).json();
      const closes = {};
      for (const c of clients) for (const x of c.closes) closes[x] = (closes[x] ?? 0) + 1;
      const hist = {}; for (const x of lens) hist[x] = (hist[x] ?? 0) + 1;
      throw new Error(`${e.message}; want ${want.length}, got ${JSON.stringify(hist)}; closes ${JSON.stringify(closes)}; health ${JSON.stringify(h)}; dup ${clients.filter((c) => new Set(c.ids).size !== c.ids.length).length}`);
    }
    const h = await (await fetch(srv.url('/health/realtime'))).json();
    assert.ok(h.ring_overflows >= 1, `the ring did not overflow: ${JSON.stringify(h.loops)}`);
    assert.ok(clients.some((c) => c.closes.includes(1013)), 'no client was sent away with 1013');
    for (const c of clients) assert.deepEqual(c.ids, want);
    await Promise.all(clients.map((c) => c.conn.close()));
  } finally {
    const code = await srv.stop();
    assert.equal(code, 0, `server stop: ${code}; its log ends:\n${srv.log().slice(-4000)}`);
  }
});
