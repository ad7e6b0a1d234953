/*
 * Notifications through the libcurl multi interface on a libuv loop.
 *
 * curl tells us which sockets to watch (socket_cb) and when to call it back
 * (timer_cb); we watch them with uv_poll and a uv_timer and hand readiness
 * back with curl_multi_socket_action. Finished transfers are collected with
 * curl_multi_info_read after each action. A failed attempt is removed from
 * the multi handle and re-added after its own backoff timer: the easy handle
 * keeps its options, so a retry sends the same request again.
 *
 * The loop is the evaluator's; evaluation never waits for a transfer, and a
 * receiver that hangs costs one easy handle until its timeout.
 */
#include "notify.h"

#include "event.h"
#include "log.h"
#include "version.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMP "notify"

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct rt_notifier *n;
    struct sock_ctx *next, *prev;
} sock_ctx_t;

typedef struct req {
    struct rt_notifier *n;
    CURL *easy;
    unsigned channel; /* RT_CH_* bit */
    int ch_idx;
    char rule[128];
    char *body;
    size_t body_len, read_off;
    struct curl_slist *headers;
    struct curl_slist *rcpt;
    int attempt;  /* attempts started */
    int in_multi; /* added to the multi handle */
    uv_timer_t retry;
    char errbuf[CURL_ERROR_SIZE];
    struct req *next, *prev;
} req_t;

struct rt_notifier {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    rt_notify_opts_t o;
    char *smtp_url; /* rewritten for smtp+starttls */
    int starttls;
    req_t *reqs;
    sock_ctx_t *socks;
    size_t pending;
    int closing;
    rt_notify_stats_t stats;
};

static char *xstrdup_or_null(const char *s)
{
    if (!s || !*s) return NULL;
    char *p = strdup(s);
    if (!p) abort();
    return p;
}

static int ch_index(unsigned ch)
{
    for (int i = 0; i < RT_CH_COUNT; i++)
        if (ch == (1u << i)) return i;
    return 0;
}

unsigned rt_notify_configured(const rt_notify_opts_t *o)
{
    unsigned m = RT_CH_LOG;
    if (o->webhook_url && *o->webhook_url) m |= RT_CH_WEBHOOK;
    if (o->slack_url && *o->slack_url) m |= RT_CH_SLACK;
    if (o->smtp_url && *o->smtp_url && o->smtp_from && *o->smtp_from && o->smtp_to && *o->smtp_to)
        m |= RT_CH_EMAIL;
    return m;
}

/* ---- bodies --------------------------------------------------------------------- */

static int is_resolved(const rt_alert_note_t *note)
{
    return strcmp(note->state, "resolved") == 0;
}

static void upper(char *dst, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        dst[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]);
    dst[i] = '\0';
}

char *rt_notify_message(const rt_alert_note_t *note)
{
    char tag[32], ts[40], val[48];
    upper(tag, sizeof tag, is_resolved(note) ? "resolved" : rt_alert_sev_name(note->severity));
    rt_format_time(ts, sizeof ts, note->at_ns);
    if (isnan(note->value))
        snprintf(val, sizeof val, "none");
    else
        snprintf(val, sizeof val, "%.2f", note->value);
    char *s = NULL;
    if (asprintf(&s, "[%s] %s\n%s\nCurrent value: %s (threshold: %s %g)\nTime: %s", tag, note->rule,
                 note->description ? note->description : "", val, rt_alert_op_name(note->op),
                 note->threshold, ts) < 0)
        abort();
    return s;
}

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) abort();
    return s;
}

char *rt_notify_webhook_body(const rt_alert_note_t *note)
{
    char ts[40];
    rt_format_time(ts, sizeof ts, note->at_ns);
    char *msg = rt_notify_message(note);
    json_t *o = json_object();
    json_object_set_new(o, "rule", json_string(note->rule));
    json_object_set_new(o, "severity", json_string(rt_alert_sev_name(note->severity)));
    json_object_set_new(o, "state", json_string(note->state));
    json_object_set_new(o, "message", json_string(msg));
    json_object_set_new(o, "value", isnan(note->value) ? json_null() : json_real(note->value));
    json_object_set_new(o, "threshold", json_real(note->threshold));
    json_object_set_new(o, "operator", json_string(rt_alert_op_name(note->op)));
    json_object_set_new(o, "timestamp", json_string(ts));
    if (note->labels_json) {
        json_t *l = json_loads(note->labels_json, 0, NULL);
        if (l) json_object_set_new(o, "labels", l);
    }
    free(msg);
    return dump(o);
}

/* The spec's colours by severity; a resolution is green whatever its
 * severity, so a channel reader tells the two apart at a glance. */
static const char *slack_color(const rt_alert_note_t *note)
{
    static const char *const c[] = {"#36a64f", "#ff9800", "#f44336", "#9c27b0"};
    if (is_resolved(note)) return "#36a64f";
    return (unsigned)note->severity < 4 ? c[note->severity] : "#ff9800";
}

char *rt_notify_slack_body(const rt_alert_note_t *note)
{
    char *msg = rt_notify_message(note);
    char title[200];
    snprintf(title, sizeof title, "%s %s%s", is_resolved(note) ? "\u2705" : "\U0001F514",
             note->rule, is_resolved(note) ? " resolved" : "");
    json_t *a = json_object();
    json_object_set_new(a, "color", json_string(slack_color(note)));
    json_object_set_new(a, "title", json_string(title));
    json_object_set_new(a, "text", json_string(msg));
    json_object_set_new(a, "footer", json_string("Bridge Lite Alert System"));
    json_object_set_new(a, "ts", json_integer((json_int_t)(note->at_ns / 1000000000u)));
    json_t *o = json_object();
    json_object_set_new(o, "attachments", json_pack("[o]", a));
    free(msg);
    return dump(o);
}

/* Appends s with every line ending made CRLF (SMTP requires it). */
static void append_crlf(char **buf, size_t *len, size_t *cap, const char *s)
{
    for (; *s; s++) {
        if (*len + 3 > *cap) {
            *cap = *cap ? *cap * 2 : 1024;
            *buf = realloc(*buf, *cap);
            if (!*buf) abort();
        }
        if (*s == '\r') continue;
        if (*s == '\n') (*buf)[(*len)++] = '\r';
        (*buf)[(*len)++] = *s;
    }
    (*buf)[*len] = '\0';
}

char *rt_notify_email_body(const rt_alert_note_t *note, const char *from, const char *to)
{
    char date[64], tag[32];
    time_t t = (time_t)(note->at_ns / 1000000000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(date, sizeof date, "%s, %02d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday,
             mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    upper(tag, sizeof tag, is_resolved(note) ? "resolved" : rt_alert_sev_name(note->severity));
    char *msg = rt_notify_message(note), *head = NULL;
    if (asprintf(&head,
                 "Date: %s\nFrom: %s\nTo: %s\nSubject: [%s] %s\nMIME-Version: 1.0\n"
                 "Content-Type: text/plain; charset=utf-8\nX-Mailer: rtbridge %s\n\n",
                 date, from, to, tag, note->rule, RT_VERSION) < 0)
        abort();
    char *buf = NULL;
    size_t len = 0, cap = 0;
    append_crlf(&buf, &len, &cap, head);
    append_crlf(&buf, &len, &cap, msg);
    append_crlf(&buf, &len, &cap, "\n");
    free(head);
    free(msg);
    return buf;
}

/* ---- requests ----------------------------------------------------------------------- */

static size_t discard_cb(char *p, size_t size, size_t nmemb, void *arg)
{
    (void)p;
    (void)arg;
    return size * nmemb;
}

static size_t read_cb(char *dst, size_t size, size_t nmemb, void *arg)
{
    req_t *r = arg;
    size_t want = size * nmemb, left = r->body_len - r->read_off;
    if (want > left) want = left;
    memcpy(dst, r->body + r->read_off, want);
    r->read_off += want;
    return want;
}

static void req_closed_cb(uv_handle_t *h)
{
    req_t *r = h->data;
    free(r->body);
    free(r);
}

static void req_free(req_t *r)
{
    rt_notifier_t *n = r->n;
    if (r->in_multi) curl_multi_remove_handle(n->multi, r->easy);
    r->in_multi = 0;
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    curl_slist_free_all(r->rcpt);
    if (r->prev)
        r->prev->next = r->next;
    else
        n->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    n->pending--;
    uv_close((uv_handle_t *)&r->retry, req_closed_cb);
}

static void start_attempt(req_t *r)
{
    r->attempt++;
    r->read_off = 0;
    r->errbuf[0] = '\0';
    CURLMcode mc = curl_multi_add_handle(r->n->multi, r->easy);
    if (mc != CURLM_OK) {
        rt_warn(COMP, "%s notification for rule %s: cannot start: %s",
                rt_alert_channel_name(r->channel), r->rule, curl_multi_strerror(mc));
        atomic_fetch_add(&r->n->stats.failed[r->ch_idx], 1);
        req_free(r);
        return;
    }
    r->in_multi = 1;
}

static void on_retry(uv_timer_t *t)
{
    start_attempt(t->data);
}

static void finished(req_t *r, CURLcode res)
{
    rt_notifier_t *n = r->n;
    long code = 0;
    char why[CURL_ERROR_SIZE + 64];
    int ok = res == CURLE_OK;
    if (ok && r->channel != RT_CH_EMAIL) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        ok = code >= 200 && code < 300;
        snprintf(why, sizeof why, "HTTP status %ld", code);
    } else if (!ok) {
        snprintf(why, sizeof why, "%s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
    }
    curl_multi_remove_handle(n->multi, r->easy);
    r->in_multi = 0;
    if (ok) {
        atomic_fetch_add(&n->stats.sent[r->ch_idx], 1);
        rt_debug(COMP, "%s notification for rule %s delivered (attempt %d)",
                 rt_alert_channel_name(r->channel), r->rule, r->attempt);
        req_free(r);
        return;
    }
    /* The URL is not in why: curl's messages name the host at most. */
    if (r->attempt < n->o.tries) {
        int64_t delay = n->o.backoff_ms;
        for (int i = 1; i < r->attempt; i++)
            delay *= 2;
        rt_warn(COMP,
                "%s notification for rule %s failed (attempt %d of %d: %s); retrying in %lld ms",
                rt_alert_channel_name(r->channel), r->rule, r->attempt, n->o.tries, why,
                (long long)delay);
        atomic_fetch_add(&n->stats.retries[r->ch_idx], 1);
        uv_timer_start(&r->retry, on_retry, (uint64_t)delay, 0);
        return;
    }
    rt_error(COMP, "%s notification for rule %s failed after %d attempts: %s",
             rt_alert_channel_name(r->channel), r->rule, r->attempt, why);
    atomic_fetch_add(&n->stats.failed[r->ch_idx], 1);
    req_free(r);
}

static void check_done(rt_notifier_t *n)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(n->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        req_t *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode res = m->data.result; /* m is invalid after remove_handle */
        if (r) finished(r, res);
    }
}

/* ---- curl <-> libuv ---------------------------------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_ctx_t *s = h->data;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(s->n->multi, s->fd, flags, &running);
    check_done(s->n);
}

static void sock_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void sock_close(rt_notifier_t *n, sock_ctx_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        n->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed_cb);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)e;
    rt_notifier_t *n = userp;
    sock_ctx_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_close(n, s);
            curl_multi_assign(n->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) abort();
        s->fd = fd;
        s->n = n;
        if (uv_poll_init_socket(n->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->next = n->socks;
        if (n->socks) n->socks->prev = s;
        n->socks = s;
        curl_multi_assign(n->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *t)
{
    rt_notifier_t *n = t->data;
    int running;
    curl_multi_socket_action(n->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(n);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    rt_notifier_t *n = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&n->timer);
    else
        uv_timer_start(&n->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- public ---------------------------------------------------------------------- */

/* curl_global_init is not thread-safe in every build of libcurl: once. */
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

rt_notifier_t *rt_notifier_new(uv_loop_t *loop, const rt_notify_opts_t *opts)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, curl_init_once);
    rt_notifier_t *n = calloc(1, sizeof *n);
    if (!n) abort();
    n->loop = loop;
    n->o.webhook_url = xstrdup_or_null(opts->webhook_url);
    n->o.slack_url = xstrdup_or_null(opts->slack_url);
    n->o.smtp_from = xstrdup_or_null(opts->smtp_from);
    n->o.smtp_to = xstrdup_or_null(opts->smtp_to);
    n->o.timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    n->o.tries = opts->tries > 0 ? opts->tries : 3;
    n->o.backoff_ms = opts->backoff_ms > 0 ? opts->backoff_ms : 1000;
    if (opts->smtp_url && *opts->smtp_url) {
        const char *u = opts->smtp_url;
        if (strncmp(u, "smtp+starttls://", 16) == 0) {
            n->starttls = 1;
            if (asprintf(&n->smtp_url, "smtp://%s", u + 16) < 0) abort();
        } else {
            n->smtp_url = xstrdup_or_null(u);
        }
        n->o.smtp_url = n->smtp_url;
    }
    n->multi = curl_multi_init();
    if (!n->multi) abort();
    curl_multi_setopt(n->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(n->multi, CURLMOPT_SOCKETDATA, n);
    curl_multi_setopt(n->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(n->multi, CURLMOPT_TIMERDATA, n);
    uv_timer_init(loop, &n->timer);
    n->timer.data = n;
    return n;
}

/* Builds one request for channel; NULL when the channel lacks its settings. */
static req_t *req_new(rt_notifier_t *n, const rt_alert_note_t *note, unsigned channel)
{
    const char *url = channel == RT_CH_WEBHOOK ? n->o.webhook_url
                      : channel == RT_CH_SLACK ? n->o.slack_url
                                               : n->o.smtp_url;
    if (!url || (channel == RT_CH_EMAIL && (!n->o.smtp_from || !n->o.smtp_to))) return NULL;
    req_t *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->n = n;
    r->channel = channel;
    r->ch_idx = ch_index(channel);
    snprintf(r->rule, sizeof r->rule, "%s", note->rule);
    r->easy = curl_easy_init();
    if (!r->easy) abort();
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)n->o.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)n->o.timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard_cb);
    if (channel == RT_CH_EMAIL) {
        r->body = rt_notify_email_body(note, n->o.smtp_from, n->o.smtp_to);
        curl_easy_setopt(e, CURLOPT_MAIL_FROM, n->o.smtp_from);
        char *to = strdup(n->o.smtp_to), *save = NULL;
        if (!to) abort();
        for (char *a = strtok_r(to, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
            while (*a == ' ')
                a++;
            if (*a) r->rcpt = curl_slist_append(r->rcpt, a);
        }
        free(to);
        curl_easy_setopt(e, CURLOPT_MAIL_RCPT, r->rcpt);
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(e, CURLOPT_READDATA, r);
        if (n->starttls) curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    } else {
        r->body =
            channel == RT_CH_SLACK ? rt_notify_slack_body(note) : rt_notify_webhook_body(note);
        r->headers = curl_slist_append(NULL, "Content-Type: application/json");
        /* No "Expect: 100-continue" round trip (and its 1 s wait) for a body
         * the receiver will take anyway. */
        r->headers = curl_slist_append(r->headers, "Expect:");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "rtbridge/" RT_VERSION);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    }
    r->body_len = strlen(r->body);
    if (channel != RT_CH_EMAIL) curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->body_len);
    uv_timer_init(n->loop, &r->retry);
    r->retry.data = r;
    r->next = n->reqs;
    if (n->reqs) n->reqs->prev = r;
    n->reqs = r;
    n->pending++;
    return r;
}

static void log_note(rt_notifier_t *n, const rt_alert_note_t *note)
{
    char *msg = rt_notify_message(note);
    for (char *p = msg; *p; p++)
        if (*p == '\n') *p = ' ';
    if (is_resolved(note))
        rt_info("alerts", "%s", msg);
    else
        rt_warn("alerts", "%s", msg);
    free(msg);
    atomic_fetch_add(&n->stats.sent[0], 1);
}

void rt_notifier_send(rt_notifier_t *n, const rt_alert_note_t *note, unsigned channels)
{
    if (n->closing) return;
    for (int i = 0; i < RT_CH_COUNT; i++) {
        unsigned ch = 1u << i;
        if (!(channels & ch)) continue;
        if (ch == RT_CH_LOG) {
            log_note(n, note);
            continue;
        }
        req_t *r = req_new(n, note, ch);
        if (!r) {
            rt_error(COMP, "%s notification for rule %s: channel not configured",
                     rt_alert_channel_name(ch), note->rule);
            atomic_fetch_add(&n->stats.failed[i], 1);
            continue;
        }
        start_attempt(r);
    }
}

size_t rt_notifier_pending(const rt_notifier_t *n)
{
    return n->pending;
}

void rt_notifier_close(rt_notifier_t *n)
{
    if (n->closing) return;
    n->closing = 1;
    if (n->pending) rt_warn(COMP, "abandoning %zu notification(s) in flight", n->pending);
    while (n->reqs)
        req_free(n->reqs);
    curl_multi_cleanup(n->multi);
    n->multi = NULL;
    while (n->socks)
        sock_close(n, n->socks);
    uv_close((uv_handle_t *)&n->timer, NULL);
}

void rt_notifier_free(rt_notifier_t *n)
{
    if (!n) return;
    free((char *)n->o.webhook_url);
    free((char *)n->o.slack_url);
    free((char *)n->o.smtp_from);
    free((char *)n->o.smtp_to);
    free(n->smtp_url);
    free(n);
}

rt_notify_stats_t *rt_notifier_stats(rt_notifier_t *n)
{
    return &n->stats;
}
