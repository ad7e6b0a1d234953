/*
 * The alert evaluator (DESIGN §8, issue 7). One thread with its own libuv
 * loop evaluates each rule of the --alert-rules file on the rule's interval,
 * moves it through inactive → pending (while `for` has not elapsed) → firing
 * → resolved, notifies (lib/notify.h, curl multi on the same loop), records
 * history and state in rt_alert_events / rt_alert_state, and publishes
 * alert_firing / alert_resolved events on the bus.
 *
 * SQL. Conditions run on database connections of the evaluator's own, each
 * in a read-only transaction with statement_timeout = query timeout. libpq
 * blocks, so the database work runs as uv_queue_work jobs (the loop thread
 * never waits on SQL, so notifications and metric rules keep moving while a
 * query runs); results come back to the loop thread, which alone owns the
 * rules' states. There are two connections ("lanes"), one job at a time on
 * each: the main one holds the leader lock, writes the history and runs the
 * healthy rules; the other runs the rules whose last evaluation failed. A
 * rule whose query fails or times out is marked error, counted, and tried
 * again on its next interval on the second lane, so it never delays the
 * others (only its first timeout does, once).
 *
 * Metric rules ({"metric": NAME}) read values through the metric_value
 * function of the options (the lead wires rt_metrics_value); they run on
 * their interval and whenever rt_alerts_poke is called (after each metrics
 * snapshot), so a spike fires within a second.
 *
 * One evaluator per cluster: the connection holds a session advisory lock
 * while this instance leads; the others retry every leader_retry_ms and take
 * over when the leader's session ends. A new leader loads rt_alert_state
 * first, so a rule that was firing is not notified again before its cooldown.
 *
 * Threads: new/start/stop/free/reload from one controlling thread (main, or
 * a worker for reload: it blocks on file and database). rt_alerts_poke and
 * rt_alerts_exposition from any thread.
 */
#ifndef RT_ALERTS_H
#define RT_ALERTS_H

#include "alertrules.h"
#include "bus.h"
#include "config.h"
#include "notify.h"

#include <stdint.h>
#include <stdio.h>

typedef int (*rt_alert_metric_fn)(void *arg, const char *name, double *out);

typedef struct rt_alerts_opts {
    const char *conninfo;
    const char *rules_path;
    int64_t query_timeout_ms; /* statement_timeout of a condition; 0 = 5 s */
    int64_t leader_retry_ms;  /* how often a standby tries the lock; 0 = 1 s */
    int64_t reconnect_ms;     /* wait after a connection failure; 0 = 1 s */
    rt_notify_opts_t notify;
    rt_bus_t *bus; /* alert_* events go here; may be NULL */
    /* Metric rules: value lookup (0 and *out, or -1 when unknown/unavailable)
     * and the valid names (NULL-terminated). fn NULL: metric rules cannot
     * be loaded. */
    rt_alert_metric_fn metric_value;
    void *metric_arg;
    const char *const *metric_names;
} rt_alerts_opts_t;

typedef struct rt_alerts rt_alerts_t;

/* Fills opts from the configuration (bus and metrics left to the caller). */
void rt_alerts_opts_from_config(rt_alerts_opts_t *o, const rt_config_t *cfg);

/* The environment rules are validated against for these options. */
rt_alert_env_t rt_alerts_env(const rt_alerts_opts_t *o);

/* Loads path and checks its SQL on a fresh connection to conninfo (blocks).
 * Returns the rules, or NULL with every problem in probs. When the database
 * cannot be reached, lenient != 0 accepts the rules with their SQL unchecked
 * (logged; a bad query then shows as an evaluation error), lenient == 0
 * fails. */
rt_alert_rules_t *rt_alerts_load_checked(const char *path, const char *conninfo,
                                         const rt_alert_env_t *env, int lenient,
                                         rt_alert_problems_t *probs);

/* Runs one SQL condition on conn in a read-only transaction with the given
 * statement timeout. Returns 0 with *value (NAN for SQL NULL or no row), or
 * -1 with a one-line message in err. */
int rt_alerts_eval_sql(PGconn *conn, const char *sql, int64_t timeout_ms, double *value, char *err,
                       size_t errlen);

/* Loads and checks the rules file (problems are logged, one line each).
 * Returns NULL with errno EINVAL if it is invalid. A database that cannot be
 * reached does not stop it (the SQL is then checked by running it). */
rt_alerts_t *rt_alerts_new(const rt_alerts_opts_t *opts);
int rt_alerts_start(rt_alerts_t *a);
/* Stops the thread (a query in flight is cancelled; notifications in flight
 * are abandoned). Safe if never started. */
void rt_alerts_stop(rt_alerts_t *a);
void rt_alerts_free(rt_alerts_t *a);

/* Re-reads the rules file. On success the evaluator switches to the new rules
 * (states kept for rules whose name stays) and 0 is returned; on any problem
 * the old rules stay, the problems are logged, and -EINVAL is returned.
 * Blocks (file, database): not on a loop thread. */
int rt_alerts_reload(rt_alerts_t *a);

/* Makes metric rules re-evaluate promptly. Any thread, also while the
 * evaluator stops; takes only a short lock; does nothing before
 * rt_alerts_start or after rt_alerts_stop. */
void rt_alerts_poke(rt_alerts_t *a);
/* The same with the shape of a snapshot callback (rt_metrics_on_snapshot):
 * arg is the rt_alerts_t. */
void rt_alerts_poke_cb(void *arg);

/* Prometheus families: rule states, evaluations, errors, notifications and
 * failures per channel, leadership. Any thread. arg is the rt_alerts_t. */
void rt_alerts_exposition(void *arg, FILE *out);

/* For tests and logs: counters of the evaluator. */
typedef struct rt_alerts_counts {
    uint64_t evaluations;   /* rule evaluations (all rules) */
    uint64_t errors;        /* failed evaluations */
    uint64_t notifications; /* notifications decided (firing, reminders, resolved) */
    uint64_t delivered;     /* channel deliveries that succeeded (log included) */
    uint64_t firing;        /* rules firing now */
    uint64_t leader;        /* 1 while this instance leads */
    uint64_t rules;
} rt_alerts_counts_t;
void rt_alerts_counts(rt_alerts_t *a, rt_alerts_counts_t *out);

#endif
