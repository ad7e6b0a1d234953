/*
 * rtbridge-loadgen: a load generator and exact checker for rtbridge's
 * WebSocket and SSE streams (issue #4).
 *
 * Clients: --threads libuv loops, each owning a share of the connections
 * (client i lives on loop i % threads, so nothing about a connection is ever
 * shared). The WebSocket client (handshake with Sec-WebSocket-Accept check,
 * masked client frames, fragment reassembly, ping → pong, close handshake)
 * and the SSE client (id/event/data blocks, Last-Event-ID on reconnect) are
 * written here, on raw TCP, so every byte the server sends is seen. All
 * connections of a loop read into one shared 64 KiB buffer; only a partial
 * frame or line is copied into the connection, so an idle connection costs a
 * few hundred bytes here.
 *
 * Producer: --producers threads, each with its own libpq connection, inserting
 * (or updating) batches of rows. Each batch is one transaction: "BEGIN; the
 * write; SELECT seq ... FROM rt_journal WHERE xid = pg_current_xact_id()" in
 * one round trip (the SELECT names exactly the seqs the triggers gave this
 * transaction), then COMMIT. The commit happens somewhere between sending
 * COMMIT and its reply, so both CLOCK_REALTIME instants are kept per seq:
 * "sent" is stored before COMMIT goes out, so it is always there when a
 * delivery arrives; "returned" often is not yet (on this 2-core machine more
 * than half of the deliveries beat the producer's wake-up).
 *
 * Measurement: a client takes CLOCK_REALTIME once per read, so latency is
 * receive − commit on the same clock in the same process, reported twice:
 * from COMMIT sent (an upper bound; the figure compared with targets) and from
 * COMMIT returned (a lower bound; deliveries that arrive before the reply are
 * resolved at the end and counted as "early"). Every client keeps a bitmap
 * over the produced seq range, so lost, duplicate and unexpected seqs are
 * exact. The server's RSS, CPU time and threads come from
 * /proc/<--server-pid>.
 *
 * Bounded: a connect deadline, --duration, a drain deadline and a hard
 * --timeout; targets must be in 127.0.0.0/8. At the end every connection is
 * closed (WebSocket with a close frame) and every thread joined.
 */
#include "event.h"
#include "hist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define PROG "rtbridge-loadgen"
#define MAX_GROUPS 8
#define MAX_IPS 4096
#define MAX_PIDS 8
#define MAX_PRODUCERS 32
#define MAX_THREADS 64
#define READ_BUF (64 * 1024)
#define MAX_HEAD 16384          /* response line + headers */
#define MAX_MSG (16u << 20)     /* largest WebSocket message accepted */
#define MAX_SSE_LINE (1u << 20) /* longest SSE line accepted */
#define TICK_MS 5
#define RECONNECT_TRIES 20
#define MAX_EXAMPLES 10
#define KIND_INTENT 1u
#define KIND_AUDIT 2u

/* ---- small helpers ---------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) abort();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

static uint64_t mono_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* ---- options ---------------------------------------------------------------------- */

/* One target: every client of a group connects to the same URL. */
typedef struct group {
    int sse; /* 0: WebSocket, 1: SSE */
    const char *url;
    char host[128]; /* Host header, as in the URL */
    char path[1024];
    struct sockaddr_in addr;
    int clients;
    unsigned mask; /* KIND_* bits this stream should carry */
} group_t;

static struct {
    group_t groups[MAX_GROUPS];
    int ngroups;
    int clients_default;
    int threads;
    double connect_rate;
    double connect_timeout;
    struct sockaddr_in ips[MAX_IPS];
    int nips;
    int idle;
    const char *db;
    double produce_rate;
    long events;
    int producers;
    int batch;
    const char *workload;
    int payload_bytes;
    double duration;
    int duration_set;
    double drain;
    double timeout;
    pid_t pids[MAX_PIDS];
    int npids;
    const char *json;
    const char *ready_file;
    const char *label;
    int reconnect;
    double drop_every;
    double reconnect_delay;
    int max_inflight;
    int ws_hello;
    double settle;
    int quiet;
} O;

static const char usage_text[] =
    "usage: " PROG " (--ws URL | --sse URL) [--clients N] ... [options]\n"
    "\n"
    "Targets (repeatable, up to 8; --clients after a target sets its count):\n"
    "  --ws URL               WebSocket endpoint, ws://127.0.0.1:PORT/ws/intents\n"
    "  --sse URL              SSE endpoint, http://127.0.0.1:PORT/api/v2/events/stream\n"
    "  --clients N            clients of the last target (before any target: the default)\n"
    "Connections:\n"
    "  --threads N            client event loops (default 1)\n"
    "  --connect-rate R       new connections per second, all loops together (default 2000; 0: no "
    "limit)\n"
    "  --connect-timeout D    give up on clients not connected after D (default 60s)\n"
    "  --max-inflight N       connects + handshakes in flight per loop (default 500)\n"
    "  --source-ips A-B|LIST  bind client sockets to these 127.x addresses, round robin\n"
    "  --reconnect            reconnect (with the last id) when the server closes a stream\n"
    "  --drop-every D         during production each client drops and resumes once per D\n"
    "  --reconnect-delay D    pause before a reconnect after an error (default 100ms)\n"
    "  --ws-hello             send {\"type\":\"ping\"} in 3 fragments after the handshake\n"
    "Producer (PostgreSQL through libpq):\n"
    "  --db URL               database (default $DATABASE_URL)\n"
    "  --produce-rate R       events per second, all producers together (default 100)\n"
    "  --events E             events to produce (default rate x duration)\n"
    "  --producers P          connections producing (default 1)\n"
    "  --batch K              rows per statement (default: rate/producers/200, at least 1)\n"
    "  --workload W           intents | audit | update | mixed (default intents)\n"
    "  --payload-bytes N      add an N-byte string to each row's data/payload (default 0)\n"
    "  --idle                 produce nothing: connect, hold for --duration, measure\n"
    "Run:\n"
    "  --duration D           production (or idle hold) time (default 10s)\n"
    "  --drain D              after production, wait up to D for deliveries (default 10s)\n"
    "  --settle D             pause between all-connected and producing (default 0.3s)\n"
    "  --timeout D            hard limit for the whole run (default duration + 300s)\n"
    "  --server-pid PID[,PID] sample RSS, CPU and threads of the server process(es)\n"
    "  --json FILE            write the results as JSON\n"
    "  --ready-file FILE      write \"ready N failed M\" to FILE once connecting is over\n"
    "  --label NAME           name of the run in the output\n"
    "  --quiet                no progress lines on stderr\n"
    "\n"
    "Durations take ms, s, m (a bare number is seconds). Exit status: 0 when every\n"
    "client connected, nothing was lost, duplicated or misrouted and the run finished\n"
    "in time; 1 otherwise; 2 on a usage error.\n";

static double parse_duration(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v)) die("%s: invalid duration '%s'", flag, s);
    if (strcmp(end, "ms") == 0)
        v /= 1000;
    else if (strcmp(end, "m") == 0)
        v *= 60;
    else if (*end && strcmp(end, "s") != 0)
        die("%s: invalid duration '%s' (use ms, s or m)", flag, s);
    return v;
}

static long parse_long(const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die("%s: invalid value '%s' (range %ld..%ld)", flag, s, lo, hi);
    return v;
}

static double parse_double(const char *flag, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        die("%s: invalid value '%s' (range %g..%g)", flag, s, lo, hi);
    return v;
}

static int is_loopback(struct in_addr a)
{
    return (ntohl(a.s_addr) >> 24) == 127;
}

static void parse_ipv4_loopback(const char *flag, const char *s, struct in_addr *out)
{
    if (inet_pton(AF_INET, s, out) != 1) die("%s: '%s' is not an IPv4 address", flag, s);
    if (!is_loopback(*out)) die("%s: %s is outside 127.0.0.0/8 (loopback only)", flag, s);
}

/* Which event kinds a stream should carry, from its path and ?types=. */
static unsigned mask_for(const char *flag, int sse, const char *path)
{
    const char *q = strchr(path, '?');
    size_t plen = q ? (size_t)(q - path) : strlen(path);
#define PATH_IS(p) (plen == sizeof(p) - 1 && memcmp(path, p, plen) == 0)
    int typed = 0;
    if (!sse && PATH_IS("/ws/intents")) {
        if (q && strstr(q, "intent_ids="))
            die("%s: filtered subscriptions (intent_ids) cannot be verified", flag);
        return KIND_INTENT;
    }
    if (sse && PATH_IS("/events/audit-logs")) return KIND_AUDIT;
    if ((!sse && PATH_IS("/ws/dashboard")) || (sse && PATH_IS("/api/v2/events/stream"))) typed = 1;
#undef PATH_IS
    if (!typed)
        die("%s: unsupported path '%s' (use /ws/intents, /ws/dashboard, "
            "/api/v2/events/stream or /events/audit-logs)",
            flag, path);
    const char *t = q ? strstr(q, "types=") : NULL;
    if (!t) return KIND_INTENT | KIND_AUDIT;
    t += 6;
    unsigned m = 0;
    size_t n = strcspn(t, "&");
    char buf[256];
    if (n >= sizeof buf) die("%s: types too long", flag);
    memcpy(buf, t, n);
    buf[n] = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "intent_update") == 0)
            m |= KIND_INTENT;
        else if (strcmp(tok, "audit_log") == 0)
            m |= KIND_AUDIT;
    }
    return m;
}

static void parse_url(const char *flag, int sse, const char *url, group_t *g)
{
    const char *p = url;
    if (!sse && strncmp(p, "ws://", 5) == 0)
        p += 5;
    else if (strncmp(p, "http://", 7) == 0)
        p += 7;
    else
        die("%s: '%s' must start with %s (no TLS)", flag, url,
            sse ? "http://" : "ws:// or http://");
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= sizeof g->host) die("%s: bad host in '%s'", flag, url);
    memcpy(g->host, p, hl);
    g->host[hl] = 0;
    snprintf(g->path, sizeof g->path, "%s", slash ? slash : "/");
    char hostonly[128];
    snprintf(hostonly, sizeof hostonly, "%s", g->host);
    int port = 80;
    char *colon = strrchr(hostonly, ':');
    if (colon) {
        *colon = 0;
        port = (int)parse_long(flag, colon + 1, 1, 65535);
    }
    memset(&g->addr, 0, sizeof g->addr);
    g->addr.sin_family = AF_INET;
    g->addr.sin_port = htons((uint16_t)port);
    if (strcmp(hostonly, "localhost") == 0)
        g->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else
        parse_ipv4_loopback(flag, hostonly, &g->addr.sin_addr);
    g->sse = sse;
    g->url = url;
    g->mask = mask_for(flag, sse, g->path);
}

static void parse_source_ips(const char *s)
{
    const char *dash = strchr(s, '-');
    if (dash) {
        char a[64], b[64];
        size_t al = (size_t)(dash - s);
        if (al >= sizeof a || strlen(dash + 1) >= sizeof b) die("--source-ips: bad range '%s'", s);
        memcpy(a, s, al);
        a[al] = 0;
        snprintf(b, sizeof b, "%s", dash + 1);
        struct in_addr x, y;
        parse_ipv4_loopback("--source-ips", a, &x);
        parse_ipv4_loopback("--source-ips", b, &y);
        uint32_t lo = ntohl(x.s_addr), hi = ntohl(y.s_addr);
        if (hi < lo || hi - lo >= MAX_IPS)
            die("--source-ips: bad range '%s' (at most %d)", s, MAX_IPS);
        for (uint32_t v = lo; v <= hi; v++) {
            O.ips[O.nips].sin_family = AF_INET;
            O.ips[O.nips].sin_addr.s_addr = htonl(v);
            O.nips++;
        }
        return;
    }
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (O.nips >= MAX_IPS) die("--source-ips: too many addresses");
        O.ips[O.nips].sin_family = AF_INET;
        parse_ipv4_loopback("--source-ips", t, &O.ips[O.nips].sin_addr);
        O.nips++;
    }
}

static void parse_pids(const char *s)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (O.npids >= MAX_PIDS) die("--server-pid: at most %d", MAX_PIDS);
        O.pids[O.npids++] = (pid_t)parse_long("--server-pid", t, 1, 1L << 30);
    }
}

static void parse_args(int argc, char **argv)
{
    O.clients_default = 1;
    O.threads = 1;
    O.connect_rate = 2000;
    O.connect_timeout = 60;
    O.produce_rate = 100;
    O.events = -1;
    O.producers = 1;
    O.workload = "intents";
    O.duration = 10;
    O.drain = 10;
    O.timeout = -1;
    O.reconnect_delay = 0.1;
    O.max_inflight = 500;
    O.settle = 0.3;
    O.db = getenv("DATABASE_URL");
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0) die("unexpected argument '%s' (see --help)", a);
        char name[64];
        const char *val = NULL;
        char *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        /* Flags without a value. */
        int *flag = NULL;
        if (strcmp(name, "--idle") == 0)
            flag = &O.idle;
        else if (strcmp(name, "--reconnect") == 0)
            flag = &O.reconnect;
        else if (strcmp(name, "--quiet") == 0)
            flag = &O.quiet;
        else if (strcmp(name, "--ws-hello") == 0)
            flag = &O.ws_hello;
        if (flag) {
            if (val) die("%s takes no value", name);
            *flag = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) die("%s: missing value", name);
            val = argv[++i];
        }
        if (strcmp(name, "--ws") == 0 || strcmp(name, "--sse") == 0) {
            if (O.ngroups >= MAX_GROUPS) die("at most %d targets", MAX_GROUPS);
            group_t *g = &O.groups[O.ngroups++];
            parse_url(name, name[2] == 's', val, g);
            g->clients = -1;
        } else if (strcmp(name, "--clients") == 0) {
            int n = (int)parse_long(name, val, 0, 1000000);
            if (O.ngroups)
                O.groups[O.ngroups - 1].clients = n;
            else
                O.clients_default = n;
        } else if (strcmp(name, "--threads") == 0) {
            O.threads = (int)parse_long(name, val, 1, MAX_THREADS);
        } else if (strcmp(name, "--connect-rate") == 0) {
            O.connect_rate = parse_double(name, val, 0, 1e9);
        } else if (strcmp(name, "--connect-timeout") == 0) {
            O.connect_timeout = parse_duration(name, val);
        } else if (strcmp(name, "--max-inflight") == 0) {
            O.max_inflight = (int)parse_long(name, val, 1, 1000000);
        } else if (strcmp(name, "--source-ips") == 0) {
            parse_source_ips(val);
        } else if (strcmp(name, "--drop-every") == 0) {
            O.drop_every = parse_duration(name, val);
        } else if (strcmp(name, "--reconnect-delay") == 0) {
            O.reconnect_delay = parse_duration(name, val);
        } else if (strcmp(name, "--db") == 0) {
            O.db = val;
        } else if (strcmp(name, "--produce-rate") == 0) {
            O.produce_rate = parse_double(name, val, 0.001, 1e8);
        } else if (strcmp(name, "--events") == 0) {
            O.events = parse_long(name, val, 0, 1L << 31);
        } else if (strcmp(name, "--producers") == 0) {
            O.producers = (int)parse_long(name, val, 1, MAX_PRODUCERS);
        } else if (strcmp(name, "--batch") == 0) {
            O.batch = (int)parse_long(name, val, 1, 100000);
        } else if (strcmp(name, "--workload") == 0) {
            if (strcmp(val, "intents") && strcmp(val, "audit") && strcmp(val, "update") &&
                strcmp(val, "mixed"))
                die("--workload: '%s' is not intents, audit, update or mixed", val);
            O.workload = val;
        } else if (strcmp(name, "--payload-bytes") == 0) {
            O.payload_bytes = (int)parse_long(name, val, 0, 7000);
        } else if (strcmp(name, "--duration") == 0) {
            O.duration = parse_duration(name, val);
            O.duration_set = 1;
        } else if (strcmp(name, "--drain") == 0) {
            O.drain = parse_duration(name, val);
        } else if (strcmp(name, "--settle") == 0) {
            O.settle = parse_duration(name, val);
        } else if (strcmp(name, "--timeout") == 0) {
            O.timeout = parse_duration(name, val);
        } else if (strcmp(name, "--server-pid") == 0) {
            parse_pids(val);
        } else if (strcmp(name, "--json") == 0) {
            O.json = val;
        } else if (strcmp(name, "--ready-file") == 0) {
            O.ready_file = val;
        } else if (strcmp(name, "--label") == 0) {
            O.label = val;
        } else {
            die("unknown option '%s' (see --help)", name);
        }
    }
    if (O.ngroups == 0) die("give at least one --ws URL or --sse URL (see --help)");
    for (int g = 0; g < O.ngroups; g++)
        if (O.groups[g].clients < 0) O.groups[g].clients = O.clients_default;
    if (!O.idle) {
        if (!O.db || !*O.db) die("--db URL (or DATABASE_URL) is needed to produce events");
        if (O.events < 0)
            O.events = (long)llround(O.produce_rate * O.duration);
        else if (!O.duration_set)
            O.duration = O.events / O.produce_rate;
        if (O.producers > O.events && O.events > 0) O.producers = (int)O.events;
    } else {
        O.events = 0;
    }
    if (O.timeout < 0) O.timeout = O.duration + 300;
    if (O.drop_every > 0) O.reconnect = 1;
}

/* ---- shared state ----------------------------------------------------------------- */

/* Produced seqs live in (base, base + span]; index i is seq base + 1 + i.
 * The producer writes kind[i], then commit_ns[i] (release) before it sends
 * COMMIT, then done_ns[i] (release) when COMMIT returns; a client reads both
 * (acquire) when the delivery arrives, and everything else only after all
 * threads are joined. */
static struct {
    int64_t base;
    size_t span;
    uint8_t *kind;
    _Atomic uint64_t *commit_ns; /* COMMIT sent */
    _Atomic uint64_t *done_ns;   /* COMMIT returned */
    atomic_long produced[3];     /* by kind */
    atomic_long out_of_span;     /* produced seqs that fell outside the span */
    atomic_int stop;             /* loops: close every connection and return */
    atomic_int producing;        /* drops (--drop-every) run while set */
    atomic_int stop_produce;
    uint64_t prod_start_ns; /* CLOCK_REALTIME */
    uint64_t prod_start_ms; /* monotonic */
} G;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

/* ---- per-loop state --------------------------------------------------------------- */

enum { C_NEW = 0, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSING, C_WAIT, C_DONE, C_FAILED };
enum { WHY_STOP, WHY_DROP, WHY_EOF, WHY_ERR, WHY_PROTO, WHY_SERVER_CLOSE, WHY_CONNECT, WHY_HTTP };

typedef struct worker worker_t;

typedef struct client {
    uv_tcp_t tcp;
    worker_t *w;
    const group_t *g;
    struct client *next_wait;
    uint64_t t_start_ns; /* monotonic, start of the current connect */
    uint64_t due_ms;     /* reconnect time while waiting */
    int64_t last_id;     /* last event id received, -1 none (resume from here) */
    int64_t max_seq;     /* highest produced seq received (out-of-order check) */
    uint64_t *seen;      /* bitmap over the produced span, allocated on first use */
    char *buf;           /* unconsumed input: partial header, frame or line */
    uint32_t blen, bcap;
    char *msg; /* fragments of a WebSocket message */
    uint32_t mlen, mcap;
    int64_t sse_id;
    int64_t resumed_from; /* the id sent on the current connection, -1 none */
    uint32_t since_open;  /* deliveries on the current connection */
    uint16_t conns;       /* connections made so far */
    uint32_t idx;
    uint8_t state, after, sse, in_frag, frag_op, ever_ready, tries;
    uint8_t sse_data, sse_id_in_block, has_hello_pending;
    char key[25]; /* Sec-WebSocket-Key of the current handshake */
} client_t;

/* A duplicate delivery, for the report: enough to tell a resume that
 * replayed too much from an event sent twice on one connection. */
typedef struct dup_example {
    uint32_t client, since_open;
    uint16_t conn;
    int64_t seq, resumed_from, prev_seq;
} dup_example_t;

typedef struct pending {
    uint32_t i;    /* index in the span */
    uint64_t recv; /* CLOCK_REALTIME */
} pending_t;

/* Counters that only the loop's thread writes; main reads them after join
 * and sums them as an array of long, so every field must be a long. */
typedef struct wstats {
    long delivered, duplicates, out_of_order, foreign, early, no_commit;
    long connect_failures, http_refused, protocol_errors, unexpected_closes, server_closes;
    long reconnects, reconnect_failures, drops;
    long pings, pongs, app_pongs, comments, other_msgs, resyncs, error_msgs, binary_msgs;
    long events_unverified; /* event messages received while not producing */
    long rx_bytes;          /* everything read after connecting, headers included */
    long http_status[600];
} wstats_t;

struct worker {
    int idx;
    pthread_t th;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t tick;
    client_t **cl;
    int n;
    int started; /* ramp cursor */
    int inflight;
    int handles;
    int stopping, finished_handles;
    double rate; /* connects per second for this loop */
    uint64_t ramp_start_ms;
    uint64_t drop_start_ms;
    long dropped;
    int drop_cursor;
    client_t *wait_head;
    uint64_t rng;
    char *rbuf;
    rt_hist_t *lat, *lat_lo, *conn, *reconn;
    uint64_t *last_recv; /* per span index: the latest receive in this loop (fan-out time) */
    uint64_t last_delivery_ns;
    pending_t *pend;
    size_t npend, cappend;
    wstats_t st;
    dup_example_t dups[MAX_EXAMPLES];
    int ndups;
    char last_error[160];
    atomic_int a_ready;      /* clients that completed a first handshake */
    atomic_int a_connfail;   /* clients that failed before their first handshake */
    atomic_int a_failed;     /* clients that ended failed (any time) */
    atomic_long a_delivered; /* progress, for the drain */
    atomic_int a_done;       /* the loop returned */
};

static worker_t *W;
static client_t *CL;
static long NCLIENTS;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void note_error(worker_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(worker_t *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->last_error, sizeof w->last_error, fmt, ap);
    va_end(ap);
}

/* ---- writing ---------------------------------------------------------------------- */

typedef struct wreq {
    uv_write_t req;
    char data[];
} wreq_t;

static void on_write(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error or EOF */
    free(req);
}

static void send_raw(client_t *c, const void *p, size_t n)
{
    wreq_t *wr = xmalloc(sizeof *wr + n);
    memcpy(wr->data, p, n);
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)n);
    if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) free(wr);
}

/* Builds one masked client frame into out (at least n + 14 bytes); returns its
 * length. The mask comes from a xorshift generator: RFC 6455 wants it
 * unpredictable to protect proxies from browser scripts, which does not
 * apply to a load generator talking to loopback. */
static size_t ws_frame(worker_t *w, uint8_t *out, int fin, int op, const void *payload, size_t n)
{
    size_t h = 0;
    out[h++] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (n < 126) {
        out[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int s = 56; s >= 0; s -= 8)
            out[h++] = (uint8_t)((uint64_t)n >> s);
    }
    uint32_t m = (uint32_t)rng_next(&w->rng);
    uint8_t *mk = out + h;
    memcpy(mk, &m, 4);
    h += 4;
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i++)
        out[h + i] = p[i] ^ mk[i & 3];
    return h + n;
}

static void ws_send(client_t *c, int op, const void *payload, size_t n)
{
    uint8_t *f = xmalloc(n + 14);
    size_t len = ws_frame(c->w, f, 1, op, payload, n);
    send_raw(c, f, len);
    free(f);
}

/* Sends one message split into nfrag frames (text/binary op, then
 * continuations), all in one write. */
static void ws_send_fragmented(client_t *c, int op, const char *payload, size_t n, int nfrag)
{
    uint8_t *f = xmalloc(n + 14 * (size_t)nfrag);
    size_t len = 0, off = 0;
    for (int k = 0; k < nfrag; k++) {
        size_t part = (k == nfrag - 1) ? n - off : n / (size_t)nfrag;
        len += ws_frame(c->w, f + len, k == nfrag - 1, k == 0 ? op : 0, payload + off, part);
        off += part;
    }
    send_raw(c, f, len);
    free(f);
}

/* ---- connection lifecycle ---------------------------------------------------------- */

static void client_start(client_t *c);
static void on_close(uv_handle_t *h);

static void maybe_finish(worker_t *w)
{
    if (w->stopping && w->handles == 0 && !w->finished_handles) {
        w->finished_handles = 1;
        uv_close((uv_handle_t *)&w->tick, NULL);
        uv_close((uv_handle_t *)&w->async, NULL);
    }
}

/* Ends the current connection. What happens next depends on why: a stop or
 * an intended drop is no error; anything else is counted, and the client
 * either waits to reconnect (--reconnect, after a first successful
 * handshake) or ends failed. */
static void client_close(client_t *c, int why, const char *detail)
{
    worker_t *w = c->w;
    if (c->state < C_CONNECTING || c->state > C_OPEN) return;
    if (c->state != C_OPEN) w->inflight--;
    int next;
    if (why == WHY_STOP || w->stopping) {
        next = C_DONE;
    } else if (why == WHY_DROP) {
        next = C_WAIT;
        w->st.drops++;
    } else {
        switch (why) {
        case WHY_CONNECT:
            w->st.connect_failures++;
            break;
        case WHY_HTTP:
            w->st.http_refused++;
            break;
        case WHY_PROTO:
            w->st.protocol_errors++;
            break;
        default:
            if (c->state == C_OPEN)
                w->st.unexpected_closes++;
            else
                w->st.connect_failures++;
            break;
        }
        if (detail) note_error(w, "client %u (%s): %s", c->idx, c->g->url, detail);
        if (c->ever_ready && O.reconnect && why != WHY_PROTO && c->tries < RECONNECT_TRIES) {
            if (c->state != C_OPEN) w->st.reconnect_failures++;
            c->tries++;
            next = C_WAIT;
        } else {
            next = C_FAILED;
            atomic_fetch_add(&w->a_failed, 1);
            if (!c->ever_ready) atomic_fetch_add(&w->a_connfail, 1);
        }
    }
    c->after = (uint8_t)next;
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_close(uv_handle_t *h)
{
    client_t *c = h->data;
    worker_t *w = c->w;
    w->handles--;
    free(c->buf);
    c->buf = NULL;
    c->blen = c->bcap = 0;
    free(c->msg);
    c->msg = NULL;
    c->mlen = c->mcap = 0;
    c->in_frag = 0;
    c->sse_data = c->sse_id_in_block = 0;
    c->state = c->after;
    if (c->state == C_WAIT) {
        if (w->stopping) {
            c->state = C_DONE;
        } else {
            c->due_ms = mono_ms() + (c->tries ? (uint64_t)(O.reconnect_delay * 1000) : 0);
            c->next_wait = w->wait_head;
            w->wait_head = c;
        }
    }
    maybe_finish(w);
}

static void on_ready(client_t *c)
{
    worker_t *w = c->w;
    uint64_t t = rt_mono_ns() - c->t_start_ns;
    w->inflight--;
    c->state = C_OPEN;
    if (!c->ever_ready) {
        c->ever_ready = 1;
        rt_hist_record(w->conn, t);
        atomic_fetch_add(&w->a_ready, 1);
    } else {
        w->st.reconnects++;
        rt_hist_record(w->reconn, t);
    }
    c->tries = 0;
    if (O.ws_hello && !c->sse) {
        static const char hello[] = "{\"type\":\"ping\"}";
        ws_send_fragmented(c, 1, hello, sizeof hello - 1, 3);
    }
}

/* ---- deliveries ------------------------------------------------------------------- */

static void deliver(client_t *c, int64_t seq, uint64_t now)
{
    worker_t *w = c->w;
    c->last_id = seq;
    if (G.span == 0) {
        w->st.events_unverified++;
        return;
    }
    if (seq <= G.base || (uint64_t)(seq - G.base) > G.span) {
        w->st.foreign++;
        return;
    }
    size_t i = (size_t)(seq - G.base - 1);
    if (!c->seen) c->seen = xcalloc((G.span + 63) / 64, sizeof(uint64_t));
    uint64_t bit = UINT64_C(1) << (i & 63);
    if (c->seen[i >> 6] & bit) {
        w->st.duplicates++;
        if (w->ndups < MAX_EXAMPLES)
            w->dups[w->ndups++] =
                (dup_example_t){c->idx, c->since_open, c->conns, seq, c->resumed_from, c->max_seq};
        return;
    }
    c->seen[i >> 6] |= bit;
    c->since_open++;
    if (seq < c->max_seq)
        w->st.out_of_order++;
    else
        c->max_seq = seq;
    w->st.delivered++;
    atomic_store_explicit(&w->a_delivered, w->st.delivered, memory_order_relaxed);
    if (now > w->last_delivery_ns) w->last_delivery_ns = now;
    if (w->last_recv && now > w->last_recv[i]) w->last_recv[i] = now;
    /* COMMIT was sent before the event could exist, so this is set (the
     * store happened before the producer's send(2), our read after the
     * server's write). */
    uint64_t t = atomic_load_explicit(&G.commit_ns[i], memory_order_acquire);
    if (t)
        rt_hist_record(w->lat, now >= t ? now - t : 0);
    else
        w->st.no_commit++;
    t = atomic_load_explicit(&G.done_ns[i], memory_order_acquire);
    if (t) {
        if (now >= t) {
            rt_hist_record(w->lat_lo, now - t);
        } else {
            w->st.early++;
            rt_hist_record(w->lat_lo, 0);
        }
        return;
    }
    /* The producer has not come back from COMMIT yet: resolve at the end. */
    if (w->npend == w->cappend) {
        w->cappend = w->cappend ? w->cappend * 2 : 1024;
        w->pend = xrealloc(w->pend, w->cappend * sizeof *w->pend);
    }
    w->pend[w->npend].i = (uint32_t)i;
    w->pend[w->npend].recv = now;
    w->npend++;
}

static int parse_int64(const char *p, size_t n, int64_t *out)
{
    if (n == 0 || n > 18) return -1;
    int64_t v = 0;
    for (size_t k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9') return -1;
        v = v * 10 + (p[k] - '0');
    }
    *out = v;
    return 0;
}

static const char *const EVENT_TYPES[] = {"intent_update",      "audit_log",      "stats_updated",
                                          "alert_firing",       "alert_resolved", "health_changed",
                                          "system_notification"};

/* A complete WebSocket text message. The server renders every event as
 * {"type":"T","id":SEQ,...}; the prefix is parsed by hand, since a full JSON
 * parse per delivery would make the generator the bottleneck. */
static void ws_message(client_t *c, int op, const char *p, size_t n, uint64_t now)
{
    worker_t *w = c->w;
    if (op != 1) {
        w->st.binary_msgs++;
        return;
    }
    static const char pre[] = "{\"type\":\"";
    size_t pl = sizeof pre - 1;
    if (n <= pl || memcmp(p, pre, pl) != 0) {
        w->st.other_msgs++;
        return;
    }
    const char *t = p + pl;
    const char *q = memchr(t, '"', n - pl);
    if (!q) {
        w->st.other_msgs++;
        return;
    }
    size_t tl = (size_t)(q - t);
    for (size_t k = 0; k < sizeof EVENT_TYPES / sizeof EVENT_TYPES[0]; k++) {
        if (tl == strlen(EVENT_TYPES[k]) && memcmp(t, EVENT_TYPES[k], tl) == 0) {
            static const char idk[] = ",\"id\":";
            const char *d = q + 1, *end = p + n;
            if ((size_t)(end - d) < sizeof idk || memcmp(d, idk, sizeof idk - 1) != 0) {
                w->st.other_msgs++;
                return;
            }
            d += sizeof idk - 1;
            const char *e = d;
            while (e < end && *e >= '0' && *e <= '9')
                e++;
            int64_t seq;
            if (parse_int64(d, (size_t)(e - d), &seq) < 0) {
                w->st.other_msgs++;
                return;
            }
            deliver(c, seq, now);
            return;
        }
    }
#define TYPE_IS(s) (tl == sizeof(s) - 1 && memcmp(t, s, tl) == 0)
    if (TYPE_IS("pong"))
        w->st.app_pongs++;
    else if (TYPE_IS("resync"))
        w->st.resyncs++;
    else if (TYPE_IS("error")) {
        w->st.error_msgs++;
        note_error(w, "client %u got %.*s", c->idx, (int)(n > 120 ? 120 : n), p);
    } else
        w->st.other_msgs++;
#undef TYPE_IS
}

/* Parses WebSocket frames; returns the bytes consumed (whole frames only) or
 * -1 when the connection was closed. */
static ssize_t ws_process(client_t *c, const char *d, size_t n, uint64_t now)
{
    worker_t *w = c->w;
    size_t off = 0;
    while (n - off >= 2) {
        const uint8_t *b = (const uint8_t *)d + off;
        size_t avail = n - off;
        int fin = b[0] & 0x80, op = b[0] & 0x0f;
        if (b[0] & 0x70) {
            client_close(c, WHY_PROTO, "RSV bits set");
            return -1;
        }
        if (b[1] & 0x80) {
            client_close(c, WHY_PROTO, "masked server frame");
            return -1;
        }
        uint64_t plen = b[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (avail < 4) break;
            plen = ((uint64_t)b[2] << 8) | b[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10) break;
            plen = 0;
            for (int k = 0; k < 8; k++)
                plen = (plen << 8) | b[2 + k];
            h = 10;
        }
        if (plen > MAX_MSG) {
            client_close(c, WHY_PROTO, "frame too large");
            return -1;
        }
        if (avail < h + plen) break;
        const char *pl = d + off + h;
        off += h + (size_t)plen;
        if (op & 0x8) {
            if (!fin || plen > 125) {
                client_close(c, WHY_PROTO, "bad control frame");
                return -1;
            }
            if (op == 0x9) {
                w->st.pings++;
                ws_send(c, 0xA, pl, (size_t)plen);
            } else if (op == 0xA) {
                w->st.pongs++;
            } else if (op == 0x8) {
                unsigned code = plen >= 2 ? ((unsigned)(uint8_t)pl[0] << 8) | (uint8_t)pl[1] : 1005;
                w->st.server_closes++;
                char why[160];
                snprintf(why, sizeof why, "server closed the WebSocket: %u %.*s", code,
                         plen > 2 ? (int)plen - 2 : 0, pl + 2);
                uint8_t reply[2] = {(uint8_t)(code >> 8), (uint8_t)code};
                uint8_t f[20];
                size_t fl = ws_frame(w, f, 1, 0x8, reply, code == 1005 ? 0 : 2);
                uv_buf_t ub = uv_buf_init((char *)f, (unsigned)fl);
                uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
                client_close(c, WHY_SERVER_CLOSE, why);
                return -1;
            } else {
                client_close(c, WHY_PROTO, "unknown control opcode");
                return -1;
            }
            continue;
        }
        if (op == 0) {
            if (!c->in_frag) {
                client_close(c, WHY_PROTO, "continuation without a message");
                return -1;
            }
            if ((uint64_t)c->mlen + plen > MAX_MSG) {
                client_close(c, WHY_PROTO, "message too large");
                return -1;
            }
            if (c->mlen + plen > c->mcap) {
                c->mcap = (uint32_t)(c->mlen + plen) * 2;
                if (c->mcap > MAX_MSG) c->mcap = MAX_MSG;
                c->msg = xrealloc(c->msg, c->mcap);
            }
            memcpy(c->msg + c->mlen, pl, (size_t)plen);
            c->mlen += (uint32_t)plen;
            if (fin) {
                c->in_frag = 0;
                ws_message(c, c->frag_op, c->msg, c->mlen, now);
                c->mlen = 0;
            }
        } else if (op == 1 || op == 2) {
            if (c->in_frag) {
                client_close(c, WHY_PROTO, "new message inside a fragmented one");
                return -1;
            }
            if (fin) {
                ws_message(c, op, pl, (size_t)plen, now);
            } else {
                c->in_frag = 1;
                c->frag_op = (uint8_t)op;
                if (plen > c->mcap) {
                    c->mcap = (uint32_t)plen * 2 + 256;
                    c->msg = xrealloc(c->msg, c->mcap);
                }
                memcpy(c->msg, pl, (size_t)plen);
                c->mlen = (uint32_t)plen;
            }
        } else {
            client_close(c, WHY_PROTO, "unknown opcode");
            return -1;
        }
    }
    return (ssize_t)off;
}

/* Parses SSE lines (LF or CRLF endings); returns the bytes of complete lines
 * consumed. An event is dispatched at its blank line; its seq is its id. */
static ssize_t sse_process(client_t *c, const char *d, size_t n, uint64_t now)
{
    worker_t *w = c->w;
    size_t off = 0;
    while (off < n) {
        const char *line = d + off;
        const char *nl = memchr(line, '\n', n - off);
        if (!nl) break;
        size_t ll = (size_t)(nl - line);
        off += ll + 1;
        if (ll && line[ll - 1] == '\r') ll--;
        if (ll == 0) {
            if (c->sse_data) {
                if (c->sse_id_in_block)
                    deliver(c, c->sse_id, now);
                else
                    w->st.other_msgs++;
            }
            c->sse_data = c->sse_id_in_block = 0;
            continue;
        }
        if (line[0] == ':') {
            w->st.comments++;
            continue;
        }
        const char *colon = memchr(line, ':', ll);
        size_t fl = colon ? (size_t)(colon - line) : ll;
        const char *v = colon ? colon + 1 : line + ll;
        if (v < line + ll && *v == ' ') v++;
        size_t vl = (size_t)(line + ll - v);
        if (fl == 2 && memcmp(line, "id", 2) == 0) {
            int64_t id;
            if (parse_int64(v, vl, &id) == 0) {
                c->sse_id = id;
                c->sse_id_in_block = 1;
            }
        } else if (fl == 4 && memcmp(line, "data", 4) == 0) {
            c->sse_data = 1;
        }
        /* event: and retry: need nothing here: the id says which seq it is. */
    }
    if (n - off > MAX_SSE_LINE) {
        client_close(c, WHY_PROTO, "SSE line too long");
        return -1;
    }
    return (ssize_t)off;
}

static int header_is(const char *line, size_t ll, const char *name, const char **val, size_t *vl)
{
    size_t nl = strlen(name);
    if (ll <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0) return 0;
    const char *v = line + nl + 1, *e = line + ll;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *val = v;
    *vl = (size_t)(e - v);
    return 1;
}

/* The response head, up to and including the blank line. Returns 0 when the
 * stream is open, -1 when the connection was closed. */
static int handle_head(client_t *c, const char *h, size_t n)
{
    worker_t *w = c->w;
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0) {
        client_close(c, WHY_PROTO, "not an HTTP response");
        return -1;
    }
    int status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    int want = c->sse ? 200 : 101;
    if (status != want) {
        if (status >= 100 && status < 600) w->st.http_status[status]++;
        const char *eol = memchr(h, '\r', n);
        char why[160];
        snprintf(why, sizeof why, "%.*s", (int)(eol ? eol - h : 40), h);
        client_close(c, WHY_HTTP, why);
        return -1;
    }
    int accept_ok = 0, upgrade_ok = 0, ctype_ok = 0;
    char want_accept[29] = "";
    if (!c->sse) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        if (!EVP_Digest(buf, strlen(buf), md, &mdlen, EVP_sha1(), NULL)) abort();
        EVP_EncodeBlock((unsigned char *)want_accept, md, (int)mdlen);
    }
    const char *p = memchr(h, '\n', n);
    const char *end = h + n;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) break;
        size_t ll = (size_t)(nl - line);
        if (ll && line[ll - 1] == '\r') ll--;
        const char *v;
        size_t vl;
        if (header_is(line, ll, "Sec-WebSocket-Accept", &v, &vl))
            accept_ok = vl == 28 && memcmp(v, want_accept, 28) == 0;
        else if (header_is(line, ll, "Upgrade", &v, &vl))
            upgrade_ok = vl == 9 && strncasecmp(v, "websocket", 9) == 0;
        else if (header_is(line, ll, "Content-Type", &v, &vl))
            ctype_ok = vl >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
        else if (header_is(line, ll, "Transfer-Encoding", &v, &vl)) {
            client_close(c, WHY_PROTO, "Transfer-Encoding on an event stream is not supported");
            return -1;
        }
        p = nl;
    }
    if (!c->sse && (!accept_ok || !upgrade_ok)) {
        client_close(c, WHY_PROTO,
                     accept_ok ? "no Upgrade: websocket" : "wrong Sec-WebSocket-Accept");
        return -1;
    }
    if (c->sse && !ctype_ok) {
        client_close(c, WHY_PROTO, "Content-Type is not text/event-stream");
        return -1;
    }
    on_ready(c);
    return 0;
}

/* Consumes what it can of d; returns bytes used, or -1 if the connection was
 * closed. */
static ssize_t process(client_t *c, const char *d, size_t n, uint64_t now)
{
    size_t off = 0;
    if (c->state == C_HANDSHAKE) {
        const char *e = memmem(d, n, "\r\n\r\n", 4);
        if (!e) {
            if (n > MAX_HEAD) {
                client_close(c, WHY_PROTO, "response head too large");
                return -1;
            }
            return 0;
        }
        off = (size_t)(e - d) + 4;
        if (handle_head(c, d, off) < 0) return -1;
    }
    if (c->state != C_OPEN) return -1;
    ssize_t r =
        c->sse ? sse_process(c, d + off, n - off, now) : ws_process(c, d + off, n - off, now);
    if (r < 0) return -1;
    return (ssize_t)off + r;
}

static void buf_append(client_t *c, const char *p, size_t n)
{
    if (c->blen + n > c->bcap) {
        size_t cap = c->bcap ? c->bcap : 1024;
        while (cap < c->blen + n)
            cap *= 2;
        c->buf = xrealloc(c->buf, cap);
        c->bcap = (uint32_t)cap;
    }
    memcpy(c->buf + c->blen, p, n);
    c->blen += (uint32_t)n;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    client_t *c = h->data;
    /* One buffer per loop: libuv calls on_read right after the read(2) that
     * filled it, and on_read copies out whatever it cannot consume. */
    *b = uv_buf_init(c->w->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    client_t *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        if (c->w->stopping) return;
        client_close(c, nread == UV_EOF ? WHY_EOF : WHY_ERR,
                     nread == UV_EOF ? "server closed the connection" : uv_strerror((int)nread));
        return;
    }
    if (c->state != C_HANDSHAKE && c->state != C_OPEN) return;
    uint64_t now = rt_now_ns();
    size_t n = (size_t)nread;
    c->w->st.rx_bytes += nread;
    if (c->blen == 0) {
        ssize_t used = process(c, b->base, n, now);
        if (used < 0) return;
        if ((size_t)used < n) buf_append(c, b->base + used, n - (size_t)used);
        return;
    }
    if ((uint64_t)c->blen + n > (uint64_t)MAX_MSG + MAX_HEAD) {
        client_close(c, WHY_PROTO, "input buffer over its limit");
        return;
    }
    buf_append(c, b->base, n);
    ssize_t used = process(c, c->buf, c->blen, now);
    if (used < 0) return;
    c->blen -= (uint32_t)used;
    if (c->blen)
        memmove(c->buf, c->buf + used, c->blen);
    else if (c->bcap > 64 * 1024) {
        free(c->buf);
        c->buf = NULL;
        c->bcap = 0;
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    free(req);
    if (status == UV_ECANCELED || c->state != C_CONNECTING) return;
    if (status < 0) {
        client_close(c, WHY_CONNECT, uv_strerror(status));
        return;
    }
    char resume[64] = "";
    char head[2048];
    int n;
    /* A reconnecting client resumes from the last event it got. One that got
     * none yet resumes from the seq base: it subscribed before production
     * started, so it has seen everything up to there. */
    int64_t last = c->last_id;
    if (last < 0 && c->ever_ready && G.span) last = G.base;
    c->resumed_from = last;
    c->since_open = 0;
    c->conns++;
    if (c->sse) {
        if (last >= 0) snprintf(resume, sizeof resume, "Last-Event-ID: %" PRId64 "\r\n", last);
        n = snprintf(head, sizeof head,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n%s\r\n",
                     c->g->path, c->g->host, resume);
    } else {
        uint8_t raw[16];
        for (int k = 0; k < 16; k += 8) {
            uint64_t r = rng_next(&c->w->rng);
            memcpy(raw + k, &r, 8);
        }
        EVP_EncodeBlock((unsigned char *)c->key, raw, 16);
        if (last >= 0)
            snprintf(resume, sizeof resume, "%clast_event_id=%" PRId64,
                     strchr(c->g->path, '?') ? '&' : '?', last);
        n = snprintf(head, sizeof head,
                     "GET %s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     c->g->path, resume, c->g->host, c->key);
    }
    if (n < 0 || (size_t)n >= sizeof head) {
        client_close(c, WHY_PROTO, "request too long");
        return;
    }
    c->state = C_HANDSHAKE;
    send_raw(c, head, (size_t)n);
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r < 0) client_close(c, WHY_CONNECT, uv_strerror(r));
}

static void client_start(client_t *c)
{
    worker_t *w = c->w;
    c->t_start_ns = rt_mono_ns();
    int r = uv_tcp_init_ex(&w->loop, &c->tcp, AF_INET);
    if (r < 0) {
        /* No handle exists (out of descriptors, say): the client fails here. */
        w->st.connect_failures++;
        note_error(w, "client %u: socket: %s", c->idx, uv_strerror(r));
        c->state = C_FAILED;
        atomic_fetch_add(&w->a_failed, 1);
        if (!c->ever_ready) atomic_fetch_add(&w->a_connfail, 1);
        return;
    }
    w->handles++;
    w->inflight++;
    c->tcp.data = c;
    c->state = C_CONNECTING;
    if (O.nips) {
        const struct sockaddr_in *src = &O.ips[c->idx % (uint32_t)O.nips];
        uv_os_fd_t fd;
        int one = 1;
        /* Let connect() pick the port per destination, so each source
         * address offers the whole ephemeral range to each server port. */
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        r = uv_tcp_bind(&c->tcp, (const struct sockaddr *)src, 0);
        if (r < 0) {
            client_close(c, WHY_CONNECT, uv_strerror(r));
            return;
        }
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_connect_t *req = xmalloc(sizeof *req);
    req->data = c;
    r = uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&c->g->addr, on_connect);
    if (r < 0) {
        free(req);
        client_close(c, WHY_CONNECT, uv_strerror(r));
    }
}

/* Every TICK_MS: ramp up, reconnect clients whose wait is over, and drop
 * clients on schedule (--drop-every). */
static void on_tick(uv_timer_t *t)
{
    worker_t *w = t->data;
    if (w->stopping) return;
    uint64_t now = mono_ms();
    if (w->started < w->n) {
        long due = w->n;
        if (w->rate > 0) due = (long)((double)(now - w->ramp_start_ms) * w->rate / 1000.0) + 1;
        while (w->started < w->n && w->started < due && w->inflight < O.max_inflight)
            client_start(w->cl[w->started++]);
    }
    for (client_t **pp = &w->wait_head; *pp;) {
        client_t *c = *pp;
        if (c->due_ms <= now && w->inflight < O.max_inflight) {
            *pp = c->next_wait;
            c->next_wait = NULL;
            client_start(c);
        } else {
            pp = &c->next_wait;
        }
    }
    if (O.drop_every > 0 && atomic_load(&G.producing) && w->n) {
        if (!w->drop_start_ms) w->drop_start_ms = now;
        long target = (long)((double)(now - w->drop_start_ms) * w->n / (O.drop_every * 1000.0));
        /* Bounded: at most one pass over the clients per tick. */
        for (int k = 0; k < w->n && w->dropped < target; k++) {
            client_t *c = w->cl[w->drop_cursor++ % w->n];
            if (c->state == C_OPEN) {
                client_close(c, WHY_DROP, NULL);
                w->dropped++;
            }
        }
    }
}

static void on_async(uv_async_t *a)
{
    worker_t *w = a->data;
    if (!atomic_load(&G.stop) || w->stopping) return;
    w->stopping = 1;
    uv_timer_stop(&w->tick);
    for (int k = 0; k < w->n; k++) {
        client_t *c = w->cl[k];
        if (c->state == C_OPEN && !c->sse) {
            /* Best effort: a close frame (1000) if the socket takes it now. */
            uint8_t f[20];
            uint8_t code[2] = {0x03, 0xe8};
            size_t fl = ws_frame(w, f, 1, 0x8, code, 2);
            uv_buf_t ub = uv_buf_init((char *)f, (unsigned)fl);
            uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
        }
        if (c->state >= C_CONNECTING && c->state <= C_OPEN)
            client_close(c, WHY_STOP, NULL);
        else if (c->state == C_WAIT || c->state == C_NEW)
            c->state = C_DONE;
    }
    w->wait_head = NULL;
    maybe_finish(w);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    char name[16];
    snprintf(name, sizeof name, "loadgen-%d", w->idx);
    pthread_setname_np(pthread_self(), name);
    w->ramp_start_ms = mono_ms();
    uv_timer_start(&w->tick, on_tick, 0, TICK_MS);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_store(&w->a_done, 1);
    return NULL;
}

/* ---- producer --------------------------------------------------------------------- */

typedef struct producer {
    int idx;
    pthread_t th;
    PGconn *pg;
    long quota;
    long done_events;
    long statements;
    long rows_returned;
    int batch;
    char prefix[32]; /* uuid prefix: the last 12 hex digits count rows */
    char padding[7100];
    rt_hist_t *stmt;
    char error[256];
    atomic_int finished;
} producer_t;

static producer_t *P;

/* One statement of the workload, into sql. n0..n1: row numbers (inclusive)
 * for inserts; updates touch the rows of the previous insert. */
static void build_sql(producer_t *p, char *sql, size_t cap, int what, long n0, long n1)
{
    static const char tail[] =
        "; SELECT seq, event_type FROM rt_journal WHERE xid = pg_current_xact_id() ORDER BY seq";
    memcpy(sql, "BEGIN; ", 7);
    sql += 7;
    cap -= 7;
    const char *pad = p->padding;
    char data[7200];
    if (O.payload_bytes)
        snprintf(data, sizeof data, "jsonb_build_object('pad', '%s')", pad);
    else
        snprintf(data, sizeof data, "NULL");
    if (what == 0) {
        snprintf(sql, cap,
                 "INSERT INTO intents(id, status, data) SELECT ('%s' || lpad(to_hex(g), 12, '0'))"
                 "::uuid, 'created', %s FROM generate_series(%ld, %ld) g%s",
                 p->prefix, data, n0, n1, tail);
    } else if (what == 1) {
        snprintf(sql, cap,
                 "UPDATE intents SET status = 'updated', version = version + 1, updated_at = now()"
                 " WHERE id IN (SELECT ('%s' || lpad(to_hex(g), 12, '0'))::uuid"
                 " FROM generate_series(%ld, %ld) g)%s",
                 p->prefix, n0, n1, tail);
    } else {
        snprintf(sql, cap,
                 "INSERT INTO audit_logs(event_type, intent_id, actor, payload) SELECT 'loadgen',"
                 " ('%s' || lpad(to_hex(g), 12, '0'))::uuid, 'loadgen', %s"
                 " FROM generate_series(%ld, %ld) g%s",
                 p->prefix, data, n0, n1, tail);
    }
}

static void *producer_main(void *arg)
{
    producer_t *p = arg;
    char name[16];
    snprintf(name, sizeof name, "producer-%d", p->idx);
    pthread_setname_np(pthread_self(), name);
    double rate = O.produce_rate / O.producers; /* events per second, this producer */
    size_t cap = 16384;
    char *sql = xmalloc(cap);
    long next_row = 1, last_insert0 = 0, last_insert1 = 0;
    size_t *idx = NULL, cap_idx = 0;
    int cycle = 0;
    uint64_t start_ms = G.prod_start_ms;
    uint64_t end_ms = start_ms + (uint64_t)(O.duration * 1000);
    while (p->done_events < p->quota && !atomic_load(&G.stop_produce)) {
        /* Statement j is due when the events before it are due. */
        uint64_t due = start_ms + (uint64_t)((double)p->done_events * 1000.0 / rate);
        uint64_t now = mono_ms();
        if (O.duration_set && now >= end_ms) break;
        if (due > now) sleep_ms((unsigned)(due - now));
        long k = p->batch;
        if (k > p->quota - p->done_events) k = p->quota - p->done_events;
        int what = 0;
        if (strcmp(O.workload, "audit") == 0)
            what = 2;
        else if (strcmp(O.workload, "update") == 0)
            what = (cycle == 0) ? 0 : 1;
        else if (strcmp(O.workload, "mixed") == 0)
            what = cycle % 3 == 1 ? 1 : (cycle % 3 == 2 ? 2 : 0);
        long n0, n1;
        if (what == 1) {
            n0 = last_insert0;
            n1 = last_insert0 + k - 1;
            if (n1 > last_insert1) n1 = last_insert1;
        } else {
            n0 = next_row;
            n1 = next_row + k - 1;
            next_row += k;
            if (what == 0) {
                last_insert0 = n0;
                last_insert1 = n1;
            }
        }
        cycle++;
        build_sql(p, sql, cap, what, n0, n1);
        uint64_t t0 = rt_mono_ns();
        PGresult *res = PQexec(p->pg, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            snprintf(p->error, sizeof p->error, "%s", PQresultErrorMessage(res));
            p->error[strcspn(p->error, "\n")] = 0;
            PQclear(res);
            break;
        }
        int rows = PQntuples(res);
        if ((size_t)rows > cap_idx) {
            cap_idx = (size_t)rows * 2;
            idx = xrealloc(idx, cap_idx * sizeof *idx);
        }
        int nidx = 0;
        for (int r = 0; r < rows; r++) {
            int64_t seq = strtoll(PQgetvalue(res, r, 0), NULL, 10);
            unsigned kind = PQgetvalue(res, r, 1)[0] == 'a' ? KIND_AUDIT : KIND_INTENT;
            if (seq <= G.base || (uint64_t)(seq - G.base) > G.span) {
                atomic_fetch_add(&G.out_of_span, 1);
                continue;
            }
            idx[nidx] = (size_t)(seq - G.base - 1);
            G.kind[idx[nidx]] = (uint8_t)kind;
            nidx++;
        }
        PQclear(res);
        uint64_t sent = rt_now_ns();
        for (int r = 0; r < nidx; r++)
            atomic_store_explicit(&G.commit_ns[idx[r]], sent, memory_order_release);
        res = PQexec(p->pg, "COMMIT");
        uint64_t done = rt_now_ns();
        rt_hist_record(p->stmt, rt_mono_ns() - t0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            snprintf(p->error, sizeof p->error, "COMMIT: %s", PQresultErrorMessage(res));
            p->error[strcspn(p->error, "\n")] = 0;
            PQclear(res);
            for (int r = 0; r < nidx; r++)
                G.kind[idx[r]] = 0; /* never committed */
            break;
        }
        PQclear(res);
        for (int r = 0; r < nidx; r++)
            atomic_store_explicit(&G.done_ns[idx[r]], done, memory_order_release);
        p->statements++;
        p->rows_returned += rows;
        for (int r = 0; r < nidx; r++)
            atomic_fetch_add(&G.produced[G.kind[idx[r]]], 1);
        /* An update of rows that are gone yields fewer events; count what
         * the journal says, so the quota is events, not rows asked for. */
        p->done_events += rows ? rows : k;
    }
    free(sql);
    free(idx);
    atomic_store(&p->finished, 1);
    return NULL;
}

/* ---- /proc sampling --------------------------------------------------------------- */

typedef struct pstat {
    long rss_kib;
    long threads;
    double cpu_s;
    int ok; /* every pid could be read */
} pstat_t;

static pstat_t read_pstat(void)
{
    pstat_t s = {0, 0, 0, O.npids > 0};
    long tck = sysconf(_SC_CLK_TCK);
    for (int k = 0; k < O.npids; k++) {
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/status", (int)O.pids[k]);
        FILE *f = fopen(path, "r");
        if (!f) {
            s.ok = 0;
            continue;
        }
        while (fgets(buf, sizeof buf, f)) {
            long v;
            if (sscanf(buf, "VmRSS: %ld", &v) == 1)
                s.rss_kib += v;
            else if (sscanf(buf, "Threads: %ld", &v) == 1)
                s.threads += v;
        }
        fclose(f);
        snprintf(path, sizeof path, "/proc/%d/stat", (int)O.pids[k]);
        f = fopen(path, "r");
        if (!f) {
            s.ok = 0;
            continue;
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')');
        unsigned long ut = 0, st = 0;
        /* After "pid (comm)": state is field 3; utime and stime are 14 and 15. */
        if (rp &&
            sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            s.cpu_s += (double)(ut + st) / (double)tck;
        else
            s.ok = 0;
    }
    return s;
}

static struct {
    pstat_t base, connected, end, at_produce;
    long rss_peak_kib;
    long threads_max;
} S;

static void sample(void)
{
    if (!O.npids) return;
    pstat_t s = read_pstat();
    if (s.rss_kib > S.rss_peak_kib) S.rss_peak_kib = s.rss_kib;
    if (s.threads > S.threads_max) S.threads_max = s.threads;
}

/* ---- main ------------------------------------------------------------------------- */

static long sum_ready(void)
{
    long n = 0;
    for (int t = 0; t < O.threads; t++)
        n += atomic_load(&W[t].a_ready);
    return n;
}

static long sum_connfail(void)
{
    long n = 0;
    for (int t = 0; t < O.threads; t++)
        n += atomic_load(&W[t].a_connfail);
    return n;
}

static long sum_delivered(void)
{
    long n = 0;
    for (int t = 0; t < O.threads; t++)
        n += atomic_load_explicit(&W[t].a_delivered, memory_order_relaxed);
    return n;
}

static int should_abort(uint64_t hard_deadline_ms)
{
    return got_signal || mono_ms() >= hard_deadline_ms;
}

static json_t *hist_json(const rt_hist_t *h, double scale)
{
    json_t *o = json_object();
    json_object_set_new(o, "count", json_integer((json_int_t)h->count));
    json_object_set_new(o, "mean", json_real(rt_hist_mean(h) / scale));
    json_object_set_new(o, "min", json_real(h->count ? (double)h->min / scale : 0));
    json_object_set_new(o, "p50", json_real((double)rt_hist_percentile(h, 50) / scale));
    json_object_set_new(o, "p90", json_real((double)rt_hist_percentile(h, 90) / scale));
    json_object_set_new(o, "p95", json_real((double)rt_hist_percentile(h, 95) / scale));
    json_object_set_new(o, "p99", json_real((double)rt_hist_percentile(h, 99) / scale));
    json_object_set_new(o, "p99_9", json_real((double)rt_hist_percentile(h, 99.9) / scale));
    json_object_set_new(o, "max", json_real((double)h->max / scale));
    return o;
}

static void print_hist(const char *name, const rt_hist_t *h)
{
    if (!h->count) {
        printf("  %-22s (none)\n", name);
        return;
    }
    printf("  %-22s n=%-9" PRIu64
           " mean %8.3f  p50 %8.3f  p90 %8.3f  p99 %8.3f  p99.9 %8.3f  max %8.3f ms\n",
           name, h->count, rt_hist_mean(h) / 1e6, rt_hist_percentile(h, 50) / 1e6,
           rt_hist_percentile(h, 90) / 1e6, rt_hist_percentile(h, 99) / 1e6,
           rt_hist_percentile(h, 99.9) / 1e6, (double)h->max / 1e6);
}

static void setup_producers(void)
{
    P = xcalloc((size_t)O.producers, sizeof *P);
    int batch = O.batch;
    if (!batch) {
        double per = O.produce_rate / O.producers / 200.0;
        batch = per < 1 ? 1 : (int)ceil(per);
    }
    O.batch = batch;
    for (int k = 0; k < O.producers; k++) {
        producer_t *p = &P[k];
        p->idx = k;
        p->batch = batch;
        p->quota = O.events / O.producers + (k < O.events % O.producers);
        p->stmt = xmalloc(sizeof *p->stmt);
        rt_hist_init(p->stmt);
        uint8_t r[10];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) die("getrandom failed");
        snprintf(p->prefix, sizeof p->prefix, "%02x%02x%02x%02x-%02x%02x-4%01x%02x-8%01x%02x-",
                 r[0], r[1], r[2], r[3], r[4], r[5], r[6] & 15, r[7], r[8] & 15, r[9]);
        memset(p->padding, 'x', (size_t)O.payload_bytes);
        p->padding[O.payload_bytes] = 0;
        p->pg = PQconnectdb(O.db);
        if (PQstatus(p->pg) != CONNECTION_OK)
            die("--db: cannot connect: %s", PQerrorMessage(p->pg));
        PGresult *res = PQexec(p->pg, "SET synchronous_commit = off");
        PQclear(res);
    }
    /* Every seq the triggers hand out from now on is above the sequence's
     * current value. */
    PGresult *res =
        PQexec(P[0].pg, "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"
                        " FROM rt_journal_seq");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        die("cannot read rt_journal_seq (did you run 'rtbridge migrate'?): %s",
            PQresultErrorMessage(res));
    G.base = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    /* Room for seqs lost to rolled-back or concurrent transactions. */
    G.span = (size_t)O.events + 1024 + (size_t)O.events / 16;
    G.kind = xcalloc(G.span, 1);
    G.commit_ns = xcalloc(G.span, sizeof *G.commit_ns);
    G.done_ns = xcalloc(G.span, sizeof *G.done_ns);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    uint64_t t_begin_ms = mono_ms();
    uint64_t hard_deadline = t_begin_ms + (uint64_t)(O.timeout * 1000);
    int timed_out = 0;

    if (!O.idle) setup_producers();
    if (O.npids) {
        S.base = read_pstat();
        if (!S.base.ok) die("--server-pid: cannot read /proc/%d", (int)O.pids[0]);
        S.rss_peak_kib = S.base.rss_kib;
        S.threads_max = S.base.threads;
    }

    for (int g = 0; g < O.ngroups; g++)
        NCLIENTS += O.groups[g].clients;
    CL = xcalloc((size_t)NCLIENTS, sizeof *CL);
    W = xcalloc((size_t)O.threads, sizeof *W);
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) die("getrandom failed");
    for (int t = 0; t < O.threads; t++) {
        worker_t *w = &W[t];
        w->idx = t;
        w->cl = xcalloc((size_t)(NCLIENTS / O.threads + 1), sizeof *w->cl);
        w->rate = O.connect_rate / O.threads;
        w->rng = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(t + 1));
        if (!w->rng) w->rng = 1;
        w->rbuf = xmalloc(READ_BUF);
        w->lat = xmalloc(sizeof *w->lat);
        w->lat_lo = xmalloc(sizeof *w->lat_lo);
        rt_hist_init(w->lat_lo);
        w->conn = xmalloc(sizeof *w->conn);
        w->reconn = xmalloc(sizeof *w->reconn);
        rt_hist_init(w->lat);
        rt_hist_init(w->conn);
        rt_hist_init(w->reconn);
        if (G.span && G.span <= (8u << 20)) w->last_recv = xcalloc(G.span, sizeof *w->last_recv);
        if (uv_loop_init(&w->loop) < 0) die("uv_loop_init failed");
        uv_async_init(&w->loop, &w->async, on_async);
        w->async.data = w;
        uv_timer_init(&w->loop, &w->tick);
        w->tick.data = w;
    }
    {
        long i = 0;
        for (int g = 0; g < O.ngroups; g++) {
            for (int k = 0; k < O.groups[g].clients; k++, i++) {
                client_t *c = &CL[i];
                worker_t *w = &W[i % O.threads];
                c->w = w;
                c->g = &O.groups[g];
                c->sse = (uint8_t)O.groups[g].sse;
                c->idx = (uint32_t)i;
                c->last_id = -1;
                c->resumed_from = -1;
                c->max_seq = -1;
                w->cl[w->n++] = c;
            }
        }
    }

    /* ---- connect ---- */
    uint64_t t_conn_start = mono_ms();
    for (int t = 0; t < O.threads; t++)
        if (pthread_create(&W[t].th, NULL, worker_main, &W[t]) != 0) die("pthread_create failed");
    uint64_t conn_deadline = t_conn_start + (uint64_t)(O.connect_timeout * 1000);
    uint64_t last_progress = t_conn_start, last_sample = 0;
    long ready = 0, connfail = 0;
    for (;;) {
        sleep_ms(10);
        uint64_t now = mono_ms();
        if (now - last_sample >= 100) {
            sample();
            last_sample = now;
        }
        ready = sum_ready();
        connfail = sum_connfail();
        if (ready + connfail >= NCLIENTS) break;
        if (now >= conn_deadline) break;
        if (should_abort(hard_deadline)) break;
        if (!O.quiet && now - last_progress >= 1000) {
            fprintf(stderr, PROG ": connecting: %ld/%ld ready, %ld failed\n", ready, NCLIENTS,
                    connfail);
            last_progress = now;
        }
    }
    double all_ready_s = (double)(mono_ms() - t_conn_start) / 1000.0;
    long connect_timeouts = NCLIENTS - ready - connfail;
    if (!O.quiet)
        fprintf(stderr, PROG ": %ld/%ld clients ready in %.2f s (%ld failed, %ld still pending)\n",
                ready, NCLIENTS, all_ready_s, connfail, connect_timeouts);
    if (O.ready_file) {
        /* Written to a temporary name and renamed, so a script polling for
         * the file never reads half of it. */
        char tmpf[4096];
        snprintf(tmpf, sizeof tmpf, "%s.tmp", O.ready_file);
        FILE *f = fopen(tmpf, "w");
        if (f) {
            fprintf(f, "ready %ld failed %ld\n", ready, connfail + connect_timeouts);
            fclose(f);
            rename(tmpf, O.ready_file);
        }
    }

    /* ---- settle, then produce or hold ---- */
    uint64_t settle_end = mono_ms() + (uint64_t)(O.settle * 1000);
    while (mono_ms() < settle_end && !should_abort(hard_deadline)) {
        sleep_ms(10);
        if (mono_ms() - last_sample >= 100) {
            sample();
            last_sample = mono_ms();
        }
    }
    if (O.npids) {
        S.connected = read_pstat();
        S.at_produce = S.connected;
        if (S.connected.rss_kib > S.rss_peak_kib) S.rss_peak_kib = S.connected.rss_kib;
    }
    uint64_t t_prod_end_ms = 0, t_drain_end_ms = 0;
    int drained = 0;
    long expected_live = 0;
    if (!should_abort(hard_deadline)) {
        if (O.idle) {
            uint64_t hold_end = mono_ms() + (uint64_t)(O.duration * 1000);
            while (mono_ms() < hold_end && !should_abort(hard_deadline)) {
                sleep_ms(10);
                if (mono_ms() - last_sample >= 100) {
                    sample();
                    last_sample = mono_ms();
                }
            }
            t_prod_end_ms = t_drain_end_ms = mono_ms();
        } else {
            G.prod_start_ms = mono_ms();
            G.prod_start_ns = rt_now_ns();
            atomic_store(&G.producing, 1);
            for (int k = 0; k < O.producers; k++)
                if (pthread_create(&P[k].th, NULL, producer_main, &P[k]) != 0)
                    die("pthread_create failed");
            last_progress = mono_ms();
            for (;;) {
                sleep_ms(10);
                uint64_t now = mono_ms();
                if (now - last_sample >= 100) {
                    sample();
                    last_sample = now;
                }
                int all = 1;
                for (int k = 0; k < O.producers; k++)
                    all &= atomic_load(&P[k].finished);
                if (all) break;
                if (should_abort(hard_deadline)) {
                    atomic_store(&G.stop_produce, 1);
                    break;
                }
                if (!O.quiet && now - last_progress >= 1000) {
                    long prod = atomic_load(&G.produced[1]) + atomic_load(&G.produced[2]);
                    fprintf(stderr, PROG ": producing: %ld/%ld events, %ld deliveries\n", prod,
                            O.events, sum_delivered());
                    last_progress = now;
                }
            }
            t_prod_end_ms = mono_ms();
            atomic_store(&G.producing, 0);
            /* Drain: until every ready client has every event of its kinds. */
            long nk[3] = {0, 0, 0};
            for (long i = 0; i < NCLIENTS; i++) {
                /* Only the group masks are read here (the loops own the
                 * clients); scaled by the ready fraction below, this is an
                 * estimate to stop waiting, never a result. */
                unsigned m = CL[i].g->mask;
                if (m & KIND_INTENT) nk[1]++;
                if (m & KIND_AUDIT) nk[2]++;
            }
            double frac = NCLIENTS ? (double)ready / (double)NCLIENTS : 0;
            uint64_t drain_deadline = mono_ms() + (uint64_t)(O.drain * 1000);
            for (;;) {
                expected_live = (long)((double)(atomic_load(&G.produced[1]) * nk[1] +
                                                atomic_load(&G.produced[2]) * nk[2]) *
                                       frac);
                if (sum_delivered() >= expected_live) {
                    drained = 1;
                    break;
                }
                if (mono_ms() >= drain_deadline || should_abort(hard_deadline)) break;
                sleep_ms(10);
                if (mono_ms() - last_sample >= 100) {
                    sample();
                    last_sample = mono_ms();
                }
            }
            t_drain_end_ms = mono_ms();
        }
    }
    if (O.npids) {
        S.end = read_pstat();
        if (S.end.rss_kib > S.rss_peak_kib) S.rss_peak_kib = S.end.rss_kib;
        if (S.end.threads > S.threads_max) S.threads_max = S.end.threads;
    }
    if (mono_ms() >= hard_deadline) timed_out = 1;

    /* ---- stop: close every connection, join every thread (bounded) ---- */
    atomic_store(&G.stop, 1);
    atomic_store(&G.stop_produce, 1);
    for (int t = 0; t < O.threads; t++)
        uv_async_send(&W[t].async);
    uint64_t join_deadline = mono_ms() + 10000;
    int loops_done = 0;
    while (mono_ms() < join_deadline) {
        loops_done = 1;
        for (int t = 0; t < O.threads; t++)
            loops_done &= atomic_load(&W[t].a_done);
        int prods_done = 1;
        if (!O.idle && G.prod_start_ms)
            for (int k = 0; k < O.producers; k++)
                prods_done &= atomic_load(&P[k].finished);
        if (loops_done && prods_done) break;
        sleep_ms(5);
    }
    if (!loops_done) {
        fprintf(stderr, PROG ": client loops did not stop within 10 s; exiting\n");
        _exit(1);
    }
    for (int t = 0; t < O.threads; t++) {
        pthread_join(W[t].th, NULL);
        uv_loop_close(&W[t].loop);
    }
    if (!O.idle && G.prod_start_ms) {
        for (int k = 0; k < O.producers; k++) {
            if (!atomic_load(&P[k].finished)) {
                fprintf(stderr, PROG ": a producer is stuck in PostgreSQL; exiting\n");
                _exit(1);
            }
            pthread_join(P[k].th, NULL);
        }
    }

    /* ---- results ---- */
    rt_hist_t *lat_lo = xmalloc(sizeof *lat_lo);
    rt_hist_init(lat_lo);
    rt_hist_t *lat = xmalloc(sizeof *lat), *conn = xmalloc(sizeof *conn),
              *reconn = xmalloc(sizeof *reconn), *fan = xmalloc(sizeof *fan),
              *stmt = xmalloc(sizeof *stmt);
    rt_hist_init(lat);
    rt_hist_init(conn);
    rt_hist_init(reconn);
    rt_hist_init(fan);
    rt_hist_init(stmt);
    wstats_t tot;
    memset(&tot, 0, sizeof tot);
    uint64_t last_delivery_ns = 0;
    const char *last_error = "";
    for (int t = 0; t < O.threads; t++) {
        worker_t *w = &W[t];
        /* Deliveries that beat their producer's COMMIT reply. */
        for (size_t k = 0; k < w->npend; k++) {
            uint64_t c = G.done_ns[w->pend[k].i];
            if (!c) {
                w->st.no_commit++;
                continue;
            }
            if (w->pend[k].recv >= c) {
                rt_hist_record(w->lat_lo, w->pend[k].recv - c);
            } else {
                w->st.early++;
                rt_hist_record(w->lat_lo, 0);
            }
        }
        rt_hist_merge(lat, w->lat);
        rt_hist_merge(lat_lo, w->lat_lo);
        rt_hist_merge(conn, w->conn);
        rt_hist_merge(reconn, w->reconn);
        long *a = (long *)&w->st, *b = (long *)&tot;
        for (size_t k = 0; k < sizeof tot / sizeof(long); k++)
            b[k] += a[k];
        if (w->last_delivery_ns > last_delivery_ns) last_delivery_ns = w->last_delivery_ns;
        if (w->last_error[0]) last_error = w->last_error;
    }
    long produced = 0, statements = 0;
    const char *prod_error = "";
    if (!O.idle) {
        for (int k = 0; k < O.producers; k++) {
            rt_hist_merge(stmt, P[k].stmt);
            produced += P[k].rows_returned;
            statements += P[k].statements;
            if (P[k].error[0]) prod_error = P[k].error;
        }
    }
    /* Exact accounting per client against the produced seqs of its kinds. */
    long expected = 0, lost = 0, unexpected = 0, clients_with_loss = 0, ready_final = 0, failed = 0;
    json_t *lost_examples = json_array();
    if (G.span) {
        size_t words = (G.span + 63) / 64;
        uint64_t *want[4];
        for (unsigned m = 0; m < 4; m++) {
            want[m] = xcalloc(words, sizeof(uint64_t));
            for (size_t i = 0; i < G.span; i++)
                if (G.kind[i] & m) want[m][i >> 6] |= UINT64_C(1) << (i & 63);
        }
        long wanted_count[4];
        for (unsigned m = 0; m < 4; m++) {
            wanted_count[m] = 0;
            for (size_t k = 0; k < words; k++)
                wanted_count[m] += __builtin_popcountll(want[m][k]);
        }
        for (long i = 0; i < NCLIENTS; i++) {
            client_t *c = &CL[i];
            if (c->state == C_FAILED) failed++;
            if (!c->ever_ready) continue;
            ready_final++;
            unsigned m = c->g->mask & 3;
            expected += wanted_count[m];
            long cl_lost = 0;
            for (size_t k = 0; k < words; k++) {
                uint64_t got = c->seen ? c->seen[k] : 0;
                uint64_t miss = want[m][k] & ~got;
                cl_lost += __builtin_popcountll(miss);
                unexpected += __builtin_popcountll(got & ~want[m][k]);
                if (miss && json_array_size(lost_examples) < MAX_EXAMPLES) {
                    json_array_append_new(
                        lost_examples,
                        json_pack("{s:I, s:I}", "client", (json_int_t)i, "seq",
                                  (json_int_t)(G.base + 1 +
                                               (int64_t)(k * 64 + (size_t)__builtin_ctzll(miss)))));
                }
            }
            lost += cl_lost;
            if (cl_lost) clients_with_loss++;
        }
        for (unsigned m = 0; m < 4; m++)
            free(want[m]);
        /* Fan-out time: commit → the last client that got it. */
        for (size_t i = 0; i < G.span; i++) {
            uint64_t c = G.commit_ns[i];
            if (!c || !W[0].last_recv) continue;
            uint64_t last = 0;
            for (int t = 0; t < O.threads; t++)
                if (W[t].last_recv[i] > last) last = W[t].last_recv[i];
            if (last) rt_hist_record(fan, last > c ? last - c : 0);
        }
    } else {
        for (long i = 0; i < NCLIENTS; i++) {
            if (CL[i].state == C_FAILED) failed++;
            if (CL[i].ever_ready) ready_final++;
        }
    }
    for (long i = 0; i < NCLIENTS; i++)
        free(CL[i].seen);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double lg_user = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double lg_sys = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    double prod_s = t_prod_end_ms > G.prod_start_ms && G.prod_start_ms
                        ? (double)(t_prod_end_ms - G.prod_start_ms) / 1000.0
                        : 0;
    double deliver_s = last_delivery_ns > G.prod_start_ns && G.prod_start_ns
                           ? (double)(last_delivery_ns - G.prod_start_ns) / 1e9
                           : 0;
    long total_delivered = tot.delivered;
    long failures = failed + connect_timeouts;
    double cpu_run = O.npids ? S.end.cpu_s - S.at_produce.cpu_s : 0;
    double rss_per_conn =
        (O.npids && ready) ? (double)(S.connected.rss_kib - S.base.rss_kib) / (double)ready : 0;
    int ok = lost == 0 && tot.duplicates == 0 && unexpected == 0 && failures == 0 && !timed_out &&
             !got_signal && !prod_error[0] && atomic_load(&G.out_of_span) == 0 &&
             (O.idle || total_delivered == expected) && tot.protocol_errors == 0;

    /* Human table. */
    printf("%s%s%s\n", PROG, O.label ? ": " : "", O.label ? O.label : "");
    for (int g = 0; g < O.ngroups; g++)
        printf("  target %-14s %s x %d\n", O.groups[g].sse ? "SSE" : "WebSocket", O.groups[g].url,
               O.groups[g].clients);
    printf("  clients                ready %ld/%ld, failed %ld (connect %ld, HTTP refused %ld, "
           "timed out %ld, "
           "protocol %ld, closed by server %ld); all ready in %.2f s at %.0f/s\n",
           ready_final, NCLIENTS, failures, tot.connect_failures, tot.http_refused,
           connect_timeouts, tot.protocol_errors, tot.unexpected_closes, all_ready_s,
           O.connect_rate);
    print_hist("connect (handshake)", conn);
    if (tot.reconnects || tot.drops) {
        printf("  reconnects             %ld (%ld drops by us, %ld failed attempts)\n",
               tot.reconnects, tot.drops, tot.reconnect_failures);
        print_hist("reconnect (handshake)", reconn);
    }
    if (!O.idle) {
        printf("  produced               %ld events in %ld statements over %.2f s (%.0f/s, target "
               "%.0f/s; "
               "%d producer%s, batch %d, workload %s)\n",
               produced, statements, prod_s, prod_s > 0 ? produced / prod_s : 0, O.produce_rate,
               O.producers, O.producers > 1 ? "s" : "", O.batch, O.workload);
        print_hist("statement round trip", stmt);
        printf("  delivered              %ld of %ld expected (%.0f deliveries/s from first commit "
               "to last "
               "delivery)%s\n",
               total_delivered, expected, deliver_s > 0 ? total_delivered / deliver_s : 0,
               drained ? "" : "  [drain deadline passed]");
        printf(
            "  lost %ld (clients with loss %ld)  duplicates %ld  out-of-order %ld  unexpected %ld  "
            "foreign %ld  before COMMIT returned %ld\n",
            lost, clients_with_loss, tot.duplicates, tot.out_of_order, unexpected, tot.foreign,
            tot.early);
        print_hist("latency COMMIT sent", lat);
        print_hist("latency COMMIT returned", lat_lo);
        print_hist("fan-out COMMIT->last", fan);
    } else {
        printf(
            "  idle                   held %.1f s; %ld event messages, %ld comments, %ld pings\n",
            O.duration, tot.events_unverified, tot.comments, tot.pings);
    }
    if (O.npids) {
        printf("  server                 RSS %.1f MiB before, %.1f MiB connected (%.2f KiB per "
               "connection), "
               "peak %.1f MiB; CPU %.2f s during the run (%.2f us per delivery); threads %ld\n",
               S.base.rss_kib / 1024.0, S.connected.rss_kib / 1024.0, rss_per_conn,
               S.rss_peak_kib / 1024.0, cpu_run,
               total_delivered ? cpu_run * 1e6 / (double)total_delivered : 0, S.threads_max);
    }
    printf("  loadgen                CPU user %.2f s, sys %.2f s; %d loop thread%s\n", lg_user,
           lg_sys, O.threads, O.threads > 1 ? "s" : "");
    if (tot.pings || tot.app_pongs || tot.resyncs || tot.error_msgs || tot.other_msgs ||
        tot.server_closes)
        printf("  messages               pings %ld, app pongs %ld, resyncs %ld, errors %ld, other "
               "%ld, "
               "server closes %ld\n",
               tot.pings, tot.app_pongs, tot.resyncs, tot.error_msgs, tot.other_msgs,
               tot.server_closes);
    if (last_error[0]) printf("  last client error      %s\n", last_error);
    if (prod_error[0]) printf("  producer error         %s\n", prod_error);
    if (timed_out) printf("  TIMED OUT after %.0f s (--timeout)\n", O.timeout);
    if (got_signal) printf("  interrupted by signal %d\n", (int)got_signal);
    printf("  result                 %s\n", ok ? "OK" : "FAIL");
    fflush(stdout);

    if (O.json) {
        json_t *root = json_object();
        json_object_set_new(root, "tool", json_string(PROG));
        if (O.label) json_object_set_new(root, "label", json_string(O.label));
        json_t *cmd = json_array();
        for (int i = 0; i < argc; i++)
            json_array_append_new(cmd, json_string(argv[i]));
        json_object_set_new(root, "argv", cmd);
        json_object_set_new(root, "ok", json_boolean(ok));
        json_object_set_new(root, "timed_out", json_boolean(timed_out));
        json_t *targets = json_array();
        for (int g = 0; g < O.ngroups; g++)
            json_array_append_new(
                targets, json_pack("{s:s, s:s, s:i}", "transport", O.groups[g].sse ? "sse" : "ws",
                                   "url", O.groups[g].url, "clients", O.groups[g].clients));
        json_object_set_new(root, "targets", targets);
        json_t *c = json_object();
        json_object_set_new(c, "requested", json_integer(NCLIENTS));
        json_object_set_new(c, "ready", json_integer(ready_final));
        json_object_set_new(c, "failed", json_integer(failures));
        json_object_set_new(c, "connect_failures", json_integer(tot.connect_failures));
        json_object_set_new(c, "http_refused", json_integer(tot.http_refused));
        json_object_set_new(c, "connect_timeouts", json_integer(connect_timeouts));
        json_object_set_new(c, "protocol_errors", json_integer(tot.protocol_errors));
        json_object_set_new(c, "unexpected_closes", json_integer(tot.unexpected_closes));
        json_object_set_new(c, "reconnects", json_integer(tot.reconnects));
        json_object_set_new(c, "reconnect_failures", json_integer(tot.reconnect_failures));
        json_object_set_new(c, "drops", json_integer(tot.drops));
        json_object_set_new(c, "all_ready_s", json_real(all_ready_s));
        json_object_set_new(c, "connect_rate", json_real(O.connect_rate));
        json_object_set_new(c, "threads", json_integer(O.threads));
        json_object_set_new(c, "source_ips", json_integer(O.nips));
        json_object_set_new(c, "connect_ms", hist_json(conn, 1e6));
        json_object_set_new(c, "reconnect_ms", hist_json(reconn, 1e6));
        json_t *hs = json_object();
        for (int s = 100; s < 600; s++)
            if (tot.http_status[s]) {
                char k[16];
                snprintf(k, sizeof k, "%d", s);
                json_object_set_new(hs, k, json_integer(tot.http_status[s]));
            }
        json_object_set_new(c, "http_status", hs);
        json_object_set_new(c, "last_error", json_string(last_error));
        json_object_set_new(root, "clients", c);
        if (!O.idle) {
            json_t *p = json_object();
            json_object_set_new(p, "events", json_integer(produced));
            json_object_set_new(p, "events_target", json_integer(O.events));
            json_object_set_new(p, "statements", json_integer(statements));
            json_object_set_new(p, "rate_target", json_real(O.produce_rate));
            json_object_set_new(p, "rate", json_real(prod_s > 0 ? produced / prod_s : 0));
            json_object_set_new(p, "duration_s", json_real(prod_s));
            json_object_set_new(p, "producers", json_integer(O.producers));
            json_object_set_new(p, "batch", json_integer(O.batch));
            json_object_set_new(p, "workload", json_string(O.workload));
            json_object_set_new(p, "payload_bytes", json_integer(O.payload_bytes));
            json_object_set_new(p, "statement_ms", hist_json(stmt, 1e6));
            json_object_set_new(p, "error", json_string(prod_error));
            json_object_set_new(p, "seq_base", json_integer(G.base));
            json_object_set_new(p, "out_of_span", json_integer(atomic_load(&G.out_of_span)));
            json_object_set_new(root, "producer", p);
            json_t *d = json_object();
            json_object_set_new(d, "expected", json_integer(expected));
            json_object_set_new(d, "delivered", json_integer(total_delivered));
            json_object_set_new(d, "lost", json_integer(lost));
            json_object_set_new(d, "clients_with_loss", json_integer(clients_with_loss));
            json_object_set_new(d, "duplicates", json_integer(tot.duplicates));
            json_object_set_new(d, "out_of_order", json_integer(tot.out_of_order));
            json_object_set_new(d, "unexpected", json_integer(unexpected));
            json_object_set_new(d, "foreign", json_integer(tot.foreign));
            json_object_set_new(d, "early", json_integer(tot.early));
            json_object_set_new(d, "no_commit_time", json_integer(tot.no_commit));
            json_object_set_new(d, "per_s",
                                json_real(deliver_s > 0 ? total_delivered / deliver_s : 0));
            json_object_set_new(d, "window_s", json_real(deliver_s));
            json_object_set_new(d, "rx_bytes", json_integer(tot.rx_bytes));
            json_object_set_new(
                d, "rx_bytes_per_delivery",
                json_real(total_delivered ? (double)tot.rx_bytes / (double)total_delivered : 0));
            json_object_set_new(d, "drained", json_boolean(drained));
            json_object_set_new(d, "lost_examples", lost_examples);
            json_t *dx = json_array();
            for (int t = 0; t < O.threads; t++)
                for (int k = 0; k < W[t].ndups && json_array_size(dx) < MAX_EXAMPLES; k++) {
                    dup_example_t *e = &W[t].dups[k];
                    json_array_append_new(
                        dx,
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "client", (json_int_t)e->client,
                                  "seq", (json_int_t)e->seq, "connection", (json_int_t)e->conn,
                                  "resumed_from", (json_int_t)e->resumed_from, "highest_seq_before",
                                  (json_int_t)e->prev_seq, "deliveries_on_connection",
                                  (json_int_t)e->since_open));
                }
            json_object_set_new(d, "duplicate_examples", dx);
            lost_examples = NULL;
            json_object_set_new(root, "delivery", d);
            json_object_set_new(root, "latency_ms", hist_json(lat, 1e6));
            json_object_set_new(root, "latency_after_commit_ms", hist_json(lat_lo, 1e6));
            json_object_set_new(root, "fanout_ms", hist_json(fan, 1e6));
        }
        json_t *m = json_object();
        json_object_set_new(m, "pings", json_integer(tot.pings));
        json_object_set_new(m, "pongs", json_integer(tot.pongs));
        json_object_set_new(m, "app_pongs", json_integer(tot.app_pongs));
        json_object_set_new(m, "comments", json_integer(tot.comments));
        json_object_set_new(m, "resyncs", json_integer(tot.resyncs));
        json_object_set_new(m, "error_messages", json_integer(tot.error_msgs));
        json_object_set_new(m, "binary_messages", json_integer(tot.binary_msgs));
        json_object_set_new(m, "other", json_integer(tot.other_msgs));
        json_object_set_new(m, "server_closes", json_integer(tot.server_closes));
        json_object_set_new(m, "events_unverified", json_integer(tot.events_unverified));
        json_object_set_new(root, "messages", m);
        if (O.npids) {
            json_t *s = json_object();
            json_t *pids = json_array();
            for (int k = 0; k < O.npids; k++)
                json_array_append_new(pids, json_integer(O.pids[k]));
            json_object_set_new(s, "pids", pids);
            json_object_set_new(s, "rss_base_kib", json_integer(S.base.rss_kib));
            json_object_set_new(s, "rss_connected_kib", json_integer(S.connected.rss_kib));
            json_object_set_new(s, "rss_end_kib", json_integer(S.end.rss_kib));
            json_object_set_new(s, "rss_peak_kib", json_integer(S.rss_peak_kib));
            json_object_set_new(s, "rss_per_conn_kib", json_real(rss_per_conn));
            json_object_set_new(s, "cpu_s_total", json_real(S.end.cpu_s));
            json_object_set_new(s, "cpu_s_run", json_real(cpu_run));
            json_object_set_new(
                s, "cpu_us_per_delivery",
                json_real(total_delivered ? cpu_run * 1e6 / (double)total_delivered : 0));
            json_object_set_new(s, "threads", json_integer(S.threads_max));
            json_object_set_new(root, "server", s);
        }
        json_t *lg = json_object();
        json_object_set_new(lg, "cpu_user_s", json_real(lg_user));
        json_object_set_new(lg, "cpu_sys_s", json_real(lg_sys));
        json_object_set_new(lg, "max_rss_kib", json_integer(ru.ru_maxrss));
        json_object_set_new(lg, "threads", json_integer(O.threads));
        json_object_set_new(lg, "wall_s", json_real((double)(mono_ms() - t_begin_ms) / 1000.0));
        json_object_set_new(root, "loadgen", lg);
        if (json_dump_file(root, O.json, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
            fprintf(stderr, PROG ": cannot write %s\n", O.json);
        json_decref(root);
    }
    json_decref(lost_examples);
    (void)expected_live;
    free(lat_lo);
    free(lat);
    free(conn);
    free(reconn);
    free(fan);
    free(stmt);
    return ok ? 0 : 1;
}
