/*
 * Journal pruning in batches: each DELETE touches at most 10 000 rows in its
 * own transaction, so replication and concurrent writers never wait long.
 */
#include "journal.h"

#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

int rt_journal_prune(PGconn *conn, int64_t retention_ms, long long *deleted)
{
    char ms[24];
    snprintf(ms, sizeof ms, "%" PRId64, retention_ms);
    const char *params[1] = {ms};
    *deleted = 0;
    for (;;) {
        PGresult *r = PQexecParams(
            conn,
            "DELETE FROM rt_journal WHERE seq IN (SELECT seq FROM rt_journal "
            "WHERE created_at < now() - $1::bigint * interval '1 millisecond' "
            "ORDER BY seq LIMIT 10000)",
            1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rt_warn("journal", "prune: %s", PQerrorMessage(conn));
            PQclear(r);
            return -EIO;
        }
        long long n = atoll(PQcmdTuples(r));
        PQclear(r);
        *deleted += n;
        if (n < 10000) return 0;
    }
}
