// GET /api/v1/events: the polling transport. Answers from the replay window
// or the journal, long-polls with wait=S, filters by type, says resync past
// retention, and refuses bad parameters naming them. A client that polls in a
// loop while rows commit gets every event once, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { freshDb, startServer, waitUntil, insertIntents, journalSeqs } from './lib.mjs';

let db;
let srv;
before(async () => {
  db = await freshDb('poll');
  srv = await startServer(db.url, ['--fanout-threads', '1']);
});
after(async () => {
  if (srv) await srv.stop();
  if (db) await db.close();
});

async function poll(s, query) {
  const r = await fetch(s.url(`/api/v1/events${query}`));
  const body = await r.json();
  return { status: r.status, body, headers: r.headers };
}

// Waits until the server has published everything in the journal (its
// health says the last seq), so window answers are deterministic.
async function caughtUp(s) {
  const seqs = await journalSeqs(db);
  const last = seqs.length ? seqs.at(-1) : 0;
  await waitUntil(async () => {
    const h = await (await fetch(s.url('/health/realtime'))).json();
    return h.listener.last_seq >= last;
  }, 10000, `the server to publish seq ${last}`);
  return seqs;
}

test('bad parameters are refused with 400 naming the parameter', async () => {
  const cases = [
    ['?after=-1', 'after'], ['?after=abc', 'after'], ['?after=1e3', 'after'],
    ['?limit=0', 'limit'], ['?limit=1001', 'limit'], ['?limit=x', 'limit'],
    ['?wait=31', 'wait'], ['?wait=-1', 'wait'], ['?wait=1.5', 'wait'],
    ['?types=intent_update,nope', 'types'],
  ];
  for (const [q, param] of cases) {
    const r = await poll(srv, q);
    assert.equal(r.status, 400, q);
    assert.equal(r.body.parameter, param, q);
    assert.match(r.body.error, new RegExp(param), q);
  }
});

test('without a cursor: no history, and the id to continue from', async () => {
  await insertIntents(db, 3);
  const seqs = await caughtUp(srv);
  const r = await poll(srv, '');
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  assert.deepEqual(r.body, { events: [], last_id: seqs.at(-1) });
});

test('from the window: events after the cursor in order, limit, and continuation', async () => {
  const first = (await caughtUp(srv)).at(-1);
  await insertIntents(db, 5);
  const seqs = (await caughtUp(srv)).filter((s) => s > first);
  assert.equal(seqs.length, 5);
  const all = await poll(srv, `?after=${first}`);
  assert.deepEqual(all.body.events.map((e) => e.id), seqs);
  assert.equal(all.body.last_id, seqs.at(-1));
  assert.equal(all.body.events[0].type, 'intent_update');
  assert.ok(all.body.events[0].data.intent_id, 'events carry their payload');
  const part = await poll(srv, `?after=${first}&limit=2`);
  assert.deepEqual(part.body.events.map((e) => e.id), seqs.slice(0, 2));
  assert.equal(part.body.last_id, seqs[1]);
  const rest = await poll(srv, `?after=${part.body.last_id}`);
  assert.deepEqual(rest.body.events.map((e) => e.id), seqs.slice(2));
});

test('types filter: the cursor moves past events of other types', async () => {
  const first = (await caughtUp(srv)).at(-1);
  const [id] = await insertIntents(db, 1);
  await db.sql(`INSERT INTO audit_logs(event_type, intent_id, actor) VALUES ('BRIDGE_STARTED', $1, 't')`, [id]);
  const seqs = (await caughtUp(srv)).filter((s) => s > first);
  assert.equal(seqs.length, 2);
  const r = await poll(srv, `?after=${first}&types=audit_log`);
  assert.deepEqual(r.body.events.map((e) => [e.type, e.id]), [['audit_log', seqs[1]]]);
  assert.equal(r.body.last_id, seqs[1]);
});

// A request on a connection of its own (not from fetch's keep-alive pool).
function pollAlone(s, query) {
  return new Promise((resolve, reject) => {
    http.get(s.url(`/api/v1/events${query}`), { agent: false }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(data) }));
    }).on('error', reject);
  });
}

const httpConns = async (s) => (await (await fetch(s.url('/health/realtime'))).json()).connections.http;

test('long poll: answers as soon as an event arrives', async () => {
  const last = (await caughtUp(srv)).at(-1);
  const before = await httpConns(srv);
  const t0 = Date.now();
  const pending = pollAlone(srv, `?after=${last}&wait=20`);
  // The row commits while the poll waits: its connection is counted.
  await waitUntil(async () => (await httpConns(srv)) > before, 5000, 'the poll to wait');
  await insertIntents(db, 1);
  const r = await pending;
  const took = Date.now() - t0;
  const seqs = (await journalSeqs(db)).filter((s) => s > last);
  assert.deepEqual(r.body.events.map((e) => e.id), seqs);
  assert.equal(r.body.last_id, seqs[0]);
  assert.ok(took < 10000, `answered after ${took} ms, not at once`);
});

test('long poll: an empty answer after wait seconds, cursor unchanged', async () => {
  const last = (await caughtUp(srv)).at(-1);
  const t0 = Date.now();
  const r = await poll(srv, `?after=${last}&wait=1`);
  const took = Date.now() - t0;
  assert.deepEqual(r.body, { events: [], last_id: last });
  assert.ok(took >= 900 && took < 4000, `took ${took} ms for wait=1`);
});

test('from the journal when the window does not hold the cursor; resync past retention', async () => {
  const s2 = await startServer(db.url, ['--replay-window', '0', '--fanout-threads', '1', '--etl=off']);
  try {
    const seqs = await journalSeqs(db); // a new server publishes only what commits from now on
    const r = await poll(s2, `?after=${seqs[0]}&limit=1000`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.events.map((e) => e.id), seqs.slice(1));
    assert.equal(r.body.last_id, seqs.at(-1));
    await db.sql('UPDATE rt_journal_state SET pruned_through = $1', [seqs[2]]);
    const gone = await poll(s2, `?after=${seqs[0]}`);
    assert.equal(gone.body.resync, true);
    assert.equal(gone.body.reason, 'past retention');
    assert.deepEqual(gone.body.events, []);
    assert.equal(gone.body.last_id, seqs[2]);
    await db.sql('UPDATE rt_journal_state SET pruned_through = 0');
    // A journal that cannot be read is a transient error, not a resync.
    await db.sql('ALTER TABLE rt_journal RENAME TO rt_journal_away');
    try {
      const r503 = await poll(s2, `?after=${seqs[0]}`);
      assert.equal(r503.status, 503);
      assert.equal(r503.headers.get('retry-after'), '1');
      assert.equal(r503.body.resync, undefined);
    } finally {
      await db.sql('ALTER TABLE rt_journal_away RENAME TO rt_journal');
    }
  } finally {
    await s2.stop();
  }
});

test('without a cursor on a server that has seen nothing yet: the journal head', async () => {
  const s3 = await startServer(db.url, ['--fanout-threads', '1', '--etl=off']);
  try {
    const seqs = await journalSeqs(db);
    assert.ok(seqs.length > 0);
    const r = await poll(s3, '');
    assert.deepEqual(r.body, { events: [], last_id: seqs.at(-1) });
  } finally {
    await s3.stop();
  }
});

test('a polling client gets every event once, in order, while rows commit', async () => {
  let cursor = (await caughtUp(srv)).at(-1);
  const start = cursor;
  const got = [];
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const r = await poll(srv, `?after=${cursor}&wait=2&limit=50`);
      assert.equal(r.status, 200);
      for (const e of r.body.events) got.push(e.id);
      cursor = r.body.last_id;
    }
  })();
  // 40 transactions of 10 rows, from 4 connections at once.
  const writers = [];
  for (let w = 0; w < 4; w++) {
    writers.push((async () => { for (let i = 0; i < 10; i++) await insertIntents(db, 10); })());
  }
  await Promise.all(writers);
  const want = (await journalSeqs(db)).filter((s) => s > start);
  await waitUntil(() => got.length >= want.length, 20000, `${want.length} events by polling`);
  stop = true;
  await loop;
  assert.equal(new Set(got).size, got.length, 'no event twice');
  assert.deepEqual([...got].sort((a, b) => a - b), want);
});
