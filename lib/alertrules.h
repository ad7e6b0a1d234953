/*
 * Alert rules: the --alert-rules file (JSON), parsed and validated.
 *
 * The file is {"rules": [RULE, ...]} (a bare array is accepted too). A rule:
 *
 *   name         unique, [A-Za-z0-9_.-], at most 100 bytes      (required)
 *   description  free text                                       (default "")
 *   severity     info | warning | error | critical               (required)
 *   condition    {"sql": "SELECT ..."} returning one number, or
 *                {"metric": NAME} naming a metrics value          (required)
 *   operator     > >= < <= == !=                                 (default ">")
 *   threshold    number                                          (required)
 *   for          how long the condition must hold before firing  (default 0)
 *   interval     evaluation period, at least 100ms               (default 60s)
 *   cooldown     least time between two notifications of a rule  (default 5m)
 *   channels     list of log | webhook | slack | email           (default ["log"])
 *   labels       object of string values                         (optional)
 *
 * Durations are a number of seconds or a string with a unit ("500ms", "30s",
 * "10m", "1h", "1d").
 *
 * Validation reports every problem it finds, each one line naming the rule
 * and the field, and a file with any problem yields no rules at all: the
 * caller keeps what it had. SQL conditions are checked separately, with
 * PREPARE on a database connection (rt_alert_rules_check_sql), because that
 * needs the database the rules will run against.
 *
 * Threads: a rules set is immutable once loaded and may be read from any
 * thread; each call here runs on the calling thread (check_sql blocks on
 * libpq).
 */
#ifndef RT_ALERTRULES_H
#define RT_ALERTRULES_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { RT_SEV_INFO = 0, RT_SEV_WARNING, RT_SEV_ERROR, RT_SEV_CRITICAL } rt_alert_sev_t;
typedef enum { RT_OP_GT = 0, RT_OP_GE, RT_OP_LT, RT_OP_LE, RT_OP_EQ, RT_OP_NE } rt_alert_op_t;

/* Notification channels, as a bit mask. */
enum {
    RT_CH_LOG = 1u << 0,
    RT_CH_WEBHOOK = 1u << 1,
    RT_CH_SLACK = 1u << 2,
    RT_CH_EMAIL = 1u << 3,
};
#define RT_CH_COUNT 4

typedef struct rt_alert_rule {
    char *name;
    char *description;
    rt_alert_sev_t severity;
    char *sql;    /* SQL condition, or NULL */
    char *metric; /* metric condition, or NULL */
    rt_alert_op_t op;
    double threshold;
    int64_t for_ms;
    int64_t interval_ms;
    int64_t cooldown_ms;
    unsigned channels; /* RT_CH_* */
    char *labels_json; /* compact JSON object, or NULL */
} rt_alert_rule_t;

typedef struct rt_alert_rules {
    rt_alert_rule_t *rules;
    size_t n;
} rt_alert_rules_t;

/* Problems found while loading, one line each (most RT_ALERT_MAX_PROBLEMS). */
#define RT_ALERT_MAX_PROBLEMS 64
typedef struct rt_alert_problems {
    char *msg[RT_ALERT_MAX_PROBLEMS];
    size_t n;
    size_t dropped; /* problems past the limit */
} rt_alert_problems_t;

void rt_alert_problems_free(rt_alert_problems_t *p);
/* Writes every problem, one per line, each prefixed by prefix (may be ""). */
void rt_alert_problems_print(const rt_alert_problems_t *p, const char *prefix, FILE *out);

/* What the rules may refer to. */
typedef struct rt_alert_env {
    /* Channels that have what they need (a URL, addresses); log always has.
     * A rule naming another channel is invalid. */
    unsigned channels_configured;
    /* Valid {"metric": NAME} names, NULL-terminated; NULL: any name is
     * accepted (e.g. `alerts check`, which has no metrics to read). */
    const char *const *metric_names;
} rt_alert_env_t;

/* Parses and validates a rules document. Returns the rules (free with
 * rt_alert_rules_free) or NULL with every problem appended to probs. origin
 * (a file name) prefixes parse errors. */
rt_alert_rules_t *rt_alert_rules_parse(const char *json, size_t len, const char *origin,
                                       const rt_alert_env_t *env, rt_alert_problems_t *probs);
/* Reads path (at most 1 MiB) and parses it. */
rt_alert_rules_t *rt_alert_rules_load(const char *path, const rt_alert_env_t *env,
                                      rt_alert_problems_t *probs);
void rt_alert_rules_free(rt_alert_rules_t *r);

/* Checks every SQL condition on conn with PREPARE (inside a read-only
 * transaction that is rolled back): it must parse, refer to what exists, and
 * return exactly one numeric column. Returns the number of problems added. */
int rt_alert_rules_check_sql(const rt_alert_rules_t *r, PGconn *conn, rt_alert_problems_t *probs);

/* Whether value op threshold holds. */
int rt_alert_compare(rt_alert_op_t op, double value, double threshold);

const char *rt_alert_sev_name(rt_alert_sev_t s);
const char *rt_alert_op_name(rt_alert_op_t op);
/* "log", "webhook", "slack", "email" for one RT_CH_* bit. */
const char *rt_alert_channel_name(unsigned ch);

#endif
