/*
 * Configuration: one table, one row per option (flag, environment variable,
 * type, bounds, default, help). Parsing, validation, `--help` and the README's
 * CLI reference all come from that table, so they cannot disagree.
 *
 * Precedence: command-line flag > environment variable > default.
 * Not thread-safe: parse once in main() before threads start; afterwards the
 * struct is read-only and may be read from any thread.
 */
#ifndef RT_CONFIG_H
#define RT_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { RT_TAIL_JSON = 0, RT_TAIL_TEXT } rt_tail_format_t;

/* How the audit-log ETL learns of new rows (lib/etl.h). */
typedef enum { RT_ETL_MODE_EVENT = 0, RT_ETL_MODE_POLLING, RT_ETL_MODE_HYBRID } rt_etl_mode_t;

typedef struct rt_config {
    char *database_url;      /* --database-url / DATABASE_URL; NULL if unset */
    char *channels;          /* --channels: comma-separated LISTEN channels */
    int log_level;           /* rt_log_level_t */
    int log_format;          /* rt_log_format_t */
    int64_t bus_ring_size;   /* --bus-ring-size: power of two */
    int64_t reconnect_min_ms; /* --reconnect-min: first reconnect delay */
    int64_t reconnect_max_ms; /* --reconnect-max: cap of the doubling */
    int64_t journal_retention_ms; /* --journal-retention: prune rt_journal rows older */
    int tail_format;         /* rt_tail_format_t, --format (tail) */

    /* fan-out (HTTP, WebSocket, SSE) */
    char *listen;                 /* --listen HOST:PORT */
    int64_t fanout_threads;       /* 0: one per CPU */
    int64_t ws_max_message;       /* bytes */
    int64_t ping_interval_ms;
    int64_t keepalive_interval_ms;
    char *allowed_origins;        /* comma-separated; NULL/"" allows all */
    int64_t replay_window;        /* events kept in memory for resume */
    int64_t client_max_queued;    /* bytes queued for one client before it is cut off */
    int64_t max_conns;
    int64_t max_conns_per_ip;     /* 0: unlimited */
    char *auth_token;             /* static bearer token; NULL: none */
    char *jwt_secret;             /* HS256 secret; NULL: none */
    int64_t header_timeout_ms;
    int64_t shutdown_timeout_ms;
    int64_t client_msg_rate;      /* inbound messages per second per connection */

    /* audit-log ETL */
    int etl;                      /* --etl: serve runs the ETL (bool) */
    int etl_mode;                 /* rt_etl_mode_t */
    int64_t etl_batch_size;       /* rows per load transaction */
    int64_t etl_interval_ms;      /* longest wait from an event to its load */
    int64_t etl_poll_interval_ms; /* polling/hybrid: period of the journal check */
    int64_t etl_retention_ms;     /* daily partitions older than this are dropped */
    int etl_once;                 /* --once (etl command): catch up, print, exit */
    char *etl_source_url;         /* rt_journal's database; NULL: --database-url */
    char *etl_target_url;         /* audit_logs_ts's database; NULL: --database-url */

    /* metrics aggregator and dashboard API */
    int64_t metrics_reconcile_interval_ms; /* reconcile totals with the database */
    int64_t stats_interval_ms;             /* period of the stats_updated event */
    /* alerts (lib/alerts.h, lib/notify.h); URLs and passwords are secrets */
    char *alert_rules;                /* --alert-rules PATH; NULL: no evaluator */
    int64_t alert_query_timeout_ms;   /* statement_timeout of one condition */
    char *alert_webhook_url;          /* generic webhook channel */
    char *slack_webhook_url;          /* Slack incoming webhook channel */
    char *smtp_url;                   /* e-mail channel: smtp://, smtps://, smtp+starttls:// */
    char *smtp_from;
    char *smtp_to;                    /* comma-separated */
    int64_t alert_notify_timeout_ms;  /* per notification attempt */
    int64_t alert_notify_tries;       /* attempts in all */
    int64_t alert_notify_backoff_ms;  /* first retry delay, doubling */
    /* dashboard page */
    char *web_root;               /* --web-root: serve lib/web from here; NULL: embedded */
} rt_config_t;

/* Fills cfg with defaults, then environment, then argv[0..argc-1] (flags only,
 * no subcommand). getenv_fn lets tests inject an environment; pass getenv.
 * Returns 0, or -EINVAL with a one-line message naming the flag in err.
 * Returns 1 when --help/-h was given (cfg is filled with what was parsed). */
int rt_config_parse(rt_config_t *cfg, int argc, char **argv,
                    const char *(*getenv_fn)(const char *), char *err, size_t errlen);

/* Frees the strings cfg owns. */
void rt_config_free(rt_config_t *cfg);

/* Writes the option reference: one entry per option with flag, environment
 * variable, default and help. markdown != 0 writes a Markdown table. */
void rt_config_print_help(FILE *out, int markdown);

/*
 * Additions to the contract above:
 *
 * - cfg need not be initialised before rt_config_parse(); it is overwritten,
 *   not freed. After a return of 0 or 1 the caller owns the strings and calls
 *   rt_config_free(). After -EINVAL cfg has already been freed (all zero);
 *   calling rt_config_free() on it anyway is harmless.
 * - When --help/-h is given anywhere before a bare "--", parsing stops before
 *   anything else is looked at and cfg holds the defaults, so help works even
 *   next to a bad flag or a bad environment variable.
 * - getenv_fn == NULL reads the process environment. getenv itself cannot be
 *   passed (it returns char *, which -Wincompatible-pointer-types rejects);
 *   rt_config_getenv is the same function with the right type.
 * - An environment variable set to the empty string counts as unset.
 * - err may be NULL when errlen is 0.
 */
const char *rt_config_getenv(const char *name);

/* For tests: the value syntaxes behind the table's types, without the bounds
 * of any option. Each returns 0 and stores the value, or -EINVAL and leaves
 * *out alone. int: decimal, optional '-'. duration: digits with ms|s|m|h|d or
 * none (milliseconds), to ms. size: digits with k|K|m|M|g|G (powers of 1024)
 * or none, to bytes. bool: true|false|yes|no|on|off|1|0, any case. */
int rt_config__parse_int(const char *s, int64_t *out);
int rt_config__parse_duration(const char *s, int64_t *out);
int rt_config__parse_size(const char *s, int64_t *out);
int rt_config__parse_bool(const char *s, int *out);

#endif
