/*
 * Integration-test helpers: a fresh database per test on the runner's
 * cluster, and libpq calls that assert instead of returning errors. Failures
 * print the SQL and the server's message, because "assertion failed" alone
 * says nothing about which statement broke.
 */
#include "pgtest.h"

#include "migrate.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int pgt_str_same(const char *a, const char *b)
{
    if (a == NULL || b == NULL) return a == b;
    return strcmp(a, b) == 0;
}

const char *pgt_base_url(void)
{
    const char *url = getenv("RT_TEST_DATABASE_URL");
    if (url == NULL || *url == '\0') {
        fail_msg("RT_TEST_DATABASE_URL is not set. Run the integration tests with 'make test' "
                 "(test/run.sh starts a throwaway PostgreSQL), or start one yourself:\n"
                 "  export RT_TEST_DATABASE_URL=$(sh test/pg.sh start /tmp/rtpg "
                 "$(sh test/pg.sh freeport))");
    }
    return url;
}

/* Returns base with its database replaced by dbname, malloc'd. Handles URLs
 * (postgresql://user@host:port/db?params) and key=value strings, where a
 * later dbname= overrides an earlier one. */
static char *with_dbname(const char *base, const char *dbname)
{
    char *out = NULL;
    const char *scheme = strstr(base, "://");
    if (scheme == NULL) {
        if (asprintf(&out, "%s dbname=%s", base, dbname) < 0) out = NULL;
        assert_non_null(out);
        return out;
    }
    const char *authority = scheme + 3;
    const char *query = strchr(authority, '?');
    const char *slash = strchr(authority, '/');
    if (slash != NULL && query != NULL && slash > query) slash = NULL;
    const char *end_of_authority = slash ? slash : query ? query : base + strlen(base);
    int n = asprintf(&out, "%.*s/%s%s", (int)(end_of_authority - base), base, dbname,
                     query ? query : "");
    if (n < 0) out = NULL;
    assert_non_null(out);
    return out;
}

char *pgt_create_db(const char *prefix)
{
    static int counter;
    const char *base = pgt_base_url();

    for (const char *p = prefix; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            fail_msg("pgt_create_db: prefix \"%s\" must be [a-z0-9_]", prefix);
    }
    char name[64];
    int n = snprintf(name, sizeof name, "%.40s_%ld_%d", prefix, (long)getpid(), ++counter);
    assert_true(n > 0 && (size_t)n < sizeof name);

    /* template0 rather than template1: CREATE DATABASE fails while anyone
     * else is connected to its template, and tests run in parallel. */
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s TEMPLATE template0", name);
    PGconn *c = pgt_connect(base);
    pgt_exec(c, sql);
    PQfinish(c);
    return with_dbname(base, name);
}

void pgt_drop_db(const char *url)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &errmsg);
    if (opts == NULL) {
        fail_msg("pgt_drop_db: cannot parse \"%s\": %s", url, errmsg ? errmsg : "out of memory");
    }
    char sql[256] = "";
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "dbname") == 0 && o->val && *o->val) {
            snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", o->val);
        }
    }
    PQconninfoFree(opts);
    if (sql[0] == '\0') fail_msg("pgt_drop_db: \"%s\" names no database", url);

    PGconn *c = pgt_connect(pgt_base_url());
    pgt_exec(c, sql);
    PQfinish(c);
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *pgt_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    assert_non_null(c);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        PQfinish(c);
        fail_msg("cannot connect to %s: %s", url, msg);
    }
    /* NOTICEs such as "relation already exists, skipping" are expected
     * noise in tests; keep them out of the output. */
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    return c;
}

/* Runs sql and returns its result, which must have status want. */
static PGresult *exec_expect(PGconn *c, const char *sql, ExecStatusType want)
{
    PGresult *r = PQexec(c, sql);
    if (r == NULL || PQresultStatus(r) != want) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        const char *status = r ? PQresStatus(PQresultStatus(r)) : "no result";
        PQclear(r);
        fail_msg("SQL failed (%s, expected %s): %s\n  sql: %s", status, PQresStatus(want), msg,
                 sql);
    }
    return r;
}

void pgt_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        PQclear(r);
        fail_msg("SQL failed (%s): %s\n  sql: %s", PQresStatus(st), msg, sql);
    }
    PQclear(r);
}

/* The single value of a one-row, one-column result; the result is cleared
 * by the caller. */
static PGresult *exec_scalar(PGconn *c, const char *sql)
{
    PGresult *r = exec_expect(c, sql, PGRES_TUPLES_OK);
    if (PQntuples(r) != 1 || PQnfields(r) != 1) {
        int rows = PQntuples(r), cols = PQnfields(r);
        PQclear(r);
        fail_msg("expected 1 row of 1 column, got %d rows of %d columns\n  sql: %s", rows, cols,
                 sql);
    }
    return r;
}

long long pgt_scalar_ll(PGconn *c, const char *sql)
{
    PGresult *r = exec_scalar(c, sql);
    if (PQgetisnull(r, 0, 0)) {
        PQclear(r);
        fail_msg("expected a number, got NULL\n  sql: %s", sql);
    }
    char *end = NULL;
    long long v = strtoll(PQgetvalue(r, 0, 0), &end, 10);
    int bad = end == NULL || *end != '\0';
    PQclear(r);
    if (bad) fail_msg("expected an integer\n  sql: %s", sql);
    return v;
}

char *pgt_scalar_str(PGconn *c, const char *sql)
{
    PGresult *r = exec_scalar(c, sql);
    char *v = NULL;
    if (!PQgetisnull(r, 0, 0)) {
        v = strdup(PQgetvalue(r, 0, 0));
        assert_non_null(v);
    }
    PQclear(r);
    return v;
}

void pgt_migrate(const char *url)
{
    PGconn *c = pgt_connect(url);
    char err[512];
    int applied = -1;
    int rc = rt_migrate(c, &applied, err, sizeof err);
    PQfinish(c);
    if (rc != 0) fail_msg("rt_migrate(%s) returned %d: %s", url, rc, err);
}

PGnotify *pgt_wait_notify(PGconn *c, int timeout_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (!PQconsumeInput(c)) fail_msg("waiting for NOTIFY: %s", PQerrorMessage(c));
        PGnotify *n = PQnotifies(c);
        if (n) return n;

        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= timeout_ms) return NULL;

        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        if (pfd.fd < 0) fail_msg("waiting for NOTIFY: connection has no socket");
        poll(&pfd, 1, (int)(timeout_ms - elapsed));
    }
}
