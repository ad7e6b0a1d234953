/*
 * Configuration. Every option is one row of opts[] below: flag, environment
 * variable, type, where the value lives in rt_config_t, bounds, default and
 * help. Parsing, validation, the error messages, --help and the README's CLI
 * reference are all generated from that one table (the shape of Redis's
 * src/config.c), so adding an option is adding a row, and the documentation
 * cannot drift from what the parser accepts.
 *
 * Defaults are written as the string a user would type and go through the
 * same parser as flags and environment variables, so a default is always a
 * value the user could have given, and its spelling in --help is the table's.
 *
 * Nothing here prints or logs: main() decides what to do with a one-line
 * error, and whether an unset option (database-url) is fatal.
 */
#include "config.h"

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum {
    T_STRING,   /* char *, any non-empty string */
    T_LIST,     /* char *, comma-separated non-empty elements */
    T_INT,      /* int64_t, decimal, bounded */
    T_DURATION, /* int64_t milliseconds, bounded */
    T_SIZE,     /* int64_t bytes, bounded */
    T_ENUM,     /* int, index into choices */
    T_BOOL,     /* int, 0 or 1 */
} opt_type_t;

/* Checks on top of the type's own syntax and bounds. */
enum {
    C_POW2 = 1u << 0,  /* T_INT: a power of two */
    C_IDENT = 1u << 1, /* T_LIST: each element a lowercase SQL identifier */
};

typedef struct {
    const char *flag; /* without the leading "--" */
    const char *env;  /* may be NULL: no environment variable */
    opt_type_t type;
    size_t offset; /* into rt_config_t */
    int64_t min, max;
    const char *dflt;           /* as typed by a user; NULL: no default */
    const char *const *choices; /* T_ENUM, NULL-terminated, index = C enum */
    unsigned checks;            /* C_* */
    const char *metavar;        /* NULL: derived from the type */
    const char *help;
} opt_t;

/*
 * The row macros check at compile time that the field has the C type its
 * option type stores into: _Generic has no default branch, so a mismatch
 * (say, a duration row pointing at an int) does not compile. The _Generic
 * sits inside sizeof, so nothing is evaluated and the offset stays a constant.
 */
#define FIELD(field, T)                                                                            \
    (offsetof(rt_config_t, field) + 0 * sizeof(_Generic(((rt_config_t *)0)->field, T : 1)))

#define OPT_STRING(flag, env, field, dflt, metavar, help)                                          \
    {                                                                                              \
        flag, env, T_STRING, FIELD(field, char *), 0, 0, dflt, NULL, 0, metavar, help              \
    }
#define OPT_LIST(flag, env, field, dflt, checks, help)                                             \
    {                                                                                              \
        flag, env, T_LIST, FIELD(field, char *), 0, 0, dflt, NULL, checks, NULL, help              \
    }
#define OPT_INT(flag, env, field, min, max, dflt, checks, help)                                    \
    {                                                                                              \
        flag, env, T_INT, FIELD(field, int64_t), min, max, dflt, NULL, checks, NULL, help          \
    }
#define OPT_DURATION(flag, env, field, min, max, dflt, help)                                       \
    {                                                                                              \
        flag, env, T_DURATION, FIELD(field, int64_t), min, max, dflt, NULL, 0, NULL, help          \
    }
#define OPT_SIZE(flag, env, field, min, max, dflt, help)                                           \
    {                                                                                              \
        flag, env, T_SIZE, FIELD(field, int64_t), min, max, dflt, NULL, 0, NULL, help              \
    }
#define OPT_ENUM(flag, env, field, choices, dflt, help)                                            \
    {                                                                                              \
        flag, env, T_ENUM, FIELD(field, int), 0, 0, dflt, choices, 0, NULL, help                   \
    }
#define OPT_BOOL(flag, env, field, dflt, help)                                                     \
    {                                                                                              \
        flag, env, T_BOOL, FIELD(field, int), 0, 1, dflt, NULL, 0, NULL, help                      \
    }

#define MS INT64_C(1)
#define SEC (1000 * MS)
#define MINUTE (60 * SEC)
#define HOUR (60 * MINUTE)
#define DAY (24 * HOUR)

/* The position of a choice is the value of the C enum it names. */
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const tail_formats[] = {"json", "text", NULL};
static const char *const etl_modes[] = {"event", "polling", "hybrid", NULL};
_Static_assert(RT_LOG_DEBUG == 0 && RT_LOG_INFO == 1 && RT_LOG_WARN == 2 && RT_LOG_ERROR == 3,
               "log_levels[] follows rt_log_level_t");
_Static_assert(RT_LOG_TEXT == 0 && RT_LOG_JSON == 1, "log_formats[] follows rt_log_format_t");
_Static_assert(RT_TAIL_JSON == 0 && RT_TAIL_TEXT == 1, "tail_formats[] follows rt_tail_format_t");
_Static_assert(RT_ETL_MODE_EVENT == 0 && RT_ETL_MODE_POLLING == 1 && RT_ETL_MODE_HYBRID == 2,
               "etl_modes[] follows rt_etl_mode_t");

static const opt_t opts[] = {
    OPT_STRING("database-url", "DATABASE_URL", database_url, NULL, "URL",
               "PostgreSQL connection URL or conninfo string"),
    OPT_LIST("channels", "RTBRIDGE_CHANNELS", channels, "intent_changed,audit_log_created", C_IDENT,
             "NOTIFY channels the listener LISTENs on"),
    OPT_ENUM("log-level", "RTBRIDGE_LOG_LEVEL", log_level, log_levels, "info",
             "least severe level that is logged"),
    OPT_ENUM("log-format", "RTBRIDGE_LOG_FORMAT", log_format, log_formats, "text",
             "text for people, json lines for containers"),
    OPT_INT("bus-ring-size", "RTBRIDGE_BUS_RING_SIZE", bus_ring_size, 16, 16777216, "65536",
            C_POW2, "capacity of each consumer's ring (events)"),
    OPT_DURATION("reconnect-min", "RTBRIDGE_RECONNECT_MIN", reconnect_min_ms, 10 * MS, 60 * SEC,
                 "100ms", "first listener reconnect delay (doubles, with jitter)"),
    OPT_DURATION("reconnect-max", "RTBRIDGE_RECONNECT_MAX", reconnect_max_ms, 100 * MS, 10 * MINUTE,
                 "30s", "longest listener reconnect delay"),
    OPT_DURATION("journal-retention", "RTBRIDGE_JOURNAL_RETENTION", journal_retention_ms, MINUTE,
                 365 * DAY, "24h",
                 "rt_journal rows older than this are pruned; resume cannot reach further back"),
    OPT_ENUM("format", "RTBRIDGE_TAIL_FORMAT", tail_format, tail_formats, "json",
             "tail: one JSON message per line (the WebSocket message), or a short text line"),
    OPT_STRING("listen", "RTBRIDGE_LISTEN", listen, "0.0.0.0:8080", "HOST:PORT",
               "address of the HTTP/WebSocket/SSE server (IPv4 or [IPv6])"),
    OPT_INT("fanout-threads", "RTBRIDGE_FANOUT_THREADS", fanout_threads, 0, 64, "0", 0,
            "fan-out event loops, each with its own socket (SO_REUSEPORT); 0: one per CPU"),
    OPT_SIZE("ws-max-message", "RTBRIDGE_WS_MAX_MESSAGE", ws_max_message, 128, 16 << 20, "64k",
             "largest WebSocket message accepted from a client (bigger: close 1009)"),
    OPT_DURATION("ping-interval", "RTBRIDGE_PING_INTERVAL", ping_interval_ms, 100 * MS, HOUR,
                 "30s", "WebSocket ping period; a client that misses two pongs is closed"),
    OPT_DURATION("keepalive-interval", "RTBRIDGE_KEEPALIVE_INTERVAL", keepalive_interval_ms,
                 100 * MS, HOUR, "30s", "SSE comment line period, keeps proxies from timing out"),
    OPT_LIST("allowed-origins", "RTBRIDGE_ALLOWED_ORIGINS", allowed_origins, NULL, 0,
             "origins allowed for WebSocket and CORS (e.g. https://app.example); unset: all"),
    OPT_INT("replay-window", "RTBRIDGE_REPLAY_WINDOW", replay_window, 0, 16777216, "65536", 0,
            "events kept in memory for resume; older ones come from rt_journal"),
    OPT_SIZE("client-max-queued", "RTBRIDGE_CLIENT_MAX_QUEUED", client_max_queued, 4096,
             INT64_C(1) << 30, "1m", "bytes queued for one slow client before it is disconnected"),
    OPT_INT("max-conns", "RTBRIDGE_MAX_CONNS", max_conns, 1, 1000000, "19000", 0,
            "connections accepted in total (past it: 503)"),
    OPT_INT("max-conns-per-ip", "RTBRIDGE_MAX_CONNS_PER_IP", max_conns_per_ip, 0, 1000000, "10",
            0, "connections per client address (past it: 429); 0: unlimited"),
    OPT_STRING("auth-token", "RTBRIDGE_AUTH_TOKEN", auth_token, NULL, "TOKEN",
               "require this bearer token from clients (header, access_token, or WS auth message)"),
    OPT_STRING("jwt-secret", "RTBRIDGE_JWT_SECRET", jwt_secret, NULL, "SECRET",
               "require an HS256 JWT signed with this secret (exp is checked)"),
    OPT_DURATION("header-timeout", "RTBRIDGE_HEADER_TIMEOUT", header_timeout_ms, 100 * MS,
                 5 * MINUTE, "10s", "time a client has to send its request line and headers"),
    OPT_DURATION("shutdown-timeout", "RTBRIDGE_SHUTDOWN_TIMEOUT", shutdown_timeout_ms, 0,
                 5 * MINUTE, "10s", "on SIGTERM, how long to let queued writes drain"),
    OPT_INT("client-msg-rate", "RTBRIDGE_CLIENT_MSG_RATE", client_msg_rate, 1, 100000, "20", 0,
            "messages per second a WebSocket client may send (burst: the same); past it: close 1008"),
    OPT_BOOL("etl", "RTBRIDGE_ETL", etl, "on",
             "serve: load audit logs into audit_logs_ts (--etl=off: not in this instance)"),
    OPT_ENUM("etl-mode", "RTBRIDGE_ETL_MODE", etl_mode, etl_modes, "hybrid",
             "what wakes the ETL: audit_log events, a poll every --etl-poll-interval, or both"),
    OPT_INT("etl-batch-size", "RTBRIDGE_ETL_BATCH_SIZE", etl_batch_size, 1, 100000, "1000", 0,
            "audit logs per load transaction (one COPY)"),
    OPT_DURATION("etl-interval", "RTBRIDGE_ETL_INTERVAL", etl_interval_ms, 0, MINUTE, "200ms",
                 "longest wait from an audit_log event to its load while fewer than "
                 "--etl-batch-size are pending"),
    OPT_DURATION("etl-poll-interval", "RTBRIDGE_ETL_POLL_INTERVAL", etl_poll_interval_ms,
                 100 * MS, HOUR, "5s", "polling and hybrid modes: period of the journal check"),
    OPT_DURATION("etl-retention", "RTBRIDGE_ETL_RETENTION", etl_retention_ms, DAY, 3650 * DAY,
                 "90d", "daily partitions of audit_logs_ts wholly older than this are dropped"),
    OPT_BOOL("once", "RTBRIDGE_ETL_ONCE", etl_once, "off",
             "etl: load everything pending, print rows loaded and lag, and exit"),
    OPT_STRING("etl-source-url", "RTBRIDGE_ETL_SOURCE_URL", etl_source_url, NULL, "URL",
               "ETL: the database holding rt_journal (default: --database-url)"),
    OPT_STRING("etl-target-url", "RTBRIDGE_ETL_TARGET_URL", etl_target_url, NULL, "URL",
               "ETL: the database holding audit_logs_ts and the ETL cursor (default: "
               "--database-url)"),
    /* metrics aggregator and dashboard API */
    OPT_DURATION("metrics-reconcile-interval", "RTBRIDGE_METRICS_RECONCILE_INTERVAL",
                 metrics_reconcile_interval_ms, 100 * MS, DAY, "30s",
                 "how often the metrics re-read totals, statuses and buckets from the database"),
    OPT_DURATION("stats-interval", "RTBRIDGE_STATS_INTERVAL", stats_interval_ms, 100 * MS, HOUR,
                 "10s", "period of the stats_updated event (the dashboard overview numbers)"),

    /* alerts (lib/alerts.c, lib/notify.c) */
    OPT_STRING("alert-rules", "RTBRIDGE_ALERT_RULES", alert_rules, NULL, "PATH",
               "alert rules file (JSON, see ops/alert-rules.json); serve evaluates them, "
               "SIGHUP reloads"),
    OPT_DURATION("alert-query-timeout", "RTBRIDGE_ALERT_QUERY_TIMEOUT", alert_query_timeout_ms,
                 10 * MS, 10 * MINUTE, "5s", "statement_timeout of one alert condition query"),
    OPT_STRING("alert-webhook-url", "ALERT_WEBHOOK_URL", alert_webhook_url, NULL, "URL",
               "alert channel webhook: POST a JSON body here (secret: never logged)"),
    OPT_STRING("slack-webhook-url", "SLACK_WEBHOOK_URL", slack_webhook_url, NULL, "URL",
               "alert channel slack: Slack incoming webhook URL (secret: never logged)"),
    OPT_STRING("smtp-url", "RTBRIDGE_SMTP_URL", smtp_url, NULL, "URL",
               "alert channel email: smtp://[user:pass@]host:port, smtps://, or "
               "smtp+starttls:// (secret: never logged)"),
    OPT_STRING("smtp-from", "RTBRIDGE_SMTP_FROM", smtp_from, NULL, "ADDRESS",
               "alert e-mail sender address"),
    OPT_LIST("smtp-to", "RTBRIDGE_SMTP_TO", smtp_to, NULL, 0, "alert e-mail recipients"),
    OPT_DURATION("alert-notify-timeout", "RTBRIDGE_ALERT_NOTIFY_TIMEOUT", alert_notify_timeout_ms,
                 100 * MS, 5 * MINUTE, "10s", "time one notification attempt may take"),
    OPT_INT("alert-notify-tries", "RTBRIDGE_ALERT_NOTIFY_TRIES", alert_notify_tries, 1, 10, "3", 0,
            "attempts per notification (a failed one is retried with doubling backoff)"),
    OPT_DURATION("alert-notify-backoff", "RTBRIDGE_ALERT_NOTIFY_BACKOFF", alert_notify_backoff_ms,
                 10 * MS, 10 * MINUTE, "1s", "delay before the first notification retry"),
    /* dashboard page (lib/static.c) */
    OPT_STRING("web-root", "RTBRIDGE_WEB_ROOT", web_root, NULL, "DIR",
               "serve the dashboard's files (/ and /static/) from DIR instead of the embedded "
               "copies, for development"),
};

#define NOPTS (sizeof opts / sizeof opts[0])

/* Where an option's current value came from, to name it the way the user
 * wrote it in errors that involve two options. */
enum { SRC_DEFAULT = 0, SRC_ENV, SRC_FLAG };

/* PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes, and pg_notify()
 * rejects longer channel names, so a longer name would never match. */
#define IDENT_MAX 63

/* Enough for "--" plus any flag name in the table. */
#define NAME_MAX_LEN 64

typedef struct {
    const char *suffix;
    int64_t mult;
} unit_t;

/* Largest first: formatting picks the first unit that divides the value. */
static const unit_t duration_units[] = {
    {"d", DAY}, {"h", HOUR}, {"m", MINUTE}, {"s", SEC}, {"ms", MS}, {"", MS},
};
static const unit_t size_units[] = {
    {"G", INT64_C(1) << 30},
    {"g", INT64_C(1) << 30},
    {"M", INT64_C(1) << 20},
    {"m", INT64_C(1) << 20},
    {"K", INT64_C(1) << 10},
    {"k", INT64_C(1) << 10},
    {"", 1},
};
#define NUNITS(a) (sizeof(a) / sizeof((a)[0]))

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Copies a user-supplied string for quoting in an error: control characters
 * become '?' so the message stays one line, and long values are cut. */
static const char *quote(char *buf, size_t len, const char *s, size_t n)
{
    size_t keep = len - 4; /* room for "..." and the NUL */
    size_t i;
    for (i = 0; i < n && i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (i < n) memcpy(buf + i, "...", 3), i += 3;
    buf[i] = '\0';
    return buf;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) abort(); /* small internal allocation: out of memory is fatal */
    return p;
}

const char *rt_config_getenv(const char *name)
{
    return getenv(name);
}

/* ---- value syntaxes -------------------------------------------------------- */

/* Unsigned decimal digits at s, value to *out, end of digits to *end. strtoll
 * alone would also take leading blanks, a sign, or (in base 0) hex, so the
 * first character is checked here; strtoll then finds the end and overflow. */
static int parse_digits(const char *s, int64_t *out, const char **end)
{
    if (*s < '0' || *s > '9') return -EINVAL;
    char *e;
    errno = 0;
    long long v = strtoll(s, &e, 10);
    if (errno == ERANGE) return -EINVAL;
    *out = (int64_t)v;
    *end = e;
    return 0;
}

int rt_config__parse_int(const char *s, int64_t *out)
{
    int neg = s[0] == '-';
    const char *end;
    int64_t v;
    if (parse_digits(s + neg, &v, &end) != 0 || *end != '\0') return -EINVAL;
    *out = neg ? -v : v;
    return 0;
}

/* Digits followed by exactly one of the units' suffixes (case-sensitive). */
static int parse_scaled(const char *s, const unit_t *units, size_t nunits, int64_t *out)
{
    const char *end;
    int64_t v;
    if (parse_digits(s, &v, &end) != 0) return -EINVAL;
    for (size_t i = 0; i < nunits; i++) {
        if (strcmp(end, units[i].suffix) != 0) continue;
        if (v > INT64_MAX / units[i].mult) return -EINVAL;
        *out = v * units[i].mult;
        return 0;
    }
    return -EINVAL;
}

int rt_config__parse_duration(const char *s, int64_t *out)
{
    return parse_scaled(s, duration_units, NUNITS(duration_units), out);
}

int rt_config__parse_size(const char *s, int64_t *out)
{
    return parse_scaled(s, size_units, NUNITS(size_units), out);
}

int rt_config__parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
    }
    return -EINVAL;
}

static int list_valid(const char *s, unsigned checks)
{
    for (;;) {
        size_t n = strcspn(s, ",");
        if (n == 0) return 0;
        if (checks & C_IDENT) {
            if (n > IDENT_MAX || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != n) return 0;
        }
        if (s[n] == '\0') return 1;
        s += n + 1;
    }
}

static void fmt_scaled(char *buf, size_t len, int64_t v, const unit_t *units, size_t nunits)
{
    for (size_t i = 0; i < nunits; i++) {
        if (v != 0 && v % units[i].mult == 0) {
            snprintf(buf, len, "%lld%s", (long long)(v / units[i].mult), units[i].suffix);
            return;
        }
    }
    snprintf(buf, len, "%lld", (long long)v);
}

/* Sizes are shown with the uppercase suffixes only. */
static void fmt_size(char *buf, size_t len, int64_t v)
{
    static const unit_t shown[] = {
        {"G", INT64_C(1) << 30}, {"M", INT64_C(1) << 20}, {"K", INT64_C(1) << 10}, {"", 1}};
    fmt_scaled(buf, len, v, shown, NUNITS(shown));
}

static void fmt_bound(const opt_t *o, char *buf, size_t len, int64_t v)
{
    if (o->type == T_DURATION)
        fmt_scaled(buf, len, v, duration_units, NUNITS(duration_units));
    else if (o->type == T_SIZE)
        fmt_size(buf, len, v);
    else
        snprintf(buf, len, "%lld", (long long)v);
}

static void join_choices(char *buf, size_t len, const char *const *choices, const char *sep)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; choices[i] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? sep : "", choices[i]);
}

/* The "expected ..." half of an invalid-value message. */
static void describe(const opt_t *o, char *buf, size_t len)
{
    char lo[32], hi[32];
    fmt_bound(o, lo, sizeof lo, o->min);
    fmt_bound(o, hi, sizeof hi, o->max);
    switch (o->type) {
    case T_STRING:
        snprintf(buf, len, "expected a non-empty string");
        break;
    case T_LIST:
        if (o->checks & C_IDENT)
            snprintf(
                buf, len,
                "expected comma-separated names made of a-z, 0-9 and _ (at most %d bytes each)",
                IDENT_MAX);
        else
            snprintf(buf, len, "expected comma-separated non-empty elements");
        break;
    case T_INT:
        snprintf(buf, len, "expected %s between %s and %s",
                 (o->checks & C_POW2) ? "a power of two" : "an integer", lo, hi);
        break;
    case T_DURATION:
        snprintf(buf, len,
                 "expected a duration between %s and %s (a number with ms, s, m, h or d; "
                 "no unit means ms)",
                 lo, hi);
        break;
    case T_SIZE:
        snprintf(buf, len,
                 "expected a size between %s and %s (bytes, or a number with K, M or G for "
                 "powers of 1024)",
                 lo, hi);
        break;
    case T_ENUM: {
        int n = snprintf(buf, len, "expected one of ");
        if (n >= 0 && (size_t)n < len) join_choices(buf + n, len - (size_t)n, o->choices, "|");
        break;
    }
    case T_BOOL:
        snprintf(buf, len, "expected one of true|false|yes|no|on|off|1|0");
        break;
    }
}

/* ---- applying one value ---------------------------------------------------- */

/* Parses value for option o and stores it in cfg; name is how the user spelt
 * the option ("--flag" or the environment variable), for the error. */
static int apply(rt_config_t *cfg, const opt_t *o, const char *name, const char *value, char *err,
                 size_t errlen)
{
    void *field = (char *)cfg + o->offset;
    int64_t v = 0;
    int iv = 0, ok = 0;

    switch (o->type) {
    case T_STRING:
        ok = value[0] != '\0';
        break;
    case T_LIST:
        ok = list_valid(value, o->checks);
        break;
    case T_INT:
        ok = rt_config__parse_int(value, &v) == 0;
        break;
    case T_DURATION:
        ok = rt_config__parse_duration(value, &v) == 0;
        break;
    case T_SIZE:
        ok = rt_config__parse_size(value, &v) == 0;
        break;
    case T_ENUM:
        for (iv = 0; o->choices[iv]; iv++)
            if (strcmp(value, o->choices[iv]) == 0) break;
        ok = o->choices[iv] != NULL;
        break;
    case T_BOOL:
        ok = rt_config__parse_bool(value, &iv) == 0;
        break;
    }
    if (ok && (o->type == T_INT || o->type == T_DURATION || o->type == T_SIZE)) {
        ok = v >= o->min && v <= o->max;
        if ((o->checks & C_POW2) && (v <= 0 || (v & (v - 1)) != 0)) ok = 0;
    }
    if (!ok) {
        char q[80], expect[256];
        describe(o, expect, sizeof expect);
        return fail(err, errlen, "%s: invalid value '%s': %s", name,
                    quote(q, sizeof q, value, strlen(value)), expect);
    }

    switch (o->type) {
    case T_STRING:
    case T_LIST: {
        char **p = field;
        free(*p); /* a flag given twice: the last one wins */
        *p = xstrdup(value);
        break;
    }
    case T_INT:
    case T_DURATION:
    case T_SIZE:
        *(int64_t *)field = v;
        break;
    case T_ENUM:
    case T_BOOL:
        *(int *)field = iv;
        break;
    }
    return 0;
}

/* ---- the command line ------------------------------------------------------ */

static const opt_t *find(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].flag) == len && memcmp(opts[i].flag, name, len) == 0) return &opts[i];
    return NULL;
}

static int is_long_flag(const char *a)
{
    return a[0] == '-' && a[1] == '-';
}

/* Whether "--flag" without "=" takes the next argument as its value. Booleans
 * never do ("--flag" alone means true; "--flag=false" turns one off). A next
 * argument starting with "--" is not taken either: no valid value of any
 * option starts so, and the likelier story is a forgotten value, which should
 * be reported as such instead of swallowing the next flag. */
static int takes_next(const opt_t *o, int i, int argc, char **argv)
{
    return o->type != T_BOOL && i + 1 < argc && !is_long_flag(argv[i + 1]);
}

/* Help wins wherever it appears, so it is found before anything else is
 * parsed; the scan skips values so "--database-url -h" is not a request for
 * help. */
static int wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) return 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return 1;
        if (is_long_flag(a) && !strchr(a, '=')) {
            const opt_t *o = find(a + 2, strlen(a + 2));
            if (o && takes_next(o, i, argc, argv)) i++;
        }
    }
    return 0;
}

static int parse_argv(rt_config_t *cfg, unsigned char *src, int argc, char **argv, char *err,
                      size_t errlen)
{
    char q[80];
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            /* No option takes positional arguments, so "--" only ends flags. */
            if (i + 1 < argc)
                return fail(err, errlen, "unexpected argument '%s'",
                            quote(q, sizeof q, argv[i + 1], strlen(argv[i + 1])));
            return 0;
        }
        if (a[0] != '-' || a[1] == '\0')
            return fail(err, errlen, "unexpected argument '%s'", quote(q, sizeof q, a, strlen(a)));
        if (!is_long_flag(a))
            return fail(err, errlen, "unknown flag '%s'", quote(q, sizeof q, a, strlen(a)));

        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt_t *o = find(name, len);
        if (!o) {
            /* Only the name is echoed: the value may be a secret. */
            if (len == 4 && memcmp(name, "help", 4) == 0)
                return fail(err, errlen, "--help: takes no value");
            return fail(err, errlen, "unknown flag '--%s'", quote(q, sizeof q, name, len));
        }

        char flag[NAME_MAX_LEN];
        snprintf(flag, sizeof flag, "--%s", o->flag);
        const char *value;
        if (eq)
            value = eq + 1;
        else if (o->type == T_BOOL)
            value = "true";
        else if (takes_next(o, i, argc, argv))
            value = argv[++i];
        else
            return fail(err, errlen, "%s: missing value", flag);

        int rc = apply(cfg, o, flag, value, err, errlen);
        if (rc != 0) return rc;
        src[o - opts] = SRC_FLAG;
    }
    return 0;
}

/* ---- rules that involve more than one option ------------------------------- */

static size_t index_of(const char *flag)
{
    const opt_t *o = find(flag, strlen(flag));
    if (!o) abort(); /* a rule names an option the table does not have */
    return (size_t)(o - opts);
}

static void spelt(const opt_t *o, unsigned char src, char *buf, size_t len)
{
    if (src == SRC_ENV)
        snprintf(buf, len, "%s", o->env);
    else
        snprintf(buf, len, "--%s", o->flag);
}

/* lo's value must not exceed hi's; both are int64_t options. */
static int check_order(const rt_config_t *cfg, const unsigned char *src, const char *lo_flag,
                       const char *hi_flag, char *err, size_t errlen)
{
    size_t lo = index_of(lo_flag), hi = index_of(hi_flag);
    int64_t lo_v = *(const int64_t *)((const char *)cfg + opts[lo].offset);
    int64_t hi_v = *(const int64_t *)((const char *)cfg + opts[hi].offset);
    if (hi_v >= lo_v) return 0;

    char lo_name[NAME_MAX_LEN], hi_name[NAME_MAX_LEN], lo_s[32], hi_s[32];
    spelt(&opts[lo], src[lo], lo_name, sizeof lo_name);
    spelt(&opts[hi], src[hi], hi_name, sizeof hi_name);
    fmt_bound(&opts[lo], lo_s, sizeof lo_s, lo_v);
    fmt_bound(&opts[hi], hi_s, sizeof hi_s, hi_v);
    return fail(err, errlen, "%s (%s) must not be less than %s (%s)", hi_name, hi_s, lo_name, lo_s);
}

static int check_rules(const rt_config_t *cfg, const unsigned char *src, char *err, size_t errlen)
{
    return check_order(cfg, src, "reconnect-min", "reconnect-max", err, errlen);
}

/* ---- public ---------------------------------------------------------------- */

int rt_config_parse(rt_config_t *cfg, int argc, char **argv, const char *(*getenv_fn)(const char *),
                    char *err, size_t errlen)
{
    unsigned char src[NOPTS] = {SRC_DEFAULT};
    int rc;

    memset(cfg, 0, sizeof *cfg);
    if (errlen > 0) err[0] = '\0';
    if (!getenv_fn) getenv_fn = rt_config_getenv;

    for (size_t i = 0; i < NOPTS; i++) {
        if (!opts[i].dflt) continue;
        /* A default that does not parse is a bug in the table, not user error. */
        if (apply(cfg, &opts[i], opts[i].flag, opts[i].dflt, NULL, 0) != 0) abort();
    }

    if (wants_help(argc, argv)) return 1;

    for (size_t i = 0; i < NOPTS; i++) {
        if (!opts[i].env) continue;
        const char *v = getenv_fn(opts[i].env);
        if (!v || !v[0]) continue; /* empty counts as unset, as in ${VAR:-default} */
        rc = apply(cfg, &opts[i], opts[i].env, v, err, errlen);
        if (rc != 0) goto fail;
        src[i] = SRC_ENV;
    }

    rc = parse_argv(cfg, src, argc, argv, err, errlen);
    if (rc != 0) goto fail;

    rc = check_rules(cfg, src, err, errlen);
    if (rc != 0) goto fail;
    return 0;

fail:
    rt_config_free(cfg);
    return rc;
}

void rt_config_free(rt_config_t *cfg)
{
    for (size_t i = 0; i < NOPTS; i++) {
        if (opts[i].type != T_STRING && opts[i].type != T_LIST) continue;
        char **p = (char **)((char *)cfg + opts[i].offset);
        free(*p);
        *p = NULL;
    }
}

/* ---- help ------------------------------------------------------------------ */

static void metavar(const opt_t *o, char *buf, size_t len)
{
    static const char *const names[] = {
        [T_STRING] = "STRING", [T_LIST] = "LIST", [T_INT] = "N",     [T_DURATION] = "DURATION",
        [T_SIZE] = "SIZE",     [T_ENUM] = "",     [T_BOOL] = "BOOL",
    };
    if (o->metavar)
        snprintf(buf, len, "%s", o->metavar);
    else if (o->type == T_ENUM)
        join_choices(buf, len, o->choices, "|");
    else
        snprintf(buf, len, "%s", names[o->type]);
}

/* "--flag METAVAR", or "--flag[=BOOL]" for booleans, which take no separate
 * value. */
static void usage(const opt_t *o, char *buf, size_t len)
{
    char mv[128];
    metavar(o, mv, sizeof mv);
    snprintf(buf, len, o->type == T_BOOL ? "--%s[=%s]" : "--%s %s", o->flag, mv);
}

/* "range 10ms..1m", "range 1024..16777216, power of two", or "". */
static void range(const opt_t *o, char *buf, size_t len)
{
    char lo[32], hi[32];
    buf[0] = '\0';
    if (o->type != T_INT && o->type != T_DURATION && o->type != T_SIZE) return;
    fmt_bound(o, lo, sizeof lo, o->min);
    fmt_bound(o, hi, sizeof hi, o->max);
    snprintf(buf, len, "range %s..%s%s", lo, hi, (o->checks & C_POW2) ? ", power of two" : "");
}

#define HELP_FLAG "-h, --help"
#define HELP_TEXT "show this help and exit"

static void print_text(FILE *out)
{
    char u[160], r[96];
    int width = (int)strlen(HELP_FLAG);
    for (size_t i = 0; i < NOPTS; i++) {
        usage(&opts[i], u, sizeof u);
        if ((int)strlen(u) > width) width = (int)strlen(u);
    }
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &opts[i];
        const char *sep = "";
        usage(o, u, sizeof u);
        range(o, r, sizeof r);
        fprintf(out, "  %-*s  %s [", width, u, o->help);
        if (o->env) fprintf(out, "env %s", o->env), sep = ", ";
        if (o->dflt) fprintf(out, "%sdefault %s", sep, o->dflt), sep = ", ";
        if (r[0]) fprintf(out, "%s%s", sep, r);
        fputs("]\n", out);
    }
    fprintf(out, "  %-*s  %s\n", width, HELP_FLAG, HELP_TEXT);
}

/* A table cell: '|' would end the cell, even inside a code span, so it is
 * escaped; code != 0 wraps the text in backticks. */
static void md_cell(FILE *out, const char *s, int code)
{
    int tick = code && s[0];
    fputs(tick ? " `" : " ", out);
    for (; *s; s++) {
        if (*s == '|') fputc('\\', out);
        fputc(*s, out);
    }
    fputs(tick ? "` |" : " |", out);
}

static void print_markdown(FILE *out)
{
    char u[160], r[96];
    fputs("| flag | env | default | meaning |\n", out);
    fputs("|------|-----|---------|---------|\n", out);
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &opts[i];
        usage(o, u, sizeof u);
        range(o, r, sizeof r);
        fputs("|", out);
        md_cell(out, u, 1);
        md_cell(out, o->env ? o->env : "", 1);
        md_cell(out, o->dflt ? o->dflt : "", 1);
        /* The meaning cell: help, then the range, so the README states the
         * bounds the parser enforces. */
        char meaning[512];
        snprintf(meaning, sizeof meaning, "%s%s%s", o->help, r[0] ? "; " : "", r);
        md_cell(out, meaning, 0);
        fputs("\n", out);
    }
    fputs("| `--help`, `-h` | | | " HELP_TEXT " |\n", out);
}

void rt_config_print_help(FILE *out, int markdown)
{
    if (markdown)
        print_markdown(out);
    else
        print_text(out);
}
