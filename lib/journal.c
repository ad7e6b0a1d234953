/*
 * Journal pruning in batches: each DELETE touches at most 10 000 rows in its
 * own transaction, so replication and concurrent writers never wait long.
 */
#include "journal.h"

#include "log.h"

#include "event.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

int rt_journal_prune(PGconn *conn, int64_t retention_ms, int keep_unloaded, long long *deleted)
{
    char ms[24];
    snprintf(ms, sizeof ms, "%" PRId64, retention_ms);
    const char *params[2] = {ms, keep_unloaded ? "t" : "f"};
    *deleted = 0;
    for (;;) {
        /* Delete a batch and move the watermark in one statement, so a
         * resume never sees rows gone without the watermark saying so. */
        PGresult *r = PQexecParams(
            conn,
            "WITH d AS (DELETE FROM rt_journal WHERE seq IN (SELECT seq FROM rt_journal j "
            "  WHERE created_at < now() - $1::bigint * interval '1 millisecond' "
            "  AND (NOT $2::boolean OR channel <> 'audit_log_created' OR ("
            "   EXISTS (SELECT 1 FROM rt_etl_cursor) AND NOT EXISTS ("
            "   SELECT 1 FROM rt_etl_cursor c WHERE NOT (j.xid < c.last_xmin"
            "   OR (j.seq <= c.last_seq AND pg_visible_in_snapshot(j.xid, c.snapshot::pg_snapshot))))))"
            "  ORDER BY seq LIMIT 10000) RETURNING seq), "
            "u AS (UPDATE rt_journal_state SET pruned_through = "
            "  GREATEST(pruned_through, (SELECT max(seq) FROM d)) "
            "  WHERE (SELECT max(seq) FROM d) IS NOT NULL RETURNING 1) "
            "SELECT count(*) FROM d",
            2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            rt_warn("journal", "prune: %s", PQerrorMessage(conn));
            PQclear(r);
            return -EIO;
        }
        long long n = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        *deleted += n;
        if (n < 10000) return 0;
    }
}

int rt_journal_head(PGconn *conn, int64_t *seq)
{
    PGresult *r = PQexec(conn, "SELECT coalesce(max(seq), 0) FROM rt_journal");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rt_warn("journal", "head: %s", PQerrorMessage(conn));
        PQclear(r);
        return -EIO;
    }
    *seq = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

int rt_journal_fetch_after(PGconn *conn, int64_t after, size_t limit, rt_event_t ***evs,
                           size_t *n, int64_t *pruned_through)
{
    char afters[24], limits[24];
    snprintf(afters, sizeof afters, "%" PRId64, after);
    snprintf(limits, sizeof limits, "%zu", limit);
    const char *params[2] = {afters, limits};
    *evs = NULL;
    *n = 0;
    *pruned_through = 0;
    PGresult *r = PQexecParams(conn,
                               "SELECT seq, channel, payload, "
                               "  (SELECT pruned_through FROM rt_journal_state) "
                               "FROM rt_journal WHERE seq > $1::bigint ORDER BY seq "
                               "LIMIT $2::bigint",
                               2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rt_warn("journal", "fetch after %s: %s", afters, PQerrorMessage(conn));
        PQclear(r);
        return -EIO;
    }
    int rows = PQntuples(r);
    if (rows == 0) {
        /* The watermark still matters when nothing is left after S. */
        PQclear(r);
        r = PQexec(conn, "SELECT pruned_through FROM rt_journal_state");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            *pruned_through = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        return 0;
    }
    *pruned_through = PQgetisnull(r, 0, 3) ? 0 : atoll(PQgetvalue(r, 0, 3));
    *evs = calloc((size_t)rows, sizeof **evs);
    if (!*evs) abort();
    uint64_t now = rt_now_ns();
    for (int i = 0; i < rows; i++) {
        rt_event_t *ev = NULL;
        int64_t seq;
        if (rt_event_parse_notify(PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                                  (size_t)PQgetlength(r, i, 2), now, &ev, &seq, NULL,
                                  0) == RT_PARSE_OK)
            (*evs)[(*n)++] = ev;
    }
    PQclear(r);
    return 0;
}
