/*
 * Schema migrations. The files of schema/ are compiled in (lib/schema-embed.sh)
 * and applied in name order; rt_schema_migrations records which ones ran.
 *
 * Several instances may start at once against one database, so every change
 * happens inside a transaction that first takes one advisory lock and then
 * checks again whether the migration is still pending: whoever gets the lock
 * first applies it, the others find it recorded and move on. The lock is
 * transaction-scoped, so it is released by COMMIT or ROLLBACK and can never
 * be left behind by an error path. A migration and the row recording it
 * commit together, so a failed migration leaves nothing half-applied.
 *
 * The common case, nothing to do, reads rt_schema_migrations without taking
 * the lock, so starting an instance never waits on another one.
 */
#include "migrate.h"

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* "rtbridge" in ASCII read as a big-endian 64-bit integer: the key of the
 * advisory lock held while the schema changes. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_xact_lock(8247325061156202341)"

/* The migration files use IF NOT EXISTS, which reports an existing object
 * with a NOTICE; libpq would print each one on stderr. */
#define QUIET_SQL "SET LOCAL client_min_messages = warning"

#define BOOKKEEPING_SQL                                                                            \
    "CREATE TABLE IF NOT EXISTS rt_schema_migrations ("                                            \
    "name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"

/* Writes "<what> failed: SQLSTATE <code>: <primary message>" into err, on one
 * line, and logs it. The message is why if given, else the server's primary
 * message from res, else the connection's error (res may be NULL after out of
 * memory or a lost connection). */
static void report(PGconn *conn, const PGresult *res, char *err, size_t errlen, const char *what,
                   const char *why)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = why ? why : res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (msg == NULL) msg = PQerrorMessage(conn);
    if (msg == NULL || *msg == '\0') msg = "unknown error";

    char line[1024];
    snprintf(line, sizeof line, "%s failed: SQLSTATE %s: %s", what, state ? state : "none", msg);
    for (char *p = line; *p; p++) {
        if (*p == '\n' || *p == '\r') *p = ' ';
    }
    size_t n = strlen(line);
    while (n > 0 && line[n - 1] == ' ')
        line[--n] = '\0';

    rt_error("migrate", "%s", line);
    if (err && errlen) snprintf(err, errlen, "%s", line);
}

/* Runs sql; returns 0 if it ended in COMMAND_OK or TUPLES_OK, else -EIO with
 * err filled in. */
static int run(PGconn *conn, const char *sql, char *err, size_t errlen, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        report(conn, res, err, errlen, what, NULL);
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

/* Ends a failed transaction. The result does not matter: if the connection
 * is gone, so is the transaction. */
static void rollback(PGconn *conn)
{
    PQclear(PQexec(conn, "ROLLBACK"));
}

/* Sets *yes to whether a migration called name is recorded. */
static int is_recorded(PGconn *conn, const char *name, int *yes, char *err, size_t errlen)
{
    const char *params[1] = {name};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM rt_schema_migrations WHERE name = $1", 1,
                                 NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
        *yes = PQntuples(res) > 0;
    } else {
        report(conn, res, err, errlen, "reading rt_schema_migrations", NULL);
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

/* Creates rt_schema_migrations unless it exists. Concurrent CREATE TABLE IF
 * NOT EXISTS can still collide in the catalogs, so creation also happens
 * under the lock. */
static int ensure_bookkeeping(PGconn *conn, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, "SELECT to_regclass('rt_schema_migrations') IS NOT NULL");
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        report(conn, res, err, errlen, "looking up rt_schema_migrations", NULL);
        PQclear(res);
        return -EIO;
    }
    int exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (exists) return 0;

    const char *what = "creating rt_schema_migrations";
    if (run(conn, "BEGIN", err, errlen, what) != 0) return -EIO;
    if (run(conn, MIGRATE_LOCK_SQL, err, errlen, what) != 0 ||
        run(conn, QUIET_SQL, err, errlen, what) != 0 ||
        run(conn, BOOKKEEPING_SQL, err, errlen, what) != 0 ||
        run(conn, "COMMIT", err, errlen, what) != 0) {
        rollback(conn);
        return -EIO;
    }
    return 0;
}

/* Applies one migration unless it is recorded; *did is set to 1 if it ran. */
static int apply(PGconn *conn, const rt_migration_t *m, int *did, char *err, size_t errlen)
{
    const char *params[1] = {m->name};
    PGresult *res = NULL;
    *did = 0;
    int recorded = 0;
    if (is_recorded(conn, m->name, &recorded, err, errlen) != 0) return -EIO;
    if (recorded) return 0;

    char what[256];
    snprintf(what, sizeof what, "migration %s", m->name);

    if (run(conn, "BEGIN", err, errlen, what) != 0) return -EIO;
    if (run(conn, MIGRATE_LOCK_SQL, err, errlen, what) != 0 ||
        run(conn, QUIET_SQL, err, errlen, what) != 0)
        goto out_rollback;

    /* Another instance may have applied it while we waited for the lock. */
    if (is_recorded(conn, m->name, &recorded, err, errlen) != 0) goto out_rollback;
    if (recorded) {
        rt_info("migrate", "%s: applied meanwhile by another instance", m->name);
        return run(conn, "COMMIT", err, errlen, what);
    }

    if (run(conn, m->sql, err, errlen, what) != 0) goto out_rollback;

    /* A COMMIT or ROLLBACK inside the file would have ended our transaction
     * and, with it, the lock and the all-or-nothing guarantee. */
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        report(conn, NULL, err, errlen, what,
               "the file ended the transaction (it must not contain COMMIT or ROLLBACK)");
        goto out_rollback;
    }

    res = PQexecParams(conn, "INSERT INTO rt_schema_migrations (name) VALUES ($1)", 1, NULL, params,
                       NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        report(conn, res, err, errlen, what, NULL);
        PQclear(res);
        goto out_rollback;
    }
    PQclear(res);

    if (run(conn, "COMMIT", err, errlen, what) != 0) goto out_rollback;
    *did = 1;
    rt_info("migrate", "applied %s", m->name);
    return 0;

out_rollback:
    rollback(conn);
    return -EIO;
}

int rt_migrate(PGconn *conn, int *applied, char *err, size_t errlen)
{
    int n = 0;
    int rc = 0;

    if (applied) *applied = 0;
    if (err && errlen) err[0] = '\0';

    if (PQstatus(conn) != CONNECTION_OK) {
        report(conn, NULL, err, errlen, "migrate", "connection is not open");
        return -EIO;
    }
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        report(conn, NULL, err, errlen, "migrate", "connection is busy or inside a transaction");
        return -EIO;
    }

    rc = ensure_bookkeeping(conn, err, errlen);
    for (size_t i = 0; rc == 0 && i < rt_migrations_count; i++) {
        int did = 0;
        rc = apply(conn, &rt_migrations[i], &did, err, errlen);
        n += did;
    }

    if (applied) *applied = n;
    if (rc == 0) {
        rt_info("migrate", "schema up to date (%d of %zu migrations applied now)", n,
                rt_migrations_count);
    }
    return rc;
}
