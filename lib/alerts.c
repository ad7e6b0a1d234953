/*
 * The alert evaluator: see alerts.h for the shape. The loop thread owns the
 * rules and their states; SQL runs in one uv_queue_work job at a time on the
 * evaluator's connection; a mutex guards only what other threads read (the
 * states for /metrics, a pending reload, the cancel handle).
 *
 * State machine of one rule, applied after each evaluation (now = wall clock):
 *
 *   condition false: firing → resolved (notify once, publish alert_resolved);
 *                    pending → inactive.
 *   condition true:  inactive/resolved → pending, or → firing when for = 0;
 *                    pending → firing once for has elapsed since it began;
 *                    firing → notify again once cooldown has elapsed since
 *                    the last notification.
 *   evaluation failed: the state stays; the rule is marked error until an
 *                    evaluation succeeds again.
 *
 * A NULL (or missing) value counts as "condition false": the spec's rates
 * are NULL over an empty window, and an empty window is not an alert.
 *
 * Every change of state and every notification is queued as a write (an
 * rt_alert_events row and the rt_alert_state upsert) and flushed by the next
 * database job, before it evaluates anything.
 */
#include "alerts.h"

#include "event.h"
#include "log.h"
#include "pgconn.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define COMP "alerts"
/* Session advisory lock held by the leading evaluator (ETL's key + 9). */
#define LOCK_KEY "8247325060988499061"
#define CONNECT_TIMEOUT_MS 10000
#define MAX_WRITES 10000

typedef enum { ST_INACTIVE = 0, ST_PENDING, ST_FIRING, ST_RESOLVED } st_t;
static const char *const st_names[] = {"inactive", "pending", "firing", "resolved"};

typedef struct rstate {
    st_t st;
    int error;
    double value;             /* last value, NAN when none */
    int64_t since_ms;         /* wall clock: entered the current state */
    int64_t last_notified_ms; /* wall clock; 0: never */
    uint64_t due_ms;          /* monotonic: next evaluation */
    int queued;               /* in the database job */
    uint64_t evals, errors;   /* guarded by mu (read by /metrics) */
} rstate_t;

/* A history row and/or the state upsert, queued for the next job. */
typedef struct write {
    struct write *next;
    char *rule;
    const char *event; /* rt_alert_events.state, or NULL: state row only */
    const char *state; /* rt_alert_state.state */
    const char *severity;
    double value, threshold;
    int notified;
    char *message;
    int64_t since_ms, last_notified_ms;
} write_t;

typedef struct loaded {
    char *rule;
    st_t st;
    double value;
    int64_t since_ms, last_notified_ms;
} loaded_t;

typedef struct item {
    size_t idx;
    char *sql;
    int ok;
    double value;
    char err[256];
} item_t;

typedef struct job {
    uv_work_t w;
    struct rt_alerts *a;
    int lane;
    item_t *items;
    size_t n;
    write_t *writes;
    int writes_done;   /* committed: never to be written again */
    int leader;        /* after the job */
    int became_leader; /* took the lock in this job: loaded holds the states */
    int conn_failed;
    loaded_t *loaded;
    size_t nloaded;
} job_t;

/* A database connection with its own job slot. Lane 0 holds the lock,
 * writes the history and evaluates the healthy SQL rules; lane 1 evaluates
 * the rules whose last evaluation failed, so a rule that keeps timing out
 * never delays the others. */
enum { LANE_MAIN = 0, LANE_SICK, NLANES };

typedef struct lane {
    /* loop thread */
    struct job *job;  /* in flight */
    uint64_t next_ms; /* monotonic: earliest next job (standby, reconnect) */
    /* the lane's work (one job at a time) */
    PGconn *conn;
    unsigned connect_failures; /* in a row; logged on the first and every 60th */
    /* guarded by mu: the stop path cancels a query in flight */
    PGcancel *cancel;
    atomic_int in_query;
} lane_t;

struct rt_alerts {
    rt_alerts_opts_t o;
    char *conninfo, *rules_path;
    rt_alert_env_t env;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t timer;
    rt_notifier_t *notifier;
    pthread_t thread;
    atomic_int started; /* read by rt_alerts_poke from any thread */
    atomic_int stopping;
    atomic_int poke;

    /* loop thread */
    rt_alert_rules_t *rules; /* replaced under mu */
    rstate_t *st;            /* replaced under mu */
    int leader;
    lane_t lane[NLANES];
    int closing;
    int swap_wanted; /* a reload is waiting: start no job until it is done */
    write_t *writes, **writes_tail;
    size_t nwrites;
    uint64_t writes_dropped;
    atomic_uint_fast64_t notifications; /* notify() calls: read by counts */
    atomic_int leader_pub;              /* a->leader, for other threads */

    /* lane 0's work */
    int leader_db;
    int writes_failing; /* logged when it starts and when it ends */

    pthread_mutex_t mu;
    rt_alert_rules_t *pending_rules; /* reload waiting for the loop */
};

static uint64_t mono_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

static int64_t wall_ms(void)
{
    return (int64_t)(rt_now_ns() / 1000000u);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p) abort();
    return p;
}

/* ---- options, loading ---------------------------------------------------------------- */

void rt_alerts_opts_from_config(rt_alerts_opts_t *o, const rt_config_t *cfg)
{
    memset(o, 0, sizeof *o);
    o->conninfo = cfg->database_url;
    o->rules_path = cfg->alert_rules;
    o->query_timeout_ms = cfg->alert_query_timeout_ms;
    o->notify.webhook_url = cfg->alert_webhook_url;
    o->notify.slack_url = cfg->slack_webhook_url;
    o->notify.smtp_url = cfg->smtp_url;
    o->notify.smtp_from = cfg->smtp_from;
    o->notify.smtp_to = cfg->smtp_to;
    o->notify.timeout_ms = cfg->alert_notify_timeout_ms;
    o->notify.tries = (int)cfg->alert_notify_tries;
    o->notify.backoff_ms = cfg->alert_notify_backoff_ms;
}

rt_alert_env_t rt_alerts_env(const rt_alerts_opts_t *o)
{
    rt_alert_env_t env = {
        .channels_configured = rt_notify_configured(&o->notify),
        .metric_names = o->metric_names,
    };
    return env;
}

rt_alert_rules_t *rt_alerts_load_checked(const char *path, const char *conninfo,
                                         const rt_alert_env_t *env, int lenient,
                                         rt_alert_problems_t *probs)
{
    rt_alert_rules_t *r = rt_alert_rules_load(path, env, probs);
    if (!r) return NULL;
    int has_sql = 0;
    for (size_t i = 0; i < r->n; i++)
        has_sql |= r->rules[i].sql != NULL;
    if (!has_sql) return r;
    char err[512];
    atomic_int never = 0;
    PGconn *c = rt_pg_connect(conninfo, "rtbridge-alerts-check", -1, &never, CONNECT_TIMEOUT_MS,
                              err, sizeof err);
    if (!c && lenient) {
        rt_warn(COMP,
                "%s: SQL conditions not checked (cannot connect: %s); a bad one will "
                "show as an evaluation error",
                path, err);
        return r;
    }
    if (!c) {
        char *m = NULL;
        if (asprintf(&m, "%s: cannot check the SQL conditions: cannot connect: %s", path, err) < 0)
            abort();
        if (probs->n < RT_ALERT_MAX_PROBLEMS)
            probs->msg[probs->n++] = m;
        else
            free(m), probs->dropped++;
        rt_alert_rules_free(r);
        return NULL;
    }
    int bad = rt_alert_rules_check_sql(r, c, probs);
    PQfinish(c);
    if (bad) {
        /* The SQL checks name the rule, not the file: say which file. */
        for (size_t i = probs->n - (size_t)bad; i < probs->n; i++) {
            char *m = NULL;
            if (asprintf(&m, "%s: %s", path, probs->msg[i]) < 0) abort();
            free(probs->msg[i]);
            probs->msg[i] = m;
        }
        rt_alert_rules_free(r);
        return NULL;
    }
    return r;
}

int rt_alerts_eval_sql(PGconn *c, const char *sql, int64_t timeout_ms, double *value, char *err,
                       size_t errlen)
{
    char set[80];
    snprintf(set, sizeof set, "SET LOCAL statement_timeout = %lld", (long long)timeout_ms);
    int rc = -1;
    PGresult *r = PQexec(c, "BEGIN READ ONLY");
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok) {
        r = PQexec(c, set);
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
    }
    if (!ok) {
        snprintf(err, errlen, "%s", PQerrorMessage(c));
        rt_pg_oneline(err);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
        if (PQnfields(r) != 1) {
            snprintf(err, errlen, "returned %d columns, want one number", PQnfields(r));
        } else if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
            *value = NAN;
            rc = 0;
        } else {
            const char *s = PQgetvalue(r, 0, 0);
            char *end;
            double v = strtod(s, &end);
            if (end == s || *end) {
                snprintf(err, errlen, "returned '%.40s', not a number", s);
            } else {
                *value = v;
                rc = 0;
            }
        }
    } else {
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (state && strcmp(state, "57014") == 0)
            snprintf(err, errlen, "timed out after %lld ms (canceling statement)",
                     (long long)timeout_ms);
        else
            snprintf(err, errlen, "%s", m ? m : PQerrorMessage(c));
        rt_pg_oneline(err);
    }
    PQclear(r);
    PQclear(PQexec(c, rc == 0 ? "COMMIT" : "ROLLBACK"));
    return rc;
}

/* ---- the database job (threadpool thread) ------------------------------------------- */

static void drop_conn(rt_alerts_t *a, lane_t *l)
{
    pthread_mutex_lock(&a->mu);
    if (l->cancel) PQfreeCancel(l->cancel);
    l->cancel = NULL;
    pthread_mutex_unlock(&a->mu);
    PQfinish(l->conn);
    l->conn = NULL;
    if (l == &a->lane[LANE_MAIN]) a->leader_db = 0; /* the lock went with the session */
}

static int conn_lost(rt_alerts_t *a, lane_t *l)
{
    if (PQstatus(l->conn) == CONNECTION_OK) return 0;
    rt_warn(COMP, "database connection lost");
    drop_conn(a, l);
    return 1;
}

/* Connects l if it has no connection. Returns 0, or -1 (logged sparingly). */
static int lane_connect(rt_alerts_t *a, lane_t *l)
{
    if (l->conn) return 0;
    char err[512];
    l->conn = rt_pg_connect(a->conninfo, "rtbridge-alerts", -1, &a->stopping, CONNECT_TIMEOUT_MS,
                            err, sizeof err);
    if (!l->conn) {
        if (!atomic_load(&a->stopping) && l->connect_failures++ % 60 == 0)
            rt_warn(COMP, "cannot connect (attempt %u; retrying): %s", l->connect_failures, err);
        return -1;
    }
    if (l->connect_failures)
        rt_info(COMP, "connected after %u failed attempts", l->connect_failures);
    l->connect_failures = 0;
    /* Bounds the bookkeeping statements too; conditions set their own. */
    char set[64];
    snprintf(set, sizeof set, "SET statement_timeout = %lld", (long long)a->o.query_timeout_ms);
    PQclear(PQexec(l->conn, set));
    PGcancel *cancel = PQgetCancel(l->conn);
    pthread_mutex_lock(&a->mu);
    l->cancel = cancel;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

static st_t st_from(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, st_names[i]) == 0) return (st_t)i;
    return ST_INACTIVE;
}

static void load_states(PGconn *c, job_t *j)
{
    PGresult *r = PQexec(c, "SELECT rule, state, value,"
                            " (extract(epoch FROM since) * 1000)::bigint,"
                            " (extract(epoch FROM last_notified) * 1000)::bigint"
                            " FROM rt_alert_state");
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        char m[256];
        snprintf(m, sizeof m, "%s", PQerrorMessage(c));
        rt_warn(COMP, "cannot read rt_alert_state (has `rtbridge migrate` run?): %s",
                rt_pg_oneline(m));
        PQclear(r);
        return;
    }
    int n = PQntuples(r);
    j->loaded = calloc((size_t)n + 1, sizeof *j->loaded);
    if (!j->loaded) abort();
    for (int i = 0; i < n; i++) {
        loaded_t *l = &j->loaded[j->nloaded++];
        l->rule = xstrdup(PQgetvalue(r, i, 0));
        l->st = st_from(PQgetvalue(r, i, 1));
        l->value = PQgetisnull(r, i, 2) ? NAN : strtod(PQgetvalue(r, i, 2), NULL);
        l->since_ms = PQgetisnull(r, i, 3) ? 0 : strtoll(PQgetvalue(r, i, 3), NULL, 10);
        l->last_notified_ms = PQgetisnull(r, i, 4) ? 0 : strtoll(PQgetvalue(r, i, 4), NULL, 10);
    }
    PQclear(r);
}

static void fmt_double(char *buf, size_t len, double v)
{
    if (isnan(v))
        buf[0] = '\0';
    else
        snprintf(buf, len, "%.17g", v);
}

static int flush_writes(rt_alerts_t *a, PGconn *c, write_t *w)
{
    if (!w) return 0;
    PGresult *r = PQexec(c, "BEGIN");
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    for (; ok && w; w = w->next) {
        char val[40], th[40], since[32], last[32];
        fmt_double(val, sizeof val, w->value);
        fmt_double(th, sizeof th, w->threshold);
        snprintf(since, sizeof since, "%lld", (long long)w->since_ms);
        snprintf(last, sizeof last, "%lld", (long long)w->last_notified_ms);
        if (w->event) {
            const char *p[7] = {w->rule,           w->event,
                                w->severity,       val[0] ? val : NULL,
                                th[0] ? th : NULL, w->notified ? "t" : "f",
                                w->message};
            r = PQexecParams(c,
                             "INSERT INTO rt_alert_events (rule, state, severity, value, threshold,"
                             " notified, message) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                             7, NULL, p, NULL, NULL, 0);
            ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
            if (!ok) break;
        }
        const char *p[6] = {w->rule,           w->state, val[0] ? val : NULL,
                            th[0] ? th : NULL, since,    w->last_notified_ms ? last : NULL};
        r = PQexecParams(
            c,
            "INSERT INTO rt_alert_state (rule, state, value, threshold, since, last_notified,"
            " updated_at) VALUES ($1, $2, $3, $4, to_timestamp($5::bigint / 1000.0),"
            " to_timestamp($6::bigint / 1000.0), now())"
            " ON CONFLICT (rule) DO UPDATE SET state = EXCLUDED.state, value = EXCLUDED.value,"
            " threshold = EXCLUDED.threshold, since = EXCLUDED.since,"
            " last_notified = EXCLUDED.last_notified, updated_at = now()",
            6, NULL, p, NULL, NULL, 0);
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
    }
    if (ok) {
        r = PQexec(c, "COMMIT");
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
    }
    if (!ok) {
        char m[256];
        snprintf(m, sizeof m, "%s", PQerrorMessage(c));
        if (!a->writes_failing++)
            rt_warn(COMP, "cannot record alert history (has `rtbridge migrate` run?); retrying: %s",
                    rt_pg_oneline(m));
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    if (a->writes_failing) rt_info(COMP, "alert history recorded again");
    a->writes_failing = 0;
    return 0;
}

/* Evaluates the job's SQL rules on l, in order. */
static void eval_items(rt_alerts_t *a, lane_t *l, job_t *j)
{
    for (size_t i = 0; i < j->n && l->conn; i++) {
        item_t *it = &j->items[i];
        if (atomic_load(&a->stopping)) {
            snprintf(it->err, sizeof it->err, "stopping");
            continue;
        }
        atomic_store(&l->in_query, 1);
        it->ok = rt_alerts_eval_sql(l->conn, it->sql, a->o.query_timeout_ms, &it->value, it->err,
                                    sizeof it->err) == 0;
        atomic_store(&l->in_query, 0);
        if (conn_lost(a, l)) j->conn_failed = 1;
    }
}

static void work_cb(uv_work_t *w)
{
    job_t *j = w->data;
    rt_alerts_t *a = j->a;
    lane_t *l = &a->lane[j->lane];
    if (lane_connect(a, l) != 0) {
        j->conn_failed = 1;
        return;
    }
    if (j->lane == LANE_SICK) {
        eval_items(a, l, j);
        return;
    }
    if (!a->leader_db) {
        PGresult *r = PQexec(l->conn, "SELECT pg_try_advisory_lock(" LOCK_KEY ")");
        int got = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (conn_lost(a, l)) {
            j->conn_failed = 1;
            return;
        }
        if (!got) return;
        a->leader_db = 1;
        j->became_leader = 1;
    }
    /* Writes first: after a lost and regained session, what this instance
     * decided meanwhile is newer than what the table holds. */
    j->writes_done = flush_writes(a, l->conn, j->writes) == 0;
    if (conn_lost(a, l)) {
        j->conn_failed = 1;
        j->became_leader = 0;
        return;
    }
    if (j->became_leader) load_states(l->conn, j);
    eval_items(a, l, j);
    j->leader = a->leader_db;
}

/* ---- the loop thread: states, notifications ------------------------------------------ */

static void schedule(rt_alerts_t *a);
static void kick(rt_alerts_t *a);
static void on_timer(uv_timer_t *t);

static void queue_write(rt_alerts_t *a, const rt_alert_rule_t *r, const rstate_t *s,
                        const char *event, int notified, const char *message)
{
    if (a->nwrites >= MAX_WRITES) {
        if (!a->writes_dropped++)
            rt_warn(COMP, "history backlog full (%d records): dropping new ones", MAX_WRITES);
        return;
    }
    write_t *w = calloc(1, sizeof *w);
    if (!w) abort();
    w->rule = xstrdup(r->name);
    w->event = event;
    w->state = st_names[s->st];
    w->severity = rt_alert_sev_name(r->severity);
    w->value = s->value;
    w->threshold = r->threshold;
    w->notified = notified;
    w->message = message ? xstrdup(message) : NULL;
    w->since_ms = s->since_ms;
    w->last_notified_ms = s->last_notified_ms;
    *a->writes_tail = w;
    a->writes_tail = &w->next;
    a->nwrites++;
}

static void free_writes(write_t *w)
{
    while (w) {
        write_t *next = w->next;
        free(w->rule);
        free(w->message);
        free(w);
        w = next;
    }
}

static void publish(rt_alerts_t *a, const rt_alert_rule_t *r, const rstate_t *s, int firing,
                    int64_t now)
{
    if (!a->o.bus) return;
    char ts[40], starts[40];
    rt_format_time(ts, sizeof ts, (uint64_t)now * 1000000u);
    json_t *o = json_object();
    json_object_set_new(o, "rule", json_string(r->name));
    json_object_set_new(o, "alertname", json_string(r->name));
    json_object_set_new(o, "status", json_string(firing ? "firing" : "resolved"));
    json_object_set_new(o, "severity", json_string(rt_alert_sev_name(r->severity)));
    json_object_set_new(o, "description", json_string(r->description));
    json_object_set_new(o, "value", isnan(s->value) ? json_null() : json_real(s->value));
    json_object_set_new(o, "threshold", json_real(r->threshold));
    json_object_set_new(o, "operator", json_string(rt_alert_op_name(r->op)));
    if (r->labels_json) {
        json_t *l = json_loads(r->labels_json, 0, NULL);
        if (l) json_object_set_new(o, "labels", l);
    }
    if (firing) {
        rt_format_time(starts, sizeof starts, (uint64_t)s->since_ms * 1000000u);
        json_object_set_new(o, "starts_at", json_string(starts));
    } else {
        json_object_set_new(o, "ends_at", json_string(ts));
    }
    json_object_set_new(o, "timestamp", json_string(ts));
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body) abort();
    rt_event_t *ev = rt_event_new(firing ? RT_EV_ALERT_FIRING : RT_EV_ALERT_RESOLVED, 0, "", "",
                                  body, strlen(body), rt_now_ns());
    rt_bus_publish(a->o.bus, ev);
    rt_event_unref(ev);
    free(body);
}

static void notify(rt_alerts_t *a, const rt_alert_rule_t *r, rstate_t *s, const char *state,
                   int64_t now, const char *event)
{
    rt_alert_note_t note = {
        .rule = r->name,
        .description = r->description,
        .state = state,
        .severity = r->severity,
        .op = r->op,
        .value = s->value,
        .threshold = r->threshold,
        .at_ns = (uint64_t)now * 1000000u,
        .labels_json = r->labels_json,
    };
    rt_notifier_send(a->notifier, &note, r->channels);
    s->last_notified_ms = now;
    atomic_fetch_add(&a->notifications, 1);
    char *msg = rt_notify_message(&note);
    queue_write(a, r, s, event, 1, msg);
    free(msg);
}

static void set_state(rt_alerts_t *a, rstate_t *s, st_t st, int64_t now)
{
    pthread_mutex_lock(&a->mu);
    s->st = st;
    pthread_mutex_unlock(&a->mu);
    s->since_ms = now;
}

static void apply_result(rt_alerts_t *a, size_t i, int ok, double v, const char *err)
{
    const rt_alert_rule_t *r = &a->rules->rules[i];
    rstate_t *s = &a->st[i];
    int64_t now = wall_ms();
    uint64_t next = mono_ms() + (uint64_t)r->interval_ms;

    pthread_mutex_lock(&a->mu);
    s->evals++;
    if (!ok) s->errors++;
    int was_error = s->error;
    s->error = !ok;
    pthread_mutex_unlock(&a->mu);
    s->due_ms = next;

    if (!ok) {
        if (!was_error) {
            rt_warn(COMP, "rule %s: evaluation failed (retried every %lld ms): %s", r->name,
                    (long long)r->interval_ms, err);
            queue_write(a, r, s, "error", 0, err);
        }
        return;
    }
    if (was_error) rt_info(COMP, "rule %s: evaluates again", r->name);
    s->value = v;
    int cond = !isnan(v) && rt_alert_compare(r->op, v, r->threshold);

    if (!cond) {
        if (s->st == ST_FIRING) {
            set_state(a, s, ST_RESOLVED, now);
            notify(a, r, s, "resolved", now, "resolved");
            publish(a, r, s, 0, now);
        } else if (s->st == ST_PENDING) {
            set_state(a, s, ST_INACTIVE, now);
            queue_write(a, r, s, "inactive", 0, NULL);
        }
        return;
    }
    if (s->st == ST_INACTIVE || s->st == ST_RESOLVED) {
        set_state(a, s, ST_PENDING, now);
        if (r->for_ms > 0) queue_write(a, r, s, "pending", 0, NULL);
    }
    if (s->st == ST_PENDING) {
        int64_t held = now - s->since_ms;
        if (held >= r->for_ms) {
            set_state(a, s, ST_FIRING, now);
            notify(a, r, s, "firing", now, "firing");
            publish(a, r, s, 1, now);
        } else {
            uint64_t at = mono_ms() + (uint64_t)(r->for_ms - held);
            if (at < s->due_ms) s->due_ms = at;
        }
        return;
    }
    /* Firing still: a reminder once the cooldown has passed. */
    if (now - s->last_notified_ms >= r->cooldown_ms) notify(a, r, s, "firing", now, "firing");
}

static void eval_metrics(rt_alerts_t *a, int all)
{
    if (!a->leader || !a->rules) return;
    uint64_t now = mono_ms();
    for (size_t i = 0; i < a->rules->n; i++) {
        const rt_alert_rule_t *r = &a->rules->rules[i];
        if (!r->metric || (!all && a->st[i].due_ms > now)) continue;
        double v = NAN;
        int ok = a->o.metric_value && a->o.metric_value(a->o.metric_arg, r->metric, &v) == 0;
        apply_result(a, i, ok, v, ok ? NULL : "metric value unavailable");
    }
}

/* Builds the state array for rules, taking over the states of rules of the
 * same name from the current set. */
static rstate_t *carry_states(rt_alerts_t *a, const rt_alert_rules_t *rules)
{
    rstate_t *st = calloc(rules->n ? rules->n : 1, sizeof *st);
    if (!st) abort();
    uint64_t now = mono_ms();
    for (size_t i = 0; i < rules->n; i++) {
        st[i].value = NAN;
        st[i].due_ms = now;
        for (size_t k = 0; a->rules && k < a->rules->n; k++) {
            if (strcmp(a->rules->rules[k].name, rules->rules[i].name) != 0) continue;
            st[i] = a->st[k];
            st[i].due_ms = now;
            st[i].queued = 0;
        }
    }
    return st;
}

static void swap_rules(rt_alerts_t *a)
{
    pthread_mutex_lock(&a->mu);
    rt_alert_rules_t *nr = a->pending_rules;
    a->pending_rules = NULL;
    pthread_mutex_unlock(&a->mu);
    if (!nr) return;
    rstate_t *st = carry_states(a, nr);
    pthread_mutex_lock(&a->mu);
    rt_alert_rules_t *old = a->rules;
    rstate_t *old_st = a->st;
    a->rules = nr;
    a->st = st;
    pthread_mutex_unlock(&a->mu);
    rt_alert_rules_free(old);
    free(old_st);
    rt_info(COMP, "rules reloaded: %zu rule(s)", nr->n);
}

static void apply_loaded(rt_alerts_t *a, job_t *j)
{
    for (size_t k = 0; k < j->nloaded; k++) {
        loaded_t *l = &j->loaded[k];
        for (size_t i = 0; i < a->rules->n; i++) {
            if (strcmp(a->rules->rules[i].name, l->rule) != 0) continue;
            rstate_t *s = &a->st[i];
            pthread_mutex_lock(&a->mu);
            s->st = l->st;
            pthread_mutex_unlock(&a->mu);
            s->value = l->value;
            s->since_ms = l->since_ms;
            s->last_notified_ms = l->last_notified_ms;
            if (l->st == ST_FIRING)
                rt_info(COMP, "rule %s was firing (last notified %lld s ago)", l->rule,
                        (long long)((wall_ms() - l->last_notified_ms) / 1000));
        }
        free(l->rule);
    }
    free(j->loaded);
    j->loaded = NULL;
}

/* Switches to reloaded rules once no job holds indices into the old ones. */
static void maybe_swap(rt_alerts_t *a)
{
    if (!a->swap_wanted || a->lane[LANE_MAIN].job || a->lane[LANE_SICK].job) return;
    swap_rules(a);
    a->swap_wanted = 0;
}

static void after_work_cb(uv_work_t *w, int status)
{
    (void)status;
    job_t *j = w->data;
    rt_alerts_t *a = j->a;
    lane_t *l = &a->lane[j->lane];
    uint64_t retry = j->conn_failed ? (uint64_t)a->o.reconnect_ms : 0;
    l->job = NULL;

    if (j->lane == LANE_MAIN) {
        if (j->writes && !j->writes_done) {
            /* Put them back in front, to be written by a later job; not at
             * once (the table may be missing): after a reconnect delay. */
            write_t *last = j->writes;
            size_t n = 1;
            while (last->next)
                last = last->next, n++;
            last->next = a->writes;
            if (!a->writes) a->writes_tail = &last->next;
            a->writes = j->writes;
            a->nwrites += n;
            retry = (uint64_t)a->o.reconnect_ms;
        } else {
            free_writes(j->writes);
        }
        int was_leader = a->leader;
        a->leader = j->leader;
        atomic_store(&a->leader_pub, a->leader);
        if (j->became_leader) {
            rt_info(COMP, "leading: evaluating %zu rule(s)", a->rules->n);
            apply_loaded(a, j);
            for (size_t i = 0; i < a->rules->n; i++)
                a->st[i].due_ms = mono_ms();
        } else if (was_leader && !a->leader) {
            rt_warn(COMP, "lost the database session and with it the lead; retrying");
        }
        if (!a->leader && !j->conn_failed) retry = (uint64_t)a->o.leader_retry_ms;
    }
    l->next_ms = mono_ms() + retry;

    for (size_t i = 0; i < j->n; i++) {
        item_t *it = &j->items[i];
        a->st[it->idx].queued = 0;
        if (a->leader && !a->closing && (it->ok || strcmp(it->err, "stopping") != 0) &&
            !(j->conn_failed && !it->ok))
            apply_result(a, it->idx, it->ok, it->value, it->err);
        else
            a->st[it->idx].due_ms = mono_ms();
        free(it->sql);
    }
    free(j->items);
    free(j);
    if (a->closing) return;
    maybe_swap(a);
    if (a->leader) eval_metrics(a, 0);
    kick(a);
}

/* SQL rules due now on a lane: the healthy ones (sick == 0) or the ones
 * whose last evaluation failed (sick == 1). */
static int due_on(const rt_alerts_t *a, size_t i, int sick, uint64_t now)
{
    const rstate_t *s = &a->st[i];
    return a->rules->rules[i].sql && !s->queued && s->due_ms <= now && s->error == sick;
}

static void start_job(rt_alerts_t *a, int lane, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; a->leader && i < a->rules->n; i++)
        n += (size_t)due_on(a, i, lane == LANE_SICK, now);
    if (lane == LANE_SICK && n == 0) return;
    if (lane == LANE_MAIN && a->leader && n == 0 && !a->writes) return;
    job_t *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->a = a;
    j->lane = lane;
    j->w.data = j;
    j->items = calloc(n ? n : 1, sizeof *j->items);
    if (!j->items) abort();
    for (size_t i = 0; a->leader && i < a->rules->n; i++) {
        if (!due_on(a, i, lane == LANE_SICK, now)) continue;
        a->st[i].queued = 1;
        j->items[j->n].idx = i;
        j->items[j->n].sql = xstrdup(a->rules->rules[i].sql);
        j->n++;
    }
    if (lane == LANE_MAIN) {
        j->writes = a->writes;
        a->writes = NULL;
        a->writes_tail = &a->writes;
        a->nwrites = 0;
    }
    a->lane[lane].job = j;
    if (uv_queue_work(&a->loop, &j->w, work_cb, after_work_cb) != 0) abort();
}

/* Starts the database jobs that are due on idle lanes: on the main lane the
 * lock attempt (standby), history writes and healthy SQL rules; on the sick
 * lane (leader only) the rules whose last evaluation failed. */
static void kick(rt_alerts_t *a)
{
    if (a->closing) return;
    uint64_t now = mono_ms();
    if (!a->swap_wanted) {
        for (int lane = LANE_MAIN; lane < NLANES; lane++) {
            lane_t *l = &a->lane[lane];
            if (l->job || now < l->next_ms || (lane == LANE_SICK && !a->leader)) continue;
            start_job(a, lane, now);
        }
    }
    schedule(a);
}

/* Arms the timer for the next thing due: a rule on an idle lane, a metric
 * rule, pending history, or a lock/connect retry. A lane with a job in
 * flight kicks again when it ends. */
static void schedule(rt_alerts_t *a)
{
    if (a->closing) return;
    uint64_t now = mono_ms(), at = UINT64_MAX;
    const lane_t *m = &a->lane[LANE_MAIN];
    if (a->leader) {
        for (size_t i = 0; i < a->rules->n; i++) {
            const rstate_t *s = &a->st[i];
            uint64_t t = s->due_ms;
            if (s->queued) continue;
            if (a->rules->rules[i].sql) {
                const lane_t *l = &a->lane[s->error ? LANE_SICK : LANE_MAIN];
                if (l->job || a->swap_wanted) continue;
                if (l->next_ms > t) t = l->next_ms;
            }
            if (t < at) at = t;
        }
        if (a->writes && !m->job && m->next_ms < at) at = m->next_ms;
    } else if (!m->job) {
        at = m->next_ms;
    }
    if (at == UINT64_MAX) {
        uv_timer_stop(&a->timer);
        return;
    }
    uv_timer_start(&a->timer, on_timer, at > now ? at - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    rt_alerts_t *a = t->data;
    eval_metrics(a, 0);
    kick(a);
}

static void on_async(uv_async_t *h)
{
    rt_alerts_t *a = h->data;
    if (atomic_load(&a->stopping)) {
        if (a->closing) return;
        a->closing = 1;
        pthread_mutex_lock(&a->mu);
        for (int i = 0; i < NLANES; i++) {
            lane_t *l = &a->lane[i];
            if (l->cancel && atomic_load(&l->in_query)) {
                char buf[128];
                PQcancel(l->cancel, buf, sizeof buf);
            }
        }
        pthread_mutex_unlock(&a->mu);
        uv_close((uv_handle_t *)&a->async, NULL);
        uv_close((uv_handle_t *)&a->timer, NULL);
        rt_notifier_close(a->notifier);
        return;
    }
    pthread_mutex_lock(&a->mu);
    if (a->pending_rules) a->swap_wanted = 1;
    pthread_mutex_unlock(&a->mu);
    maybe_swap(a);
    if (atomic_exchange(&a->poke, 0)) eval_metrics(a, 1);
    kick(a);
}

static void *thread_main(void *arg)
{
    rt_alerts_t *a = arg;
    rt_log_thread_name("alerts");
    pthread_mutex_lock(&a->mu);
    if (a->pending_rules) a->swap_wanted = 1; /* reloaded before the start */
    pthread_mutex_unlock(&a->mu);
    maybe_swap(a);
    kick(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    /* The loop has ended: nothing else touches the connections or the
     * queue. What was decided last (a resolution just before SIGTERM) is
     * recorded before the session, and with it the lead, goes. */
    PGconn *c = a->lane[LANE_MAIN].conn;
    if (c && a->leader_db && a->writes && flush_writes(a, c, a->writes) == 0) {
        free_writes(a->writes);
        a->writes = NULL;
        a->writes_tail = &a->writes;
        a->nwrites = 0;
    }
    for (int i = 0; i < NLANES; i++) {
        PQfinish(a->lane[i].conn);
        a->lane[i].conn = NULL;
    }
    return NULL;
}

/* ---- public ------------------------------------------------------------------------ */

rt_alerts_t *rt_alerts_new(const rt_alerts_opts_t *opts)
{
    if (!opts->conninfo || !opts->rules_path) {
        errno = EINVAL;
        return NULL;
    }
    rt_alerts_t *a = calloc(1, sizeof *a);
    if (!a) abort();
    a->o = *opts;
    a->conninfo = xstrdup(opts->conninfo);
    a->rules_path = xstrdup(opts->rules_path);
    a->o.conninfo = a->conninfo;
    a->o.rules_path = a->rules_path;
    if (a->o.query_timeout_ms <= 0) a->o.query_timeout_ms = 5000;
    if (a->o.leader_retry_ms <= 0) a->o.leader_retry_ms = 1000;
    if (a->o.reconnect_ms <= 0) a->o.reconnect_ms = 1000;
    a->env = rt_alerts_env(&a->o);
    static const char *const no_metrics[] = {NULL};
    if (!a->o.metric_value) a->env.metric_names = no_metrics;

    rt_alert_problems_t probs = {0};
    rt_alert_rules_t *rules =
        rt_alerts_load_checked(a->rules_path, a->conninfo, &a->env, 1, &probs);
    if (!rules) {
        for (size_t i = 0; i < probs.n; i++)
            rt_error(COMP, "%s", probs.msg[i]);
        if (probs.dropped) rt_error(COMP, "... and %zu more problems", probs.dropped);
        rt_alert_problems_free(&probs);
        free(a->conninfo);
        free(a->rules_path);
        free(a);
        errno = EINVAL;
        return NULL;
    }
    a->st = carry_states(a, rules); /* a->rules is NULL: fresh states */
    a->rules = rules;
    a->writes_tail = &a->writes;
    pthread_mutex_init(&a->mu, NULL);
    uv_loop_init(&a->loop);
    uv_async_init(&a->loop, &a->async, on_async);
    a->async.data = a;
    uv_timer_init(&a->loop, &a->timer);
    a->timer.data = a;
    a->notifier = rt_notifier_new(&a->loop, &a->o.notify);
    rt_info(COMP, "%zu rule(s) loaded from %s", a->rules->n, a->rules_path);
    return a;
}

int rt_alerts_start(rt_alerts_t *a)
{
    int rc = pthread_create(&a->thread, NULL, thread_main, a);
    if (rc != 0) return -rc;
    a->started = 1;
    return 0;
}

void rt_alerts_stop(rt_alerts_t *a)
{
    if (!a || !a->started) return;
    /* Under mu, so a concurrent rt_alerts_poke either sends before this or
     * sees stopping and leaves the handle (closed soon after) alone. */
    pthread_mutex_lock(&a->mu);
    atomic_store(&a->stopping, 1);
    pthread_mutex_unlock(&a->mu);
    uv_async_send(&a->async);
    pthread_join(a->thread, NULL);
    a->started = 0;
}

void rt_alerts_free(rt_alerts_t *a)
{
    if (!a) return;
    rt_alerts_stop(a);
    if (!a->closing) {
        /* Never started: close the handles on this thread. */
        atomic_store(&a->stopping, 1);
        on_async(&a->async);
        uv_run(&a->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&a->loop);
    rt_notifier_free(a->notifier);
    free_writes(a->writes);
    rt_alert_rules_free(a->rules);
    rt_alert_rules_free(a->pending_rules);
    free(a->st);
    for (int i = 0; i < NLANES; i++)
        if (a->lane[i].cancel) PQfreeCancel(a->lane[i].cancel);
    pthread_mutex_destroy(&a->mu);
    free(a->conninfo);
    free(a->rules_path);
    free(a);
}

int rt_alerts_reload(rt_alerts_t *a)
{
    rt_alert_problems_t probs = {0};
    rt_alert_rules_t *r = rt_alerts_load_checked(a->rules_path, a->conninfo, &a->env, 1, &probs);
    if (!r) {
        rt_error(COMP, "reload: keeping the current rules; %s is invalid:", a->rules_path);
        for (size_t i = 0; i < probs.n; i++)
            rt_error(COMP, "%s", probs.msg[i]);
        if (probs.dropped) rt_error(COMP, "... and %zu more problems", probs.dropped);
        rt_alert_problems_free(&probs);
        return -EINVAL;
    }
    pthread_mutex_lock(&a->mu);
    rt_alert_rules_free(a->pending_rules);
    a->pending_rules = r;
    pthread_mutex_unlock(&a->mu);
    if (a->started) uv_async_send(&a->async);
    return 0;
}

void rt_alerts_poke(rt_alerts_t *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    if (atomic_load(&a->started) && !atomic_load(&a->stopping)) {
        atomic_store(&a->poke, 1);
        uv_async_send(&a->async);
    }
    pthread_mutex_unlock(&a->mu);
}

void rt_alerts_poke_cb(void *arg)
{
    rt_alerts_poke(arg);
}

void rt_alerts_counts(rt_alerts_t *a, rt_alerts_counts_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&a->mu);
    out->rules = a->rules->n;
    for (size_t i = 0; i < a->rules->n; i++) {
        out->evaluations += a->st[i].evals;
        out->errors += a->st[i].errors;
        out->firing += a->st[i].st == ST_FIRING;
    }
    pthread_mutex_unlock(&a->mu);
    rt_notify_stats_t *ns = rt_notifier_stats(a->notifier);
    for (int c = 0; c < RT_CH_COUNT; c++)
        out->delivered += atomic_load(&ns->sent[c]);
    out->notifications = atomic_load(&a->notifications);
    out->leader = (uint64_t)atomic_load(&a->leader_pub);
}

void rt_alerts_exposition(void *arg, FILE *out)
{
    rt_alerts_t *a = arg;
    pthread_mutex_lock(&a->mu);
    const rt_alert_rules_t *rs = a->rules;
    fputs("# HELP rtbridge_alert_rule_state Alert rule state (1 for the state the rule is in).\n"
          "# TYPE rtbridge_alert_rule_state gauge\n",
          out);
    for (size_t i = 0; i < rs->n; i++)
        for (int k = ST_INACTIVE; k <= ST_FIRING; k++)
            fprintf(out, "rtbridge_alert_rule_state{rule=\"%s\",severity=\"%s\",state=\"%s\"} %d\n",
                    rs->rules[i].name, rt_alert_sev_name(rs->rules[i].severity), st_names[k],
                    (a->st[i].st == ST_RESOLVED ? ST_INACTIVE : (int)a->st[i].st) == k);
    fputs("# HELP rtbridge_alert_rule_error 1 while the rule's last evaluation failed.\n"
          "# TYPE rtbridge_alert_rule_error gauge\n",
          out);
    for (size_t i = 0; i < rs->n; i++)
        fprintf(out, "rtbridge_alert_rule_error{rule=\"%s\"} %d\n", rs->rules[i].name,
                a->st[i].error);
    fputs("# HELP rtbridge_alert_evaluations_total Evaluations of each rule.\n"
          "# TYPE rtbridge_alert_evaluations_total counter\n",
          out);
    for (size_t i = 0; i < rs->n; i++)
        fprintf(out, "rtbridge_alert_evaluations_total{rule=\"%s\"} %llu\n", rs->rules[i].name,
                (unsigned long long)a->st[i].evals);
    fputs("# HELP rtbridge_alert_evaluation_errors_total Evaluations that failed (query error,"
          " timeout, metric unavailable).\n"
          "# TYPE rtbridge_alert_evaluation_errors_total counter\n",
          out);
    for (size_t i = 0; i < rs->n; i++)
        fprintf(out, "rtbridge_alert_evaluation_errors_total{rule=\"%s\"} %llu\n",
                rs->rules[i].name, (unsigned long long)a->st[i].errors);
    pthread_mutex_unlock(&a->mu);

    static const struct {
        const char *name, *help;
        size_t off;
    } fam[] = {
        {"rtbridge_alert_notifications_total", "Notifications delivered, per channel.",
         offsetof(rt_notify_stats_t, sent)},
        {"rtbridge_alert_notification_failures_total",
         "Notifications that failed every attempt, per channel.",
         offsetof(rt_notify_stats_t, failed)},
        {"rtbridge_alert_notification_retries_total",
         "Notification attempts that failed and were retried, per channel.",
         offsetof(rt_notify_stats_t, retries)},
    };
    rt_notify_stats_t *ns = rt_notifier_stats(a->notifier);
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        fprintf(out, "# HELP %s %s\n# TYPE %s counter\n", fam[f].name, fam[f].help, fam[f].name);
        atomic_uint_fast64_t *v = (atomic_uint_fast64_t *)((char *)ns + fam[f].off);
        for (int c = 0; c < RT_CH_COUNT; c++)
            fprintf(out, "%s{channel=\"%s\"} %llu\n", fam[f].name, rt_alert_channel_name(1u << c),
                    (unsigned long long)atomic_load(&v[c]));
    }
    fprintf(out,
            "# HELP rtbridge_alert_leader 1 while this instance evaluates the rules (holds the "
            "lock).\n# TYPE rtbridge_alert_leader gauge\nrtbridge_alert_leader %d\n",
            atomic_load(&a->leader_pub));
}
