/*
 * Integration tests for lib/listener.c against a real PostgreSQL: events in
 * commit order, oversize payloads by reference, bad payloads skipped, and
 * exactly-once delivery across connection losses while concurrent writers
 * commit out of seq order.
 */
#include "pgtest.h"

#include "bus.h"
#include "listener.h"
#include "log.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a consumer that records every seq it receives --------------------------- */

#define MAX_SEQ (1 << 20)

typedef struct {
    rt_bus_sub_t *sub;
    atomic_int stop;
    atomic_uchar *count; /* deliveries per seq */
    atomic_long received;
    pthread_mutex_t mu;
    rt_event_t *last[8]; /* the most recent events, for content checks */
    int nlast;
    pthread_t thread;
} recorder_t;

static void *recorder_main(void *arg)
{
    recorder_t *r = arg;
    rt_event_t *evs[256];
    while (!atomic_load(&r->stop)) {
        size_t n = rt_bus_drain(r->sub, evs, 256);
        if (n == 0) {
            rt_bus_wait(r->sub, 100);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            if (evs[i]->seq > 0 && evs[i]->seq < MAX_SEQ) atomic_fetch_add(&r->count[evs[i]->seq], 1);
            pthread_mutex_lock(&r->mu);
            if (r->nlast == 8) {
                rt_event_unref(r->last[0]);
                memmove(r->last, r->last + 1, 7 * sizeof r->last[0]);
                r->nlast--;
            }
            r->last[r->nlast++] = evs[i];
            pthread_mutex_unlock(&r->mu);
            atomic_fetch_add(&r->received, 1);
        }
    }
    return NULL;
}

typedef struct {
    char *url;
    rt_bus_t *bus;
    recorder_t rec;
    rt_listener_t *listener;
    PGconn *db;
} fixture_t;

static uint64_t now_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

static void fixture_start(fixture_t *f, const char *prefix, int64_t refresh_ms)
{
    memset(f, 0, sizeof *f);
    f->url = pgt_create_db(prefix);
    pgt_migrate(f->url);
    f->db = pgt_connect(f->url);
    f->bus = rt_bus_new();
    f->rec.sub = rt_bus_subscribe(f->bus, "rec", 1u << 20, RT_BUS_ALL_TYPES, NULL, NULL);
    f->rec.count = calloc(MAX_SEQ, sizeof *f->rec.count);
    pthread_mutex_init(&f->rec.mu, NULL);
    pthread_create(&f->rec.thread, NULL, recorder_main, &f->rec);
    rt_listener_opts_t o = {
        .conninfo = f->url,
        .channels = "intent_changed,audit_log_created",
        .reconnect_min_ms = 10,
        .reconnect_max_ms = 200,
        .refresh_ms = refresh_ms,
        .bus = f->bus,
    };
    f->listener = rt_listener_new(&o);
    assert_non_null(f->listener);
    assert_int_equal(rt_listener_start(f->listener), 0);
    rt_listener_stats_t *st = rt_listener_stats(f->listener);
    uint64_t deadline = now_ms() + 10000;
    while (!atomic_load(&st->connected) && now_ms() < deadline) usleep(2000);
    assert_int_equal(atomic_load(&st->connected), 1);
}

static void fixture_stop(fixture_t *f)
{
    rt_listener_free(f->listener);
    atomic_store(&f->rec.stop, 1);
    rt_bus_kick(f->rec.sub);
    pthread_join(f->rec.thread, NULL);
    for (int i = 0; i < f->rec.nlast; i++) rt_event_unref(f->rec.last[i]);
    rt_bus_free(f->bus);
    free(f->rec.count);
    pthread_mutex_destroy(&f->rec.mu);
    PQfinish(f->db);
    pgt_drop_db(f->url);
    free(f->url);
}

/* Waits until the recorder has received `want` events in total. */
static void wait_received(fixture_t *f, long want, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    while (atomic_load(&f->rec.received) < want && now_ms() < deadline) usleep(2000);
    pgt_assert_ll_eq(atomic_load(&f->rec.received), want);
}

/* Copies the body of the n-th most recent event (0 = newest). */
static char *recent_body(fixture_t *f, int back, rt_event_type_t *type, int64_t *seq)
{
    pthread_mutex_lock(&f->rec.mu);
    assert_true(f->rec.nlast > back);
    rt_event_t *ev = f->rec.last[f->rec.nlast - 1 - back];
    char *body = strndup(ev->body, ev->body_len);
    *type = ev->type;
    *seq = ev->seq;
    pthread_mutex_unlock(&f->rec.mu);
    return body;
}

static long long listener_pid(fixture_t *f)
{
    return pgt_scalar_ll(f->db, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity "
                                "WHERE application_name = 'rtbridge-listener' "
                                "AND datname = current_database()");
}

/* ---- tests ------------------------------------------------------------------- */

static void test_events_in_commit_order(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, "listener_order", 0);
    pgt_exec(f.db, "INSERT INTO intents(id, status, data) VALUES "
                   "('11111111-1111-1111-1111-111111111111', 'pending', '{\"k\": 1}')");
    pgt_exec(f.db, "UPDATE intents SET status = 'completed', version = version + 1 "
                   "WHERE id = '11111111-1111-1111-1111-111111111111'");
    pgt_exec(f.db, "INSERT INTO audit_logs(event_type, intent_id, actor, payload) VALUES "
                   "('status_change', '11111111-1111-1111-1111-111111111111', 'alice', "
                   "'{\"bridge_type\": \"b\"}')");
    wait_received(&f, 3, 5000);

    const char *want_type[3] = {"intent_update", "intent_update", "audit_log"};
    const char *want_op[3] = {"INSERT", "UPDATE", "status_change"};
    for (int i = 0; i < 3; i++) {
        rt_event_type_t type;
        int64_t seq;
        char *body = recent_body(&f, 2 - i, &type, &seq);
        json_t *j = json_loads(body, 0, NULL);
        assert_non_null(j);
        pgt_assert_str_eq(rt_event_type_name(type), want_type[i]);
        pgt_assert_str_eq(json_string_value(json_object_get(j, "event_type")), want_op[i]);
        pgt_assert_str_eq(json_string_value(json_object_get(j, "intent_id")),
                          "11111111-1111-1111-1111-111111111111");
        pgt_assert_ll_eq(json_integer_value(json_object_get(j, "seq")), seq);
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM rt_journal WHERE seq = %" PRId64, seq);
        pgt_assert_ll_eq(pgt_scalar_ll(f.db, sql), 1);
        if (i == 1)
            pgt_assert_str_eq(json_string_value(json_object_get(j, "status")), "completed");
        json_decref(j);
        free(body);
    }
    fixture_stop(&f);
}

static void test_oversize_payload_by_reference(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, "listener_big", 0);
    pgt_exec(f.db, "INSERT INTO intents(id, status, data) VALUES (gen_random_uuid(), 'big', "
                   "jsonb_build_object('blob', repeat('x', 20000)))");
    wait_received(&f, 1, 5000);
    rt_event_type_t type;
    int64_t seq;
    char *body = recent_body(&f, 0, &type, &seq);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    const char *blob = json_string_value(json_object_get(json_object_get(j, "data"), "blob"));
    assert_non_null(blob);
    pgt_assert_ll_eq(strlen(blob), 20000);
    for (int i = 0; i < 20000; i++) assert_int_equal(blob[i], 'x');
    pgt_assert_ll_eq(atomic_load(&rt_listener_stats(f.listener)->by_ref), 1);
    json_decref(j);
    free(body);
    fixture_stop(&f);
}

static void test_bad_payloads_are_skipped(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, "listener_bad", 0);
    pgt_exec(f.db, "NOTIFY intent_changed, 'this is not json'");
    pgt_exec(f.db, "NOTIFY intent_changed, '{\"seq\": 99999}'");     /* no intent_id */
    pgt_exec(f.db, "NOTIFY audit_log_created, '[1, 2, 3]'");         /* not an object */
    pgt_exec(f.db, "NOTIFY audit_log_created, '{\"log_id\": 1}'");   /* no seq */
    pgt_exec(f.db, "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'after')");
    wait_received(&f, 1, 5000);
    rt_listener_stats_t *st = rt_listener_stats(f.listener);
    pgt_assert_ll_eq(atomic_load(&st->invalid), 4);
    pgt_assert_ll_eq(atomic_load(&st->connected), 1);
    fixture_stop(&f);
}

/* A transaction that took its seq before a later one was published commits
 * while the listener is away: the replay must publish it, exactly once. */
static void test_out_of_order_commit_while_disconnected(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, "listener_ooo", 0);
    PGconn *a = pgt_connect(f.url);
    PGconn *admin = pgt_connect(pgt_base_url());
    char *dbname = pgt_scalar_str(f.db, "SELECT current_database()");
    char sql[256];

    pgt_exec(a, "BEGIN");
    pgt_exec(a, "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'early-seq')");
    long long s1 = pgt_scalar_ll(a, "SELECT max(seq) FROM rt_journal");
    pgt_exec(f.db, "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'later-seq')");
    wait_received(&f, 1, 5000);

    /* Keep the listener out while A commits. */
    rt_listener_stats_t *st = rt_listener_stats(f.listener);
    long long fails = (long long)atomic_load(&st->connect_failures);
    snprintf(sql, sizeof sql, "ALTER DATABASE %s ALLOW_CONNECTIONS false", dbname);
    pgt_exec(admin, sql);
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", listener_pid(&f));
    pgt_exec(admin, sql);
    uint64_t deadline = now_ms() + 10000;
    while ((long long)atomic_load(&st->connect_failures) == fails && now_ms() < deadline)
        usleep(2000);
    assert_true((long long)atomic_load(&st->connect_failures) > fails);
    assert_int_equal(atomic_load(&st->connected), 0);

    pgt_exec(a, "COMMIT");
    pgt_exec(a, "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'while-away')");
    snprintf(sql, sizeof sql, "ALTER DATABASE %s ALLOW_CONNECTIONS true", dbname);
    pgt_exec(admin, sql);

    wait_received(&f, 3, 10000);
    /* The counter moves after the replay's events are on the bus. */
    deadline = now_ms() + 10000;
    while (atomic_load(&st->reconnects) == 0 && now_ms() < deadline) usleep(1000);
    pgt_assert_ll_eq(atomic_load(&f.rec.count[s1]), 1);
    pgt_assert_ll_eq(atomic_load(&st->replayed), 2);
    pgt_assert_ll_eq(atomic_load(&st->reconnects), 1);

    free(dbname);
    PQfinish(a);
    PQfinish(admin);
    fixture_stop(&f);
}

/* ---- the chaos test ------------------------------------------------------------ */

#define WRITERS 4

typedef struct {
    const char *url;
    atomic_int *stop;
    long txns;
    int id;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    PGconn *c = PQconnectdb(w->url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "writer %d: %s", w->id, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    unsigned seed = (unsigned)w->id * 7919u;
    while (!atomic_load(w->stop)) {
        /* Each transaction takes its seqs, dawdles a random little while,
         * then commits: with four writers, commits land out of seq order. */
        char sql[512];
        snprintf(sql, sizeof sql,
                 "BEGIN;"
                 "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'w%d');"
                 "SELECT pg_sleep(%d / 1000000.0);"
                 "INSERT INTO audit_logs(event_type, actor, payload) VALUES ('e', 'w%d', '{}');"
                 "COMMIT;",
                 w->id, (int)(rand_r(&seed) % 3000), w->id);
        PGresult *r = PQexec(c, sql);
        PQclear(r);
        w->txns++;
    }
    PQfinish(c);
    return NULL;
}

static void test_exactly_once_across_terminations(void **state)
{
    (void)state;
    fixture_t f;
    /* A short refresh so pruning of the dedup set runs all the time too. */
    fixture_start(&f, "listener_chaos", 50);
    PGconn *admin = pgt_connect(pgt_base_url());
    rt_listener_stats_t *st = rt_listener_stats(f.listener);

    atomic_int stop = 0;
    writer_t w[WRITERS];
    pthread_t wt[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (writer_t){.url = f.url, .stop = &stop, .id = i};
        pthread_create(&wt[i], NULL, writer_main, &w[i]);
    }

    const int kills = 25;
    for (int k = 0; k < kills; k++) {
        /* Let some rows through, then cut the listener off. */
        long long before = pgt_scalar_ll(f.db, "SELECT count(*) FROM rt_journal");
        uint64_t deadline = now_ms() + 10000;
        while (pgt_scalar_ll(f.db, "SELECT count(*) FROM rt_journal") < before + 20 &&
               now_ms() < deadline)
            usleep(1000);
        long long pid = listener_pid(&f);
        assert_true(pid > 0);
        long long reconnects = (long long)atomic_load(&st->reconnects);
        char sql[96];
        snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", pid);
        pgt_exec(admin, sql);
        deadline = now_ms() + 10000;
        while ((long long)atomic_load(&st->reconnects) == reconnects && now_ms() < deadline)
            usleep(1000);
        pgt_assert_ll_eq(atomic_load(&st->reconnects), reconnects + 1);
    }
    atomic_store(&stop, 1);
    long txns = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(wt[i], NULL);
        txns += w[i].txns;
    }

    long long rows = pgt_scalar_ll(f.db, "SELECT count(*) FROM rt_journal");
    long long max_seq = pgt_scalar_ll(f.db, "SELECT max(seq) FROM rt_journal");
    assert_true(max_seq < MAX_SEQ);
    wait_received(&f, (long)rows, 30000);

    /* Every journal row exactly once, nothing else. */
    PGresult *r = PQexec(f.db, "SELECT seq FROM rt_journal ORDER BY seq");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    unsigned char *in_journal = calloc((size_t)max_seq + 1, 1);
    long missing = 0, dup = 0, extra = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long s = atoll(PQgetvalue(r, i, 0));
        in_journal[s] = 1;
        int c = atomic_load(&f.rec.count[s]);
        if (c == 0) missing++;
        if (c > 1) dup++;
    }
    PQclear(r);
    for (long long s = 1; s < MAX_SEQ; s++)
        if (atomic_load(&f.rec.count[s]) && (s > max_seq || !in_journal[s])) extra++;
    free(in_journal);
    print_message("chaos: %d terminations, %ld transactions, %lld journal rows, %" PRIuFAST64
                  " replayed, %" PRIuFAST64 " duplicate notifications skipped\n",
                  kills, txns, rows, (uint_fast64_t)atomic_load(&st->replayed),
                  (uint_fast64_t)atomic_load(&st->duplicates));
    pgt_assert_ll_eq(missing, 0);
    pgt_assert_ll_eq(dup, 0);
    pgt_assert_ll_eq(extra, 0);
    pgt_assert_ll_eq(atomic_load(&f.rec.received), rows);
    pgt_assert_ll_eq(atomic_load(&st->reconnects), kills);
    PQfinish(admin);
    fixture_stop(&f);
}

int main(void)
{
    rt_log_setup(RT_LOG_WARN, RT_LOG_TEXT, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_in_commit_order),
        cmocka_unit_test(test_oversize_payload_by_reference),
        cmocka_unit_test(test_bad_payloads_are_skipped),
        cmocka_unit_test(test_out_of_order_commit_while_disconnected),
        cmocka_unit_test(test_exactly_once_across_terminations),
    };
    return cmocka_run_group_tests_name("listener", tests, NULL, NULL);
}
