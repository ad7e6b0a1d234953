// rtclient.js: the browser client of rtbridge. No dependency, no build step.
//
//   import { RealtimeClient } from '/static/rtclient.js';
//   const rt = new RealtimeClient({ types: ['intent_update', 'audit_log'] });
//   rt.on('intent_update', (ev) => console.log(ev.id, ev.data));
//   rt.on('status', (s) => console.log(s.state, s.transport, s.delay));
//   rt.on('resync', () => reloadEverything());
//   rt.close();
//
// It is an ES module; loading it (even with <script type="module">) also sets
// window.RealtimeClient for pages that are not modules themselves.
//
// Transports, in order: Server-Sent Events (/api/v2/events/stream), WebSocket
// (/ws/dashboard), long-polling (/api/v1/events). A transport that cannot
// connect at all hands over to the next one at once; one that was connected
// and drops is reconnected after an exponential backoff (1 s doubling to 30 s,
// with ±20 % jitter); after every transport failed in a row, the client waits
// the backoff and starts again from the first. `transport: 'sse'|'ws'|'poll'`
// uses that one only.
//
// Every reconnect resumes after the id of the last event received (SSE:
// last_event_id query parameter, WebSocket: last_event_id in the URL, polling:
// after=), so nothing is missed; ids already delivered are dropped, so nothing
// is delivered twice. When the server cannot resume (past its retention) it
// says resync, and the client emits 'resync' so the page reloads its state.
//
// Tokens: EventSource cannot send headers, so SSE passes access_token in the
// query string; WebSocket sends {"type":"auth","token":...} as its first
// message; polling sends Authorization: Bearer.
//
// The pieces with logic (backoffDelay, SeenIds, EventGate, transport order)
// are exported on their own and take their clock, timers and network classes
// as options, so they are unit-tested in Node (test/js/rtclient.test.mjs).

export const EVENT_TYPES = ['intent_update', 'audit_log', 'stats_updated', 'alert_firing',
  'alert_resolved', 'health_changed', 'system_notification'];
export const TRANSPORTS = ['sse', 'ws', 'poll'];

export const BACKOFF_MIN_MS = 1000;
export const BACKOFF_MAX_MS = 30000;

// The delay before reconnect number `attempt` (0 for the first): min doubled
// attempt times, capped at max, times a random factor in [0.8, 1.2), and
// always within [min, max]. random() is Math.random unless given.
export function backoffDelay(attempt, { min = BACKOFF_MIN_MS, max = BACKOFF_MAX_MS, random = Math.random } = {}) {
  const n = Math.max(0, Math.min(30, Math.floor(attempt)));
  const base = Math.min(max, min * 2 ** n);
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.min(max, Math.max(min, jittered)));
}

// The most recent `capacity` ids, as a set: old ones are forgotten first in,
// first out. Ids arrive nearly in order, so the window only has to span the
// replay overlap of a reconnect, not the whole history.
export class SeenIds {
  constructor(capacity = 20000) {
    if (!(capacity > 0)) throw new RangeError('capacity must be positive');
    this.capacity = capacity;
    this.set = new Set();
    this.ring = new Array(capacity);
    this.next = 0;
  }

  has(id) { return this.set.has(id); }

  // Adds id; returns false if it was there already.
  add(id) {
    if (this.set.has(id)) return false;
    const old = this.ring[this.next];
    if (old !== undefined) this.set.delete(old);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.capacity;
    this.set.add(id);
    return true;
  }

  get size() { return this.set.size; }
}

// Decides, for every event a transport hands over, whether the page gets it:
// once per id, across transports and reconnects. lastId is the id of the
// last event received (what the server resumes after: it replays in its own
// delivery order, so this is not always the largest id). The floor covers ids
// that fell out of the window: an id at or below the last one forgotten is
// old news too (ids run nearly in order, so one that old is a replay).
export class EventGate {
  constructor(capacity) {
    this.seen = new SeenIds(capacity);
    this.lastId = null;
    this.floor = -1;
    this.duplicates = 0;
  }

  // ev: {type, id, data, timestamp}. Returns true if it is to be delivered.
  accept(ev) {
    // Events that are not journaled (stats_updated, alerts) carry id 0 (or
    // none): each is new, and none is a position to resume from.
    if (typeof ev.id !== 'number' || !Number.isFinite(ev.id) || ev.id <= 0) return true;
    if (ev.id <= this.floor || this.seen.has(ev.id)) {
      this.duplicates++;
      return false;
    }
    const evicted = this.seen.ring[this.seen.next];
    if (evicted !== undefined) this.floor = Math.max(this.floor, evicted);
    this.seen.add(ev.id);
    this.lastId = ev.id;
    return true;
  }

  // After a resync the server goes on from its live events; what was
  // delivered stays delivered. A known position (polling's last_id) is kept.
  resync(lastId) {
    if (typeof lastId === 'number' && Number.isFinite(lastId)) this.lastId = lastId;
  }
}

// Which transports to try, in order.
export function transportOrder(transport) {
  if (transport === undefined || transport === null || transport === '' || transport === 'auto') return TRANSPORTS.slice();
  if (!TRANSPORTS.includes(transport)) throw new TypeError(`transport must be one of ${TRANSPORTS.join(', ')} or auto`);
  return [transport];
}

// Turns an SSE message (event name, data text, lastEventId) into the same
// shape as a WebSocket message: {type, id, data, timestamp}.
export function fromSse(type, dataText, lastEventId) {
  let data;
  try { data = JSON.parse(dataText); } catch { data = dataText; }
  const id = lastEventId !== undefined && lastEventId !== '' && /^\d+$/.test(lastEventId) ? Number(lastEventId) : null;
  if (type === 'resync') return { type, id: null, data, timestamp: null };
  return { type, id, data, timestamp: null };
}

function defaultBase() {
  if (typeof location !== 'undefined' && location.origin && location.origin !== 'null') return location.origin;
  return 'http://127.0.0.1:8080';
}

export class RealtimeClient {
  // options:
  //   url         base URL of the server (default: the page's origin)
  //   types       event types to receive (default: all)
  //   intentIds   only intent_update / audit_log events of these intents
  //   token       bearer token or JWT, when the server requires one
  //   transport   'sse' | 'ws' | 'poll' | 'auto' (default 'auto')
  //   pollWait    long-poll wait in seconds (default 25, at most 30)
  //   autoConnect false: call connect() yourself (default true)
  // For tests: EventSource, WebSocket, fetch, setTimeout, clearTimeout,
  // random, now.
  constructor(options = {}) {
    this.base = String(options.url || defaultBase()).replace(/\/+$/, '');
    this.types = Array.isArray(options.types) && options.types.length ? options.types.slice() : null;
    this.intentIds = Array.isArray(options.intentIds) && options.intentIds.length ? new Set(options.intentIds.map(String)) : null;
    this.token = options.token || null;
    this.order = transportOrder(options.transport);
    this.pollWait = Math.max(0, Math.min(30, options.pollWait ?? 25));
    const g = globalThis;
    this.env = {
      EventSource: options.EventSource || g.EventSource,
      WebSocket: options.WebSocket || g.WebSocket,
      fetch: options.fetch || (g.fetch && g.fetch.bind(g)),
      setTimeout: options.setTimeout || g.setTimeout.bind(g),
      clearTimeout: options.clearTimeout || g.clearTimeout.bind(g),
      random: options.random || Math.random,
      now: options.now || Date.now,
    };
    this.gate = new EventGate(options.dedupCapacity);
    this.listeners = new Map();
    this.idx = 0;          // position in this.order
    this.failedInRow = 0;  // transports that failed to connect since the last success
    this.attempt = 0;      // backoff exponent
    this.conn = null;      // the current transport's handle ({close()})
    this.timer = null;
    this.closed = false;
    this.state = 'idle';
    this.transport = null;
    // Connecting waits for the current task to end, so listeners registered
    // right after the constructor see the first status too.
    if (options.autoConnect !== false) queueMicrotask(() => this.connect());
  }

  // Registers cb for an event type, 'status', 'resync', 'error' or '*' (every
  // event). Returns a function that removes it.
  on(type, cb) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(cb);
    return () => this.off(type, cb);
  }

  off(type, cb) {
    const s = this.listeners.get(type);
    if (s) s.delete(cb);
  }

  get lastEventId() { return this.gate.lastId; }

  emit(type, arg) {
    for (const cb of [...(this.listeners.get(type) || [])]) {
      try { cb(arg); } catch (e) { this.reportListenerError(e); }
    }
  }

  reportListenerError(e) {
    // A page's handler that throws must not break delivery; surface it
    // asynchronously so it still reaches the console and error handlers.
    this.env.setTimeout(() => { throw e; }, 0);
  }

  setStatus(state, extra = {}) {
    this.state = state;
    this.emit('status', { state, transport: this.transport, ...extra });
  }

  connect() {
    if (this.closed || this.conn) return;
    if (this.timer !== null) { this.env.clearTimeout(this.timer); this.timer = null; }
    const t = this.order[this.idx];
    this.transport = t;
    this.setStatus('connecting');
    const handlers = {
      open: () => this.onOpen(handle),
      message: (ev) => this.onMessage(handle, ev),
      resync: (info) => this.onResync(handle, info),
      error: (why) => this.onDown(handle, why),
    };
    let handle;
    try {
      handle = this[`open_${t}`](handlers);
    } catch (e) {
      handle = { close() {}, opened: false };
      this.conn = handle;
      this.onDown(handle, String(e && e.message || e));
      return;
    }
    this.conn = handle;
  }

  onOpen(handle) {
    if (handle !== this.conn || handle.opened) return;
    handle.opened = true;
    this.failedInRow = 0;
    this.attempt = 0;
    this.setStatus('open');
  }

  onMessage(handle, ev) {
    if (handle !== this.conn || this.closed) return;
    if (!handle.opened) this.onOpen(handle);
    if (!this.gate.accept(ev)) return;
    if (this.types && !this.types.includes(ev.type)) return;
    if (this.intentIds && (ev.type === 'intent_update' || ev.type === 'audit_log')) {
      const id = ev.data && ev.data.intent_id;
      if (!this.intentIds.has(String(id))) return;
    }
    this.emit(ev.type, ev);
    this.emit('*', ev);
  }

  onResync(handle, info) {
    if (handle !== this.conn || this.closed) return;
    this.gate.resync(info && info.last_id);
    this.emit('resync', info || {});
  }

  // The transport is gone (or never came). Decide what next.
  onDown(handle, why) {
    if (handle !== this.conn || this.closed) return;
    this.conn = null;
    try { handle.close(); } catch { /* already closed */ }
    if (why) this.emit('error', { transport: this.transport, message: String(why) });
    if (!handle.opened) {
      this.failedInRow++;
      if (this.order.length > 1 && this.failedInRow < this.order.length) {
        // Never connected: hand over to the next transport at once.
        const from = this.transport;
        this.idx = (this.idx + 1) % this.order.length;
        this.setStatus('fallback', { from, to: this.order[this.idx], reason: why ? String(why) : '' });
        this.connect();
        return;
      }
      // Every transport failed in a row: back off, then start from the first.
      this.failedInRow = 0;
      this.idx = 0;
    }
    const delay = backoffDelay(this.attempt, { random: this.env.random });
    this.attempt++;
    this.setStatus('reconnecting', { delay, at: this.env.now() + delay, attempt: this.attempt });
    this.timer = this.env.setTimeout(() => { this.timer = null; this.connect(); }, delay);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) { this.env.clearTimeout(this.timer); this.timer = null; }
    const c = this.conn;
    this.conn = null;
    if (c) { try { c.close(); } catch { /* already closed */ } }
    this.setStatus('closed');
  }

  query(extra) {
    const p = new URLSearchParams();
    if (this.types) p.set('types', this.types.join(','));
    for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) p.set(k, String(v));
    const s = p.toString();
    return s ? `?${s}` : '';
  }

  // ---- Server-Sent Events ----------------------------------------------------------
  open_sse(h) {
    const ES = this.env.EventSource;
    if (!ES) throw new Error('EventSource is not available');
    const url = `${this.base}/api/v2/events/stream${this.query({ last_event_id: this.gate.lastId, access_token: this.token })}`;
    const es = new ES(url);
    const handle = { opened: false, close: () => es.close() };
    es.onopen = () => h.open();
    // The browser would reconnect by itself after `retry:`; the client
    // decides instead (backoff, fallback), so any error ends this source.
    es.onerror = () => h.error(handle.opened ? 'SSE stream ended' : 'SSE connection failed');
    // An event without an id: line keeps the stream's previous lastEventId;
    // journaled ids never repeat within a stream, so a repeat means "none".
    let prevId = '';
    for (const t of this.types || EVENT_TYPES) {
      es.addEventListener(t, (m) => {
        const own = m.lastEventId !== prevId ? m.lastEventId : '';
        prevId = m.lastEventId;
        h.message(fromSse(t, m.data, own));
      });
    }
    es.addEventListener('resync', (m) => {
      const r = fromSse('resync', m.data, '');
      h.resync({ ...(typeof r.data === 'object' && r.data ? r.data : {}) });
    });
    return handle;
  }

  // ---- WebSocket -------------------------------------------------------------------
  open_ws(h) {
    const WS = this.env.WebSocket;
    if (!WS) throw new Error('WebSocket is not available');
    const wsBase = this.base.replace(/^http/, 'ws');
    // The resume position goes in the URL: the server replays before any live
    // event (after the auth message, when a token is needed).
    const ws = new WS(`${wsBase}/ws/dashboard${this.query({ last_event_id: this.gate.lastId })}`);
    const handle = { opened: false, close: () => { try { ws.close(1000); } catch { /* closing */ } } };
    ws.onopen = () => {
      if (this.token) ws.send(JSON.stringify({ type: 'auth', token: this.token }));
      else h.open();
    };
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch { return; }
      if (!msg || typeof msg !== 'object') return;
      if (msg.type === 'authenticated') h.open();
      else if (msg.type === 'resync') h.resync(msg);
      else if (msg.type === 'error') this.emit('error', { transport: 'ws', message: msg.message });
      else if (typeof msg.id === 'number') h.message({ type: msg.type, id: msg.id, data: msg.data, timestamp: msg.timestamp ?? null });
    };
    ws.onclose = (e) => h.error(`WebSocket closed${e && e.code ? ` (${e.code}${e.reason ? ` ${e.reason}` : ''})` : ''}`);
    ws.onerror = () => { /* onclose follows and says it */ };
    return handle;
  }

  // ---- long-polling ----------------------------------------------------------------
  open_poll(h) {
    const fetchFn = this.env.fetch;
    if (!fetchFn) throw new Error('fetch is not available');
    let stopped = false;
    let ctrl = null;
    const handle = {
      opened: false,
      close: () => { stopped = true; if (ctrl) ctrl.abort(); },
    };
    const headers = { Accept: 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    // Without a position, the first request only learns where the stream is
    // (no after=, wait=0); later ones wait for events.
    let cursor = this.gate.lastId;
    let first = true;
    const loop = async () => {
      while (!stopped) {
        ctrl = typeof AbortController !== 'undefined' ? new AbortController() : null;
        const wait = first && cursor === null ? 0 : this.pollWait;
        first = false;
        const url = `${this.base}/api/v1/events${this.query({ after: cursor, limit: 1000, wait })}`;
        let body;
        try {
          const r = await fetchFn(url, { headers, cache: 'no-store', signal: ctrl ? ctrl.signal : undefined });
          if (!r.ok) throw new Error(`polling: HTTP ${r.status}`);
          body = await r.json();
        } catch (e) {
          if (!stopped) h.error(e && e.message ? e.message : 'polling failed');
          return;
        }
        if (stopped) return;
        if (!body || typeof body !== 'object' || !Array.isArray(body.events)) {
          h.error('polling: unexpected answer');
          return;
        }
        h.open();
        for (const m of body.events) {
          if (stopped) return;
          if (!m || typeof m !== 'object') continue;
          if (m.type === 'resync') { h.resync({ ...m, last_id: body.last_id }); continue; }
          if (typeof m.id === 'number') h.message({ type: m.type, id: m.id, data: m.data, timestamp: m.timestamp ?? null });
        }
        const from = cursor;
        // last_id 0 is no position (a server that has seen no event yet):
        // after=0 would replay the whole journal, so stay without a cursor
        // and wait for live events until one gives a position.
        if (typeof body.last_id === 'number' && body.last_id > 0) cursor = body.last_id;
        else if (this.gate.lastId !== null) cursor = this.gate.lastId;
        if (body.resync && !body.events.some((m) => m && m.type === 'resync')) {
          h.resync({ type: 'resync', reason: body.reason, last_id: body.last_id });
          // A resync that does not move the cursor ("journal unavailable")
          // would come back at once: back off like any failure.
          if (cursor === from) {
            h.error(`polling: ${body.reason || 'resync'}`);
            return;
          }
        }
      }
    };
    loop();
    return handle;
  }
}

if (typeof window !== 'undefined' && !window.RealtimeClient) window.RealtimeClient = RealtimeClient;
