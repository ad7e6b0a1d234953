/*
 * Helpers for integration tests against a real PostgreSQL (cmocka).
 *
 * The runner (test/run.sh) starts one throwaway cluster and exports its URL
 * as RT_TEST_DATABASE_URL; each test makes its own database on it with
 * pgt_create_db(), so tests never see each other's rows, and drops it at the
 * end. Every helper checks its result with a cmocka assertion that prints
 * the SQL and the server's message, so a test body stays a list of steps.
 *
 * Not thread-safe (cmocka assertions must run on the test's thread).
 */
#ifndef RT_PGTEST_H
#define RT_PGTEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <libpq-fe.h>

/* RT_TEST_DATABASE_URL; fails the test with a clear message if unset. */
const char *pgt_base_url(void);

/* Creates an empty database named <prefix>_<pid>_<counter> on the base
 * server and returns a malloc'd URL for it (caller frees). prefix is
 * [a-z0-9_]. */
char *pgt_create_db(const char *prefix);

/* Drops the database url names (WITH (FORCE): open sessions are ended).
 * Does not free url. */
void pgt_drop_db(const char *url);

/* Connects; asserts CONNECTION_OK. Close with PQfinish(). */
PGconn *pgt_connect(const char *url);

/* Runs sql (several statements allowed); asserts it succeeded. */
void pgt_exec(PGconn *c, const char *sql);

/* Runs a query returning one row of one non-NULL column, as a number. */
long long pgt_scalar_ll(PGconn *c, const char *sql);

/* Like pgt_scalar_ll, as a malloc'd string (caller frees); NULL for SQL NULL. */
char *pgt_scalar_str(PGconn *c, const char *sql);

/* Applies the embedded migrations (rt_migrate) to url; asserts success. */
void pgt_migrate(const char *url);

/* Waits up to timeout_ms for a notification on c (which must LISTEN).
 * Returns it (free with PQfreemem) or NULL on timeout. */
PGnotify *pgt_wait_notify(PGconn *c, int timeout_ms);

/* Assertions that print both sides (decimal, and strings in full). */
#define pgt_assert_ll_eq(a, b)                                                                     \
    do {                                                                                           \
        long long pgt_a_ = (long long)(a), pgt_b_ = (long long)(b);                                \
        if (pgt_a_ != pgt_b_)                                                                      \
            fail_msg("%s:%d: %s == %lld, but %s == %lld", __FILE__, __LINE__, #a, pgt_a_, #b,      \
                     pgt_b_);                                                                      \
    } while (0)

#define pgt_assert_str_eq(a, b)                                                                    \
    do {                                                                                           \
        const char *pgt_a_ = (a), *pgt_b_ = (b);                                                   \
        if (!pgt_str_same(pgt_a_, pgt_b_))                                                         \
            fail_msg("%s:%d: %s != %s\n  left:  %s%s%s\n  right: %s%s%s", __FILE__, __LINE__, #a,  \
                     #b, pgt_a_ ? "\"" : "", pgt_a_ ? pgt_a_ : "NULL", pgt_a_ ? "\"" : "",         \
                     pgt_b_ ? "\"" : "", pgt_b_ ? pgt_b_ : "NULL", pgt_b_ ? "\"" : "");            \
    } while (0)

/* Both NULL, or both strings with the same bytes. */
int pgt_str_same(const char *a, const char *b);

#endif
