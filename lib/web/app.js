// The dashboard page: overview numbers, a one-hour chart, a live feed, alert
// toasts and a connection indicator, all fed by RealtimeClient (rtclient.js)
// and, when the metrics API is there, /api/v1/dashboard/{overview,timeline}.
//
// URL parameters: ?transport=sse|ws|poll forces one transport; ?token=... is
// passed to the client (the server may require one).
import { RealtimeClient } from './rtclient.js';

const FEED_MAX = 300;          // rows kept in the table (and in memory for filtering)
const FLUSH_MS = 250;          // at most four feed updates a second, however fast events come
const HIGHLIGHT_MAX = 40;      // rows of one update that flash as new
const PAUSE_MAX = 2000;        // events kept while paused
const MINUTES = 60;            // chart span
const OVERVIEW_REFRESH_MS = 30000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const STATUS_COLOURS = {
  received: '#8b98a5', pending: '#d29922', normalized: '#e3b341', processing: '#58a6ff',
  processed: '#2ea043', corrected: '#a78bfa', completed: '#3fb950', failed: '#f85149',
};
const EXTRA_COLOURS = ['#4cc2ff', '#f778ba', '#79c0ff', '#ffa657', '#7ee787', '#d2a8ff'];

// ---- small helpers ------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

const nf = new Intl.NumberFormat('en-US');
function num(v) { return typeof v === 'number' && Number.isFinite(v) ? nf.format(v) : '—'; }

function seconds(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  if (v < 1) return `${Math.round(v * 1000)} ms`;
  if (v < 120) return `${v.toFixed(1)} s`;
  return `${Math.round(v / 60)} min`;
}

function pad2(n) { return String(n).padStart(2, '0'); }
function clock(d) { return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`; }

// When the server received the event (WebSocket and polling messages carry
// it, in UTC), else when this page did (SSE carries only the payload, whose
// database times may lack a zone).
function eventTime(ev) {
  const d = ev.timestamp ? new Date(ev.timestamp) : null;
  return d && !Number.isNaN(d.getTime()) ? d : ev.receivedAt || new Date();
}

function setValue(id, text) {
  const e = $(id);
  if (e.textContent === text) return;
  e.textContent = text;
  // The Web Animations API restarts the flash without forcing a layout.
  if (e.animate) e.animate([{ color: '#4cc2ff' }, { color: '#e6edf3' }], { duration: 800, easing: 'ease-out' });
}

// ---- overview -----------------------------------------------------------------------

const overview = { available: null, missing: false, data: null };

function renderOverview(o) {
  overview.data = o;
  $('ov-note').hidden = true;
  setValue('ov-total', num(o.total_intents));
  const ra = o.recent_activity || {};
  setValue('ov-hour', num(ra.last_hour));
  $('ov-hour-sub').textContent = `24 h: ${num(ra.last_24h)} · 7 d: ${num(ra.last_7d)}`;
  if (typeof o.events_per_second === 'number') setValue('ov-eps', o.events_per_second.toFixed(1));
  const ws = o.active_websockets, sse = o.active_sse;
  if (typeof ws === 'number' || typeof sse === 'number') {
    setValue('ov-conns', num((ws || 0) + (sse || 0)));
    $('ov-conns-sub').textContent = `WebSocket ${num(ws)} · SSE ${num(sse)}`;
  }
  setValue('ov-lag', seconds(o.etl_lag_seconds));
  setValue('ov-proc', typeof o.avg_processing_time_ms === 'number' ? `${num(Math.round(o.avg_processing_time_ms))} ms` : '—');
  $('ov-proc-sub').textContent = typeof o.correction_rate === 'number'
    ? `corrections: ${(o.correction_rate * 100).toFixed(1)} %` : 'corrections: —';
  renderStatus(o.status_distribution);
}

function renderStatus(dist) {
  const bar = $('status-bar');
  const legend = $('status-legend');
  bar.replaceChildren();
  legend.replaceChildren();
  const entries = dist && typeof dist === 'object'
    ? Object.entries(dist).filter(([, n]) => typeof n === 'number' && n > 0).sort((a, b) => b[1] - a[1]) : [];
  const total = entries.reduce((s, [, n]) => s + n, 0);
  if (!total) {
    legend.append(el('li', { class: 'empty', text: overview.available === false ? 'needs the dashboard API' : 'no intents yet' }));
    return;
  }
  let extra = 0;
  for (const [status, n] of entries) {
    const colour = STATUS_COLOURS[status] || EXTRA_COLOURS[extra++ % EXTRA_COLOURS.length];
    const seg = el('span', { title: `${status}: ${n}` });
    seg.style.width = `${(100 * n) / total}%`;
    seg.style.background = colour;
    bar.append(seg);
    const sw = el('span', { class: 'sw' });
    sw.style.background = colour;
    legend.append(el('li', {}, sw, el('span', { text: status }), el('span', { class: 'n', text: num(n) }),
      el('span', { class: 'pct', text: `${((100 * n) / total).toFixed(1)}%` })));
  }
}

async function fetchJson(path) {
  const headers = params.get('token') ? { Authorization: `Bearer ${params.get('token')}` } : {};
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) {
    const e = new Error(`HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

async function loadOverview({ periodic = false } = {}) {
  // A server without the dashboard API says so once; stats_updated events
  // fill in from then on, so the page does not keep asking (each 404 is a
  // console line).
  if (periodic && overview.missing) return;
  try {
    const o = await fetchJson('/api/v1/dashboard/overview');
    overview.available = true;
    overview.missing = false;
    renderOverview(o);
  } catch (e) {
    overview.missing = e.status === 404;
    if (overview.available !== true && !overview.data) {
      overview.available = false;
      const note = $('ov-note');
      note.hidden = false;
      note.textContent = e.status === 404
        ? 'The dashboard API (/api/v1/dashboard/overview) is not served by this rtbridge: the figures above fill in from stats_updated events when they arrive.'
        : `Overview unavailable (${e.message}); retrying.`;
      renderStatus(null);
    }
  }
}

// ---- chart: the last hour, per minute -------------------------------------------------

const minuteKey = (ms) => Math.floor(ms / 60000);
const created = new Map();   // minute -> intents created (timeline API, then live inserts)
const received = new Map();  // minute -> events this page received

function bump(map, minute, n = 1) { map.set(minute, (map.get(minute) || 0) + n); }

function prune(map, from) { for (const k of map.keys()) if (k < from) map.delete(k); }

async function loadTimeline() {
  const end = new Date();
  const start = new Date(end.getTime() - MINUTES * 60000);
  try {
    const rows = await fetchJson(`/api/v1/dashboard/timeline?start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}&granularity=minute`);
    if (!Array.isArray(rows)) return;
    // The API's counts replace what the page counted so far for those minutes.
    for (const r of rows) {
      const t = Date.parse(r && r.time);
      if (Number.isFinite(t) && typeof r.count === 'number') created.set(minuteKey(t), r.count);
    }
    scheduleChart();
  } catch { /* no dashboard API: the chart counts live inserts only */ }
}

let chartQueued = false;
function scheduleChart() {
  if (chartQueued) return;
  chartQueued = true;
  requestAnimationFrame(() => { chartQueued = false; renderChart(); });
}

function renderChart() {
  const chart = $('chart');
  const W = 720, H = 200, top = 12, bottom = 4;
  const now = minuteKey(Date.now());
  const first = now - MINUTES + 1;
  prune(created, first);
  prune(received, first);
  let max = 1;
  for (let m = first; m <= now; m++) max = Math.max(max, created.get(m) || 0, received.get(m) || 0);
  const nice = niceCeil(max);
  const y = (v) => H - bottom - ((H - top - bottom) * v) / nice;
  const slot = W / MINUTES;
  const nodes = [];
  for (const f of [0.5, 1]) {
    nodes.push(svg('line', { class: 'grid', x1: 0, x2: W, y1: y(nice * f), y2: y(nice * f) }));
  }
  const pts = [];
  for (let i = 0; i < MINUTES; i++) {
    const m = first + i;
    const c = created.get(m) || 0;
    if (c > 0) {
      nodes.push(svg('rect', {
        class: m === now ? 'bar now' : 'bar', x: i * slot + 1.5, width: Math.max(1, slot - 3), y: y(c), height: H - bottom - y(c),
      }));
    }
    pts.push(`${(i + 0.5) * slot},${y(received.get(m) || 0)}`);
  }
  nodes.push(svg('polyline', { class: 'line', points: pts.join(' ') }));
  chart.replaceChildren(...nodes);
  // The scale is text outside the SVG, which is stretched to its box.
  $('chart-max').textContent = `top line: ${nice} / min`;
  const axis = $('chart-axis');
  const labels = [];
  for (let k = 0; k <= 4; k++) {
    const d = new Date((first + (k * (MINUTES - 1)) / 4) * 60000);
    labels.push(el('span', { text: k === 4 ? 'now' : `${pad2(d.getHours())}:${pad2(d.getMinutes())}` }));
  }
  axis.replaceChildren(...labels);
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---- live feed ------------------------------------------------------------------------

const feed = { rows: [], paused: false, held: [], received: 0 };

function typeGroup(t) {
  if (t === 'intent_update' || t === 'audit_log') return t;
  if (t === 'alert_firing' || t === 'alert_resolved') return 'alert';
  return 'other';
}

function passes(ev) {
  const idFilter = $('filter-id').value.trim().toLowerCase();
  const typeFilter = $('filter-type').value;
  if (typeFilter && typeGroup(ev.type) !== typeFilter) return false;
  if (idFilter) {
    const id = String((ev.data && ev.data.intent_id) || '').toLowerCase();
    if (!id.includes(idFilter)) return false;
  }
  return true;
}

function statusSpan(s) {
  return el('span', { class: `st st-${String(s).replace(/[^a-z_]/gi, '')}`, text: String(s) });
}

function describe(ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const frag = document.createDocumentFragment();
  if (ev.type === 'intent_update') {
    frag.append(`${d.event_type || 'change'} → `, statusSpan(d.status ?? '?'));
    if (d.version !== undefined && d.version !== null) frag.append(` · v${d.version}`);
    const x = d.data && typeof d.data === 'object' ? d.data : null;
    if (x && x.amount !== undefined) frag.append(` · ${num(x.amount)} ${x.currency || ''}`);
  } else if (ev.type === 'audit_log') {
    const p = d.payload && typeof d.payload === 'object' ? d.payload : {};
    frag.append(`${d.event_type || 'audit'}`);
    if (p.old_status || p.new_status) frag.append(': ', statusSpan(p.old_status ?? '?'), ' → ', statusSpan(p.new_status ?? '?'));
    const extra = [p.bridge_type, typeof p.duration_ms === 'number' ? `${p.duration_ms} ms` : null, d.actor].filter(Boolean);
    if (extra.length) frag.append(` · ${extra.join(' · ')}`);
  } else if (ev.type === 'alert_firing' || ev.type === 'alert_resolved') {
    frag.append(`${alertName(d)} (${d.severity || 'info'})${d.message || d.description ? ` — ${d.message || d.description}` : ''}`);
  } else {
    frag.append(JSON.stringify(d).slice(0, 200));
  }
  return frag;
}

function rowFor(ev, fresh) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const intent = d.intent_id ? String(d.intent_id) : '';
  const link = intent ? el('a', { title: `${intent} (click to filter)`, text: intent.slice(0, 8) }) : '';
  if (link) link.addEventListener('click', () => { $('filter-id').value = intent; refilter(); });
  const tr = el('tr', { 'data-id': String(ev.id ?? ''), 'data-type': ev.type, 'data-intent': intent },
    el('td', { class: 'time', text: clock(eventTime(ev)) }),
    el('td', {}, el('span', { class: `tag ${typeGroup(ev.type) === 'other' ? 'other' : ev.type}`, text: ev.type })),
    el('td', { class: 'intent' }, link),
    el('td', { class: 'what' }, describe(ev)),
    el('td', { class: 'seq', text: ev.id ?? '' }));
  tr.title = `${ev.type} #${ev.id ?? ''}`;
  if (fresh) tr.classList.add('new');
  return tr;
}

function updateFeedCount() {
  const shown = $('feed').childElementCount;
  const held = feed.paused ? ` · ${feed.held.length} waiting` : '';
  $('feed-count').textContent = `${shown} shown · ${num(feed.received)} received${held}`;
  $('feed-empty').hidden = shown > 0;
  $('pause').textContent = feed.paused ? (feed.held.length ? `Resume (${feed.held.length})` : 'Resume') : 'Pause';
}

function addToFeed(evs) {
  const body = $('feed');
  const frag = document.createDocumentFragment();
  // feed.rows is oldest first, the table newest first.
  // A burst (a resume after a long absence) can be thousands: only the
  // newest FEED_MAX can be shown, so only those are built.
  const first = Math.max(0, evs.length - FEED_MAX);
  for (let i = first; i < evs.length; i++) feed.rows.push(evs[i]);
  let built = 0;
  for (let i = evs.length - 1; i >= first; i--) {
    if (passes(evs[i])) frag.append(rowFor(evs[i], built++ < HIGHLIGHT_MAX));
  }
  if (feed.rows.length > FEED_MAX) feed.rows.splice(0, feed.rows.length - FEED_MAX);
  if (built >= FEED_MAX) {
    body.replaceChildren(frag);
  } else {
    body.prepend(frag);
    if (body.childElementCount > FEED_MAX) {
      // The oldest rows go in one operation, not one by one.
      const r = document.createRange();
      r.setStartBefore(body.children[FEED_MAX]);
      r.setEndAfter(body.lastElementChild);
      r.deleteContents();
    }
  }
  updateFeedCount();
}

function refilter() {
  const frag = document.createDocumentFragment();
  for (let i = feed.rows.length - 1; i >= 0; i--) if (passes(feed.rows[i])) frag.append(rowFor(feed.rows[i], false));
  $('feed').replaceChildren(frag);
  updateFeedCount();
}

let pending = [];
let flushQueued = false;
let lastFlush = -Infinity;

// Events are shown in batches: the first after a quiet spell at the next
// frame, then at most one update every FLUSH_MS, so a burst of thousands
// costs a few table updates, not thousands (hidden tabs have no frames).
function scheduleFlush() {
  if (flushQueued) return;
  flushQueued = true;
  const flush = () => {
    flushQueued = false;
    lastFlush = performance.now();
    const b = pending;
    pending = [];
    if (!feed.paused) {
      addToFeed(b);
      return;
    }
    // Paused since these were queued: they wait with the others.
    holdAll(b);
    updateFeedCount();
  };
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  setTimeout(() => (document.hidden ? flush() : requestAnimationFrame(flush)), wait);
}

function holdAll(evs) {
  for (const ev of evs) feed.held.push(ev);
  if (feed.held.length > PAUSE_MAX) feed.held.splice(0, feed.held.length - PAUSE_MAX);
}

function queueFeed(ev) {
  if (feed.paused) holdAll([ev]);
  else pending.push(ev);
  scheduleFlush();
}

function setPaused(p) {
  feed.paused = p;
  if (p && pending.length) {
    // Queued but not shown yet: they wait too, ahead of what comes next.
    holdAll(pending);
    pending = [];
  }
  $('pause').setAttribute('aria-pressed', String(p));
  if (!p && feed.held.length) {
    const b = feed.held;
    feed.held = [];
    addToFeed(b);
  }
  updateFeedCount();
}

// ---- toasts ---------------------------------------------------------------------------

function alertName(d) { return d.rule || d.name || d.alertname || d.alert || 'alert'; }

function toast(ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const resolved = ev.type === 'alert_resolved';
  const sev = String(d.severity || 'info').toLowerCase().replace(/[^a-z]/g, '');
  const short = (v) => (Number.isInteger(v) ? String(v) : String(+v.toPrecision(4)));
  const measured = typeof d.value === 'number' && typeof d.threshold === 'number'
    ? `value ${short(d.value)} (threshold ${d.operator ? `${d.operator} ` : ''}${short(d.threshold)})` : null;
  const body = [d.message || d.description, measured].filter(Boolean).join(' · ');
  const t = el('div', { class: `toast sev-${sev}${resolved ? ' resolved' : ''}`, role: 'alert', 'data-type': ev.type, 'data-severity': sev },
    el('div', { class: 't-title' }, el('span', { text: alertName(d) }),
      el('span', { class: 't-sev', text: resolved ? 'resolved' : sev })),
    body ? el('div', { class: 't-body', text: body }) : null);
  const remove = () => { t.classList.add('leaving'); setTimeout(() => t.remove(), 300); };
  t.addEventListener('click', remove);
  $('toasts').append(t);
  while ($('toasts').childElementCount > 5) $('toasts').firstElementChild.remove();
  // Critical alerts stay until clicked; the rest fade.
  if (resolved || (sev !== 'critical' && sev !== 'error')) setTimeout(remove, resolved ? 6000 : 10000);
}

// ---- connection indicator ---------------------------------------------------------------

const TRANSPORT_NAMES = { sse: 'SSE', ws: 'WebSocket', poll: 'polling' };
let countdown = null;

function showStatus(s) {
  const conn = $('conn');
  conn.dataset.state = s.state;
  conn.dataset.transport = s.transport || '';
  $('conn-transport').textContent = s.transport ? TRANSPORT_NAMES[s.transport] || s.transport : '';
  if (countdown) { clearInterval(countdown); countdown = null; }
  const text = $('conn-text');
  if (s.state === 'open') text.textContent = 'live';
  else if (s.state === 'connecting') text.textContent = 'connecting…';
  else if (s.state === 'fallback') text.textContent = `${TRANSPORT_NAMES[s.from] || s.from} unavailable, trying ${TRANSPORT_NAMES[s.to] || s.to}`;
  else if (s.state === 'closed') text.textContent = 'closed';
  else if (s.state === 'reconnecting') {
    const tick = () => {
      const left = Math.max(0, Math.ceil((s.at - Date.now()) / 1000));
      text.textContent = `reconnecting in ${left} s`;
    };
    tick();
    countdown = setInterval(tick, 250);
  }
}

// ---- wiring -----------------------------------------------------------------------------

let pageRate = [];
function countEvent(ev) {
  feed.received++;
  const now = Date.now();
  ev.receivedAt = new Date(now);
  bump(received, minuteKey(now));
  if (ev.type === 'intent_update' && ev.data && ev.data.event_type === 'INSERT') bump(created, minuteKey(eventTime(ev).getTime()));
  pageRate.push(now);
  scheduleChart();
}

function tickRate() {
  const cutoff = Date.now() - 10000;
  let drop = 0;
  while (drop < pageRate.length && pageRate[drop] < cutoff) drop++;
  if (drop) pageRate = pageRate.slice(drop);
  const r = pageRate.length / 10;
  $('ov-eps-sub').textContent = `this page: ${r.toFixed(1)}/s`;
  if (!overview.data || typeof overview.data.events_per_second !== 'number') setValue('ov-eps', r.toFixed(1));
}

function start() {
  const transport = params.get('transport') || undefined;
  let client;
  try {
    client = new RealtimeClient({ transport, token: params.get('token') || undefined, autoConnect: false });
  } catch (e) {
    $('conn-text').textContent = e.message;
    return;
  }
  window.rtClient = client; // for the console (and the browser tests)
  client.on('status', showStatus);
  client.on('*', (ev) => {
    countEvent(ev);
    if (ev.type === 'stats_updated' && ev.data && typeof ev.data === 'object') {
      renderOverview(ev.data.overview && typeof ev.data.overview === 'object' ? ev.data.overview : ev.data);
      return;
    }
    if (ev.type === 'alert_firing' || ev.type === 'alert_resolved') toast(ev);
    queueFeed(ev);
  });
  client.on('resync', () => { loadOverview(); loadTimeline(); });
  client.connect();

  $('pause').addEventListener('click', () => setPaused(!feed.paused));
  $('filter-id').addEventListener('input', refilter);
  $('filter-type').addEventListener('change', refilter);
  document.addEventListener('keydown', (e) => {
    if (e.key === ' ' && e.target === document.body) { e.preventDefault(); setPaused(!feed.paused); }
  });

  renderChart();
  updateFeedCount();
  loadOverview();
  loadTimeline();
  setInterval(() => loadOverview({ periodic: true }), OVERVIEW_REFRESH_MS);
  setInterval(() => { tickRate(); scheduleChart(); }, 1000);
}

start();
