/*
 * Alert notifications: log, generic webhook, Slack incoming webhook and
 * e-mail (SMTP), sent through the libcurl multi interface driven by a libuv
 * loop (uv_poll for curl's sockets, a uv_timer for its timeouts). Sending
 * never blocks the loop: rt_notifier_send builds the requests and returns;
 * transfers progress as their sockets become ready.
 *
 * Each request has a timeout (connect included). A failed one (transport
 * error, HTTP status outside 2xx, SMTP refusal) is retried after a backoff
 * that doubles each time, up to `tries` attempts in all; a request that
 * fails every attempt is counted in failed[channel]. Logs name the channel
 * and the rule, never a URL: webhook URLs and SMTP URLs carry secrets.
 *
 * SMTP: smtp://host:port plain, smtps:// TLS from the start, and
 * smtp+starttls://host:port plain upgraded with STARTTLS (required). User and
 * password go in the URL (smtp://user:pass@host). --smtp-to may list several
 * addresses, comma-separated.
 *
 * Threads: everything runs on the thread of the loop given to
 * rt_notifier_new, except rt_notifier_stats, which may be read anywhere.
 */
#ifndef RT_NOTIFY_H
#define RT_NOTIFY_H

#include "alertrules.h"

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

typedef struct rt_notify_opts {
    const char *webhook_url; /* NULL: webhook channel not configured */
    const char *slack_url;
    const char *smtp_url;
    const char *smtp_from;
    const char *smtp_to;
    int64_t timeout_ms; /* per attempt; 0 = 10 s */
    int tries;          /* attempts in all; 0 = 3 */
    int64_t backoff_ms; /* delay before the first retry, doubling; 0 = 1 s */
} rt_notify_opts_t;

/* One notification: a rule that started firing, fires still (repeat), or
 * resolved. Strings are copied by rt_notifier_send. */
typedef struct rt_alert_note {
    const char *rule;
    const char *description;
    const char *state; /* "firing" or "resolved" */
    rt_alert_sev_t severity;
    rt_alert_op_t op;
    double value; /* NAN: no value */
    double threshold;
    uint64_t at_ns;          /* CLOCK_REALTIME */
    const char *labels_json; /* JSON object or NULL */
} rt_alert_note_t;

typedef struct rt_notify_stats {
    atomic_uint_fast64_t sent[RT_CH_COUNT];    /* delivered (log: written) */
    atomic_uint_fast64_t failed[RT_CH_COUNT];  /* gave up after every attempt */
    atomic_uint_fast64_t retries[RT_CH_COUNT]; /* attempts after a failed one */
} rt_notify_stats_t;

typedef struct rt_notifier rt_notifier_t;

/* Channels opts has what they need for (log always). */
unsigned rt_notify_configured(const rt_notify_opts_t *opts);

/* Copies opts. Loop thread. Aborts on out of memory. */
rt_notifier_t *rt_notifier_new(uv_loop_t *loop, const rt_notify_opts_t *opts);
/* Sends note on every channel in channels (RT_CH_* bits; unconfigured ones
 * are skipped and counted failed). The log channel writes at once; the others
 * are queued on the loop. Loop thread. */
void rt_notifier_send(rt_notifier_t *n, const rt_alert_note_t *note, unsigned channels);
/* Requests in flight or waiting for a retry. */
size_t rt_notifier_pending(const rt_notifier_t *n);
/* Abandons what is in flight and closes every handle; run the loop until it
 * has none left, then rt_notifier_free. Loop thread. */
void rt_notifier_close(rt_notifier_t *n);
void rt_notifier_free(rt_notifier_t *n);
rt_notify_stats_t *rt_notifier_stats(rt_notifier_t *n);

/* The bodies, malloc'd (caller frees); exposed for tests. */
char *rt_notify_message(const rt_alert_note_t *note);      /* the spec's text */
char *rt_notify_webhook_body(const rt_alert_note_t *note); /* JSON */
char *rt_notify_slack_body(const rt_alert_note_t *note);   /* JSON */
char *rt_notify_email_body(const rt_alert_note_t *note, const char *from, const char *to);

#endif
