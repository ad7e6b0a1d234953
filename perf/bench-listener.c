/*
 * bench-listener: how fast NOTIFYs get into the process, bare and through
 * rtbridge.
 *
 * One producer connection runs batched, autocommitted statements. Two
 * workloads, each run in two phases on freshly truncated tables:
 *
 *   trigger   the real path: INSERT ... SELECT ... generate_series(1, B) into
 *             intents; the trigger of schema/002_journal.sql journals each
 *             row and NOTIFYs it on intent_changed.
 *   notify    calibration: the same payloads (shape and size) straight from
 *             pg_notify, nothing written, so PostgreSQL's NOTIFY path rather
 *             than the trigger limits the producer and the receiver is pushed.
 *
 *   bare      the physical limit: a thread with its own libpq connection that
 *             LISTENs and loops poll + PQconsumeInput + PQnotifies, counting.
 *   rtbridge  the real ingest path: rt_listener (parse, dedup set, event
 *             rendering, publish) -> one bus ring -> one consumer thread that
 *             drains 256 at a time, counts and drops the events.
 *
 * The rate of a phase is notifications (events) received per second from the
 * first to the last one received. Printed next to it, because they show what
 * bounds it: the producer's commit rate, this process's CPU per notification
 * split by thread, and the CPU utilisation of the producer's and the
 * listener's backends (from /proc, when the server runs on this machine).
 *
 *   build/perf/bench-listener --url URL [--rows N] [--notify-rows N] [--batch B]
 *                             [--runs R] [--ring SIZE] [--refresh-ms MS]
 *
 * URL may also come from RT_BENCH_DATABASE_URL or DATABASE_URL. The database
 * is migrated with rt_migrate; the benchmark TRUNCATEs intents and rt_journal,
 * so point it only at a throwaway server (perf/bench.sh starts one).
 */
#include "bus.h"
#include "event.h"
#include "listener.h"
#include "log.h"
#include "migrate.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 20
#define DRAIN_BATCH 256
/* A phase fails if nothing new arrives for this long after the producer is done. */
#define IDLE_LIMIT_MS 10000

/* Seqs of the notify workload; positive, unique and increasing over the run. */
static uint64_t notify_seq = 1000000000;

typedef struct {
    const char *url;
    uint64_t rows;        /* trigger workload, per phase */
    uint64_t notify_rows; /* pg_notify-only workload, per phase; 0 = skip */
    unsigned batch;
    int runs;
    unsigned ring;
    int64_t refresh_ms;
} opts_t;

typedef struct {
    int ok;                /* every expected notification arrived */
    uint64_t received;     /* notifications (bare) or events (rtbridge) */
    double rate;           /* received per second, first to last */
    double commit_rate;    /* rows per second, first INSERT sent to last commit */
    double e2e_rate;       /* rows per second, first INSERT sent to last received */
    double self_cpu_us;    /* this process's CPU per received notification, µs */
    double rx_cpu_us;      /* of which the receiving thread (bare loop or bus consumer) */
    double lst_cpu_us;     /* of which the rt_listener thread (the rest), rtbridge only */
    double prod_backend;   /* CPU utilisation of the producer's backend (0..1), <0 unknown */
    double listen_backend; /* same for the listening backend */
    double self_util;      /* CPU utilisation of this process (0..2 on 2 cores) */
    /* rtbridge only */
    uint64_t overflows, duplicates, invalid, replayed, order_errors;
} phase_t;

/* ---- small helpers ---------------------------------------------------------- */

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "bench-listener: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static PGconn *connect_or_die(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) die("cannot connect: %s", PQerrorMessage(c));
    return c;
}

static void exec_or_die(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "bench-listener: %s\n", sql);
        die("%s", PQerrorMessage(c));
    }
    PQclear(r);
}

static uint64_t cpu_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define NO_CPU UINT64_MAX

/* utime + stime of a process, in ns, from /proc; NO_CPU if unreadable (server
 * on another machine or in another PID namespace). */
static uint64_t proc_cpu_ns(int pid)
{
    char path[64], buf[1024];
    if (pid <= 0) return NO_CPU;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return NO_CPU;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may contain spaces; fields resume after ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return NO_CPU;
    unsigned long long ut = 0, st = 0;
    /* After ')': state(3) ... utime is field 14, stime field 15. */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return NO_CPU;
    long hz = sysconf(_SC_CLK_TCK);
    return (ut + st) * (1000000000ull / (unsigned long long)hz);
}

static int backend_pid_of(PGconn *admin, const char *appname)
{
    const char *params[1] = {appname};
    PGresult *r = PQexecParams(admin,
                               "SELECT coalesce(max(pid), 0) FROM pg_stat_activity "
                               "WHERE application_name = $1",
                               1, NULL, params, NULL, NULL, 0);
    int pid =
        PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return pid;
}

/* ---- the receivers ------------------------------------------------------------ */

/* What both receivers share with the main thread. */
typedef struct {
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t first_ns, last_ns; /* monotonic */
    atomic_int stop;
    uint64_t thread_cpu_ns; /* the receiving thread's CPU time, written when it ends */
} rx_t;

static void rx_note(rx_t *rx, uint64_t n, uint64_t now)
{
    if (atomic_load_explicit(&rx->count, memory_order_relaxed) == 0)
        atomic_store_explicit(&rx->first_ns, now, memory_order_relaxed);
    atomic_store_explicit(&rx->last_ns, now, memory_order_relaxed);
    atomic_fetch_add_explicit(&rx->count, n, memory_order_release);
}

typedef struct {
    rx_t rx;
    const char *url;
    PGconn *conn;
    pthread_t thread;
} bare_t;

/* The bare LISTEN loop. The connection is made and LISTENs before `ready`,
 * on this thread; main owns nothing of it. */
static void *bare_main(void *arg)
{
    bare_t *b = arg;
    PGconn *c = b->conn;
    int fd = PQsocket(c);
    while (!atomic_load_explicit(&b->rx.stop, memory_order_acquire)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) < 0 && errno != EINTR) break;
        if (!pfd.revents) continue;
        if (!PQconsumeInput(c)) {
            fprintf(stderr, "bench-listener: bare listener: %s", PQerrorMessage(c));
            break;
        }
        uint64_t now = rt_mono_ns(), n = 0;
        PGnotify *nt;
        while ((nt = PQnotifies(c)) != NULL) {
            n++;
            PQfreemem(nt);
        }
        if (n) rx_note(&b->rx, n, now);
    }
    b->rx.thread_cpu_ns = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    return NULL;
}

typedef struct {
    rx_t rx;
    rt_bus_sub_t *sub;
    uint64_t order_errors; /* read after join */
    pthread_t thread;
} counter_t;

/* The bus consumer: counts, checks seqs increase (one producer connection
 * commits in seq order, and notifications arrive in commit order), drops. */
static void *counter_main(void *arg)
{
    counter_t *k = arg;
    rt_event_t *evs[DRAIN_BATCH];
    int64_t last = 0;
    for (;;) {
        int stop = atomic_load_explicit(&k->rx.stop, memory_order_acquire);
        size_t n = rt_bus_drain(k->sub, evs, DRAIN_BATCH);
        if (n == 0) {
            if (stop) break;
            rt_bus_wait(k->sub, -1);
            continue;
        }
        uint64_t now = rt_mono_ns();
        for (size_t i = 0; i < n; i++) {
            if (evs[i]->seq <= last) k->order_errors++;
            last = evs[i]->seq;
            rt_event_unref(evs[i]);
        }
        rx_note(&k->rx, n, now);
    }
    k->rx.thread_cpu_ns = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    return NULL;
}

/* ---- one phase ------------------------------------------------------------------ */

typedef enum { W_TRIGGER = 0, W_NOTIFY, W__COUNT } workload_t;
typedef enum { R_BARE = 0, R_RTBRIDGE, R__COUNT } receiver_t;

static const char *const workload_names[W__COUNT] = {"trigger", "notify"};
static const char *const receiver_names[R__COUNT] = {"bare", "rtbridge"};

static void truncate_tables(PGconn *admin)
{
    exec_or_die(admin, "TRUNCATE intents, rt_journal");
    exec_or_die(admin, "CHECKPOINT");
}

/* The statement that makes n notifications in one transaction. trigger: the
 * real path, rows in intents journaled and notified by the trigger. notify:
 * payloads of the same shape and size straight from pg_notify, no table
 * written, made as cheaply as SQL allows (the seqs base+1..base+n come from
 * the client, not a sequence) so that PostgreSQL's NOTIFY path, not payload
 * building, is what limits the producer. */
static void statement(char *sql, size_t cap, workload_t w, unsigned n, uint64_t base)
{
    if (w == W_TRIGGER)
        snprintf(sql, cap,
                 "INSERT INTO intents(id, status) SELECT gen_random_uuid(), 's' "
                 "FROM generate_series(1, %u)",
                 n);
    else
        snprintf(sql, cap,
                 "SELECT count(pg_notify('intent_changed', "
                 "'{\"intent_id\" : \"6f1c0b7e-3d2a-4c59-9b1e-2f7a8d4e5c31\", \"status\" : \"s\", "
                 "\"version\" : 1, \"updated_at\" : \"2026-01-02T03:04:05.678901\", "
                 "\"event_type\" : \"INSERT\", \"data\" : null, \"seq\" : ' || "
                 "(%" PRIu64 " + g) || '}')) FROM generate_series(1, %u) g",
                 base, n);
}

/* Runs the workload on prod; returns the monotonic times of the first send
 * and the last commit. *seq_base carries the notify workload's seqs across
 * phases, so they stay unique and increasing. */
static void produce(PGconn *prod, workload_t w, uint64_t rows, unsigned batch, uint64_t *seq_base,
                    uint64_t *t0, uint64_t *t1)
{
    char sql[512];
    uint64_t left = rows;
    *t0 = rt_mono_ns();
    while (left > 0) {
        unsigned n = left < batch ? (unsigned)left : batch;
        statement(sql, sizeof sql, w, n, *seq_base);
        if (w == W_NOTIFY) *seq_base += n;
        exec_or_die(prod, sql);
        left -= n;
    }
    *t1 = rt_mono_ns();
}

/* Waits until rx has counted `want`, or nothing has arrived for IDLE_LIMIT_MS. */
static int wait_for(rx_t *rx, uint64_t want)
{
    uint64_t seen = 0, since = rt_mono_ns();
    for (;;) {
        uint64_t c = atomic_load_explicit(&rx->count, memory_order_acquire);
        if (c >= want) return 1;
        uint64_t now = rt_mono_ns();
        if (c != seen) {
            seen = c;
            since = now;
        } else if (now - since > (uint64_t)IDLE_LIMIT_MS * 1000000u) {
            return 0;
        }
        usleep(1000);
    }
}

typedef struct {
    uint64_t self, main, prod, listen, wall;
} cpu_mark_t;

static cpu_mark_t cpu_mark(int prod_pid, int listen_pid)
{
    return (cpu_mark_t){cpu_ns(CLOCK_PROCESS_CPUTIME_ID), cpu_ns(CLOCK_THREAD_CPUTIME_ID),
                        proc_cpu_ns(prod_pid), proc_cpu_ns(listen_pid), rt_mono_ns()};
}

static void finish_phase(phase_t *ph, uint64_t rows, rx_t *rx, uint64_t t0, uint64_t t1,
                         cpu_mark_t a, cpu_mark_t b)
{
    ph->received = atomic_load(&rx->count);
    ph->ok = ph->received == rows;
    uint64_t first = atomic_load(&rx->first_ns), last = atomic_load(&rx->last_ns);
    ph->rate = last > first ? (double)(ph->received - 1) * 1e9 / (double)(last - first) : 0;
    ph->commit_rate = (double)rows * 1e9 / (double)(t1 - t0);
    ph->e2e_rate = last > t0 ? (double)ph->received * 1e9 / (double)(last - t0) : 0;
    double per = ph->received ? 1e3 * (double)ph->received : 1e300;
    ph->self_cpu_us = (double)(b.self - a.self) / per;
    /* The receiving threads live only for this phase; what is left after
     * main (the producer's libpq calls) and the receiver is the listener. */
    ph->rx_cpu_us = (double)rx->thread_cpu_ns / per;
    ph->lst_cpu_us = (double)((b.self - a.self) - (b.main - a.main)) / per - ph->rx_cpu_us;
    double wall = (double)(b.wall - a.wall);
    ph->self_util = (double)(b.self - a.self) / wall;
    ph->prod_backend = a.prod != NO_CPU && b.prod != NO_CPU ? (double)(b.prod - a.prod) / wall : -1;
    ph->listen_backend =
        a.listen != NO_CPU && b.listen != NO_CPU ? (double)(b.listen - a.listen) / wall : -1;
}

static phase_t phase_bare(const opts_t *o, workload_t w, uint64_t rows, PGconn *admin, PGconn *prod,
                          int prod_pid)
{
    phase_t ph = {0};
    truncate_tables(admin);
    bare_t *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->url = o->url;
    b->conn = connect_or_die(o->url);
    exec_or_die(b->conn, "SET application_name = 'rtbench-bare'");
    exec_or_die(b->conn, "LISTEN intent_changed");
    int listen_pid = PQbackendPID(b->conn);
    if (pthread_create(&b->thread, NULL, bare_main, b)) die("%s", "pthread_create");

    cpu_mark_t a = cpu_mark(prod_pid, listen_pid);
    uint64_t t0, t1;
    produce(prod, w, rows, o->batch, &notify_seq, &t0, &t1);
    wait_for(&b->rx, rows);
    cpu_mark_t z = cpu_mark(prod_pid, listen_pid);
    atomic_store_explicit(&b->rx.stop, 1, memory_order_release);
    pthread_join(b->thread, NULL);
    finish_phase(&ph, rows, &b->rx, t0, t1, a, z);
    PQfinish(b->conn);
    free(b);
    return ph;
}

static phase_t phase_rtbridge(const opts_t *o, workload_t w, uint64_t rows, PGconn *admin,
                              PGconn *prod, int prod_pid)
{
    phase_t ph = {0};
    truncate_tables(admin);
    rt_bus_t *bus = rt_bus_new();
    counter_t *k = calloc(1, sizeof *k);
    if (!k) abort();
    k->sub = rt_bus_subscribe(bus, "bench", o->ring, RT_BUS_ALL_TYPES, NULL, NULL);
    if (!k->sub) die("rt_bus_subscribe: %s", strerror(errno));
    if (pthread_create(&k->thread, NULL, counter_main, k)) die("%s", "pthread_create");

    rt_listener_opts_t lo = {
        .conninfo = o->url,
        .channels = "intent_changed,audit_log_created", /* the server's default */
        .refresh_ms = o->refresh_ms,
        .bus = bus,
    };
    rt_listener_t *l = rt_listener_new(&lo);
    if (!l) die("rt_listener_new: %s", strerror(errno));
    int rc = rt_listener_start(l);
    if (rc < 0) die("rt_listener_start: %s", strerror(-rc));
    rt_listener_stats_t *st = rt_listener_stats(l);
    uint64_t deadline = rt_mono_ns() + 10000000000ull;
    while (!atomic_load(&st->connected) && rt_mono_ns() < deadline)
        usleep(1000);
    if (!atomic_load(&st->connected)) die("%s", "rt_listener did not connect within 10 s");
    /* The library names its session (application_name). */
    int listen_pid = backend_pid_of(admin, "rtbridge-listener");

    cpu_mark_t a = cpu_mark(prod_pid, listen_pid);
    uint64_t t0, t1;
    produce(prod, w, rows, o->batch, &notify_seq, &t0, &t1);
    wait_for(&k->rx, rows);
    cpu_mark_t z = cpu_mark(prod_pid, listen_pid);

    ph.duplicates = atomic_load(&st->duplicates);
    ph.invalid = atomic_load(&st->invalid);
    ph.replayed = atomic_load(&st->replayed);
    rt_listener_free(l);
    atomic_store_explicit(&k->rx.stop, 1, memory_order_release);
    rt_bus_kick(k->sub);
    pthread_join(k->thread, NULL);
    ph.overflows = atomic_load(&k->sub->overflows);
    ph.order_errors = k->order_errors;
    finish_phase(&ph, rows, &k->rx, t0, t1, a, z);
    rt_bus_free(bus);
    free(k);
    return ph;
}

/* ---- reporting ------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double med, min, max;
} stat3_t;

static stat3_t stat3(const double *v, int n)
{
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return (stat3_t){n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2, s[0], s[n - 1]};
}

static void print_settings(PGconn *admin)
{
    PGresult *r =
        PQexec(admin, "SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name IN "
                      "('server_version', 'fsync', 'synchronous_commit', 'full_page_writes', "
                      "'wal_level', 'shared_buffers', 'max_wal_size', 'wal_buffers') "
                      "ORDER BY name");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) die("pg_settings: %s", PQerrorMessage(admin));
    printf("postgresql:");
    for (int i = 0; i < PQntuples(r); i++)
        printf(" %s=%s%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    printf("\n");
    PQclear(r);
}

static void fmt_util(char *buf, size_t cap, double u)
{
    if (u < 0)
        snprintf(buf, cap, "n/a");
    else
        snprintf(buf, cap, "%.0f%%", u * 100);
}

static void print_phase_row(workload_t w, receiver_t r, int run, const phase_t *p)
{
    char pu[16], lu[16], su[16], name[32], lst[16];
    fmt_util(pu, sizeof pu, p->prod_backend);
    fmt_util(lu, sizeof lu, p->listen_backend);
    fmt_util(su, sizeof su, p->self_util);
    snprintf(name, sizeof name, "%s/%s", workload_names[w], receiver_names[r]);
    if (r == R_RTBRIDGE)
        snprintf(lst, sizeof lst, "%.2f", p->lst_cpu_us);
    else
        snprintf(lst, sizeof lst, "-");
    printf("%-17s %3d %9.0f %9.0f %9.0f %7.2f %7.2f %7s %5s %5s %6s %s\n", name, run, p->rate,
           p->commit_rate, p->e2e_rate, p->self_cpu_us, p->rx_cpu_us, lst, su, pu, lu,
           p->ok ? "" : "INCOMPLETE");
    fflush(stdout);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench-listener --url URL [--rows N] [--notify-rows N] [--batch B] [--runs R]\n"
            "                      [--ring SIZE] [--refresh-ms MS]\n"
            "  --url URL          PostgreSQL URL (or RT_BENCH_DATABASE_URL / DATABASE_URL);\n"
            "                     intents and rt_journal are TRUNCATEd: use a throwaway server\n"
            "  --rows N           rows inserted into intents per phase (80000)\n"
            "  --notify-rows N    notifications per phase of the pg_notify-only calibration\n"
            "                     workload, 0 to skip it (200000)\n"
            "  --batch B          rows (notifications) per statement, one transaction each (100)\n"
            "  --runs R           runs; each runs bare then rtbridge per workload (5)\n"
            "  --ring SIZE        bus ring capacity for the rtbridge phases (65536)\n"
            "  --refresh-ms MS    rt_listener refresh period, 0 = the library default (0)\n");
}

static uint64_t parse_u64(const char *flag, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        fprintf(stderr,
                "bench-listener: %s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'\n",
                flag, min, max, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    opts_t o = {.rows = 80000, .notify_rows = 200000, .batch = 100, .runs = 5, .ring = 65536};
    o.url = getenv("RT_BENCH_DATABASE_URL");
    if (!o.url || !*o.url) o.url = getenv("DATABASE_URL");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (strcmp(a, "--url") == 0)
            o.url = argv[++i];
        else if (strcmp(a, "--rows") == 0)
            o.rows = parse_u64(a, argv[++i], 2, 100000000);
        else if (strcmp(a, "--notify-rows") == 0)
            o.notify_rows = parse_u64(a, argv[++i], 0, 100000000);
        else if (strcmp(a, "--batch") == 0)
            o.batch = (unsigned)parse_u64(a, argv[++i], 1, 100000);
        else if (strcmp(a, "--runs") == 0)
            o.runs = (int)parse_u64(a, argv[++i], 1, MAX_RUNS);
        else if (strcmp(a, "--ring") == 0)
            o.ring = (unsigned)parse_u64(a, argv[++i], 4, 1u << 30);
        else if (strcmp(a, "--refresh-ms") == 0)
            o.refresh_ms = (int64_t)parse_u64(a, argv[++i], 0, 3600000);
        else {
            usage(stderr);
            return 2;
        }
    }
    if (!o.url || !*o.url) {
        usage(stderr);
        return 2;
    }
    if (o.ring & (o.ring - 1)) {
        fprintf(stderr, "bench-listener: --ring must be a power of two, got %u\n", o.ring);
        return 2;
    }
    if (o.notify_rows == 1) o.notify_rows = 2; /* a rate needs two arrivals */
    rt_log_setup(RT_LOG_WARN, RT_LOG_TEXT, 2);

    PGconn *admin = connect_or_die(o.url);
    exec_or_die(admin, "SET client_min_messages = warning");
    char err[512];
    int applied = 0;
    if (rt_migrate(admin, &applied, err, sizeof err) < 0) die("rt_migrate: %s", err);
    PGconn *prod = connect_or_die(o.url);
    exec_or_die(prod, "SET application_name = 'rtbench-producer'");
    int prod_pid = PQbackendPID(prod);

    printf("== bench-listener ==\ncommand:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\neffective: --url %s --rows %" PRIu64 " --notify-rows %" PRIu64
           " --batch %u --runs %d --ring %u --refresh-ms %" PRId64 "%s\n",
           o.url, o.rows, o.notify_rows, o.batch, o.runs, o.ring, o.refresh_ms,
           o.refresh_ms ? "" : " (library default, 5000)");
    print_settings(admin);
    char sql[512];
    printf("migrations applied by this run: %d; one producer connection, autocommit; tables "
           "TRUNCATEd before each phase\n",
           applied);
    statement(sql, sizeof sql, W_TRIGGER, o.batch, 0);
    printf("workload trigger: %s  (%" PRIu64 " rows per phase)\n", sql, o.rows);
    if (o.notify_rows) {
        statement(sql, sizeof sql, W_NOTIFY, o.batch, 0);
        printf("workload notify:  %s  (%" PRIu64 " per phase; calibration: NOTIFY alone)\n", sql,
               o.notify_rows);
    }
    printf("bare = own libpq connection, LISTEN intent_changed, poll/PQconsumeInput/PQnotifies, "
           "count; rtbridge = rt_listener -> bus ring -> 1 consumer thread (drain 256, count)\n");
    printf("rate = received/s, first to last received; commit/s = rows committed/s by the "
           "producer; e2e/s = rows/s, first INSERT sent to last received;\n"
           "cpu/ev = CPU of this process per notification (us), of which rx/ev in the receiving "
           "thread (bare loop or bus consumer) and lst/ev in the rt_listener thread;\n"
           "self, prod, listen = CPU utilisation of this process and of the producer's and the "
           "listening backends (100%% = one core)\n\n");
    printf("%-17s %3s %9s %9s %9s %7s %7s %7s %5s %5s %6s\n", "workload/phase", "run", "rate/s",
           "commit/s", "e2e/s", "cpu/ev", "rx/ev", "lst/ev", "self", "prod", "listen");
    fflush(stdout);

    /* [workload][receiver][run] */
    static double rate[W__COUNT][R__COUNT][MAX_RUNS], commit[W__COUNT][R__COUNT][MAX_RUNS],
        cpu[W__COUNT][R__COUNT][MAX_RUNS], ratio[W__COUNT][MAX_RUNS];
    uint64_t nrows[W__COUNT] = {o.rows, o.notify_rows};
    int failed = 0;
    uint64_t ovf = 0, dup = 0, inval = 0, repl = 0, order = 0;
    for (int i = 0; i < o.runs; i++) {
        for (int w = 0; w < W__COUNT; w++) {
            if (nrows[w] == 0) continue;
            phase_t ph[R__COUNT];
            ph[R_BARE] = phase_bare(&o, (workload_t)w, nrows[w], admin, prod, prod_pid);
            print_phase_row((workload_t)w, R_BARE, i + 1, &ph[R_BARE]);
            ph[R_RTBRIDGE] = phase_rtbridge(&o, (workload_t)w, nrows[w], admin, prod, prod_pid);
            print_phase_row((workload_t)w, R_RTBRIDGE, i + 1, &ph[R_RTBRIDGE]);
            for (int r = 0; r < R__COUNT; r++) {
                if (!ph[r].ok) {
                    printf("  ERROR: %s/%s run %d received %" PRIu64 " of %" PRIu64 "\n",
                           workload_names[w], receiver_names[r], i + 1, ph[r].received, nrows[w]);
                    failed = 1;
                }
                rate[w][r][i] = ph[r].rate;
                commit[w][r][i] = ph[r].commit_rate;
                cpu[w][r][i] = ph[r].self_cpu_us;
            }
            ratio[w][i] = ph[R_BARE].rate > 0 ? ph[R_RTBRIDGE].rate / ph[R_BARE].rate : 0;
            ovf += ph[R_RTBRIDGE].overflows;
            dup += ph[R_RTBRIDGE].duplicates;
            inval += ph[R_RTBRIDGE].invalid;
            repl += ph[R_RTBRIDGE].replayed;
            order += ph[R_RTBRIDGE].order_errors;
        }
    }

    printf("\nsummary: median [min..max] over %d runs, %u rows per statement\n", o.runs, o.batch);
    for (int w = 0; w < W__COUNT; w++) {
        if (nrows[w] == 0) continue;
        printf("workload %s, %" PRIu64 " per phase%s:\n", workload_names[w], nrows[w],
               w == W_NOTIFY ? " (calibration, no table writes)" : "");
        for (int r = 0; r < R__COUNT; r++) {
            stat3_t sr = stat3(rate[w][r], o.runs), sc = stat3(commit[w][r], o.runs),
                    su = stat3(cpu[w][r], o.runs);
            printf("  %-20s %9.0f /s [%.0f..%.0f]; producer committed %.0f rows/s; "
                   "%.2f us CPU here per notification\n",
                   r == R_BARE ? "bare LISTEN" : "rt_listener -> bus", sr.med, sr.min, sr.max,
                   sc.med, su.med);
        }
        stat3_t sx = stat3(ratio[w], o.runs);
        double mb = stat3(rate[w][R_BARE], o.runs).med, mr = stat3(rate[w][R_RTBRIDGE], o.runs).med;
        printf("  %-20s %9.3f   [%.3f..%.3f] (median of per-run ratios; ratio of medians %.3f)\n",
               "ratio rtbridge/bare", sx.med, sx.min, sx.max, mb > 0 ? mr / mb : 0);
    }
    printf("rtbridge phases, totals: bus overflows %" PRIu64 ", duplicates %" PRIu64
           ", invalid %" PRIu64 ", replayed (journal publishes) %" PRIu64 ", out-of-order %" PRIu64
           "\n",
           ovf, dup, inval, repl, order);
    if (ovf) printf("WARNING: the bus ring overflowed: events were dropped\n");
    if (failed) printf("ERROR: some phases did not receive every notification\n");

    PQfinish(prod);
    PQfinish(admin);
    return failed || order ? 1 : 0;
}
