/*
 * `rtbridge alerts check` and `rtbridge alerts list`: the operator's view of
 * the alert rules, without a running server.
 *
 *   check  validates --alert-rules (every problem, SQL included), evaluates
 *          every SQL rule once and prints a table (rule, value, threshold,
 *          would fire). Exit 0: nothing would fire; 1: something would fire
 *          or could not be evaluated; 2: the file is invalid or cannot be
 *          checked. Metric rules need a running server: shown as n/a.
 *   list   prints rt_alert_state (state, value, since, last notification)
 *          and the last notifications from rt_alert_events.
 *
 * Main thread; blocks on libpq.
 */
#ifndef RT_ALERTCMD_H
#define RT_ALERTCMD_H

#include "config.h"

#include <stdio.h>

/* sub is "check" or "list" (anything else: usage error, 2). Returns the exit
 * status; the table goes to out, problems to err. */
int rt_alerts_cmd(const char *sub, const rt_config_t *cfg, FILE *out, FILE *err);

#endif
