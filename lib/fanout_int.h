/*
 * Private to the fan-out (fanout.c, fanout_http.c): the connection, the loop
 * and the pool, and the functions the two files share. Everything here runs
 * on the loop thread that owns the connection, unless its comment says
 * otherwise. Not part of the library's interface.
 */
#ifndef RT_FANOUT_INT_H
#define RT_FANOUT_INT_H

#include "auth.h"
#include "event.h"
#include "fanout.h"
#include "http.h"
#include "iplimit.h"
#include "seqset.h"
#include "window.h"
#include "ws.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#define MAX_IOV 64
#define DRAIN_BATCH 1024
#define FLUSH_EVERY 32 /* events per coalesced write, at most */
#define READ_BUF (64 * 1024)
#define AUTH_TIMEOUT_MS 5000
#define CLOSE_GRACE_MS 2000
#define RESUME_LIMIT 100000
#define MAX_POST_BODY 0

/* ---- types ----------------------------------------------------------------------- */

typedef struct loop loop_t;
typedef struct conn conn_t;

/* C_HTTP_WAIT: a request handed to a handler outside the fan-out (reply.h)
 * is being answered; input that arrives meanwhile is kept for afterwards. */
typedef enum { C_HTTP, C_HTTP_WAIT, C_WS_AUTH, C_WS, C_SSE, C_CLOSING } conn_state_t;

/* One entry of a connection's output queue: an event (its WS frame or SSE
 * chunk, depending on the connection) or a buffer we own (or a static one). */
typedef struct qitem {
    rt_event_t *ev;
    char *buf;
    uint32_t len;
    uint8_t owned;
} qitem_t;

typedef enum {
    ROUTE_WS_INTENTS,
    ROUTE_WS_DASHBOARD,
    ROUTE_SSE_INTENT,
    ROUTE_SSE_AUDIT,
    ROUTE_SSE_STREAM,
} route_t;

/* A journal read for a resuming client, on the libuv thread pool. If the
 * connection closes first, conn is cleared and the result is dropped. */
typedef struct resume_req {
    struct conn *conn;
    /* Set with conn = NULL: a read not started yet is skipped (after a ring
     * overflow sends every client away, their abandoned reads would
     * otherwise queue up on the thread pool and delay everything, shutdown
     * included). */
    atomic_int gone;
    uv_work_t work;
    int64_t after;
    rt_event_t **evs;
    size_t n;
    int64_t pruned_through;
    int failed;
} resume_req_t;

/* A request answered later by a handler (RT_HANDLE_LATER). Owned by the
 * handler until done() queues it on its loop; conn is cleared (on the loop
 * thread) if the connection closes first, and the reply is then dropped. */
typedef struct deferred {
    struct deferred *next;
    loop_t *loop;
    struct conn *conn;
    int keep_alive;
    rt_reply_t reply;
} deferred_t;

/* GET /api/v1/events: a poll waiting for events (long poll), or for its
 * journal read. */
typedef struct poll_wait {
    unsigned type_mask;
    int64_t after;        /* the client's cursor */
    size_t limit;         /* events per answer */
    int64_t wait_ms;      /* long-poll time left to use once the journal answered */
    uint64_t deadline_ms; /* while waiting: answer empty at this time */
    int waiting;          /* 1: on the loop, for live events */
    int keep_alive;
    struct poll_fetch *fetch;
    rt_event_t **evs; /* live events collected while waiting */
    size_t n, cap;
} poll_wait_t;

#define POLL_DEFAULT_LIMIT 100
#define POLL_MAX_LIMIT 1000
#define POLL_MAX_WAIT_S 30

#define MAX_HANDLERS 8
#define MAX_PIPELINED (64 * 1024) /* input kept while a deferred request waits */

typedef struct handler {
    char prefix[64]; /* ending in '/': a prefix; otherwise the exact path */
    rt_handler_fn fn;
    void *ctx;
} handler_t;

struct conn {
    uv_tcp_t tcp;
    loop_t *loop;
    conn_t *prev, *next;
    conn_state_t state;
    int transport; /* counted in active[]; -1 while none */
    unsigned char addr[16];
    int ip_counted;
    uint64_t since_ms;      /* accepted, or entered the current state */
    uint64_t last_write_ms; /* for SSE keep-alive */
    uint64_t last_ping_ms;
    int missed_pongs;
    rt_http_req_t *req;     /* only while C_HTTP / C_HTTP_WAIT */
    deferred_t *deferred;   /* while C_HTTP_WAIT for a handler */
    struct poll_wait *poll; /* while C_HTTP_WAIT in GET /api/v1/events */
    char *pipelined;        /* input received while C_HTTP_WAIT */
    size_t npipelined;
    rt_ws_t *ws;

    /* filters */
    route_t route;
    unsigned type_mask;
    int all_ids;
    int nids;
    char (*ids)[RT_WS_MAX_ID_LEN];
    char *key; /* SSE per-intent stream */

    /* output */
    qitem_t *q;
    size_t qcap, qhead, qcount;
    size_t queued_bytes; /* bytes of queued items not yet taken by the kernel */
    size_t qoff;         /* bytes of the head item already written */
    uv_write_t wreq;
    int writing;
    size_t inflight;
    int close_after_flush;
    int shut; /* our side is shut down (FIN sent): waiting for the peer's */
    uv_shutdown_t sreq;
    int dirty;

    /* resume */
    int64_t pending_resume; /* WS with auth pending: resume once authed; -1 none */
    resume_req_t *resume;
    rt_event_t **held; /* live events that arrived during a resume */
    size_t nheld, capheld;
    /* A replay in progress: events (one reference each) fed to the queue as
     * it drains, so a long resume is paced by the socket instead of landing
     * in the queue at once (and tripping the slow-consumer bound). */
    rt_event_t **rp;
    size_t rp_n, rp_pos;
    rt_seqset_t rp_seqs; /* seqs of rp, to skip held events replay covered */
    /* Journal rows a resume already sent that had not yet reached this loop
     * through the bus: skipped when they arrive, so they are not sent twice. */
    rt_seqset_t pend;
    int has_pend;
    uint64_t pend_until_ms;

    /* inbound rate limit (token bucket) */
    double tokens;
    uint64_t tokens_ms;
};

typedef struct loop_stats {
    atomic_long active[RT_TRANSPORT__COUNT];
    atomic_ulong accepted;
    atomic_ulong refused[RT_REFUSE__COUNT];
    atomic_ulong slow_disconnects, ping_timeouts, events_sent, resumes, resyncs, ring_overflows;
    /* Delivery latency; written by the loop thread only (see lat_record). */
    atomic_ulong lat[RT_LATENCY_NB + 1];
    atomic_ulong lat_sum_us, lat_count;
} __attribute__((aligned(64))) loop_stats_t;

struct loop {
    rt_fanout_t *f;
    int id;
    pthread_t thread;
    uv_loop_t uv;
    uv_tcp_t server;
    int fd;
    uv_async_t wake;
    uv_async_t stop;
    uv_timer_t tick;
    uv_timer_t deadline;
    rt_bus_sub_t *sub;
    rt_window_t window;
    conn_t *conns;
    long nconns;
    conn_t **dirty;
    size_t ndirty, capdirty;
    char *readbuf;
    uv_buf_t iov[MAX_IOV];
    int stopping;
    /* Deferred replies ready to be written, pushed by handler threads. */
    pthread_mutex_t dmu;
    deferred_t *dready;
    int dclosed; /* the loop has stopped: done() frees replies itself */
    loop_stats_t st;
};

struct rt_fanout {
    const rt_config_t *cfg;
    rt_bus_t *bus;
    rt_listener_t *listener;
    struct sockaddr_storage addr;
    int port;
    int nloops;
    loop_t *loops;
    rt_auth_t auth;
    rt_iplimit_t iplimit;
    atomic_long total_conns;
    char **origins;
    int norigins;
    int started;
    uint64_t tick_ms;
    handler_t handlers[MAX_HANDLERS];
    int nhandlers;
    struct {
        rt_health_fn fn;
        void *arg;
    } health[4];
    int nhealth;
};

static inline uint64_t now_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

#define STAT_ADD(l, field, n) atomic_fetch_add_explicit(&(l)->st.field, (n), memory_order_relaxed)

/* ---- shared between fanout.c and fanout_http.c ---------------------------------- */

/* fanout.c: connections, output, requests */
void fo_flush_dirty(loop_t *l);
void fo_send_owned(conn_t *c, char *data, size_t len);
void fo_conn_close(conn_t *c);
void fo_conn_close_after_flush(conn_t *c);
void fo_respond(conn_t *c, int status, const char *json, const char *extra, int keep_alive);
void fo_respond_error(conn_t *c, int status, const char *message, const char *extra,
                      rt_refuse_reason_t why);
void fo_on_http_data(conn_t *c, const char *data, size_t len);
int fo_origin_allowed(rt_fanout_t *f, const char *origin);
int fo_refuse_unauthorized(conn_t *c);
int fo_parse_types(const char *query, size_t qlen, unsigned *mask, char *bad, size_t badlen);
int fo_parse_last_id(const char *s, int64_t *out);
/* On a libuv pool thread: journal rows after `after` (see rt_journal_fetch_after). */
int fo_journal_read(int64_t after, size_t limit, rt_event_t ***evs, size_t *n,
                    int64_t *pruned_through);
/* On a libuv pool thread: the highest seq in the journal. */
int fo_journal_head(int64_t *seq);

/* fanout_http.c: health, handlers outside the fan-out (reply.h), polling */
const char *fo_cors_headers(conn_t *c, char *buf, size_t cap);
void fo_handle_health(conn_t *c, const char *path, int keep_alive);
const handler_t *fo_find_handler(const rt_fanout_t *f, const char *path);
int fo_call_handler(conn_t *c, const handler_t *h, const char *path, const char *rest,
                    size_t rest_len, int keep_alive);
void fo_keep_pipelined(conn_t *c, const char *data, size_t len);
void fo_run_deferred(loop_t *l);
void fo_close_deferred(loop_t *l);
int fo_start_poll(conn_t *c, const char *rest, size_t rest_len, int keep_alive);
void fo_poll_offer(conn_t *c, rt_event_t *ev);
void fo_poll_settle(loop_t *l, int tick);
void fo_poll_free(conn_t *c);

#endif
