// The dashboard page and rtclient.js in a real browser: Debian's chromium
// driven by npm playwright-core, the page served by rtbridge itself (so
// Chromium's local-network checks never apply), a real PostgreSQL. Every
// server and the browser are stopped when the tests end, pass or fail.
//
// What it proves: the page loads without console errors and goes live; a
// committed row is in the feed within 1 s; each transport (SSE, WebSocket,
// polling) receives events and, across a server restart with rows committed
// while it is down, shows every event exactly once; blocking SSE falls back
// to WebSocket, blocking both to polling; an alert_firing event shows a toast
// coloured by severity, and its resolution another (crafted, and from a real
// alert rule); stats_updated fills the
// overview; filter, pause and resume work. A screenshot of the
// filled page goes to test/artifacts/dashboard.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshDb, startServer, waitUntil, insertIntents, journalSeqs } from '../js/lib.mjs';

// playwright-core is pinned by test/js/package.json, with the other clients.
const require = createRequire(new URL('../js/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.RT_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../artifacts/', import.meta.url));
const TEST_CHANNEL = 'rt_test_crafted'; // crafted alert and stats events
const CHANNELS = `intent_changed,audit_log_created,${TEST_CHANNEL}`;
// The crafted stats_updated below must not be overwritten by a real one.
const SERVER_ARGS = ['--channels', CHANNELS, '--stats-interval', '1h'];

let db;
let srv;
let browser;
let pollAvailable = false;

before(async () => {
  db = await freshDb('browser');
  srv = await startServer(db.url, SERVER_ARGS);
  browser = await chromium.launch({ executablePath: CHROMIUM });
  const r = await fetch(srv.url('/api/v1/events?after=0&limit=1'));
  pollAvailable = r.status === 200;
});

after(async () => {
  if (browser) await browser.close();
  if (srv) assert.equal(await srv.stop(), 0, srv.log());
  if (db) await db.close();
});

// A fresh page on `path` of the server under test, recording console errors
// and uncaught exceptions.
async function openPage(path = '/', { viewport = { width: 1440, height: 900 }, setup } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push({ text: m.text(), url: m.location().url || '' });
  });
  page.on('pageerror', (e) => errors.push({ text: `uncaught: ${e.message}`, url: '' }));
  if (setup) await setup(page);
  await page.goto(srv.url(path));
  return { page, errors, close: () => context.close() };
}

async function waitLive(page, transport, timeout = 10000) {
  await page.waitForSelector(`#conn[data-state="open"][data-transport="${transport}"]`, { timeout });
}

const feedIds = (page) => page.$$eval('#feed tr', (rows) => rows.map((r) => Number(r.dataset.id)));

// Waits until every id in want is in the feed; returns the feed's ids.
async function waitForIds(page, want, timeoutMs = 15000) {
  let ids = [];
  await waitUntil(async () => {
    ids = await feedIds(page);
    const have = new Set(ids);
    return want.every((id) => have.has(id));
  }, timeoutMs, `ids ${want.join(',')} in the feed`).catch((e) => {
    throw new Error(`${e.message}; ${ids.length} rows, missing ${want.filter((id) => !ids.includes(id)).join(',')}`);
  });
  return ids;
}

function assertNoDuplicates(ids) {
  const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert.deepEqual(dup, [], `rows shown twice: ${dup.join(',')}`);
}

async function seqsOf(intentIds) {
  return journalSeqs(db, `channel = 'intent_changed' AND routing_key IN (${intentIds.map((i) => `'${i}'`).join(',')})`);
}

// Stops the server and starts a new one on the same port (the page keeps its
// URL); meanwhile runs duringDown() with the server gone.
async function restartServer(duringDown) {
  const port = srv.port;
  assert.equal(await srv.stop(), 0, srv.log());
  srv = null;
  await duringDown();
  srv = await startServer(db.url, [...SERVER_ARGS, '--listen', `127.0.0.1:${port}`]);
  assert.equal(srv.port, port);
}

test('the page loads with no console error and goes live over SSE, overview or not', { timeout: 30000 }, async () => {
  const p = await openPage('/');
  try {
    await waitLive(p.page, 'sse');
    assert.equal(await p.page.title(), 'rtbridge · live');
    // A short while for late errors (overview fetch, chart, first renders).
    await p.page.waitForTimeout(500);
    // The page copes with a server without the dashboard API: the browser
    // logs those 404s itself; nothing else may be an error.
    const overview = await fetch(srv.url('/api/v1/dashboard/overview'));
    const tolerated = (e) => overview.status === 404 && /\/api\/v1\/dashboard\//.test(e.url) && /404/.test(e.text);
    assert.deepEqual(p.errors.filter((e) => !tolerated(e)), []);
    if (overview.status === 404) {
      assert.equal(await p.page.isVisible('#ov-note'), true, 'the page says the API is missing');
    } else {
      const o = await overview.json();
      await waitUntil(async () => (await p.page.textContent('#ov-total')) !== '—', 5000, 'overview numbers');
      assert.ok(typeof o.total_intents === 'number');
    }
  } finally {
    await p.close();
  }
});

test('a row inserted into intents appears in the feed within 1 s', { timeout: 30000 }, async () => {
  const p = await openPage('/');
  try {
    await waitLive(p.page, 'sse');
    const id = '8e1f0000-0000-4000-8000-000000000001';
    // The page notes when the row enters the table (the browser and this
    // process share the clock), which Playwright's polling would blur.
    await p.page.evaluate((id) => {
      new MutationObserver((ms) => {
        for (const m of ms) for (const n of m.addedNodes) if (n.dataset && n.dataset.intent === id && !window.rowAt) window.rowAt = Date.now();
      }).observe(document.getElementById('feed'), { childList: true });
    }, id);
    const t0 = Date.now();
    await db.sql(`INSERT INTO intents(id, status, data) VALUES ($1, 'pending', '{"amount": 1250, "currency": "EUR"}')`, [id]);
    await p.page.waitForSelector(`#feed tr[data-intent="${id}"]`, { timeout: 1000 });
    const ms = Date.now() - t0;
    assert.ok(ms < 1000, `${ms} ms`);
    const inPage = (await p.page.evaluate(() => window.rowAt)) - t0;
    assert.ok(inPage >= 0 && inPage <= ms, `row at ${inPage} ms, seen at ${ms} ms`);
    const row = await p.page.textContent(`#feed tr[data-intent="${id}"]`);
    assert.match(row, /INSERT → pending/);
    assert.match(row, /1,250 EUR/);
    assert.equal(await p.page.getAttribute(`#feed tr[data-intent="${id}"]`, 'class'), 'new', 'new rows are highlighted');
    console.log(`# INSERT to row in the page: ${inPage} ms (seen by the test after ${ms} ms)`);
  } finally {
    await p.close();
  }
});

for (const transport of ['sse', 'ws', 'poll']) {
  test(`?transport=${transport}: receives events, and after a server restart with rows committed meanwhile shows every event once`,
    { timeout: 90000 }, async (t) => {
      if (transport === 'poll' && !pollAvailable) {
        t.skip('GET /api/v1/events is not in this build');
        return;
      }
      const p = await openPage(`/?transport=${transport}`);
      try {
        await waitLive(p.page, transport);
        const before1 = await insertIntents(db, 3);
        await waitForIds(p.page, await seqsOf(before1));
        let during = [];
        await restartServer(async () => {
          // The indicator shows the outage and the countdown to the next try.
          await p.page.waitForSelector(`#conn[data-state="reconnecting"][data-transport="${transport}"]`, { timeout: 5000 });
          assert.match(await p.page.textContent('#conn-text'), /^reconnecting in \d+ s$/);
          during = await insertIntents(db, 4);
          await db.sql(`UPDATE intents SET status = 'completed' WHERE id = ANY($1)`, [during.slice(0, 2)]);
        });
        const after1 = await insertIntents(db, 2);
        const want = await seqsOf([...before1, ...during, ...after1]);
        assert.equal(want.length, 3 + 4 + 2 + 2);
        const ids = await waitForIds(p.page, want, 30000);
        assertNoDuplicates(ids);
        await waitLive(p.page, transport);
        assert.deepEqual(p.errors.filter((e) => e.text.startsWith('uncaught')), []);
      } finally {
        await p.close();
      }
    });
}

test('a new page on a freshly started server shows only new events, on every transport (no replay of the journal)', { timeout: 60000 }, async () => {
  // Rows in the journal that the new servers' loops never see live.
  await insertIntents(db, 30);
  for (const transport of ['sse', 'ws', 'poll']) {
    const fresh = await startServer(db.url);
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(fresh.url(`/?transport=${transport}`));
      await waitLive(page, transport);
      const ids = await insertIntents(db, 2);
      const want = await seqsOf(ids);
      await waitForIds(page, want);
      // A replay from the start would have delivered older ids first.
      assert.deepEqual((await feedIds(page)).sort((a, b) => a - b), want, transport);
    } finally {
      await context.close();
      assert.equal(await fresh.stop(), 0, fresh.log());
    }
  }
});

test('with --auth-token each transport passes the token the way the server expects; a wrong one never goes live', { timeout: 60000 }, async () => {
  const token = 'dashboard-s3cret';
  const authed = await startServer(db.url, ['--auth-token', token]);
  try {
    for (const transport of ['sse', 'ws', 'poll']) {
      const context = await browser.newContext();
      const page = await context.newPage();
      try {
        await page.goto(authed.url(`/?transport=${transport}&token=${token}`));
        await waitLive(page, transport);
        const ids = await insertIntents(db, 1);
        await waitForIds(page, await seqsOf(ids));
      } finally {
        await context.close();
      }
    }
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      await page.goto(authed.url('/?transport=ws&token=wrong'));
      await page.waitForSelector('#conn[data-state="reconnecting"][data-transport="ws"]', { timeout: 10000 });
      assert.notEqual(await page.getAttribute('#conn', 'data-state'), 'open');
    } finally {
      await context.close();
    }
  } finally {
    assert.equal(await authed.stop(), 0, authed.log());
  }
});

test('SSE blocked → WebSocket; SSE and WebSocket blocked → polling', { timeout: 60000 }, async () => {
  const blockSse = (page) => page.route('**/api/v2/events/stream*', (r) => r.abort());
  const p1 = await openPage('/', { setup: blockSse });
  try {
    await waitLive(p1.page, 'ws');
    const ids = await insertIntents(db, 2);
    await waitForIds(p1.page, await seqsOf(ids));
  } finally {
    await p1.close();
  }
  const p2 = await openPage('/', {
    setup: async (page) => {
      await blockSse(page);
      await page.routeWebSocket(/\/ws\//, (ws) => ws.close());
    },
  });
  try {
    if (pollAvailable) {
      await waitLive(p2.page, 'poll');
      const ids = await insertIntents(db, 2);
      await waitForIds(p2.page, await seqsOf(ids));
    } else {
      // Without the polling endpoint the client still hands over to it.
      await p2.page.waitForSelector('#conn[data-transport="poll"]', { timeout: 10000 });
    }
  } finally {
    await p2.close();
  }
});

test('alert_firing shows a toast coloured by severity; alert_resolved another', { timeout: 30000 }, async () => {
  const p = await openPage('/');
  try {
    await waitLive(p.page, 'sse');
    // A crafted alert on a channel this server LISTENs on (--channels): the
    // listener takes its type from the payload. Its seq is far above the
    // journal's, so it cannot collide with a real event.
    const alert = (type, seq, severity) => db.sql('SELECT pg_notify($1, $2)', [TEST_CHANNEL, JSON.stringify({
      type, seq, rule: 'high_error_rate', severity, message: 'error rate above 5 % for 10 minutes',
      value: 0.07, threshold: 0.05, state: type === 'alert_firing' ? 'firing' : 'resolved',
    })]);
    await alert('alert_firing', 900000000001, 'critical');
    const toast = await p.page.waitForSelector('.toast[data-type="alert_firing"]', { timeout: 2000 });
    assert.equal(await toast.getAttribute('class'), 'toast sev-critical');
    assert.match(await toast.textContent(), /high_error_rate.*critical.*error rate above 5 %.*value 0\.07 \(threshold 0\.05\)/);
    const colour = await toast.evaluate((e) => getComputedStyle(e).borderLeftColor);
    assert.equal(colour, 'rgb(248, 81, 73)', 'critical is red');
    await alert('alert_resolved', 900000000002, 'critical');
    const done = await p.page.waitForSelector('.toast[data-type="alert_resolved"]', { timeout: 2000 });
    assert.equal(await done.evaluate((e) => getComputedStyle(e).borderLeftColor), 'rgb(63, 185, 80)', 'resolved is green');
    // The feed updates in batches, the toasts at once.
    await waitUntil(async () => (await p.page.locator('#feed tr[data-type^="alert_"]').count()) === 2, 2000, 'both alerts in the feed');
  } finally {
    await p.close();
  }
});

test('a real alert rule: firing and resolving reach the page as toasts', { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rt-alerts-'));
  const rules = join(dir, 'rules.json');
  writeFileSync(rules, JSON.stringify({
    rules: [{
      name: 'alarm_intents', description: 'an intent is in status alarm', severity: 'critical',
      condition: { sql: "SELECT count(*) FROM intents WHERE status = 'alarm'" },
      operator: '>', threshold: 0, interval: '200ms', cooldown: '1m', channels: ['log'],
    }],
  }));
  const withRules = await startServer(db.url, ['--alert-rules', rules]);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(withRules.url('/'));
    await waitLive(page, 'sse');
    const [id] = await insertIntents(db, 1, { status: 'alarm' });
    const firing = await page.waitForSelector('.toast[data-type="alert_firing"]', { timeout: 10000 });
    assert.equal(await firing.getAttribute('data-severity'), 'critical');
    assert.match(await firing.textContent(), /alarm_intents.*critical.*an intent is in status alarm · value 1 \(threshold > 0\)/);
    await db.sql(`UPDATE intents SET status = 'completed' WHERE id = $1`, [id]);
    const resolved = await page.waitForSelector('.toast[data-type="alert_resolved"]', { timeout: 10000 });
    assert.match(await resolved.textContent(), /alarm_intents.*resolved/);
  } finally {
    await context.close();
    assert.equal(await withRules.stop(), 0, withRules.log());
    rmSync(dir, { recursive: true, force: true });
  }
});

test('stats_updated fills the overview numbers and the status distribution', { timeout: 30000 }, async () => {
  const p = await openPage('/');
  try {
    await waitLive(p.page, 'sse');
    const overview = {
      total_intents: 1234, status_distribution: { completed: 800, pending: 300, failed: 134 },
      recent_activity: { last_hour: 45, last_24h: 523, last_7d: 1234 }, correction_rate: 0.08,
      avg_processing_time_ms: 1523, active_websockets: 12, active_sse: 3, events_per_second: 4.5,
      etl_lag_seconds: 0.25,
    };
    await db.sql('SELECT pg_notify($1, $2)', [TEST_CHANNEL, JSON.stringify({ type: 'stats_updated', seq: 900000000101, ...overview })]);
    await waitUntil(async () => (await p.page.textContent('#ov-total')) === '1,234', 2000, 'the total');
    const text = async (sel) => (await p.page.textContent(sel)).trim();
    assert.equal(await text('#ov-hour'), '45');
    assert.equal(await text('#ov-hour-sub'), '24 h: 523 · 7 d: 1,234');
    assert.equal(await text('#ov-eps'), '4.5');
    assert.equal(await text('#ov-conns'), '15');
    assert.equal(await text('#ov-conns-sub'), 'WebSocket 12 · SSE 3');
    assert.equal(await text('#ov-lag'), '250 ms');
    assert.equal(await text('#ov-proc'), '1,523 ms');
    assert.equal(await text('#ov-proc-sub'), 'corrections: 8.0 %');
    const legend = await p.page.$$eval('#status-legend li', (li) => li.map((x) => x.textContent));
    assert.deepEqual(legend, ['completed80064.8%', 'pending30024.3%', 'failed13410.9%']);
    assert.equal(await p.page.locator('#status-bar span').count(), 3);
    // Numbers are not feed rows.
    assert.equal(await p.page.locator('#feed tr[data-type="stats_updated"]').count(), 0);
  } finally {
    await p.close();
  }
});

test('the overview follows the real aggregator: stats_updated events move the numbers between API reads', { timeout: 30000 }, async (t) => {
  const live = await startServer(db.url, ['--stats-interval', '300ms']);
  const context = await browser.newContext();
  try {
    if ((await fetch(live.url('/api/v1/dashboard/overview'))).status === 404) {
      t.skip('no dashboard API in this build');
      return;
    }
    const page = await context.newPage();
    await page.goto(live.url('/'));
    await waitLive(page, 'sse');
    const count = async () => Number((await db.sql('SELECT count(*) AS n FROM intents')).rows[0].n);
    const shows = (n) => waitUntil(async () => (await page.textContent('#ov-total')) === n.toLocaleString('en-US'),
      10000, `the page to show ${n} intents`);
    await shows(await count());
    // The page reads the API only every 30 s: these come through stats_updated.
    await insertIntents(db, 3);
    await shows(await count());
  } finally {
    await context.close();
    assert.equal(await live.stop(), 0, live.log());
  }
});

test('filter, pause and resume; screenshot of the filled page in test/artifacts/dashboard.png', { timeout: 60000 }, async () => {
  const p = await openPage('/');
  try {
    await waitLive(p.page, 'sse');
    const ids = await insertIntents(db, 6, { status: 'processing' });
    await db.sql(`INSERT INTO audit_logs(event_type, intent_id, actor, payload)
                  SELECT 'status_changed', id, 'bridge-worker',
                         jsonb_build_object('bridge_type', 'sepa', 'old_status', 'pending', 'new_status', 'processing', 'duration_ms', 140)
                  FROM unnest($1::uuid[]) AS id`, [ids]);
    await db.sql(`UPDATE intents SET status = 'completed', version = 2 WHERE id = ANY($1)`, [ids.slice(0, 3)]);
    const want = await journalSeqs(db, `routing_key IN (${ids.map((i) => `'${i}'`).join(',')})`);
    await waitForIds(p.page, want);

    // Filter by intent id: only that intent's rows (its insert, audit log, update).
    await p.page.fill('#filter-id', ids[0]);
    await waitUntil(async () => (await p.page.$$eval('#feed tr', (r) => r.map((x) => x.dataset.intent))).every((x) => x === ids[0]), 2000, 'filtered rows');
    assert.equal(await p.page.locator('#feed tr').count(), 3);
    // Filter by type as well.
    await p.page.selectOption('#filter-type', 'audit_log');
    assert.equal(await p.page.locator('#feed tr').count(), 1);
    await p.page.fill('#filter-id', '');
    await p.page.selectOption('#filter-type', '');

    // Pause: new events wait, then come in on resume.
    await p.page.click('#pause');
    const before1 = await p.page.locator('#feed tr').count();
    const late = await insertIntents(db, 2);
    const lateSeqs = await seqsOf(late);
    await p.page.waitForSelector('#pause:has-text("Resume (2)")', { timeout: 5000 });
    assert.equal(await p.page.locator('#feed tr').count(), before1);
    await p.page.click('#pause');
    await waitForIds(p.page, lateSeqs, 2000);
    assertNoDuplicates(await feedIds(p.page));

    mkdirSync(ARTIFACTS, { recursive: true });
    await p.page.screenshot({ path: `${ARTIFACTS}dashboard.png` });
  } finally {
    await p.close();
  }
});
