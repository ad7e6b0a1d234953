/*
 * rtbridge: flags, configuration, and the subcommand dispatch. Everything
 * that does work lives in lib/ where it can be tested.
 */
#include "alertcmd.h"
#include "config.h"
#include "etl.h"
#include "log.h"
#include "migrate.h"
#include "serve.h"
#include "tail.h"
#include "version.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "rtbridge %s: PostgreSQL changes, live, to WebSocket and SSE clients.\n\n"
                 "Usage: rtbridge COMMAND [FLAGS]\n\n"
                 "Commands:\n"
                 "  serve     run the server: listener, bus, workers\n"
                 "  migrate   apply the schema in schema/ (idempotent)\n"
                 "  tail      print every event as it arrives, one line each\n"
                 "  etl       run the audit-log ETL alone (--mode event|polling|hybrid,\n"
                 "            --batch-size N, --once: load what is pending and exit)\n"
                 "  alerts check --alert-rules FILE\n"
                 "            validate the rules, evaluate each once, print what would fire\n"
                 "            (exit 0: nothing, 1: something would fire, 2: invalid file)\n"
                 "  alerts list\n"
                 "            current alert states and the last notifications\n"
                 "  version   print the version\n"
                 "  help      this text\n\n"
                 "Flags (each also read from its environment variable):\n",
            RT_VERSION);
    rt_config_print_help(out, 0);
}

static int cmd_migrate(const rt_config_t *cfg)
{
    PGconn *c = PQconnectdb(cfg->database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        rt_error("migrate", "cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    char err[512];
    int applied = 0;
    int rc = rt_migrate(c, &applied, err, sizeof err);
    PQfinish(c);
    if (rc < 0) {
        rt_error("migrate", "%s", err);
        return 1;
    }
    printf("migrate: %d migration(s) applied, %zu known\n", applied, rt_migrations_count);
    return 0;
}

/* `rtbridge etl` also takes the short spellings of its own flags: --mode and
 * --batch-size mean --etl-mode and --etl-batch-size. Rewrites argv in place
 * (the strings it points to stay valid until exit). */
static void etl_aliases(int argc, char **argv)
{
    static const char *const alias[][2] = {{"--mode", "--etl-mode"},
                                           {"--batch-size", "--etl-batch-size"}};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) return;
        for (size_t k = 0; k < sizeof alias / sizeof alias[0]; k++) {
            size_t n = strlen(alias[k][0]);
            if (strncmp(argv[i], alias[k][0], n) != 0) continue;
            if (argv[i][n] == '\0') {
                argv[i] = (char *)alias[k][1];
            } else if (argv[i][n] == '=') {
                char *s = NULL;
                if (asprintf(&s, "%s%s", alias[k][1], argv[i] + n) < 0) abort();
                argv[i] = s; /* lives until exit */
            }
        }
    }
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "help";
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (argc > 2 && strcmp(argv[2], "--markdown") == 0)
            rt_config_print_help(stdout, 1);
        else
            usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("rtbridge %s\n", RT_VERSION);
        return 0;
    }
    int needs_db = strcmp(cmd, "serve") == 0 || strcmp(cmd, "migrate") == 0 ||
                   strcmp(cmd, "tail") == 0 || strcmp(cmd, "etl") == 0 ||
                   strcmp(cmd, "alerts") == 0;
    if (!needs_db) {
        fprintf(stderr, "rtbridge: unknown command '%s' (see rtbridge help)\n", cmd);
        return 2;
    }

    if (strcmp(cmd, "etl") == 0) etl_aliases(argc - 2, argv + 2);
    /* `alerts SUB [FLAGS]`: the subcommand comes before the flags. */
    const char *sub = NULL;
    int skip = 2;
    if (strcmp(cmd, "alerts") == 0 && argc > 2 && argv[2][0] != '-') sub = argv[2], skip = 3;
    rt_config_t cfg;
    char err[256];
    int rc = rt_config_parse(&cfg, argc - skip, argv + skip, rt_config_getenv, err, sizeof err);
    if (rc == 1) {
        usage(stdout);
        rt_config_free(&cfg);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "rtbridge: %s\n", err);
        return 2;
    }
    if (!cfg.database_url || !*cfg.database_url) {
        fprintf(stderr, "rtbridge: --database-url (or DATABASE_URL) is required\n");
        rt_config_free(&cfg);
        return 2;
    }
    rt_log_setup((rt_log_level_t)cfg.log_level, (rt_log_format_t)cfg.log_format, 2);

    int status;
    if (strcmp(cmd, "migrate") == 0)
        status = cmd_migrate(&cfg);
    else if (strcmp(cmd, "tail") == 0)
        status = rt_tail_run(&cfg, stdout);
    else if (strcmp(cmd, "etl") == 0)
        status = rt_etl_cmd(&cfg, stdout);
    else if (strcmp(cmd, "alerts") == 0)
        status = rt_alerts_cmd(sub, &cfg, stdout, stderr);
    else
        status = rt_serve_run(&cfg);
    rt_config_free(&cfg);
    return status;
}
