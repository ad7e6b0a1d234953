/*
 * The alerts subcommands. check shares loading and evaluation with the
 * evaluator (rt_alerts_load_checked, rt_alerts_eval_sql), so what it accepts
 * and computes is what `serve` would.
 */
#include "alertcmd.h"

#include "alerts.h"
#include "metrics.h"
#include "pgconn.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define CONNECT_TIMEOUT_MS 10000

static PGconn *connect_db(const rt_config_t *cfg, FILE *err)
{
    char msg[512];
    atomic_int never = 0;
    PGconn *c = rt_pg_connect(cfg->database_url, "rtbridge-alerts-cli", -1, &never,
                              CONNECT_TIMEOUT_MS, msg, sizeof msg);
    if (!c) fprintf(err, "rtbridge: alerts: cannot connect: %s\n", msg);
    return c;
}

static int cmd_check(const rt_config_t *cfg, FILE *out, FILE *err)
{
    if (!cfg->alert_rules) {
        fprintf(err, "rtbridge: alerts check: --alert-rules is required\n");
        return 2;
    }
    rt_alerts_opts_t o;
    rt_alerts_opts_from_config(&o, cfg);
    /* The names a running server's metric rules may use (valued only there). */
    o.metric_names = rt_metrics_value_names();
    rt_alert_env_t env = rt_alerts_env(&o);
    rt_alert_problems_t probs = {0};
    rt_alert_rules_t *rules =
        rt_alerts_load_checked(cfg->alert_rules, cfg->database_url, &env, 0, &probs);
    if (!rules) {
        rt_alert_problems_print(&probs, "rtbridge: ", err);
        rt_alert_problems_free(&probs);
        return 2;
    }
    PGconn *c = connect_db(cfg, err);
    if (!c) {
        rt_alert_rules_free(rules);
        return 2;
    }
    int status = 0;
    fprintf(out, "%-28s %-9s %14s %-16s %s\n", "RULE", "SEVERITY", "VALUE", "THRESHOLD",
            "WOULD FIRE");
    for (size_t i = 0; i < rules->n; i++) {
        const rt_alert_rule_t *r = &rules->rules[i];
        char val[48], th[48], verdict[300];
        snprintf(th, sizeof th, "%s %g", rt_alert_op_name(r->op), r->threshold);
        if (r->metric) {
            snprintf(val, sizeof val, "n/a");
            snprintf(verdict, sizeof verdict, "n/a (metric %s: needs a running server)", r->metric);
        } else {
            double v;
            char e[256];
            if (rt_alerts_eval_sql(c, r->sql, cfg->alert_query_timeout_ms, &v, e, sizeof e) != 0) {
                snprintf(val, sizeof val, "error");
                snprintf(verdict, sizeof verdict, "ERROR: %s", e);
                status = 1;
            } else if (isnan(v)) {
                snprintf(val, sizeof val, "null");
                snprintf(verdict, sizeof verdict, "no");
            } else {
                int fire = rt_alert_compare(r->op, v, r->threshold);
                snprintf(val, sizeof val, "%.4g", v);
                snprintf(verdict, sizeof verdict, "%s", fire ? "YES" : "no");
                if (fire) status = 1;
            }
        }
        fprintf(out, "%-28s %-9s %14s %-16s %s\n", r->name, rt_alert_sev_name(r->severity), val, th,
                verdict);
    }
    PQfinish(c);
    rt_alert_rules_free(rules);
    return status;
}

static int print_query(PGconn *c, const char *sql, const char *title, const char *fmt_head,
                       FILE *out, FILE *err)
{
    PGresult *r = PQexec(c, sql);
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        char m[512];
        snprintf(m, sizeof m, "%s", PQerrorMessage(c));
        fprintf(err, "rtbridge: alerts list: %s (has `rtbridge migrate` run?)\n", rt_pg_oneline(m));
        PQclear(r);
        return -1;
    }
    fprintf(out, "%s\n%s\n", title, fmt_head);
    if (PQntuples(r) == 0) fprintf(out, "  (none)\n");
    for (int i = 0; i < PQntuples(r); i++) {
        fputs("  ", out);
        for (int k = 0; k < PQnfields(r); k++)
            fprintf(out, k == 0 ? "%-28s" : " %-20s",
                    PQgetisnull(r, i, k) ? "-" : PQgetvalue(r, i, k));
        fputs("\n", out);
    }
    PQclear(r);
    return 0;
}

static int cmd_list(const rt_config_t *cfg, FILE *out, FILE *err)
{
    PGconn *c = connect_db(cfg, err);
    if (!c) return 1;
    PQclear(PQexec(c, "SET TimeZone = 'UTC'"));
    int rc = print_query(
        c,
        "SELECT rule, state, coalesce(round(value::numeric, 4)::text, '-'),"
        " coalesce(threshold::text, '-'), to_char(since, 'YYYY-MM-DD HH24:MI:SS'),"
        " coalesce(to_char(last_notified, 'YYYY-MM-DD HH24:MI:SS'), '-')"
        " FROM rt_alert_state ORDER BY rule",
        "Current state:",
        "  RULE                         STATE                VALUE                THRESHOLD    "
        "        SINCE (UTC)          LAST NOTIFIED (UTC)",
        out, err);
    if (rc == 0) {
        fputs("\n", out);
        rc = print_query(c,
                         "SELECT rule, state, coalesce(round(value::numeric, 4)::text, '-'),"
                         " to_char(at, 'YYYY-MM-DD HH24:MI:SS') FROM rt_alert_events"
                         " WHERE notified ORDER BY id DESC LIMIT 20",
                         "Last notifications:",
                         "  RULE                         STATE                VALUE            "
                         "    AT (UTC)",
                         out, err);
    }
    PQfinish(c);
    return rc == 0 ? 0 : 1;
}

int rt_alerts_cmd(const char *sub, const rt_config_t *cfg, FILE *out, FILE *err)
{
    if (sub && strcmp(sub, "check") == 0) return cmd_check(cfg, out, err);
    if (sub && strcmp(sub, "list") == 0) return cmd_list(cfg, out, err);
    fprintf(err, "rtbridge: alerts: expected 'check' or 'list'%s%s%s\n", sub ? ", not '" : "",
            sub ? sub : "", sub ? "'" : "");
    return 2;
}
