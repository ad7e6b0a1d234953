/*
 * Schema migrations. The SQL files of schema/ are embedded in the binary at
 * build time (lib/schema-embed.sh); rt_migrate() applies, in name order, each
 * one not yet recorded in rt_schema_migrations, each in its own transaction
 * under an advisory lock, so two instances migrating at once are safe and a
 * second run changes nothing.
 *
 * Blocking (libpq): call from main or a worker thread, never from a loop.
 */
#ifndef RT_MIGRATE_H
#define RT_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct rt_migration {
    const char *name; /* file name, e.g. "001_journal.sql" */
    const char *sql;
} rt_migration_t;

/* The embedded migrations, in order (generated). */
extern const rt_migration_t rt_migrations[];
extern const size_t rt_migrations_count;

/* Applies pending migrations on conn. *applied (may be NULL) receives how many
 * ran. Returns 0 or -EIO with a one-line message (migration name, SQLSTATE,
 * server message) in err. */
int rt_migrate(PGconn *conn, int *applied, char *err, size_t errlen);

#endif
