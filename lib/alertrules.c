/*
 * Loading the alert rules file. Every rule is checked field by field and
 * every problem is recorded (not just the first), so an operator fixes a file
 * in one pass; a file with any problem yields nothing, so a bad reload can
 * never half-replace the running rules.
 */
#include "alertrules.h"

#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE (1 << 20)
#define NAME_MAX_BYTES 100
#define MIN_INTERVAL_MS 100
#define MAX_DURATION_MS (INT64_C(366) * 24 * 3600 * 1000)

static const char *const sev_names[] = {"info", "warning", "error", "critical", NULL};
static const char *const op_names[] = {">", ">=", "<", "<=", "==", "!=", NULL};
static const char *const ch_names[] = {"log", "webhook", "slack", "email", NULL};

const char *rt_alert_sev_name(rt_alert_sev_t s)
{
    return (unsigned)s < 4 ? sev_names[s] : "?";
}

const char *rt_alert_op_name(rt_alert_op_t op)
{
    return (unsigned)op < 6 ? op_names[op] : "?";
}

const char *rt_alert_channel_name(unsigned ch)
{
    for (unsigned i = 0; ch_names[i]; i++)
        if (ch == (1u << i)) return ch_names[i];
    return "?";
}

int rt_alert_compare(rt_alert_op_t op, double v, double t)
{
    switch (op) {
    case RT_OP_GT:
        return v > t;
    case RT_OP_GE:
        return v >= t;
    case RT_OP_LT:
        return v < t;
    case RT_OP_LE:
        return v <= t;
    case RT_OP_EQ:
        return v == t;
    case RT_OP_NE:
        return v != t;
    }
    return 0;
}

/* ---- problems ------------------------------------------------------------------ */

static void add_problem(rt_alert_problems_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add_problem(rt_alert_problems_t *p, const char *fmt, ...)
{
    if (p->n >= RT_ALERT_MAX_PROBLEMS) {
        p->dropped++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) abort();
    va_end(ap);
    for (char *c = s; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
    p->msg[p->n++] = s;
}

void rt_alert_problems_free(rt_alert_problems_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->msg[i]);
    p->n = 0;
    p->dropped = 0;
}

void rt_alert_problems_print(const rt_alert_problems_t *p, const char *prefix, FILE *f)
{
    for (size_t i = 0; i < p->n; i++)
        fprintf(f, "%s%s\n", prefix, p->msg[i]);
    if (p->dropped) fprintf(f, "%s... and %zu more problems\n", prefix, p->dropped);
}

/* ---- one rule ------------------------------------------------------------------ */

typedef struct {
    rt_alert_problems_t *probs;
    const char *origin;
    char who[160]; /* "rule 'name'" or "rule #3" */
    int bad;
} ctx_t;

#define PROBLEM(c, field, ...)                                                                     \
    do {                                                                                           \
        char m_[512];                                                                              \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                      \
        add_problem((c)->probs, "%s: %s: field '%s': %s", (c)->origin, (c)->who, field, m_);       \
        (c)->bad = 1;                                                                              \
    } while (0)

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) abort();
    return p;
}

static int pick(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

static void join(char *buf, size_t len, const char *const *names)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", names[i]);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= NAME_MAX_BYTES &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* A duration: a number of seconds, or a string with a unit. */
static int duration(ctx_t *c, json_t *v, const char *field, int64_t min, int64_t dflt, int64_t *out)
{
    *out = dflt;
    if (!v) return 0;
    int64_t ms = -1;
    if (json_is_number(v)) {
        double s = json_number_value(v);
        if (isfinite(s) && s >= 0 && s * 1000.0 <= (double)MAX_DURATION_MS)
            ms = (int64_t)llround(s * 1000.0);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = strlen(s);
        /* The config parser takes a bare number as milliseconds; here a bare
         * number is seconds, so a string must say its unit. */
        if (n > 0 && s[n - 1] >= 'a' && s[n - 1] <= 'z' && rt_config__parse_duration(s, &ms) != 0)
            ms = -1;
        else if (n == 0 || s[n - 1] < 'a' || s[n - 1] > 'z')
            ms = -1;
    }
    if (ms < 0 || ms > MAX_DURATION_MS) {
        PROBLEM(c, field,
                "expected a duration (seconds as a number, or a string such as \"500ms\", "
                "\"30s\", \"5m\", \"1h\")");
        return -1;
    }
    if (ms < min) {
        PROBLEM(c, field, "must be at least %lld ms", (long long)min);
        return -1;
    }
    *out = ms;
    return 0;
}

static void parse_condition(ctx_t *c, json_t *v, const rt_alert_env_t *env, rt_alert_rule_t *r)
{
    if (!v) {
        PROBLEM(c, "condition", "missing (want {\"sql\": \"...\"} or {\"metric\": \"...\"})");
        return;
    }
    if (!json_is_object(v)) {
        PROBLEM(c, "condition", "expected an object {\"sql\": \"...\"} or {\"metric\": \"...\"}");
        return;
    }
    const char *key;
    json_t *val;
    int kinds = 0;
    json_object_foreach(v, key, val)
    {
        char f[96];
        snprintf(f, sizeof f, "condition.%.64s", key);
        if (strcmp(key, "sql") == 0) {
            kinds++;
            const char *s = json_string_value(val);
            if (!s || strspn(s, " \t\r\n") == strlen(s))
                PROBLEM(c, f, "expected a non-empty SQL query");
            else
                r->sql = xstrdup(s);
        } else if (strcmp(key, "metric") == 0) {
            kinds++;
            const char *s = json_string_value(val);
            if (!s) {
                PROBLEM(c, f, "expected a metric name");
            } else if (env->metric_names && !env->metric_names[0]) {
                PROBLEM(c, f, "metric '%.64s': no metrics source in this process", s);
            } else if (env->metric_names && pick((const char *const *)env->metric_names, s) < 0) {
                char all[400];
                join(all, sizeof all, env->metric_names);
                PROBLEM(c, f, "unknown metric '%.64s' (known: %s)", s, all);
            } else {
                r->metric = xstrdup(s);
            }
        } else {
            PROBLEM(c, f, "unknown field (a condition has sql or metric)");
        }
    }
    if (kinds == 0) PROBLEM(c, "condition", "needs sql or metric");
    if (kinds > 1) PROBLEM(c, "condition", "has both sql and metric; give one");
}

static void parse_channels(ctx_t *c, json_t *v, const rt_alert_env_t *env, rt_alert_rule_t *r)
{
    static const char *const need[] = {"", "--alert-webhook-url", "--slack-webhook-url",
                                       "--smtp-url, --smtp-from and --smtp-to"};
    r->channels = RT_CH_LOG;
    if (!v) return;
    if (!json_is_array(v)) {
        PROBLEM(c, "channels", "expected a list of log, webhook, slack, email");
        return;
    }
    r->channels = 0;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        const char *s = json_string_value(e);
        int k = s ? pick(ch_names, s) : -1;
        if (k < 0) {
            PROBLEM(c, "channels", "unknown channel '%.64s' (expected log, webhook, slack, email)",
                    s ? s : "(not a string)");
            continue;
        }
        unsigned bit = 1u << k;
        if (!(env->channels_configured & bit) && bit != RT_CH_LOG)
            PROBLEM(c, "channels", "channel '%s' is not configured (set %s)", s, need[k]);
        r->channels |= bit;
    }
}

static void parse_labels(ctx_t *c, json_t *v, rt_alert_rule_t *r)
{
    if (!v) return;
    if (!json_is_object(v)) {
        PROBLEM(c, "labels", "expected an object of strings");
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val)
    {
        if (!json_is_string(val)) {
            PROBLEM(c, "labels", "label '%.64s' is not a string", key);
            return;
        }
    }
    r->labels_json = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    if (!r->labels_json) abort();
}

static const char *const known_fields[] = {"name",     "description", "severity", "condition",
                                           "operator", "threshold",   "for",      "interval",
                                           "cooldown", "channels",    "labels",   NULL};

static void rule_free(rt_alert_rule_t *r)
{
    free(r->name);
    free(r->description);
    free(r->sql);
    free(r->metric);
    free(r->labels_json);
}

static void parse_rule(ctx_t *c, json_t *o, size_t idx, const rt_alert_env_t *env,
                       rt_alert_rule_t *r)
{
    memset(r, 0, sizeof *r);
    snprintf(c->who, sizeof c->who, "rule #%zu", idx + 1);
    if (!json_is_object(o)) {
        add_problem(c->probs, "%s: %s: expected an object", c->origin, c->who);
        c->bad = 1;
        return;
    }
    json_t *name = json_object_get(o, "name");
    if (!name) {
        PROBLEM(c, "name", "missing");
    } else if (!json_is_string(name) || !valid_name(json_string_value(name))) {
        PROBLEM(c, "name", "expected 1..%d characters of A-Z a-z 0-9 _ . -", NAME_MAX_BYTES);
    } else {
        r->name = xstrdup(json_string_value(name));
        snprintf(c->who, sizeof c->who, "rule '%s'", r->name);
    }

    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        if (pick(known_fields, key) < 0) {
            char all[200];
            join(all, sizeof all, known_fields);
            PROBLEM(c, key, "unknown field (known: %s)", all);
        }
    }

    json_t *d = json_object_get(o, "description");
    if (d && !json_is_string(d)) PROBLEM(c, "description", "expected a string");
    r->description = xstrdup(json_is_string(d) ? json_string_value(d) : "");

    json_t *sev = json_object_get(o, "severity");
    int k = json_is_string(sev) ? pick(sev_names, json_string_value(sev)) : -1;
    if (!sev)
        PROBLEM(c, "severity", "missing (info, warning, error or critical)");
    else if (k < 0)
        PROBLEM(c, "severity", "invalid value '%.64s' (expected info, warning, error or critical)",
                json_is_string(sev) ? json_string_value(sev) : "(not a string)");
    else
        r->severity = (rt_alert_sev_t)k;

    parse_condition(c, json_object_get(o, "condition"), env, r);

    json_t *op = json_object_get(o, "operator");
    r->op = RT_OP_GT;
    if (op) {
        k = json_is_string(op) ? pick(op_names, json_string_value(op)) : -1;
        if (k < 0)
            PROBLEM(c, "operator", "invalid value '%.16s' (expected one of >, >=, <, <=, ==, !=)",
                    json_is_string(op) ? json_string_value(op) : "(not a string)");
        else
            r->op = (rt_alert_op_t)k;
    }

    json_t *th = json_object_get(o, "threshold");
    if (!th)
        PROBLEM(c, "threshold", "missing");
    else if (!json_is_number(th) || !isfinite(json_number_value(th)))
        PROBLEM(c, "threshold", "expected a number");
    else
        r->threshold = json_number_value(th);

    duration(c, json_object_get(o, "for"), "for", 0, 0, &r->for_ms);
    duration(c, json_object_get(o, "interval"), "interval", MIN_INTERVAL_MS, 60000,
             &r->interval_ms);
    duration(c, json_object_get(o, "cooldown"), "cooldown", 0, 300000, &r->cooldown_ms);
    parse_channels(c, json_object_get(o, "channels"), env, r);
    parse_labels(c, json_object_get(o, "labels"), r);
}

void rt_alert_rules_free(rt_alert_rules_t *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++)
        rule_free(&r->rules[i]);
    free(r->rules);
    free(r);
}

rt_alert_rules_t *rt_alert_rules_parse(const char *json, size_t len, const char *origin,
                                       const rt_alert_env_t *env, rt_alert_problems_t *probs)
{
    json_error_t jerr;
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        add_problem(probs, "%s: line %d, column %d: %s", origin, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    json_t *list = doc;
    if (json_is_object(doc)) {
        const char *key;
        json_t *val;
        int bad = 0;
        json_object_foreach(doc, key, val)
        {
            if (strcmp(key, "rules") != 0) {
                add_problem(probs, "%s: unknown top-level field '%.64s' (expected \"rules\")",
                            origin, key);
                bad = 1;
            }
        }
        list = json_object_get(doc, "rules");
        if (bad) list = NULL;
    }
    if (!json_is_array(list)) {
        if (list || !json_is_object(doc) || probs->n == 0)
            add_problem(probs, "%s: expected {\"rules\": [ ... ]}", origin);
        json_decref(doc);
        return NULL;
    }

    size_t n = json_array_size(list);
    rt_alert_rules_t *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->rules = calloc(n ? n : 1, sizeof *r->rules);
    if (!r->rules) abort();
    ctx_t c = {.probs = probs, .origin = origin};
    for (size_t i = 0; i < n; i++) {
        parse_rule(&c, json_array_get(list, i), i, env, &r->rules[i]);
        r->n = i + 1;
        if (!r->rules[i].name) continue;
        for (size_t j = 0; j < i; j++) {
            if (r->rules[j].name && strcmp(r->rules[j].name, r->rules[i].name) == 0) {
                PROBLEM(&c, "name", "duplicate name (rule #%zu has it too)", j + 1);
                break;
            }
        }
    }
    json_decref(doc);
    if (c.bad) {
        rt_alert_rules_free(r);
        return NULL;
    }
    return r;
}

rt_alert_rules_t *rt_alert_rules_load(const char *path, const rt_alert_env_t *env,
                                      rt_alert_problems_t *probs)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        add_problem(probs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_FILE + 1);
    if (!buf) abort();
    size_t n = fread(buf, 1, MAX_FILE + 1, f);
    int err = ferror(f);
    fclose(f);
    rt_alert_rules_t *r = NULL;
    if (err)
        add_problem(probs, "%s: read error", path);
    else if (n > MAX_FILE)
        add_problem(probs, "%s: larger than %d bytes", path, MAX_FILE);
    else
        r = rt_alert_rules_parse(buf, n, path, env, probs);
    free(buf);
    return r;
}

/* ---- SQL checks -------------------------------------------------------------------- */

static int numeric_oid(Oid t)
{
    /* int8, int2, int4, float4, float8, numeric (pg_type.dat). */
    return t == 20 || t == 21 || t == 23 || t == 700 || t == 701 || t == 1700;
}

static const char *server_message(PGconn *conn, const PGresult *res)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    return m ? m : PQerrorMessage(conn);
}

int rt_alert_rules_check_sql(const rt_alert_rules_t *r, PGconn *conn, rt_alert_problems_t *probs)
{
    int added = 0;
    for (size_t i = 0; i < r->n; i++) {
        const rt_alert_rule_t *rule = &r->rules[i];
        if (!rule->sql) continue;
        PQclear(PQexec(conn, "BEGIN READ ONLY"));
        PGresult *res = PQprepare(conn, "", rule->sql, 0, NULL);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
            add_problem(probs, "rule '%s': field 'condition.sql': does not parse: %s", rule->name,
                        server_message(conn, res));
            added++;
        } else {
            PGresult *d = PQdescribePrepared(conn, "");
            if (!d || PQresultStatus(d) != PGRES_COMMAND_OK) {
                add_problem(probs, "rule '%s': field 'condition.sql': %s", rule->name,
                            server_message(conn, d));
                added++;
            } else if (PQnfields(d) != 1) {
                add_problem(probs,
                            "rule '%s': field 'condition.sql': returns %d columns, want one number",
                            rule->name, PQnfields(d));
                added++;
            } else if (!numeric_oid(PQftype(d, 0))) {
                add_problem(probs,
                            "rule '%s': field 'condition.sql': column '%s' is not a number (type "
                            "oid %u)",
                            rule->name, PQfname(d, 0), (unsigned)PQftype(d, 0));
                added++;
            }
            PQclear(d);
        }
        PQclear(res);
        PQclear(PQexec(conn, "ROLLBACK"));
    }
    return added;
}
