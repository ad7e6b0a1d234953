/*
 * The fan-out's plain HTTP answers (see fanout.c for the connection state
 * machine): the health endpoints, requests routed to handlers outside the
 * fan-out (reply.h: metrics, dashboard API, static files), which may answer
 * later from their own threads, and GET /api/v1/events, polling and long
 * polling from the loop's window or the journal.
 *
 * A request answered later puts its connection in C_HTTP_WAIT: input that
 * arrives meanwhile is kept (bounded) and parsed once the answer is written.
 */
#include "fanout_int.h"

#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *fo_cors_headers(conn_t *c, char *buf, size_t cap)
{
    const char *origin = rt_http_req_header(c->req, "Origin");
    rt_fanout_t *f = c->loop->f;
    buf[0] = '\0';
    if (f->norigins == 0)
        snprintf(buf, cap, "Access-Control-Allow-Origin: *\r\n");
    else if (origin && fo_origin_allowed(f, origin))
        snprintf(buf, cap, "Access-Control-Allow-Origin: %.200s\r\nVary: Origin\r\n", origin);
    return buf;
}

void fo_handle_health(conn_t *c, const char *path, int keep_alive)
{
    rt_fanout_t *f = c->loop->f;
    rt_listener_stats_t *ls = f->listener ? rt_listener_stats(f->listener) : NULL;
    int connected = ls ? atomic_load(&ls->connected) : 0;
    if (strcmp(path, "/healthz") == 0) {
        fo_respond(c, 200, "{\"status\":\"ok\"}", "Cache-Control: no-store\r\n", keep_alive);
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        if (connected)
            fo_respond(c, 200, "{\"status\":\"ready\"}", "Cache-Control: no-store\r\n", keep_alive);
        else
            fo_respond(c, 503, "{\"status\":\"not ready\",\"reason\":\"listener not connected\"}",
                       "Cache-Control: no-store\r\n", keep_alive);
        return;
    }
    /* /health/realtime */
    rt_fanout_stats_t st;
    rt_fanout_stats(f, &st);
    uint64_t last_ns = ls ? atomic_load(&ls->last_event_ns) : 0;
    double age = last_ns ? (double)(rt_now_ns() - last_ns) / 1e9 : -1.0;
    json_t *loops = json_array();
    for (int i = 0; i < f->nloops; i++) {
        rt_bus_sub_t *s = f->loops[i].sub;
        json_array_append_new(loops, json_pack("{s:i, s:I, s:I}", "loop", i, "ring_depth",
                                               (json_int_t)rt_bus_depth(s), "ring_overflows",
                                               (json_int_t)atomic_load(&s->overflows)));
    }
    json_t *j = json_pack(
        "{s:s, s:{s:b, s:f, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:o, s:I, s:I, s:I}", "status",
        connected ? "ok" : "degraded", "listener", "connected", connected, "last_event_age_seconds",
        age, "last_seq", (json_int_t)(ls ? atomic_load(&ls->last_seq) : 0), "reconnects",
        (json_int_t)(ls ? atomic_load(&ls->reconnects) : 0), "published",
        (json_int_t)(ls ? atomic_load(&ls->published) : 0), "connections", "websocket",
        (json_int_t)st.active[RT_TRANSPORT_WS], "sse", (json_int_t)st.active[RT_TRANSPORT_SSE],
        "http", (json_int_t)st.active[RT_TRANSPORT_HTTP], "loops", loops,
        "slow_consumer_disconnects", (json_int_t)st.slow_disconnects, "resumes",
        (json_int_t)st.resumes, "resyncs", (json_int_t)st.resyncs);
    json_t *refused = json_object();
    for (int r = 0; r < RT_REFUSE__COUNT; r++)
        json_object_set_new(refused, rt_refuse_reason_name((rt_refuse_reason_t)r),
                            json_integer((json_int_t)st.refused[r]));
    json_object_set_new(j, "refused", refused);
    json_object_set_new(j, "ping_timeouts", json_integer((json_int_t)st.ping_timeouts));
    json_object_set_new(j, "ring_overflows", json_integer((json_int_t)st.ring_overflows));
    for (int i = 0; i < f->nhealth; i++)
        f->health[i].fn(f->health[i].arg, j);
    char *body = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    fo_respond(c, connected ? 200 : 503, body, "Cache-Control: no-store\r\n", keep_alive);
    free(body);
}

/* ---- requests answered outside the fan-out (reply.h) ----------------------------- */

/* "/x/" (ending in '/', longer than "/") names a prefix; anything else, "/"
 * included, an exact path. */
const handler_t *fo_find_handler(const rt_fanout_t *f, const char *path)
{
    for (int i = 0; i < f->nhandlers; i++) {
        const handler_t *h = &f->handlers[i];
        size_t n = strlen(h->prefix);
        int prefix = n > 1 && h->prefix[n - 1] == '/';
        if (prefix ? strncmp(path, h->prefix, n) == 0 : strcmp(path, h->prefix) == 0) return h;
    }
    return NULL;
}

static void reply_free(rt_reply_t *r)
{
    if (!r->body_static) free(r->body);
    r->body = NULL;
}

static void write_reply(conn_t *c, const rt_reply_t *r, int keep_alive)
{
    char cors[320], extra[640];
    fo_cors_headers(c, cors, sizeof cors);
    snprintf(extra, sizeof extra, "%.256s%s", r->headers, cors);
    char *out;
    size_t n = rt_http_format_response(&out, r->status, r->content_type, extra, r->body, r->len,
                                       keep_alive);
    fo_send_owned(c, out, n);
    if (!keep_alive) fo_conn_close_after_flush(c);
}

/* rt_reply_done_cb: any thread. Queues the reply on its loop, or drops it if
 * the loop has stopped. The wake is sent under the lock, so the loop cannot
 * close its async handle in between. */
static void deferred_done(void *arg, rt_reply_t *reply)
{
    deferred_t *d = arg;
    loop_t *l = d->loop;
    d->reply = *reply;
    pthread_mutex_lock(&l->dmu);
    int closed = l->dclosed;
    if (!closed) {
        d->next = l->dready;
        l->dready = d;
        uv_async_send(&l->wake);
    }
    pthread_mutex_unlock(&l->dmu);
    if (closed) {
        reply_free(&d->reply);
        free(d);
    }
}

/* The request is answered later: keep what followed it for then. */
static void wait_begin(conn_t *c, const char *rest, size_t rest_len)
{
    c->state = C_HTTP_WAIT;
    if (rest_len) {
        c->pipelined = malloc(rest_len);
        if (!c->pipelined) abort();
        memcpy(c->pipelined, rest, rest_len);
        c->npipelined = rest_len;
    }
}

/* The late answer is queued and the connection stays: parse what came
 * meanwhile (state is C_HTTP again). */
static void wait_end(conn_t *c)
{
    rt_http_req_reset(c->req);
    c->since_ms = now_ms();
    char *p = c->pipelined;
    size_t n = c->npipelined;
    c->pipelined = NULL;
    c->npipelined = 0;
    if (p) fo_on_http_data(c, p, n);
    free(p);
}

/* Writes the replies handlers have finished, in the order they finished. */
void fo_run_deferred(loop_t *l)
{
    pthread_mutex_lock(&l->dmu);
    deferred_t *d = l->dready, *fifo = NULL;
    l->dready = NULL;
    pthread_mutex_unlock(&l->dmu);
    while (d) {
        deferred_t *next = d->next;
        d->next = fifo;
        fifo = d;
        d = next;
    }
    for (d = fifo; d; d = fifo) {
        fifo = d->next;
        conn_t *c = d->conn;
        if (c) {
            int keep_alive = d->keep_alive && !l->stopping;
            c->deferred = NULL;
            c->state = C_HTTP;
            write_reply(c, &d->reply, keep_alive);
            if (keep_alive) wait_end(c);
        }
        reply_free(&d->reply);
        free(d);
    }
}

/* Stops taking deferred replies (the loop is ending) and drops queued ones;
 * their connections are closed by now. */
void fo_close_deferred(loop_t *l)
{
    pthread_mutex_lock(&l->dmu);
    l->dclosed = 1;
    deferred_t *d = l->dready;
    l->dready = NULL;
    pthread_mutex_unlock(&l->dmu);
    while (d) {
        deferred_t *next = d->next;
        reply_free(&d->reply);
        free(d);
        d = next;
    }
}

/* Hands the request to h. Returns 1 if the connection stays in HTTP and rest
 * should be parsed now (as handle_request). */
int fo_call_handler(conn_t *c, const handler_t *h, const char *path, const char *rest,
                    size_t rest_len, int keep_alive)
{
    size_t qlen = 0;
    const char *q = rt_http_req_query(c->req, &qlen);
    char query[2048];
    if (qlen >= sizeof query) {
        fo_respond_error(c, 414, "query string too long", NULL, RT_REFUSE_BAD_REQUEST);
        return 0;
    }
    if (qlen) memcpy(query, q, qlen);
    query[qlen] = '\0';
    char decoded[1024];
    if (rt_http_path_decode(path, strlen(path), decoded, sizeof decoded) < 0) {
        fo_respond_error(c, 400, "malformed path", NULL, RT_REFUSE_BAD_REQUEST);
        return 0;
    }
    path = decoded;
    deferred_t *d = calloc(1, sizeof *d);
    if (!d) abort();
    d->loop = c->loop;
    d->conn = c;
    d->keep_alive = keep_alive;
    rt_reply_t r;
    memset(&r, 0, sizeof r);
    rt_handle_result_t res = h->fn(h->ctx, path, query, &r, deferred_done, d);
    if (res == RT_HANDLE_LATER) {
        c->deferred = d;
        wait_begin(c, rest, rest_len);
        return 0;
    }
    free(d);
    if (res == RT_HANDLE_NOT_MINE) {
        fo_respond_error(c, 404, "not found", NULL, RT_REFUSE_NOT_FOUND);
        return 0;
    }
    write_reply(c, &r, keep_alive);
    reply_free(&r);
    return keep_alive;
}

/* Input while a deferred request waits: kept (bounded) for afterwards. */
void fo_keep_pipelined(conn_t *c, const char *data, size_t len)
{
    if (c->npipelined + len > MAX_PIPELINED) {
        fo_conn_close(c);
        return;
    }
    c->pipelined = realloc(c->pipelined, c->npipelined + len);
    if (!c->pipelined) abort();
    memcpy(c->pipelined + c->npipelined, data, len);
    c->npipelined += len;
}

int rt_fanout_add_health(rt_fanout_t *f, rt_health_fn fn, void *arg)
{
    if (f->started) return -EBUSY;
    if (f->nhealth == (int)(sizeof f->health / sizeof f->health[0])) return -ENOSPC;
    f->health[f->nhealth].fn = fn;
    f->health[f->nhealth].arg = arg;
    f->nhealth++;
    return 0;
}

int rt_fanout_add_handler(rt_fanout_t *f, const char *prefix, rt_handler_fn fn, void *ctx)
{
    if (f->started) return -EBUSY;
    if (f->nhandlers == MAX_HANDLERS) return -ENOSPC;
    if (!prefix || prefix[0] != '/' || strlen(prefix) >= sizeof f->handlers[0].prefix)
        return -EINVAL;
    handler_t *h = &f->handlers[f->nhandlers++];
    snprintf(h->prefix, sizeof h->prefix, "%s", prefix);
    h->fn = fn;
    h->ctx = ctx;
    return 0;
}

/* ---- GET /api/v1/events: polling and long polling (the fallback transport) ---------- */

/* A journal read for a poll whose cursor is not in the window; like
 * resume_req_t, dropped if the connection closes first. */
typedef struct poll_fetch {
    conn_t *conn;
    atomic_int gone; /* set with conn = NULL: skip the read if not started */
    uv_work_t work;
    int64_t after;
    size_t limit;
    int head; /* 1: only read the journal's highest seq (a poll without cursor) */
    rt_event_t **evs;
    size_t n;
    int64_t pruned_through;
    int failed;
} poll_fetch_t;

void fo_poll_free(conn_t *c)
{
    poll_wait_t *p = c->poll;
    if (!p) return;
    if (p->fetch) { /* its completion frees it */
        p->fetch->conn = NULL;
        atomic_store(&p->fetch->gone, 1);
    }
    for (size_t i = 0; i < p->n; i++)
        rt_event_unref(p->evs[i]);
    free(p->evs);
    free(p);
    c->poll = NULL;
}

static void poll_bad(conn_t *c, const char *param, const char *msg)
{
    STAT_ADD(c->loop, refused[RT_REFUSE_BAD_REQUEST], 1);
    json_t *j = json_pack("{s:s, s:s, s:i}", "error", msg, "parameter", param, "status", 400);
    char *body = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    fo_respond(c, 400, body, "Cache-Control: no-store\r\n", 0);
    free(body);
}

/* Ends a waiting poll with this answer: the connection is in C_HTTP again
 * (keep-alive, input kept meanwhile parsed now) or closing. */
static void poll_reply(conn_t *c, int status, const char *body, const char *extra)
{
    int keep_alive = c->poll->keep_alive && !c->loop->stopping;
    fo_poll_free(c);
    c->state = C_HTTP;
    fo_respond(c, status, body, extra, keep_alive);
    if (keep_alive) wait_end(c);
}

/* Answers a poll: evs[0..n) (those matching), the cursor to continue from,
 * and the resync marker when the client must reload its state. Leaves the
 * connection in C_HTTP (keep-alive) or closing. */
static void poll_answer(conn_t *c, rt_event_t *const *evs, size_t n, int64_t last_id,
                        const char *resync)
{
    size_t cap = 64;
    for (size_t i = 0; i < n; i++)
        cap += evs[i]->msg_len + 1;
    char *body = malloc(cap + 160);
    if (!body) abort();
    size_t len = (size_t)sprintf(body, "{\"events\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) body[len++] = ',';
        memcpy(body + len, evs[i]->msg, evs[i]->msg_len);
        len += evs[i]->msg_len;
    }
    len += (size_t)sprintf(body + len, "],\"last_id\":%" PRId64, last_id);
    if (resync) len += (size_t)sprintf(body + len, ",\"resync\":true,\"reason\":\"%s\"", resync);
    body[len++] = '}';
    body[len] = '\0';
    poll_reply(c, 200, body, "Cache-Control: no-store\r\n");
    free(body);
}

/* Waits on the loop for live events, until the deadline. */
static void poll_wait_live(conn_t *c)
{
    poll_wait_t *p = c->poll;
    p->waiting = 1;
    p->deadline_ms = now_ms() + (uint64_t)p->wait_ms;
}

/* Answers from the window if the cursor is in it: the journaled events
 * after its position (commit order, exact), at most limit matching ones.
 * Returns 0 if the cursor is not in the window. */
static int poll_from_window(conn_t *c)
{
    poll_wait_t *p = c->poll;
    rt_window_t *w = &c->loop->window;
    long pos = rt_window_find(w, p->after);
    if (pos < 0) return 0;
    rt_event_t *out[POLL_MAX_LIMIT];
    size_t n = 0;
    int64_t last = p->after;
    for (size_t i = (size_t)pos + 1; i < w->count && n < p->limit; i++) {
        rt_event_t *ev = rt_window_at(w, i);
        if (ev->seq <= 0) continue; /* not journaled: only live (no cursor) */
        last = ev->seq;
        if (p->type_mask & (1u << ev->type)) out[n++] = ev;
    }
    if (n > 0 || p->wait_ms == 0) {
        poll_answer(c, out, n, last, NULL);
        return 1;
    }
    p->after = last;
    poll_wait_live(c);
    return 1;
}

static void poll_fetch_work(uv_work_t *w);
static void poll_fetch_done(uv_work_t *w, int status);

/* The journal could not be read: a transient error, not a resync (the
 * cursor is still good); the client retries later. */
static void poll_unavailable(conn_t *c)
{
    poll_reply(c, 503, "{\"error\":\"journal unavailable, retry later\",\"status\":503}",
               "Cache-Control: no-store\r\nRetry-After: 1\r\n");
}

static void poll_start_fetch(conn_t *c, int head)
{
    poll_wait_t *p = c->poll;
    poll_fetch_t *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->conn = c;
    f->head = head;
    f->after = p->after;
    f->limit = p->limit;
    f->work.data = f;
    p->fetch = f;
    if (uv_queue_work(&c->loop->uv, &f->work, poll_fetch_work, poll_fetch_done) != 0) {
        p->fetch = NULL;
        free(f);
        poll_unavailable(c);
    }
}

static void poll_fetch_work(uv_work_t *w)
{
    poll_fetch_t *f = w->data;
    if (atomic_load(&f->gone)) return;
    if (f->head)
        f->failed = fo_journal_head(&f->after) < 0;
    else
        f->failed = fo_journal_read(f->after, f->limit + 1, &f->evs, &f->n, &f->pruned_through) < 0;
}

static void poll_fetch_done(uv_work_t *w, int status)
{
    poll_fetch_t *f = w->data;
    conn_t *c = f->conn;
    if (c && c->poll) {
        poll_wait_t *p = c->poll;
        p->fetch = NULL;
        if (status != 0 || f->failed) {
            poll_unavailable(c);
        } else if (f->head) {
            /* No cursor: from the journal's head on. */
            p->after = f->after;
            if (!poll_from_window(c)) {
                if (p->wait_ms == 0)
                    poll_answer(c, NULL, 0, p->after, NULL);
                else
                    poll_wait_live(c);
            }
        } else if (f->pruned_through > f->after) {
            poll_answer(c, NULL, 0, f->pruned_through, "past retention");
        } else {
            rt_event_t *out[POLL_MAX_LIMIT];
            size_t n = 0, examined = 0;
            int64_t last = p->after;
            for (; examined < f->n && n < p->limit; examined++) {
                rt_event_t *ev = f->evs[examined];
                last = ev->seq;
                if (p->type_mask & (1u << ev->type)) out[n++] = ev;
            }
            if (n > 0 || p->wait_ms == 0 || examined < f->n) {
                poll_answer(c, out, n, last, NULL);
            } else {
                /* Nothing yet: events from now on come through the loop.
                 * The cursor may have reached the window meanwhile. */
                p->after = last;
                if (!poll_from_window(c)) poll_wait_live(c);
            }
        }
        fo_flush_dirty(c->loop);
    }
    for (size_t i = 0; i < f->n; i++)
        rt_event_unref(f->evs[i]);
    free(f->evs);
    free(f);
}

/* A live event for the waiting polls of this loop. */
void fo_poll_offer(conn_t *c, rt_event_t *ev)
{
    poll_wait_t *p = c->poll;
    if (!p->waiting || !(p->type_mask & (1u << ev->type)) || p->n >= p->limit) return;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->evs = realloc(p->evs, p->cap * sizeof *p->evs);
        if (!p->evs) abort();
    }
    p->evs[p->n++] = rt_event_ref(ev);
}

/* After a batch of live events: answers the polls that got some; on a tick,
 * also those whose time is up. */
void fo_poll_settle(loop_t *l, int tick)
{
    uint64_t now = tick ? now_ms() : 0;
    for (conn_t *c = l->conns, *next; c; c = next) {
        next = c->next;
        poll_wait_t *p = c->poll;
        if (c->state != C_HTTP_WAIT || !p || !p->waiting) continue;
        if (p->n > 0) {
            int64_t last = p->after;
            for (size_t i = 0; i < p->n; i++)
                if (p->evs[i]->seq > 0) last = p->evs[i]->seq;
            /* The answer copies the messages; poll_answer frees p. */
            poll_answer(c, p->evs, p->n, last, NULL);
        } else if (tick && now >= p->deadline_ms) {
            poll_answer(c, NULL, 0, p->after, NULL);
        }
    }
}

/* GET /api/v1/events?after=SEQ&limit=N&types=a,b&wait=S. Returns 1 if the
 * connection stays in HTTP and rest should be parsed now. */
int fo_start_poll(conn_t *c, const char *rest, size_t rest_len, int keep_alive)
{
    rt_fanout_t *f = c->loop->f;
    if (fo_refuse_unauthorized(c)) return 0;
    size_t qlen;
    const char *q = rt_http_req_query(c->req, &qlen);
    char val[64];
    int64_t after = -1, limit = POLL_DEFAULT_LIMIT, wait_s = 0;
    int n = rt_http_query_get(q, qlen, "after", 0, val, sizeof val);
    if (n != -1 && (n < 0 || fo_parse_last_id(val, &after) <= 0)) {
        poll_bad(c, "after", "after must be a non-negative integer (an event id)");
        return 0;
    }
    n = rt_http_query_get(q, qlen, "limit", 0, val, sizeof val);
    if (n != -1 &&
        (n < 0 || fo_parse_last_id(val, &limit) <= 0 || limit < 1 || limit > POLL_MAX_LIMIT)) {
        poll_bad(c, "limit", "limit must be an integer from 1 to 1000");
        return 0;
    }
    n = rt_http_query_get(q, qlen, "wait", 0, val, sizeof val);
    if (n != -1 && (n < 0 || fo_parse_last_id(val, &wait_s) <= 0 || wait_s > POLL_MAX_WAIT_S)) {
        poll_bad(c, "wait", "wait must be an integer number of seconds from 0 to 30");
        return 0;
    }
    unsigned mask;
    char bad[64];
    if (fo_parse_types(q, qlen, &mask, bad, sizeof bad) < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "unknown event type in types: %s", bad);
        poll_bad(c, "types", msg);
        return 0;
    }
    poll_wait_t *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->type_mask = mask;
    p->limit = (size_t)limit;
    p->wait_ms = wait_s * 1000;
    p->keep_alive = keep_alive;
    c->poll = p;
    wait_begin(c, rest, rest_len);
    rt_listener_stats_t *ls = f->listener ? rt_listener_stats(f->listener) : NULL;
    if (after < 0) {
        /* No cursor: from now on. The cursor to continue from is the newest
         * event this loop has seen. */
        rt_window_t *w = &c->loop->window;
        p->after = 0;
        for (size_t i = w->count; i-- > 0;)
            if (rt_window_at(w, i)->seq > 0) {
                p->after = rt_window_at(w, i)->seq;
                break;
            }
        if (p->after == 0 && ls) p->after = atomic_load(&ls->last_seq);
        if (p->after == 0) {
            /* Nothing seen since start: the journal says where "now" is. */
            poll_start_fetch(c, 1);
            return 0;
        }
        if (p->wait_ms == 0)
            poll_answer(c, NULL, 0, p->after, NULL);
        else
            poll_wait_live(c);
        return 0;
    }
    p->after = after;
    if (!poll_from_window(c)) poll_start_fetch(c, 0);
    return 0;
}
