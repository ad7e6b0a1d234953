/*
 * The fan-out pool. Each loop thread owns: a listening socket (SO_REUSEPORT),
 * its connections (a list), its bus ring, and its replay window. A connection
 * moves through these states:
 *
 *   HTTP ──upgrade──▶ WS_AUTH (waits for {"type":"auth"}) ──▶ WS
 *     │        └────────────────────────────────────────────▶ WS
 *     ├──SSE request──▶ SSE
 *     └──other request──▶ response, then HTTP again (keep-alive) or closed
 *
 * Delivery: the loop drains its ring in batches; for every event and every
 * streaming connection it checks the filter and appends a reference to the
 * connection's queue; after the batch, each connection that got something
 * writes its whole queue with one uv_write (up to MAX_IOV buffers), so a
 * client that is behind receives several events per write. The bytes written
 * are the event's pre-rendered WebSocket frame or SSE chunk, shared by all.
 *
 * Backpressure: a connection whose queued bytes pass --client-max-queued is
 * closed (WS 1008 "slow consumer", SSE end of stream) and counted; it may
 * resume with its last id. A ring overflow (the loop fell behind the bus)
 * clears the window and sends every stream client away to resume, so the
 * journal fills the hole exactly instead of it being skipped.
 *
 * Resume: from the loop's window when the id is there (exact, in delivery
 * order), else from rt_journal on the libuv thread pool while live events for
 * that client are held back. The replay is fed to the queue only as the
 * socket drains (below half of --client-max-queued), so resuming 20 000
 * events is paced by the client, not taken for a slow consumer; the held live
 * events follow without duplicates.
 */
#include "fanout.h"

#include "fanout_int.h"
#include "journal.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define COMP "fanout"

static const char *const refuse_names[RT_REFUSE__COUNT] = {
    "max_conns",        "per_ip",         "origin",     "auth",      "bad_request",
    "header_too_large", "header_timeout", "rate_limit", "not_found", "method",
};

const char *rt_refuse_reason_name(rt_refuse_reason_t r)
{
    return (unsigned)r < RT_REFUSE__COUNT ? refuse_names[r] : "unknown";
}

/* The conninfo used by thread-pool workers for journal reads. */
static const char *g_conninfo;

static int matches(const conn_t *c, const rt_event_t *ev);
static void conn_linger(conn_t *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_flush(conn_t *c);
static void ws_take_output(conn_t *c);
static rt_ws_t *ws_of(conn_t *c);

/* ---- small helpers ------------------------------------------------------------ */

int rt_parse_listen(const char *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (!s || !*s) return -EINVAL;
    const char *colon;
    char host[64];
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host) return -EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host || colon == s) return -EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    char *endp;
    long port = strtol(colon + 1, &endp, 10);
    if (!colon[1] || *endp || port < 0 || port > 65535) return -EINVAL;
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return -EINVAL;
}

/* Browsers always send Origin on a WebSocket upgrade; a request without one
 * comes from a non-browser client (a service, the load generator), which an
 * origin check cannot protect against anyway, so it is let through. */
int fo_origin_allowed(rt_fanout_t *f, const char *origin)
{
    if (f->norigins == 0 || !origin) return 1;
    for (int i = 0; i < f->norigins; i++)
        if (strcasecmp(origin, f->origins[i]) == 0) return 1;
    return 0;
}

static void set_transport(conn_t *c, int t)
{
    if (c->transport >= 0)
        atomic_fetch_sub_explicit(&c->loop->st.active[c->transport], 1, memory_order_relaxed);
    c->transport = t;
    if (t >= 0) atomic_fetch_add_explicit(&c->loop->st.active[t], 1, memory_order_relaxed);
}

/* ---- the output queue ------------------------------------------------------------ */

/* Which encoding of an event this connection gets (fixed once it streams). */
static int is_sse(const conn_t *c)
{
    return c->route >= ROUTE_SSE_INTENT;
}

static void q_push(conn_t *c, qitem_t it)
{
    if (c->qcount == c->qcap) {
        size_t ncap = c->qcap ? c->qcap * 2 : 8;
        qitem_t *nq = malloc(ncap * sizeof *nq);
        if (!nq) abort();
        for (size_t i = 0; i < c->qcount; i++)
            nq[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = nq;
        c->qcap = ncap;
        c->qhead = 0;
    }
    c->q[(c->qhead + c->qcount) % c->qcap] = it;
    c->qcount++;
    c->queued_bytes += it.len;
}

static void q_release(qitem_t *it)
{
    if (it->ev) rt_event_unref(it->ev);
    if (it->owned) free(it->buf);
}

static void mark_dirty(conn_t *c)
{
    if (c->dirty) return;
    loop_t *l = c->loop;
    if (l->ndirty == l->capdirty) {
        l->capdirty = l->capdirty ? l->capdirty * 2 : 64;
        l->dirty = realloc(l->dirty, l->capdirty * sizeof *l->dirty);
        if (!l->dirty) abort();
    }
    l->dirty[l->ndirty++] = c;
    c->dirty = 1;
}

void fo_flush_dirty(loop_t *l)
{
    /* conn_flush may close a connection; its memory stays valid until the
     * close callback, which runs on a later loop iteration. */
    for (size_t i = 0; i < l->ndirty; i++) {
        conn_t *c = l->dirty[i];
        c->dirty = 0;
        conn_flush(c);
    }
    l->ndirty = 0;
}

/* Queues bytes we own (copied) or static bytes (owned = 0, never freed). */
static void send_bytes(conn_t *c, const char *data, size_t len, int copy)
{
    if (c->state == C_CLOSING && !c->close_after_flush) return;
    qitem_t it = {.len = (uint32_t)len, .owned = (uint8_t)copy};
    if (copy) {
        it.buf = malloc(len ? len : 1);
        if (!it.buf) abort();
        memcpy(it.buf, data, len);
    } else {
        it.buf = (char *)data;
    }
    q_push(c, it);
    mark_dirty(c);
}

void fo_send_owned(conn_t *c, char *data, size_t len)
{
    qitem_t it = {.buf = data, .len = (uint32_t)len, .owned = 1};
    q_push(c, it);
    mark_dirty(c);
}

static void close_slow(conn_t *c);

/* Queues one event for a streaming client. */
static void send_event(conn_t *c, rt_event_t *ev)
{
    size_t len = is_sse(c) ? ev->sse_len : ev->ws_frame_len;
    if (c->queued_bytes + len > (size_t)c->loop->f->cfg->client_max_queued) {
        close_slow(c);
        return;
    }
    qitem_t it = {.ev = rt_event_ref(ev), .len = (uint32_t)len};
    q_push(c, it);
    STAT_ADD(c->loop, events_sent, 1);
    mark_dirty(c);
}

const double rt_latency_bounds_s[RT_LATENCY_NB] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

/* One writer (the loop thread), so a relaxed load and store suffice: no
 * locked instruction per delivery. */
#define LAT_ADD(l, field, n)                                                                       \
    atomic_store_explicit(&(l)->st.field,                                                          \
                          atomic_load_explicit(&(l)->st.field, memory_order_relaxed) + (n),        \
                          memory_order_relaxed)

static void lat_record(loop_t *l, uint64_t now_ns, const rt_event_t *ev)
{
    uint64_t ns = now_ns > ev->recv_ns ? now_ns - ev->recv_ns : 0;
    double s = (double)ns / 1e9;
    int b = 0;
    while (b < RT_LATENCY_NB && s > rt_latency_bounds_s[b])
        b++;
    LAT_ADD(l, lat[b], 1);
    LAT_ADD(l, lat_sum_us, ns / 1000);
    LAT_ADD(l, lat_count, 1);
}

/* Releases the n oldest items (fully written). */
static void q_pop(conn_t *c, size_t n)
{
    uint64_t now = n ? rt_now_ns() : 0;
    for (size_t i = 0; i < n; i++) {
        qitem_t *it = &c->q[c->qhead];
        if (it->ev) lat_record(c->loop, now, it->ev);
        c->queued_bytes -= it->len;
        q_release(it);
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qcount--;
    }
}

/* ---- paced replay ------------------------------------------------------------------ */

static void replay_free(conn_t *c)
{
    if (!c->rp) return;
    for (size_t i = c->rp_pos; i < c->rp_n; i++)
        rt_event_unref(c->rp[i]);
    free(c->rp);
    c->rp = NULL;
    c->rp_n = c->rp_pos = 0;
    rt_seqset_close(&c->rp_seqs);
}

/* Starts replaying evs (n events, one reference each, taken over; NULL for
 * none). rp stays non-NULL while a replay runs, even an empty one after a
 * resync: that is what holds live events back until the pump releases them. */
static void replay_start(conn_t *c, rt_event_t **evs, size_t n)
{
    c->rp = evs ? evs : malloc(sizeof *c->rp);
    if (!c->rp) abort();
    c->rp_n = evs ? n : 0;
    c->rp_pos = 0;
    rt_seqset_init(&c->rp_seqs);
    for (size_t i = 0; i < c->rp_n; i++)
        rt_seqset_add(&c->rp_seqs, evs[i]->seq);
    mark_dirty(c);
}

/* Feeds the replay into the queue while less than half the bound is queued;
 * at its end, sends the live events held meanwhile (those the replay did not
 * already cover) and goes live. */
static void replay_pump(conn_t *c)
{
    if (!c->rp || c->state == C_CLOSING) return;
    size_t half = (size_t)c->loop->f->cfg->client_max_queued / 2;
    while (c->rp_pos < c->rp_n && c->queued_bytes < half) {
        rt_event_t *ev = c->rp[c->rp_pos++];
        if (matches(c, ev)) send_event(c, ev);
        rt_event_unref(ev);
    }
    if (c->rp_pos < c->rp_n) return;
    for (size_t i = 0; i < c->nheld; i++) {
        if (!rt_seqset_contains(&c->rp_seqs, c->held[i]->seq)) send_event(c, c->held[i]);
        rt_event_unref(c->held[i]);
    }
    c->nheld = 0;
    replay_free(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    c->writing = 0;
    q_pop(c, c->inflight);
    c->inflight = 0;
    c->qoff = 0;
    if (status < 0) {
        if (status != UV_ECANCELED) fo_conn_close(c);
        return;
    }
    c->last_write_ms = now_ms();
    if (c->qcount || c->rp)
        conn_flush(c);
    else if (c->close_after_flush)
        conn_linger(c);
}

static const char *item_bytes(const conn_t *c, const qitem_t *it)
{
    return it->ev ? (is_sse(c) ? it->ev->sse : it->ev->ws_frame) : it->buf;
}

/* Fills the loop's iovec array from the queue (the head item from qoff on). */
static size_t fill_iov(conn_t *c, size_t *total)
{
    loop_t *l = c->loop;
    size_t n = c->qcount < MAX_IOV ? c->qcount : MAX_IOV;
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        qitem_t *it = &c->q[(c->qhead + i) % c->qcap];
        size_t off = i == 0 ? c->qoff : 0;
        l->iov[i] = uv_buf_init((char *)item_bytes(c, it) + off, (unsigned)(it->len - off));
        *total += it->len - off;
    }
    return n;
}

/* Writes as much of the queue as the socket takes now (uv_try_write: no
 * callback, items released at once), then hands what is left to uv_write. A
 * client that keeps up therefore never has more than a few events queued, and
 * only one that does not read accumulates bytes toward its bound. */
static void conn_flush(conn_t *c)
{
    if (c->writing || uv_is_closing((uv_handle_t *)&c->tcp)) return;
    loop_t *l = c->loop;
    replay_pump(c);
    while (c->qcount) {
        size_t total;
        size_t n = fill_iov(c, &total);
        int w = uv_try_write((uv_stream_t *)&c->tcp, l->iov, (unsigned)n);
        if (w == UV_EAGAIN) w = 0;
        if (w < 0) {
            fo_conn_close(c);
            return;
        }
        if (w > 0) c->last_write_ms = now_ms();
        /* Release what went out whole; remember how far into the next item. */
        size_t written = (size_t)w, done = 0;
        while (done < n && written >= l->iov[done].len) {
            written -= l->iov[done].len;
            done++;
        }
        size_t head_off = done == 0 ? c->qoff : 0;
        q_pop(c, done);
        c->qoff = head_off + written;
        if ((size_t)w == total) {
            replay_pump(c);
            continue;
        }
        /* The socket is full: the rest goes with a callback, and the queue is
         * picked up again when it completes. */
        n = fill_iov(c, &total);
        c->wreq.data = c;
        c->inflight = n;
        c->writing = 1;
        if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, l->iov, (unsigned)n, on_write) < 0) {
            c->writing = 0;
            c->inflight = 0;
            fo_conn_close(c);
        }
        return;
    }
    if (c->close_after_flush) conn_linger(c);
}

/* ---- connection lifecycle --------------------------------------------------------- */

static void free_conn(conn_t *c)
{
    while (c->qcount) {
        q_release(&c->q[c->qhead]);
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qcount--;
    }
    free(c->q);
    for (size_t i = 0; i < c->nheld; i++)
        rt_event_unref(c->held[i]);
    free(c->held);
    replay_free(c);
    if (c->has_pend) rt_seqset_close(&c->pend);
    if (c->req) {
        rt_http_req_close(c->req);
        free(c->req);
    }
    if (c->ws) rt_ws_free(c->ws);
    free(c->pipelined);
    fo_poll_free(c);
    free(c->ids);
    free(c->key);
    free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    free_conn(h->data);
}

/* The reply of a deferred request will find no connection. */
static void detach_deferred(conn_t *c)
{
    if (c->deferred) {
        c->deferred->conn = NULL;
        c->deferred = NULL;
    }
    fo_poll_free(c);
}

void fo_conn_close(conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    loop_t *l = c->loop;
    rt_fanout_t *f = l->f;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    l->nconns--;
    set_transport(c, -1);
    if (c->ip_counted) rt_iplimit_release(&f->iplimit, c->addr);
    atomic_fetch_sub(&f->total_conns, 1);
    if (c->resume) {
        /* The journal read still running will find no connection. */
        c->resume->conn = NULL;
        atomic_store(&c->resume->gone, 1);
        c->resume = NULL;
    }
    detach_deferred(c);
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    if (l->stopping && l->nconns == 0) uv_async_send(&l->stop);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    /* On uv_close this runs first with UV_ECANCELED, the conn still valid. */
    if (status < 0 && status != UV_ECANCELED) fo_conn_close(req->data);
}

/* The queue is written: send FIN and wait for the peer to close its side
 * (on_read sees EOF), or CLOSE_GRACE_MS. Closing at once while the peer's
 * bytes sit unread in our receive buffer makes the kernel send RST, and an
 * RST can make the peer lose the close frame or error response just sent
 * (a WebSocket client then sees 1006 instead of our code). */
static void conn_linger(conn_t *c)
{
    if (c->shut || uv_is_closing((uv_handle_t *)&c->tcp)) return;
    c->shut = 1;
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) fo_conn_close(c);
}

/* Closes once the queue is written, the peer has closed too, or
 * CLOSE_GRACE_MS has passed. Input from here on is read and discarded. */
void fo_conn_close_after_flush(conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    /* Refused connections were never reading: read now, to drain. */
    if (c->state != C_CLOSING) (void)uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->state = C_CLOSING;
    c->close_after_flush = 1;
    c->since_ms = now_ms();
    if (c->qcount == 0)
        conn_linger(c);
    else
        mark_dirty(c);
}

static void ws_close(conn_t *c, uint16_t code, const char *reason)
{
    if (!rt_ws_closing(ws_of(c))) {
        rt_ws_send_close(c->ws, code, reason);
        ws_take_output(c);
    }
    fo_conn_close_after_flush(c);
}

static void close_slow(conn_t *c)
{
    if (c->state == C_CLOSING) return;
    STAT_ADD(c->loop, slow_disconnects, 1);
    rt_info(COMP, "slow consumer disconnected (%zu bytes queued)", c->queued_bytes);
    /* A stalled reader will not take the close frame either; drop what is
     * queued beyond what is in flight so its memory goes now. */
    size_t keep = c->inflight ? c->inflight : (c->qoff ? 1 : 0);
    while (c->qcount > keep) {
        size_t last = (c->qhead + c->qcount - 1) % c->qcap;
        c->queued_bytes -= c->q[last].len;
        q_release(&c->q[last]);
        c->qcount--;
    }
    if (c->state == C_WS || c->state == C_WS_AUTH)
        ws_close(c, 1008, "slow consumer");
    else
        fo_conn_close_after_flush(c);
}

/* Answers an HTTP request with a JSON body and closes or keeps the connection. */
void fo_respond(conn_t *c, int status, const char *json, const char *extra, int keep_alive)
{
    char *out;
    size_t n = rt_http_format_response(&out, status, json ? "application/json" : NULL, extra, json,
                                       json ? strlen(json) : 0, keep_alive);
    fo_send_owned(c, out, n);
    if (!keep_alive) fo_conn_close_after_flush(c);
}

void fo_respond_error(conn_t *c, int status, const char *message, const char *extra,
                      rt_refuse_reason_t why)
{
    STAT_ADD(c->loop, refused[why], 1);
    json_t *j = json_pack("{s:s, s:i}", "error", message, "status", status);
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    fo_respond(c, status, body, extra, 0);
    free(body);
}

/* ---- filters and resume ------------------------------------------------------------ */

static int matches(const conn_t *c, const rt_event_t *ev)
{
    if (!(c->type_mask & (1u << ev->type))) return 0;
    if (c->route == ROUTE_SSE_INTENT) return strcmp(ev->key, c->key) == 0;
    if (c->route == ROUTE_WS_INTENTS && !c->all_ids) {
        for (int i = 0; i < c->nids; i++)
            if (strcmp(c->ids[i], ev->key) == 0) return 1;
        return 0;
    }
    return 1;
}

static void send_json(conn_t *c, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) abort();
    if (is_sse(c)) {
        /* Control messages on SSE are events of their own type. */
        json_t *parsed = json_loads(s, 0, NULL);
        const char *type = json_string_value(json_object_get(parsed, "type"));
        char *chunk;
        int n = asprintf(&chunk, "event: %s\ndata: %s\n\n", type ? type : "message", s);
        json_decref(parsed);
        if (n < 0) abort();
        fo_send_owned(c, chunk, (size_t)n);
    } else if (c->state == C_WS || c->state == C_WS_AUTH) {
        rt_ws_send_text(ws_of(c), s, strlen(s));
        ws_take_output(c);
    }
    free(s);
}

static void send_resync(conn_t *c, int64_t last_id, const char *reason)
{
    STAT_ADD(c->loop, resyncs, 1);
    send_json(c, json_pack("{s:s, s:I, s:s}", "type", "resync", "last_event_id",
                           (json_int_t)last_id, "reason", reason));
}

static _Thread_local PGconn *tl_pg;

/* Reads journal rows after `after` on this pool thread's connection
 * (reconnecting once). Returns 0 or -1. */
/* This pool thread's connection, (re)connected if needed; NULL if the
 * database cannot be reached. */
static PGconn *pool_pg(void)
{
    if (tl_pg && PQstatus(tl_pg) == CONNECTION_OK) return tl_pg;
    if (tl_pg) PQfinish(tl_pg);
    tl_pg = PQconnectdb(g_conninfo);
    if (PQstatus(tl_pg) == CONNECTION_OK) return tl_pg;
    rt_warn(COMP, "journal read: cannot connect: %s", PQerrorMessage(tl_pg));
    PQfinish(tl_pg);
    tl_pg = NULL;
    return NULL;
}

/* Each tries twice: a connection that died since its last use is noticed by
 * the first query, and the second runs on a new one. */
int fo_journal_read(int64_t after, size_t limit, rt_event_t ***evs, size_t *n,
                    int64_t *pruned_through)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *c = pool_pg();
        if (c && rt_journal_fetch_after(c, after, limit, evs, n, pruned_through) == 0) return 0;
    }
    return -1;
}

int fo_journal_head(int64_t *seq)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *c = pool_pg();
        if (c && rt_journal_head(c, seq) == 0) return 0;
    }
    return -1;
}

static void resume_work(uv_work_t *w)
{
    resume_req_t *r = w->data;
    if (atomic_load(&r->gone)) return; /* resume_done finds no connection */
    r->failed = fo_journal_read(r->after, RESUME_LIMIT + 1, &r->evs, &r->n, &r->pruned_through) < 0;
}

#define PEND_MAX_MS 30000

/* The journal read saw rows committed before its snapshot; some may not have
 * reached this loop through the bus yet. Those (neither in the window, which
 * holds what the loop has processed, nor held) are remembered so the live
 * path skips them when they arrive. Rows that fell out of the window long ago
 * would never arrive: the set is dropped after PEND_MAX_MS at the latest. */
static void note_pending(conn_t *c, rt_event_t **evs, size_t n)
{
    if (n == 0) return;
    loop_t *l = c->loop;
    rt_seqset_t seen;
    rt_seqset_init(&seen);
    for (size_t i = 0; i < l->window.count; i++)
        if (rt_window_at(&l->window, i)->seq >= evs[0]->seq)
            rt_seqset_add(&seen, rt_window_at(&l->window, i)->seq);
    for (size_t i = 0; i < c->nheld; i++)
        rt_seqset_add(&seen, c->held[i]->seq);
    if (c->has_pend) rt_seqset_close(&c->pend);
    rt_seqset_init(&c->pend);
    c->has_pend = 1;
    c->pend_until_ms = now_ms() + PEND_MAX_MS;
    for (size_t i = 0; i < n; i++)
        if (!rt_seqset_contains(&seen, evs[i]->seq)) rt_seqset_add(&c->pend, evs[i]->seq);
    rt_seqset_close(&seen);
    if (c->pend.count == 0) {
        rt_seqset_close(&c->pend);
        c->has_pend = 0;
    }
}

/* True if ev was already sent to c by a journal replay (and forgets it). */
static int already_replayed(conn_t *c, const rt_event_t *ev)
{
    if (!c->has_pend || !rt_seqset_remove(&c->pend, ev->seq)) return 0;
    if (c->pend.count == 0) {
        rt_seqset_close(&c->pend);
        c->has_pend = 0;
    }
    return 1;
}

static void resume_done(uv_work_t *w, int status)
{
    resume_req_t *r = w->data;
    conn_t *c = r->conn;
    if (c && status == 0) {
        c->resume = NULL;
        const char *why = r->failed                      ? "journal unavailable"
                          : r->pruned_through > r->after ? "past retention"
                          : r->n > RESUME_LIMIT          ? "too far behind"
                                                         : NULL;
        if (why) {
            /* The client reloads its state and goes on from the live events
             * held meanwhile. */
            send_resync(c, r->after, why);
            replay_start(c, NULL, 0);
        } else {
            note_pending(c, r->evs, r->n);
            replay_start(c, r->evs, r->n); /* takes the references */
            r->evs = NULL;
            r->n = 0;
        }
        fo_flush_dirty(c->loop);
    }
    for (size_t i = 0; i < r->n; i++)
        rt_event_unref(r->evs[i]);
    free(r->evs);
    free(r);
}

static void start_resume(conn_t *c, int64_t after)
{
    loop_t *l = c->loop;
    STAT_ADD(l, resumes, 1);
    if (c->resume || c->rp) return; /* one at a time */
    long pos = rt_window_find(&l->window, after);
    if (pos >= 0) {
        size_t n = l->window.count - (size_t)pos - 1;
        rt_event_t **evs = malloc((n ? n : 1) * sizeof *evs);
        if (!evs) abort();
        for (size_t i = 0; i < n; i++)
            evs[i] = rt_event_ref(rt_window_at(&l->window, (size_t)pos + 1 + i));
        replay_start(c, evs, n);
        return;
    }
    resume_req_t *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->conn = c;
    r->after = after;
    r->work.data = r;
    c->resume = r;
    if (uv_queue_work(&l->uv, &r->work, resume_work, resume_done) != 0) {
        c->resume = NULL;
        free(r);
        send_resync(c, after, "journal unavailable");
    }
}

/* ---- WebSocket ---------------------------------------------------------------------- */

static void ws_take_output(conn_t *c)
{
    char *buf;
    size_t n = rt_ws_take_output(c->ws, &buf);
    if (n) fo_send_owned(c, buf, n);
}

static json_t *ids_array(conn_t *c)
{
    json_t *a = json_array();
    for (int i = 0; i < c->nids; i++)
        json_array_append_new(a, json_string(c->ids[i]));
    return a;
}

static int has_id(conn_t *c, const char *id)
{
    for (int i = 0; i < c->nids; i++)
        if (strcmp(c->ids[i], id) == 0) return 1;
    return 0;
}

static void add_id(conn_t *c, const char *id)
{
    if (has_id(c, id) || c->nids >= RT_WS_MAX_IDS) return;
    if (!c->ids) {
        c->ids = calloc(RT_WS_MAX_IDS, sizeof *c->ids);
        if (!c->ids) abort();
    }
    snprintf(c->ids[c->nids++], RT_WS_MAX_ID_LEN, "%s", id);
}

static void remove_id(conn_t *c, const char *id)
{
    for (int i = 0; i < c->nids; i++) {
        if (strcmp(c->ids[i], id) == 0) {
            memmove(c->ids[i], c->ids[c->nids - 1], RT_WS_MAX_ID_LEN);
            c->nids--;
            return;
        }
    }
}

static int rate_ok(conn_t *c)
{
    double rate = (double)c->loop->f->cfg->client_msg_rate;
    uint64_t now = now_ms();
    c->tokens += (double)(now - c->tokens_ms) * rate / 1000.0;
    if (c->tokens > rate) c->tokens = rate;
    c->tokens_ms = now;
    if (c->tokens < 1.0) return 0;
    c->tokens -= 1.0;
    return 1;
}

static void go_live(conn_t *c)
{
    set_transport(c, RT_TRANSPORT_WS);
    c->state = C_WS;
    c->since_ms = c->last_ping_ms = now_ms();
    if (c->pending_resume >= 0) {
        int64_t after = c->pending_resume;
        c->pending_resume = -1;
        start_resume(c, after);
    }
}

static void on_ws_text(void *ud, const char *msg, size_t len)
{
    conn_t *c = ud;
    if (c->state == C_CLOSING) return;
    if (!rate_ok(c)) {
        STAT_ADD(c->loop, refused[RT_REFUSE_RATE_LIMIT], 1);
        ws_close(c, 1008, "rate limit exceeded");
        return;
    }
    rt_ws_client_msg_t *m = malloc(sizeof *m);
    if (!m) abort();
    char err[160];
    if (rt_ws_parse_client_msg(msg, len, m, err, sizeof err) < 0) {
        if (c->state == C_WS_AUTH) {
            STAT_ADD(c->loop, refused[RT_REFUSE_AUTH], 1);
            ws_close(c, 1008, "authentication required");
        } else {
            send_json(c, json_pack("{s:s, s:s}", "type", "error", "message", err));
        }
        free(m);
        return;
    }
    rt_fanout_t *f = c->loop->f;
    if (c->state == C_WS_AUTH) {
        const char *why;
        if (m->type != RT_WS_MSG_AUTH || rt_auth_check(&f->auth, m->token, &why) < 0) {
            STAT_ADD(c->loop, refused[RT_REFUSE_AUTH], 1);
            ws_close(c, 1008, m->type == RT_WS_MSG_AUTH ? why : "authentication required");
        } else {
            go_live(c);
            send_json(c, json_pack("{s:s}", "type", "authenticated"));
        }
        free(m);
        return;
    }
    switch (m->type) {
    case RT_WS_MSG_PING:
        send_json(c, json_pack("{s:s}", "type", "pong"));
        break;
    case RT_WS_MSG_SUBSCRIBE:
        c->all_ids = 0;
        for (int i = 0; i < m->nids; i++)
            add_id(c, m->ids[i]);
        send_json(c, json_pack("{s:s, s:o}", "type", "subscribed", "intent_ids", ids_array(c)));
        break;
    case RT_WS_MSG_UNSUBSCRIBE:
        c->all_ids = 0;
        for (int i = 0; i < m->nids; i++)
            remove_id(c, m->ids[i]);
        send_json(c, json_pack("{s:s, s:o}", "type", "unsubscribed", "intent_ids", ids_array(c)));
        break;
    case RT_WS_MSG_RESUME:
        start_resume(c, m->last_event_id);
        break;
    case RT_WS_MSG_AUTH:
        send_json(c, json_pack("{s:s}", "type", "authenticated"));
        break;
    }
    free(m);
    fo_flush_dirty(c->loop);
}

static void on_ws_pong(void *ud)
{
    conn_t *c = ud;
    c->missed_pongs = 0;
}

static void on_ws_close(void *ud, uint16_t code)
{
    conn_t *c = ud;
    (void)code;
    ws_take_output(c);
    fo_conn_close_after_flush(c);
}

static const rt_ws_callbacks_t ws_cbs = {on_ws_text, on_ws_pong, on_ws_close};

/* The connection's wslay context, created on first need. An idle WebSocket
 * client needs none: server frames are pre-encoded (events, pings), so a
 * context exists only while the client's bytes are being read or a control
 * reply is composed, and is freed again at rest (ws_release_if_idle). That
 * keeps wslay's ~9 KB off every idle connection. */
static rt_ws_t *ws_of(conn_t *c)
{
    if (!c->ws) c->ws = rt_ws_new((size_t)c->loop->f->cfg->ws_max_message, &ws_cbs, c);
    return c->ws;
}

static void ws_release_if_idle(conn_t *c)
{
    if (c->ws && rt_ws_at_rest(c->ws)) {
        rt_ws_free(c->ws);
        c->ws = NULL;
    }
}

/* ---- request handling --------------------------------------------------------------- */

/* Parses "a,b" (and repeated keys) of event type names into a mask.
 * Returns 0, or -1 naming the bad type in bad. */
int fo_parse_types(const char *query, size_t qlen, unsigned *mask, char *bad, size_t badlen)
{
    char val[512];
    int any = 0;
    *mask = 0;
    for (int i = 0;; i++) {
        int n = rt_http_query_get(query, qlen, "types", i, val, sizeof val);
        if (n == -1) break;
        if (n < 0) {
            snprintf(bad, badlen, "types");
            return -1;
        }
        char *save = NULL;
        for (char *t = strtok_r(val, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int ty = rt_event_type_from_name(t);
            if (ty < 0) {
                snprintf(bad, badlen, "%.60s", t);
                return -1;
            }
            *mask |= 1u << ty;
            any = 1;
        }
    }
    if (!any) *mask = RT_BUS_ALL_TYPES;
    return 0;
}

/* Sets c's type filter from ?types=; answers 400 and returns -1 if bad. */
static int set_types_filter(conn_t *c, const char *q, size_t qlen)
{
    char bad[64];
    if (fo_parse_types(q, qlen, &c->type_mask, bad, sizeof bad) == 0) return 0;
    char msg[128];
    snprintf(msg, sizeof msg, "unknown event type in types: %s", bad);
    fo_respond_error(c, 400, msg, NULL, RT_REFUSE_BAD_REQUEST);
    return -1;
}

int fo_parse_last_id(const char *s, int64_t *out)
{
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0) return -1;
    *out = v;
    return 1;
}

/* Which route a path names; -1 for health paths (handled apart), -3 the
 * polling endpoint, -2 unknown. */
static int route_of(const char *path, const char **intent_id)
{
    static const char sse_intent[] = "/events/intents/";
    if (strcmp(path, "/ws/intents") == 0) return ROUTE_WS_INTENTS;
    if (strcmp(path, "/ws/dashboard") == 0) return ROUTE_WS_DASHBOARD;
    if (strcmp(path, "/events/audit-logs") == 0) return ROUTE_SSE_AUDIT;
    if (strcmp(path, "/api/v2/events/stream") == 0) return ROUTE_SSE_STREAM;
    if (strncmp(path, sse_intent, sizeof sse_intent - 1) == 0 && path[sizeof sse_intent - 1] &&
        !strchr(path + sizeof sse_intent - 1, '/')) {
        *intent_id = path + sizeof sse_intent - 1;
        return ROUTE_SSE_INTENT;
    }
    if (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
        strcmp(path, "/health/realtime") == 0)
        return -1;
    if (strcmp(path, "/api/v1/events") == 0) return -3;
    return -2;
}

/* The client's token, from the Authorization header or access_token. */
static const char *request_token(conn_t *c, char *buf, size_t cap)
{
    const char *t = rt_auth_bearer(rt_http_req_header(c->req, "Authorization"));
    if (t) return t;
    size_t qlen;
    const char *q = rt_http_req_query(c->req, &qlen);
    if (rt_http_query_get(q, qlen, "access_token", 0, buf, cap) > 0) return buf;
    return NULL;
}

/* A plain HTTP request (SSE, polling) without a valid token, when tokens are
 * required: answers 401 and returns 1. */
int fo_refuse_unauthorized(conn_t *c)
{
    rt_fanout_t *f = c->loop->f;
    if (!rt_auth_enabled(&f->auth)) return 0;
    char tokbuf[4096];
    const char *tok = request_token(c, tokbuf, sizeof tokbuf);
    const char *why;
    if (rt_auth_check(&f->auth, tok, &why) == 0) return 0;
    fo_respond_error(c, 401, why, "WWW-Authenticate: Bearer\r\n", RT_REFUSE_AUTH);
    return 1;
}

static void start_ws(conn_t *c, route_t route, const char *rest, size_t rest_len)
{
    rt_fanout_t *f = c->loop->f;
    char accept[29];
    const char *reason = NULL;
    int st = rt_ws_check_handshake(c->req, accept, &reason);
    if (st == 426) {
        fo_respond_error(c, 426, "unsupported WebSocket version", "Sec-WebSocket-Version: 13\r\n",
                         RT_REFUSE_BAD_REQUEST);
        return;
    }
    if (st != 0) {
        fo_respond_error(c, 400, reason ? reason : "bad WebSocket handshake", NULL,
                         RT_REFUSE_BAD_REQUEST);
        return;
    }
    if (!fo_origin_allowed(f, rt_http_req_header(c->req, "Origin"))) {
        fo_respond_error(c, 403, "origin not allowed", NULL, RT_REFUSE_ORIGIN);
        return;
    }
    size_t qlen;
    const char *q = rt_http_req_query(c->req, &qlen);
    c->route = route;
    c->all_ids = 1;
    char val[RT_WS_MAX_ID_LEN * 4];
    if (route == ROUTE_WS_INTENTS) {
        c->type_mask = 1u << RT_EV_INTENT_UPDATE;
        for (int i = 0;; i++) {
            int n = rt_http_query_get(q, qlen, "intent_ids", i, val, sizeof val);
            if (n == -1) break;
            if (n < 0) {
                fo_respond_error(c, 400, "bad intent_ids", NULL, RT_REFUSE_BAD_REQUEST);
                return;
            }
            char *save = NULL;
            for (char *t = strtok_r(val, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (strlen(t) >= RT_WS_MAX_ID_LEN) {
                    fo_respond_error(c, 400, "intent id too long", NULL, RT_REFUSE_BAD_REQUEST);
                    return;
                }
                add_id(c, t);
                c->all_ids = 0;
            }
        }
    } else {
        if (set_types_filter(c, q, qlen) < 0) return;
    }
    int64_t last = -1;
    char idbuf[32];
    if (rt_http_query_get(q, qlen, "last_event_id", 0, idbuf, sizeof idbuf) >= 0 &&
        fo_parse_last_id(idbuf, &last) < 0) {
        fo_respond_error(c, 400, "last_event_id must be a non-negative integer", NULL,
                         RT_REFUSE_BAD_REQUEST);
        return;
    }
    int authed = !rt_auth_enabled(&f->auth);
    if (!authed) {
        char tokbuf[4096];
        const char *tok = request_token(c, tokbuf, sizeof tokbuf);
        const char *why;
        if (tok) {
            if (rt_auth_check(&f->auth, tok, &why) < 0) {
                fo_respond_error(c, 401, why, "WWW-Authenticate: Bearer\r\n", RT_REFUSE_AUTH);
                return;
            }
            authed = 1;
        }
    }

    char *resp;
    size_t n = rt_ws_format_101(&resp, accept);
    fo_send_owned(c, resp, n);
    rt_http_req_close(c->req);
    free(c->req);
    c->req = NULL;
    c->tokens = (double)f->cfg->client_msg_rate;
    c->tokens_ms = now_ms();
    c->pending_resume = last;
    if (authed) {
        go_live(c);
    } else {
        /* Nothing is sent before the auth message arrives. */
        c->state = C_WS_AUTH;
        c->since_ms = now_ms();
    }
    if (rest_len) {
        rt_ws_feed(ws_of(c), rest, rest_len);
        if (c->ws) {
            ws_take_output(c);
            ws_release_if_idle(c);
        }
    }
}

static void start_sse(conn_t *c, route_t route, const char *intent_id)
{
    size_t qlen;
    const char *q = rt_http_req_query(c->req, &qlen);
    if (fo_refuse_unauthorized(c)) return;
    c->route = route;
    if (route == ROUTE_SSE_INTENT) {
        c->type_mask = 1u << RT_EV_INTENT_UPDATE;
        size_t idlen = strlen(intent_id);
        char *decoded = malloc(idlen + 1);
        if (!decoded) abort();
        if (rt_http_path_decode(intent_id, idlen, decoded, idlen + 1) <= 0) {
            free(decoded);
            fo_respond_error(c, 400, "bad intent id", NULL, RT_REFUSE_BAD_REQUEST);
            return;
        }
        c->key = decoded;
    } else if (route == ROUTE_SSE_AUDIT) {
        c->type_mask = 1u << RT_EV_AUDIT_LOG;
    } else {
        if (set_types_filter(c, q, qlen) < 0) return;
    }
    int64_t last = -1;
    const char *h = rt_http_req_header(c->req, "Last-Event-ID");
    char idbuf[32];
    if (!h && rt_http_query_get(q, qlen, "last_event_id", 0, idbuf, sizeof idbuf) >= 0) h = idbuf;
    if (h && fo_parse_last_id(h, &last) < 0) {
        fo_respond_error(c, 400, "Last-Event-ID must be a non-negative integer", NULL,
                         RT_REFUSE_BAD_REQUEST);
        return;
    }
    char cors[320];
    fo_cors_headers(c, cors, sizeof cors);
    char *head;
    int n = asprintf(&head,
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n"
                     "X-Accel-Buffering: no\r\n"
                     "%s"
                     "\r\n"
                     "retry: 3000\n\n",
                     cors);
    if (n < 0) abort();
    fo_send_owned(c, head, (size_t)n);
    rt_http_req_close(c->req);
    free(c->req);
    c->req = NULL;
    c->state = C_SSE;
    set_transport(c, RT_TRANSPORT_SSE);
    /* Reading goes on, only to notice when the client goes away. */
    c->since_ms = c->last_write_ms = now_ms();
    if (last >= 0) start_resume(c, last);
}

/* Handles the complete request in c->req. rest: bytes after it. Returns 1 if
 * the connection stays in HTTP (keep-alive) and rest should be parsed as the
 * next request. */
static int handle_request(conn_t *c, const char *rest, size_t rest_len)
{
    rt_http_req_t *req = c->req;
    char path[1024];
    if (rt_http_req_path(req, path, sizeof path) < 0) {
        fo_respond_error(c, 400, "path too long", NULL, RT_REFUSE_BAD_REQUEST);
        return 0;
    }
    int keep_alive = req->keep_alive && !c->loop->stopping;
    const char *intent_id = NULL;
    int route = route_of(path, &intent_id);
    const handler_t *h = route == -2 ? fo_find_handler(c->loop->f, path) : NULL;
    if (route == -2 && !h) {
        fo_respond_error(c, 404, "not found", NULL, RT_REFUSE_NOT_FOUND);
        return 0;
    }
    if (req->method == HTTP_OPTIONS) {
        char cors[320], extra[600];
        fo_cors_headers(c, cors, sizeof cors);
        snprintf(extra, sizeof extra,
                 "%sAccess-Control-Allow-Methods: GET, OPTIONS\r\n"
                 "Access-Control-Allow-Headers: Authorization, Last-Event-ID, Content-Type\r\n"
                 "Access-Control-Max-Age: 600\r\nAllow: GET, OPTIONS\r\n",
                 cors);
        fo_respond(c, 204, NULL, extra, keep_alive);
        return keep_alive;
    }
    if (req->method != HTTP_GET) {
        fo_respond_error(c, 405, "method not allowed", "Allow: GET, OPTIONS\r\n", RT_REFUSE_METHOD);
        return 0;
    }
    if (route == -1) {
        fo_handle_health(c, path, keep_alive);
        return keep_alive;
    }
    if (h) return fo_call_handler(c, h, path, rest, rest_len, keep_alive);
    if (route == -3) return fo_start_poll(c, rest, rest_len, keep_alive);
    if (route == ROUTE_WS_INTENTS || route == ROUTE_WS_DASHBOARD) {
        start_ws(c, (route_t)route, rest, rest_len);
        return 0;
    }
    start_sse(c, (route_t)route, intent_id);
    return 0;
}

void fo_on_http_data(conn_t *c, const char *data, size_t len)
{
    while (c->state == C_HTTP && len > 0) {
        size_t used = 0;
        rt_http_result_t r = rt_http_req_feed(c->req, data, len, &used);
        if (r == RT_HTTP_NEED_MORE) return;
        if (r == RT_HTTP_ERROR) {
            int st = c->req->error_status ? c->req->error_status : 400;
            fo_respond_error(c, st, c->req->error_reason ? c->req->error_reason : "bad request",
                             NULL, st == 431 ? RT_REFUSE_HEADER_TOO_LARGE : RT_REFUSE_BAD_REQUEST);
            return;
        }
        data += used;
        len -= used;
        if (!handle_request(c, data, len)) return;
        rt_http_req_reset(c->req);
        c->since_ms = now_ms();
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn_t *c = h->data;
    /* One buffer per loop: every read is consumed before the next one. */
    *buf = uv_buf_init(c->loop->readbuf, READ_BUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread < 0) {
        fo_conn_close(c);
        return;
    }
    if (nread == 0) return;
    switch (c->state) {
    case C_HTTP:
        fo_on_http_data(c, buf->base, (size_t)nread);
        break;
    case C_HTTP_WAIT:
        fo_keep_pipelined(c, buf->base, (size_t)nread);
        break;
    case C_WS:
    case C_WS_AUTH:
        rt_ws_feed(ws_of(c), buf->base, (size_t)nread);
        if (c->ws) {
            ws_take_output(c);
            ws_release_if_idle(c);
        }
        break;
    default:
        break;
    }
    fo_flush_dirty(c->loop);
}

/* ---- accepting ------------------------------------------------------------------------ */

static void addr_key(const struct sockaddr_storage *ss, unsigned char out[16])
{
    memset(out, 0, 16);
    if (ss->ss_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    loop_t *l = server->data;
    rt_fanout_t *f = l->f;
    if (status < 0) {
        rt_warn(COMP, "accept: %s", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->loop = l;
    c->transport = -1;
    c->pending_resume = -1;
    uv_tcp_init(&l->uv, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->next = l->conns;
    if (l->conns) l->conns->prev = c;
    l->conns = c;
    l->nconns++;
    atomic_fetch_add(&f->total_conns, 1);
    STAT_ADD(l, accepted, 1);
    c->state = C_HTTP;
    c->since_ms = now_ms();
    c->req = malloc(sizeof *c->req);
    if (!c->req) abort();
    rt_http_req_init(c->req, MAX_POST_BODY);
    set_transport(c, RT_TRANSPORT_HTTP);

    struct sockaddr_storage peer;
    int plen = sizeof peer;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0) addr_key(&peer, c->addr);
    if (atomic_load(&f->total_conns) > f->cfg->max_conns) {
        fo_respond_error(c, 503, "server at connection limit", "Retry-After: 5\r\n",
                         RT_REFUSE_MAX_CONNS);
    } else if (!rt_iplimit_acquire(&f->iplimit, c->addr)) {
        fo_respond_error(c, 429, "too many connections from this address", "Retry-After: 5\r\n",
                         RT_REFUSE_PER_IP);
    } else {
        c->ip_counted = 1;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    fo_flush_dirty(l);
}

/* ---- the loop: events, timers, stop ------------------------------------------------------ */

static void recover_overflow(loop_t *l)
{
    STAT_ADD(l, ring_overflows, 1);
    rt_warn(COMP, "loop %d fell behind the bus (ring overflow): stream clients will resume", l->id);
    /* The window now has a hole, so resumes must come from the journal. */
    rt_window_clear(&l->window);
    for (conn_t *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == C_WS || c->state == C_WS_AUTH)
            ws_close(c, 1013, "server fell behind: resume with your last id");
        else if (c->state == C_SSE)
            fo_conn_close_after_flush(c);
    }
}

static void on_wake(uv_async_t *h)
{
    loop_t *l = h->data;
    fo_run_deferred(l);
    if (rt_bus_take_recovery(l->sub)) recover_overflow(l);
    rt_event_t *evs[DRAIN_BATCH];
    size_t n;
    while ((n = rt_bus_drain(l->sub, evs, DRAIN_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            rt_event_t *ev = evs[i];
            rt_window_push(&l->window, ev);
            for (conn_t *c = l->conns; c; c = c->next) {
                if (c->poll) fo_poll_offer(c, ev);
                if ((c->state != C_WS && c->state != C_SSE) || !matches(c, ev)) continue;
                if (already_replayed(c, ev)) continue;
                if (c->resume || c->rp) {
                    if (c->nheld == c->capheld) {
                        c->capheld = c->capheld ? c->capheld * 2 : 64;
                        c->held = realloc(c->held, c->capheld * sizeof *c->held);
                        if (!c->held) abort();
                    }
                    c->held[c->nheld++] = rt_event_ref(ev);
                } else {
                    send_event(c, ev);
                }
            }
            rt_event_unref(ev);
            /* Several events per write, but not a whole batch per client:
             * a reader that keeps up must not look slow. */
            if ((i & (FLUSH_EVERY - 1)) == FLUSH_EVERY - 1) fo_flush_dirty(l);
        }
        fo_flush_dirty(l);
        if (n < DRAIN_BATCH) break;
    }
    fo_poll_settle(l, 0);
    fo_flush_dirty(l);
}

static const char keepalive_comment[] = ": keepalive\n\n";
static const char ping_frame[] = "\x89\x00"; /* FIN, ping, no payload, unmasked */

static void on_tick(uv_timer_t *t)
{
    loop_t *l = t->data;
    const rt_config_t *cfg = l->f->cfg;
    uint64_t now = now_ms();
    for (conn_t *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->has_pend && now > c->pend_until_ms) {
            rt_seqset_close(&c->pend);
            c->has_pend = 0;
        }
        switch (c->state) {
        case C_HTTP:
            if (now - c->since_ms > (uint64_t)cfg->header_timeout_ms) {
                STAT_ADD(l, refused[RT_REFUSE_HEADER_TIMEOUT], 1);
                fo_respond(c, 408, "{\"error\":\"request timeout\",\"status\":408}", NULL, 0);
            }
            break;
        case C_WS_AUTH:
            if (now - c->since_ms > AUTH_TIMEOUT_MS) {
                STAT_ADD(l, refused[RT_REFUSE_AUTH], 1);
                ws_close(c, 1008, "authentication required");
            }
            break;
        case C_WS:
            if (now - c->last_ping_ms >= (uint64_t)cfg->ping_interval_ms) {
                if (c->missed_pongs >= 2) {
                    STAT_ADD(l, ping_timeouts, 1);
                    ws_close(c, 1001, "ping timeout");
                    break;
                }
                send_bytes(c, ping_frame, sizeof ping_frame - 1, 0);
                c->missed_pongs++;
                c->last_ping_ms = now;
            }
            break;
        case C_SSE:
            if (now - c->last_write_ms >= (uint64_t)cfg->keepalive_interval_ms && c->qcount == 0) {
                send_bytes(c, keepalive_comment, sizeof keepalive_comment - 1, 0);
                c->last_write_ms = now;
            }
            break;
        case C_CLOSING:
            if (c->close_after_flush && now - c->since_ms > CLOSE_GRACE_MS) fo_conn_close(c);
            break;
        case C_HTTP_WAIT:
            break; /* the handler answers (or the shutdown does) */
        }
    }
    fo_poll_settle(l, 1);
    fo_flush_dirty(l);
}

static void close_loop_handles(loop_t *l)
{
    fo_close_deferred(l);
    if (!uv_is_closing((uv_handle_t *)&l->wake)) uv_close((uv_handle_t *)&l->wake, NULL);
    if (!uv_is_closing((uv_handle_t *)&l->stop)) uv_close((uv_handle_t *)&l->stop, NULL);
    if (!uv_is_closing((uv_handle_t *)&l->tick)) uv_close((uv_handle_t *)&l->tick, NULL);
    if (!uv_is_closing((uv_handle_t *)&l->deadline)) uv_close((uv_handle_t *)&l->deadline, NULL);
}

static void on_deadline(uv_timer_t *t)
{
    loop_t *l = t->data;
    for (conn_t *c = l->conns, *next; c; c = next) {
        next = c->next;
        fo_conn_close(c);
    }
    close_loop_handles(l);
}

static void on_stop(uv_async_t *h)
{
    loop_t *l = h->data;
    if (!l->stopping) {
        l->stopping = 1;
        if (!uv_is_closing((uv_handle_t *)&l->server)) uv_close((uv_handle_t *)&l->server, NULL);
        for (conn_t *c = l->conns, *next; c; c = next) {
            next = c->next;
            if (c->state == C_WS || c->state == C_WS_AUTH)
                ws_close(c, 1001, "server shutting down");
            else if (c->state == C_SSE || c->state == C_HTTP)
                fo_conn_close_after_flush(c);
            else if (c->state == C_HTTP_WAIT) {
                detach_deferred(c);
                c->state = C_HTTP;
                fo_respond(c, 503, "{\"error\":\"server shutting down\",\"status\":503}", NULL, 0);
            }
        }
        fo_flush_dirty(l);
        uv_timer_start(&l->deadline, on_deadline, (uint64_t)l->f->cfg->shutdown_timeout_ms, 0);
    }
    if (l->nconns == 0) close_loop_handles(l);
}

static void *loop_main(void *arg)
{
    loop_t *l = arg;
    char name[16];
    snprintf(name, sizeof name, "fanout-%d", l->id);
    rt_log_thread_name(name);
    uv_run(&l->uv, UV_RUN_DEFAULT);
    return NULL;
}

static void wake_cb(void *arg)
{
    uv_async_send(arg);
}

/* ---- the pool ------------------------------------------------------------------------------ */

rt_fanout_t *rt_fanout_new(const rt_config_t *cfg, rt_bus_t *bus, rt_listener_t *listener,
                           char *err, size_t errlen)
{
    rt_fanout_t *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->cfg = cfg;
    f->bus = bus;
    f->listener = listener;
    if (rt_parse_listen(cfg->listen, &f->addr) < 0) {
        snprintf(err, errlen, "--listen: invalid address '%s': expected HOST:PORT",
                 cfg->listen ? cfg->listen : "");
        free(f);
        return NULL;
    }
    g_conninfo = cfg->database_url;
    f->nloops =
        cfg->fanout_threads > 0 ? (int)cfg->fanout_threads : (int)uv_available_parallelism();
    if (f->nloops < 1) f->nloops = 1;
    rt_auth_init(&f->auth, cfg->auth_token, cfg->jwt_secret);
    rt_iplimit_init(&f->iplimit, (uint32_t)cfg->max_conns_per_ip);
    atomic_init(&f->total_conns, 0);
    if (cfg->allowed_origins && *cfg->allowed_origins) {
        char *copy = strdup(cfg->allowed_origins), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            f->origins = realloc(f->origins, sizeof(char *) * (size_t)(f->norigins + 1));
            if (!f->origins) abort();
            f->origins[f->norigins++] = strdup(t);
        }
        free(copy);
    }
    uint64_t tick = 1000;
    int64_t candidates[] = {cfg->ping_interval_ms / 2, cfg->keepalive_interval_ms / 2,
                            cfg->header_timeout_ms / 2};
    for (size_t i = 0; i < 3; i++)
        if (candidates[i] > 0 && (uint64_t)candidates[i] < tick) tick = (uint64_t)candidates[i];
    f->tick_ms = tick < 20 ? 20 : tick;

    f->loops = calloc((size_t)f->nloops, sizeof *f->loops);
    if (!f->loops) abort();
    for (int i = 0; i < f->nloops; i++) {
        loop_t *l = &f->loops[i];
        l->f = f;
        l->id = i;
        l->fd = -1;
        l->readbuf = malloc(READ_BUF);
        if (!l->readbuf) abort();
        uv_loop_init(&l->uv);
        pthread_mutex_init(&l->dmu, NULL);
        uv_async_init(&l->uv, &l->wake, on_wake);
        uv_async_init(&l->uv, &l->stop, on_stop);
        uv_timer_init(&l->uv, &l->tick);
        uv_timer_init(&l->uv, &l->deadline);
        l->wake.data = l->stop.data = l->tick.data = l->deadline.data = l;
        rt_window_init(&l->window, (size_t)cfg->replay_window);
        char name[32];
        snprintf(name, sizeof name, "fanout-%d", i);
        l->sub = rt_bus_subscribe(bus, name, (unsigned)cfg->bus_ring_size, RT_BUS_ALL_TYPES,
                                  wake_cb, &l->wake);
        if (!l->sub) abort();
    }
    return f;
}

static int bind_socket(rt_fanout_t *f, const struct sockaddr_storage *addr)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    socklen_t len =
        addr->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (bind(fd, (const struct sockaddr *)addr, len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    (void)f;
    return fd;
}

int rt_fanout_start(rt_fanout_t *f)
{
    struct sockaddr_storage addr = f->addr;
    for (int i = 0; i < f->nloops; i++) {
        int fd = bind_socket(f, &addr);
        if (fd < 0) {
            rt_error(COMP, "cannot listen on %s: %s", f->cfg->listen, strerror(-fd));
            for (int j = 0; j < i; j++)
                close(f->loops[j].fd), f->loops[j].fd = -1;
            return fd;
        }
        if (i == 0) {
            /* With port 0 the kernel picked one: every loop binds that one. */
            socklen_t len = sizeof addr;
            getsockname(fd, (struct sockaddr *)&addr, &len);
            f->port = ntohs(addr.ss_family == AF_INET ? ((struct sockaddr_in *)&addr)->sin_port
                                                      : ((struct sockaddr_in6 *)&addr)->sin6_port);
        }
        f->loops[i].fd = fd;
    }
    for (int i = 0; i < f->nloops; i++) {
        loop_t *l = &f->loops[i];
        uv_tcp_init(&l->uv, &l->server);
        l->server.data = l;
        int rc = uv_tcp_open(&l->server, l->fd);
        if (rc == 0) rc = uv_listen((uv_stream_t *)&l->server, 1024, on_connection);
        if (rc < 0) {
            rt_error(COMP, "cannot listen on %s: %s", f->cfg->listen, uv_strerror(rc));
            return rc;
        }
        uv_timer_start(&l->tick, on_tick, f->tick_ms, f->tick_ms);
    }
    for (int i = 0; i < f->nloops; i++)
        pthread_create(&f->loops[i].thread, NULL, loop_main, &f->loops[i]);
    f->started = 1;
    rt_info(COMP, "listening on %s (port %d, %d loops)", f->cfg->listen, f->port, f->nloops);
    if (f->norigins == 0) rt_info(COMP, "--allowed-origins unset: every origin is allowed");
    return 0;
}

int rt_fanout_port(const rt_fanout_t *f)
{
    return f->port;
}

void rt_fanout_shutdown(rt_fanout_t *f)
{
    if (!f->started) return;
    for (int i = 0; i < f->nloops; i++)
        uv_async_send(&f->loops[i].stop);
    for (int i = 0; i < f->nloops; i++)
        pthread_join(f->loops[i].thread, NULL);
    f->started = 0;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void rt_fanout_free(rt_fanout_t *f)
{
    if (!f) return;
    rt_fanout_shutdown(f);
    for (int i = 0; i < f->nloops; i++) {
        loop_t *l = &f->loops[i];
        /* Loops that never ran still hold their handles. */
        uv_walk(&l->uv, close_any, NULL);
        uv_run(&l->uv, UV_RUN_DEFAULT);
        uv_loop_close(&l->uv);
        rt_window_close(&l->window);
        fo_close_deferred(l);
        pthread_mutex_destroy(&l->dmu);
        free(l->dirty);
        free(l->readbuf);
    }
    for (int i = 0; i < f->norigins; i++)
        free(f->origins[i]);
    free(f->origins);
    rt_iplimit_close(&f->iplimit);
    free(f->loops);
    free(f);
}

void rt_fanout_stats(rt_fanout_t *f, rt_fanout_stats_t *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < f->nloops; i++) {
        loop_stats_t *s = &f->loops[i].st;
        for (int t = 0; t < RT_TRANSPORT__COUNT; t++)
            out->active[t] += atomic_load(&s->active[t]);
        out->accepted += atomic_load(&s->accepted);
        for (int r = 0; r < RT_REFUSE__COUNT; r++)
            out->refused[r] += atomic_load(&s->refused[r]);
        out->slow_disconnects += atomic_load(&s->slow_disconnects);
        out->ping_timeouts += atomic_load(&s->ping_timeouts);
        out->events_sent += atomic_load(&s->events_sent);
        out->resumes += atomic_load(&s->resumes);
        out->resyncs += atomic_load(&s->resyncs);
        out->ring_overflows += atomic_load(&s->ring_overflows);
        for (int b = 0; b <= RT_LATENCY_NB; b++)
            out->lat[b] += atomic_load(&s->lat[b]);
        out->lat_sum_s += (double)atomic_load(&s->lat_sum_us) / 1e6;
        out->lat_count += atomic_load(&s->lat_count);
    }
}

int rt_fanout_loops(const rt_fanout_t *f)
{
    return f->nloops;
}

rt_bus_sub_t *rt_fanout_ring(const rt_fanout_t *f, int i)
{
    return f->loops[i].sub;
}
