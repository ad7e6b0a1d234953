/*
 * bench-bus: throughput of the event bus on the path a live event takes.
 *
 * Each producer thread does what the listener does per notification: builds
 * the event with rt_event_new (a 198-byte payload shaped like the one the
 * intents trigger sends, so every wire encoding is rendered), publishes it,
 * and drops its own reference. Each consumer thread owns one ring and does
 * what a consumer without an event loop does: drains up to 256 events at a
 * time, drops them, and blocks in rt_bus_wait() when its ring is empty.
 * Nothing is pre-built, so the numbers include malloc/free and the
 * cross-thread reference counting.
 *
 * A full ring never blocks the publisher: the event is dropped for that
 * ring and its overflow counter goes up. Overflows are counted and printed;
 * a run with overflows says so, and deliveries/s is reported next to
 * events/s so a lossy run cannot pass for a fast one.
 *
 * Consumers also check that each producer's events arrive in publish order
 * (seq = producer << 40 | i), which the bus promises per ring.
 *
 *   build/perf/bench-bus [--events N] [--runs R] [--ring SIZE] [--scenarios LIST]
 *                        [--wake-every K]
 *
 * LIST is comma-separated PxC (P producers, C consumer rings); 1x0 measures
 * the producer alone (event build + publish to no ring + unref). --wake-every
 * is an experiment, not the library's path (see usage()).
 */
#include "bus.h"
#include "event.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define MAX_PRODUCERS 8
#define MAX_CONSUMERS 16
#define MAX_RUNS 50
#define MAX_SCENARIOS 16
#define DRAIN_BATCH 256
#define SEQ_SHIFT 40
/* A consumer waits with a timeout only so that a lost wake-up shows up as a
 * counted stall instead of a hang; a healthy run never reaches it. */
#define WAIT_TIMEOUT_MS 1000

/* What the trigger in schema/002_journal.sql sends for an intent. */
static const char BODY[] =
    "{\"intent_id\" : \"6f1c0b7e-3d2a-4c59-9b1e-2f7a8d4e5c31\", \"status\" : \"processing\", "
    "\"version\" : 3, \"updated_at\" : \"2026-01-02T03:04:05.678901\", \"event_type\" : "
    "\"UPDATE\", \"data\" : null, \"seq\" : 123456789}";
static const char KEY[] = "6f1c0b7e-3d2a-4c59-9b1e-2f7a8d4e5c31";

typedef struct {
    int producers, consumers;
} scenario_t;

typedef struct run run_t;

typedef struct {
    run_t *run;
    int id;
    uint64_t count;
    uint64_t overflows; /* sum of rt_bus_publish() results */
    uint64_t start_ns, end_ns;
    pthread_t thread;
} producer_t;

typedef struct {
    run_t *run;
    rt_bus_sub_t *sub;
    uint64_t received;
    uint64_t waits;        /* calls to rt_bus_wait */
    uint64_t stalls;       /* waits that ran into WAIT_TIMEOUT_MS */
    uint64_t order_errors; /* an event older than one already seen from its producer */
    int64_t last[MAX_PRODUCERS];
    uint64_t end_ns;
    pthread_t thread;
} consumer_t;

struct run {
    rt_bus_t *bus;
    int nconsumers;
    unsigned wake_every; /* 0: the bus wakes consumers; K: producers kick every K events */
    pthread_barrier_t start;
    atomic_int done; /* all producers have returned from their last publish */
    producer_t prod[MAX_PRODUCERS];
    consumer_t cons[MAX_CONSUMERS];
};

typedef struct {
    double events_per_s;     /* events published / (last consumer done - first producer start) */
    double deliveries_per_s; /* events dequeued by all consumers / same interval */
    double produce_per_s;    /* events published / producer wall time */
    uint64_t events, delivered, overflows, waits, stalls, order_errors;
} result_t;

static void *producer_main(void *arg)
{
    producer_t *p = arg;
    run_t *r = p->run;
    size_t body_len = sizeof BODY - 1;
    pthread_barrier_wait(&r->start);
    p->start_ns = rt_mono_ns();
    int64_t base = (int64_t)p->id << SEQ_SHIFT;
    uint64_t ovf = 0;
    for (uint64_t i = 1; i <= p->count; i++) {
        rt_event_t *ev = rt_event_new(RT_EV_INTENT_UPDATE, base | (int64_t)i, "intent_changed", KEY,
                                      BODY, body_len, rt_now_ns());
        ovf += rt_bus_publish(r->bus, ev);
        rt_event_unref(ev);
        if (r->wake_every && i % r->wake_every == 0)
            for (int j = 0; j < r->nconsumers; j++)
                rt_bus_kick(r->cons[j].sub);
    }
    if (r->wake_every)
        for (int j = 0; j < r->nconsumers; j++)
            rt_bus_kick(r->cons[j].sub);
    p->end_ns = rt_mono_ns();
    p->overflows = ovf;
    return NULL;
}

static void consume(consumer_t *c, rt_event_t **evs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int64_t seq = evs[i]->seq;
        int pid = (int)(seq >> SEQ_SHIFT);
        if (pid >= 0 && pid < MAX_PRODUCERS) {
            if (seq <= c->last[pid]) c->order_errors++;
            c->last[pid] = seq;
        } else {
            c->order_errors++;
        }
        rt_event_unref(evs[i]);
    }
    c->received += n;
}

static void *consumer_main(void *arg)
{
    consumer_t *c = arg;
    run_t *r = c->run;
    rt_event_t *evs[DRAIN_BATCH];
    pthread_barrier_wait(&r->start);
    for (;;) {
        /* Read `done` before draining: if it was already set and the drain
         * finds nothing, no publish can still be in progress, so the ring is
         * empty for good. */
        int done = atomic_load_explicit(&r->done, memory_order_acquire);
        size_t n = rt_bus_drain(c->sub, evs, DRAIN_BATCH);
        if (n > 0) {
            consume(c, evs, n);
            continue;
        }
        if (done) break;
        uint64_t t0 = rt_mono_ns();
        rt_bus_wait(c->sub, WAIT_TIMEOUT_MS);
        c->waits++;
        if (rt_mono_ns() - t0 >= (uint64_t)WAIT_TIMEOUT_MS * 1000000u) c->stalls++;
    }
    c->end_ns = rt_mono_ns();
    return NULL;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "bench-bus: %s: %s\n", what, strerror(err));
    exit(1);
}

/* With --wake-every the rings get this callback, so rt_bus_publish() does not
 * wake anyone and the producers' periodic rt_bus_kick() is the only wake-up. */
static void no_wake(void *arg)
{
    (void)arg;
}

static result_t run_once(const scenario_t *sc, uint64_t events, unsigned ring, unsigned wake_every)
{
    run_t *r = calloc(1, sizeof *r);
    if (!r) die("calloc", ENOMEM);
    r->bus = rt_bus_new();
    atomic_init(&r->done, 0);
    r->nconsumers = sc->consumers;
    r->wake_every = wake_every;
    int nthreads = sc->producers + sc->consumers;
    int rc = pthread_barrier_init(&r->start, NULL, (unsigned)nthreads);
    if (rc) die("pthread_barrier_init", rc);

    for (int i = 0; i < sc->consumers; i++) {
        consumer_t *c = &r->cons[i];
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        c->run = r;
        c->sub = rt_bus_subscribe(r->bus, name, ring, RT_BUS_ALL_TYPES, wake_every ? no_wake : NULL,
                                  NULL);
        if (!c->sub) die("rt_bus_subscribe", errno);
    }
    for (int i = 0; i < sc->consumers; i++)
        if ((rc = pthread_create(&r->cons[i].thread, NULL, consumer_main, &r->cons[i])))
            die("pthread_create", rc);
    for (int i = 0; i < sc->producers; i++) {
        producer_t *p = &r->prod[i];
        p->run = r;
        p->id = i;
        /* The first producers take the remainder, so the total is exact. */
        p->count = events / (uint64_t)sc->producers +
                   ((uint64_t)i < events % (uint64_t)sc->producers ? 1 : 0);
        if ((rc = pthread_create(&p->thread, NULL, producer_main, p))) die("pthread_create", rc);
    }

    for (int i = 0; i < sc->producers; i++)
        pthread_join(r->prod[i].thread, NULL);
    atomic_store_explicit(&r->done, 1, memory_order_release);
    for (int i = 0; i < sc->consumers; i++)
        rt_bus_kick(r->cons[i].sub);
    for (int i = 0; i < sc->consumers; i++)
        pthread_join(r->cons[i].thread, NULL);

    result_t res = {.events = events};
    uint64_t start = UINT64_MAX, pend = 0, end = 0;
    uint64_t publish_overflows = 0;
    for (int i = 0; i < sc->producers; i++) {
        if (r->prod[i].start_ns < start) start = r->prod[i].start_ns;
        if (r->prod[i].end_ns > pend) pend = r->prod[i].end_ns;
        publish_overflows += r->prod[i].overflows;
    }
    end = pend;
    for (int i = 0; i < sc->consumers; i++) {
        consumer_t *c = &r->cons[i];
        if (c->end_ns > end) end = c->end_ns;
        res.delivered += c->received;
        res.waits += c->waits;
        res.stalls += c->stalls;
        res.order_errors += c->order_errors;
        res.overflows += atomic_load(&c->sub->overflows);
    }
    /* Every event is either delivered to a ring or counted as its overflow. */
    if (res.overflows != publish_overflows ||
        res.delivered + res.overflows != events * (uint64_t)sc->consumers) {
        fprintf(stderr,
                "bench-bus: accounting mismatch: delivered %" PRIu64 " + overflows %" PRIu64
                " != %" PRIu64 " x %d (publish reported %" PRIu64 " overflows)\n",
                res.delivered, res.overflows, events, sc->consumers, publish_overflows);
        exit(1);
    }
    res.events_per_s = (double)events * 1e9 / (double)(end - start);
    res.deliveries_per_s = (double)res.delivered * 1e9 / (double)(end - start);
    res.produce_per_s = (double)events * 1e9 / (double)(pend - start);

    pthread_barrier_destroy(&r->start);
    rt_bus_free(r->bus);
    free(r);
    return res;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of n values (mean of the middle two when n is even); sorts v. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench-bus [--events N] [--runs R] [--ring SIZE] [--scenarios PxC,...]\n"
               "                 [--wake-every K]\n"
               "  --events N      events published per run, all producers together (500000)\n"
               "  --runs R        runs per scenario; median, min and max are printed (5)\n"
               "  --ring SIZE     capacity of each consumer ring, a power of two (65536)\n"
               "  --scenarios L   P producers x C consumer rings (1x0,1x1,1x4,2x4);\n"
               "                  1x0 is the producer alone: rt_event_new + publish + unref\n"
               "  --wake-every K  experiment, not the library's path: rings get a no-op wake\n"
               "                  callback and each producer calls rt_bus_kick on every ring\n"
               "                  once per K events, to show what coalesced wake-ups buy (0)\n");
}

static uint64_t parse_u64(const char *flag, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        fprintf(stderr,
                "bench-bus: %s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'\n",
                flag, min, max, s);
        exit(2);
    }
    return v;
}

static int parse_scenarios(const char *s, scenario_t *out)
{
    int n = 0;
    char *copy = strdup(s), *save = NULL;
    if (!copy) die("strdup", ENOMEM);
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int p, c, used = 0;
        if (n == MAX_SCENARIOS || sscanf(tok, "%dx%d%n", &p, &c, &used) != 2 || tok[used] != '\0' ||
            p < 1 || p > MAX_PRODUCERS || c < 0 || c > MAX_CONSUMERS) {
            fprintf(stderr,
                    "bench-bus: --scenarios: bad entry '%s' (PxC, 1 <= P <= %d, 0 <= C <= %d)\n",
                    tok, MAX_PRODUCERS, MAX_CONSUMERS);
            exit(2);
        }
        out[n++] = (scenario_t){p, c};
    }
    free(copy);
    if (n == 0) {
        fprintf(stderr, "bench-bus: --scenarios: empty list\n");
        exit(2);
    }
    return n;
}

int main(int argc, char **argv)
{
    uint64_t events = 500000;
    int runs = 5;
    unsigned ring = 65536;
    const char *scen_arg = "1x0,1x1,1x4,2x4";
    unsigned wake_every = 0;

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
        if (strcmp(a, "--events") == 0)
            events = parse_u64(a, argv[++i], 1, 1000000000);
        else if (strcmp(a, "--runs") == 0)
            runs = (int)parse_u64(a, argv[++i], 1, MAX_RUNS);
        else if (strcmp(a, "--ring") == 0)
            ring = (unsigned)parse_u64(a, argv[++i], 4, 1u << 30);
        else if (strcmp(a, "--scenarios") == 0)
            scen_arg = argv[++i];
        else if (strcmp(a, "--wake-every") == 0)
            wake_every = (unsigned)parse_u64(a, argv[++i], 0, 1u << 20);
        else {
            usage(stderr);
            return 2;
        }
    }
    if (ring & (ring - 1)) {
        fprintf(stderr, "bench-bus: --ring must be a power of two, got %u\n", ring);
        return 2;
    }
    scenario_t sc[MAX_SCENARIOS];
    int nsc = parse_scenarios(scen_arg, sc);
    rt_log_setup(RT_LOG_WARN, RT_LOG_TEXT, 2);

    printf("== bench-bus ==\ncommand:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    struct utsname un;
    uname(&un);
    printf("\neffective: --events %" PRIu64 " --runs %d --ring %u --scenarios %s --wake-every %u\n",
           events, runs, ring, scen_arg, wake_every);
    if (wake_every)
        printf("EXPERIMENT: consumers are woken by the producers every %u events (rt_bus_kick), "
               "not by rt_bus_publish\n",
               wake_every);
    printf("machine: %ld CPUs online, %s %s %s\n", sysconf(_SC_NPROCESSORS_ONLN), un.sysname,
           un.release, un.machine);
    {
        rt_event_t *ev = rt_event_new(RT_EV_INTENT_UPDATE, 1, "intent_changed", KEY, BODY,
                                      sizeof BODY - 1, rt_now_ns());
        printf("event: body %zu B, ws frame %zu B, sse %zu B; consumers drain %d at a time, "
               "block in rt_bus_wait when empty\n",
               ev->body_len, ev->ws_frame_len, ev->sse_len, DRAIN_BATCH);
        rt_event_unref(ev);
    }
    printf("events/s = events published / (first producer start .. last consumer done); "
           "deliveries/s counts each ring's copy\n\n");
    printf("%-5s %6s %11s %11s %11s %13s %11s %9s %9s %6s\n", "PxC", "runs", "events/s", "min",
           "max", "deliveries/s", "produce/s", "overflows", "waits/run", "stalls");

    int any_overflow = 0, any_error = 0;
    for (int s = 0; s < nsc; s++) {
        double ev[MAX_RUNS], dl[MAX_RUNS], pr[MAX_RUNS], wt[MAX_RUNS];
        uint64_t ovf = 0, stalls = 0, order = 0;
        for (int i = 0; i < runs; i++) {
            result_t r = run_once(&sc[s], events, ring, wake_every);
            ev[i] = r.events_per_s;
            dl[i] = r.deliveries_per_s;
            pr[i] = r.produce_per_s;
            wt[i] = (double)r.waits;
            ovf += r.overflows;
            stalls += r.stalls;
            order += r.order_errors;
        }
        double e_med = median(ev, runs); /* ev is sorted from here on */
        char label[16];
        snprintf(label, sizeof label, "%dx%d", sc[s].producers, sc[s].consumers);
        printf("%-5s %6d %11.0f %11.0f %11.0f %13.0f %11.0f %9" PRIu64 " %9.0f %6" PRIu64 "%s\n",
               label, runs, e_med, ev[0], ev[runs - 1], median(dl, runs), median(pr, runs), ovf,
               median(wt, runs), stalls, ovf ? "  <- OVERFLOWS: events were dropped" : "");
        fflush(stdout);
        if (ovf) any_overflow = 1;
        if (order) {
            printf("  ERROR: %" PRIu64 " events arrived out of publish order\n", order);
            any_error = 1;
        }
        if (stalls)
            printf("  WARNING: %" PRIu64 " waits hit the %d ms timeout with a producer "
                   "running (lost wake-up?)\n",
                   stalls, WAIT_TIMEOUT_MS);
    }
    printf("\n%s\n", any_overflow ? "result: some runs OVERFLOWED (see the overflows column)"
                                  : "result: no overflows");
    return any_error ? 1 : 0;
}
