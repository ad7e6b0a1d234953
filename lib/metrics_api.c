/*
 * The dashboard API and the named values of the metrics aggregator (see
 * metrics.h): everything here reads a snapshot and renders, on the calling
 * thread, except timelines older than the in-memory buckets, which go to the
 * query thread (metrics.c) and are answered by rt__timeline_sql_reply there.
 *
 * Time: timestamps without a time zone (the spec's intents.created_at) are
 * read as UTC, as the spec's utcnow() comparisons do; timeline buckets are
 * UTC minutes, hours and days, and a range covers whole buckets: from the one
 * holding start to the one holding end.
 */
#include "metrics-internal.h"

#include "etl.h"
#include "fanout.h"
#include "listener.h"
#include "log.h"
#include "pgconn.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMP "metrics"
#define DASH "/api/v1/dashboard/"
#define NO_STORE "Cache-Control: no-store\r\n"

/* ---- pure helpers ---------------------------------------------------------------------- */

int64_t rt__days_from_civil(int64_t y, unsigned m, unsigned d)
{
    /* Howard Hinnant's days_from_civil. */
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int read_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') return 0;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 1;
}

int rt__iso_parse(const char *s, int64_t *out)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, se = 0;
    if (!s || !read_digits(&p, 4, &y) || *p++ != '-' || !read_digits(&p, 2, &mo) || *p++ != '-' ||
        !read_digits(&p, 2, &d))
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && is_leap(y))) return -EINVAL;
    if ((*p == 'T' || *p == 't' || *p == ' ') && p[1] >= '0' && p[1] <= '9') {
        p++;
        if (!read_digits(&p, 2, &h) || *p++ != ':' || !read_digits(&p, 2, &mi)) return -EINVAL;
        if (*p == ':') {
            p++;
            if (!read_digits(&p, 2, &se)) return -EINVAL;
            if (*p == '.' || *p == ',') {
                p++;
                if (*p < '0' || *p > '9') return -EINVAL;
                while (*p >= '0' && *p <= '9')
                    p++;
            }
        }
        if (h > 23 || mi > 59 || se > 59) return -EINVAL;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-' || *p == ' ') {
        int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
        if (!read_digits(&p, 2, &oh)) return -EINVAL;
        if (*p == ':') p++;
        if (*p >= '0' && *p <= '9' && !read_digits(&p, 2, &om)) return -EINVAL;
        if (oh > 23 || om > 59) return -EINVAL;
        off = sign * (oh * 3600 + om * 60);
    }
    if (*p) return -EINVAL;
    *out =
        rt__days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se - off;
    return 0;
}

size_t rt__iso_format(char *buf, size_t cap, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    return strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void rt__sql_time(char *buf, size_t cap, int64_t t)
{
    rt__iso_format(buf, cap, t);
    char *sep = strchr(buf, 'T'), *z = strchr(buf, 'Z');
    if (sep) *sep = ' ';
    if (z) snprintf(z, cap - (size_t)(z - buf), "+00");
}

int64_t rt__floor_to(int64_t t, int64_t g)
{
    int64_t r = t % g;
    return r < 0 ? t - r - g : t - r;
}

int64_t rt__bucket_count(int64_t start, int64_t end, int64_t g)
{
    return (rt__floor_to(end, g) - rt__floor_to(start, g)) / g + 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int rt__query_get(const char *query, const char *key, char *buf, size_t cap)
{
    size_t klen = strlen(key);
    int found = 0;
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            if (found) return -EEXIST;
            found = 1;
            size_t n = 0;
            for (const char *v = p + klen + 1; v < p + len; v++) {
                char c = *v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    int hi = v + 2 < p + len ? hexval(v[1]) : -1;
                    int lo = hi >= 0 ? hexval(v[2]) : -1;
                    if (lo < 0) return -EINVAL;
                    c = (char)(hi * 16 + lo);
                    v += 2;
                }
                if (c == '\0' || n + 1 >= cap) return -EINVAL;
                buf[n++] = c;
            }
            buf[n] = '\0';
        } else if (len == klen && strncmp(p, key, klen) == 0) {
            if (found) return -EEXIST;
            found = 1;
            buf[0] = '\0';
        }
        p = amp ? amp + 1 : NULL;
    }
    return found;
}

/* ---- replies -------------------------------------------------------------------------------- */

static void reply_json(rt_reply_t *out, char *body)
{
    rt_reply_owned(out, 200, "application/json", body, strlen(body));
    snprintf(out->headers, sizeof out->headers, NO_STORE);
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    json_decref(j);
    if (!s) abort();
    return s;
}

static double round_to(double x, double unit)
{
    return round(x / unit) * unit;
}

char *rt__overview_json(rt_metrics_t *m, const rt_m_snap_t *s)
{
    const rt_metrics_opts_t *o = &rt__metrics_pub(m)->opts;
    json_t *dist = json_object();
    for (int i = 0; i < s->nstatus; i++)
        if (s->status[i].active != 0)
            json_object_set_new(dist, s->status[i].name, json_integer(s->status[i].active));
    double rate = s->total_intents > 0 ? (double)s->corr_intents / (double)s->total_intents : 0;
    long ws = 0, sse = 0;
    if (o->fanout) {
        rt_fanout_stats_t fs;
        rt_fanout_stats(o->fanout, &fs);
        ws = fs.active[RT_TRANSPORT_WS];
        sse = fs.active[RT_TRANSPORT_SSE];
    }
    json_t *lag = o->etl ? json_real((double)atomic_load(&rt_etl_stats(o->etl)->lag_ms) / 1000.0)
                         : json_null();
    json_t *j =
        json_pack("{s:I,s:o,s:{s:I,s:I,s:I},s:f,s:I,s:i,s:i,s:f,s:o}", "total_intents",
                  (json_int_t)s->total_intents, "status_distribution", dist, "recent_activity",
                  "last_hour", (json_int_t)s->last_hour, "last_24h", (json_int_t)s->last_24h,
                  "last_7d", (json_int_t)s->last_7d, "correction_rate", round_to(rate, 0.001),
                  "avg_processing_time_ms", (json_int_t)s->avg_proc_ms_1d, "active_websockets",
                  (int)ws, "active_sse", (int)sse, "events_per_second",
                  round_to((double)s->events_last_60s / 60.0, 0.01), "etl_lag_seconds", lag);
    if (!j) abort();
    return dump(j);
}

/* [{"time":ISO,"count":N},...] for counts[0..n) from bucket start b0. */
#define OVERVIEW_CACHE_MS 50

/* The overview body (malloc'd copy): the cached one while the snapshot is
 * the same and it is younger than OVERVIEW_CACHE_MS (the live connection
 * counts and ETL lag in it are then at most that old), else a new one. */
static char *overview_cached(rt_metrics_t *m)
{
    struct rt_metrics_pub *pub = rt__metrics_pub(m);
    rt_m_snap_t *s = rt__snap_acquire(m);
    uint64_t now = rt_mono_ns();
    char *body = NULL;
    pthread_mutex_lock(&pub->ov_mu);
    if (pub->ov_body && pub->ov_snap_ns == s->now_ns &&
        now - pub->ov_mono_ns < OVERVIEW_CACHE_MS * 1000000ull)
        body = strdup(pub->ov_body);
    pthread_mutex_unlock(&pub->ov_mu);
    if (!body) {
        body = rt__overview_json(m, s);
        char *copy = strdup(body);
        pthread_mutex_lock(&pub->ov_mu);
        free(pub->ov_body);
        pub->ov_body = copy;
        pub->ov_snap_ns = s->now_ns;
        pub->ov_mono_ns = now;
        pthread_mutex_unlock(&pub->ov_mu);
    }
    rt__snap_release(s);
    if (!body) abort();
    return body;
}

static char *timeline_json(int64_t b0, int64_t g, const int64_t *counts, int64_t n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) abort();
    fputc('[', f);
    for (int64_t i = 0; i < n; i++) {
        char t[40];
        rt__iso_format(t, sizeof t, b0 + i * g);
        fprintf(f, "%s{\"time\":\"%s\",\"count\":%" PRId64 "}", i ? "," : "", t, counts[i]);
    }
    fputc(']', f);
    fclose(f);
    return buf;
}

static int64_t *alloc_counts(int64_t n)
{
    int64_t *c = calloc((size_t)n, sizeof *c);
    if (!c) abort();
    return c;
}

static void timeline_from_memory(const rt_m_snap_t *s, int64_t start, int64_t end, int64_t g,
                                 rt_reply_t *out)
{
    int64_t b0 = rt__floor_to(start, g), n = rt__bucket_count(start, end, g);
    int64_t *counts = alloc_counts(n);
    int64_t first_min = s->now_min - (RT_M_MINUTES - 1);
    for (int64_t i = 0; i < RT_M_MINUTES; i++) {
        if (!s->minutes[i]) continue;
        int64_t b = ((first_min + i) * 60 - b0);
        if (b < 0) continue;
        b /= g;
        if (b < n) counts[b] += s->minutes[i];
    }
    reply_json(out, timeline_json(b0, g, counts, n));
    free(counts);
}

void rt__timeline_sql_reply(PGconn *conn, int64_t start, int64_t end, int64_t g, rt_reply_t *out)
{
    if (!conn) {
        rt_reply_json_error(out, 503, "database unavailable", NULL);
        return;
    }
    int64_t b0 = rt__floor_to(start, g), n = rt__bucket_count(start, end, g);
    char from[40], to[40], gs[24];
    rt__sql_time(from, sizeof from, b0);
    rt__sql_time(to, sizeof to, b0 + n * g);
    snprintf(gs, sizeof gs, "%" PRId64, g);
    const char *params[3] = {from, to, gs};
    PGresult *r = PQexecParams(conn,
                               "SELECT floor(extract(epoch FROM created_at) / $3::bigint)::bigint, "
                               "count(*) FROM intents WHERE created_at >= $1 AND created_at < $2 "
                               "GROUP BY 1",
                               3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        rt_warn(COMP, "timeline query failed: %s", rt_pg_oneline(msg));
        PQclear(r);
        rt_reply_json_error(out, 503, "timeline query failed", NULL);
        return;
    }
    int64_t *counts = alloc_counts(n);
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t b = strtoll(PQgetvalue(r, i, 0), NULL, 10) * g - b0;
        if (b >= 0 && b / g < n) counts[b / g] += strtoll(PQgetvalue(r, i, 1), NULL, 10);
    }
    PQclear(r);
    reply_json(out, timeline_json(b0, g, counts, n));
    free(counts);
}

/* Reads a required ISO time parameter; fills a 400 and returns -1 if bad. */
static int time_param(const char *query, const char *name, int64_t *out, rt_reply_t *r)
{
    char v[80], msg[120];
    int rc = rt__query_get(query, name, v, sizeof v);
    if (rc == 0 || (rc == 1 && !v[0])) {
        snprintf(msg, sizeof msg, "missing parameter %s (an ISO 8601 time)", name);
    } else if (rc == -EEXIST) {
        snprintf(msg, sizeof msg, "parameter %s given twice", name);
    } else if (rc < 0 || rt__iso_parse(v, out) < 0) {
        snprintf(msg, sizeof msg,
                 "%s is not an ISO 8601 time (e.g. 2025-12-03T10:00:00Z or +09:00)", name);
    } else {
        return 0;
    }
    rt_reply_json_error(r, 400, msg, name);
    return -1;
}

static rt_handle_result_t timeline(rt_metrics_t *m, const char *query, rt_reply_t *out,
                                   rt_reply_done_cb done, void *done_arg)
{
    int64_t start, end, g = 3600;
    if (time_param(query, "start", &start, out) < 0 || time_param(query, "end", &end, out) < 0)
        return RT_HANDLE_DONE;
    char v[32];
    int rc = rt__query_get(query, "granularity", v, sizeof v);
    if (rc == -EEXIST) {
        rt_reply_json_error(out, 400, "parameter granularity given twice", "granularity");
        return RT_HANDLE_DONE;
    }
    if (rc == 1 && strcmp(v, "minute") == 0)
        g = 60;
    else if (rc == 1 && strcmp(v, "day") == 0)
        g = 86400;
    else if (rc != 0 && (rc != 1 || strcmp(v, "hour") != 0)) {
        rt_reply_json_error(out, 400, "granularity must be minute, hour or day", "granularity");
        return RT_HANDLE_DONE;
    }
    if (end < start) {
        rt_reply_json_error(out, 400, "end is before start", "end");
        return RT_HANDLE_DONE;
    }
    int64_t n = rt__bucket_count(start, end, g);
    if (n > RT_M_MAX_BUCKETS) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "the range has %" PRId64 " buckets, more than %d: use a coarser granularity or a "
                 "shorter range",
                 n, RT_M_MAX_BUCKETS);
        rt_reply_json_error(out, 400, msg, "granularity");
        return RT_HANDLE_DONE;
    }
    rt_m_snap_t *s = rt__snap_acquire(m);
    int in_memory = rt__floor_to(start, g) >= (s->now_min - (RT_M_MINUTES - 1)) * 60;
    if (in_memory) timeline_from_memory(s, start, end, g, out);
    rt__snap_release(s);
    if (in_memory) return RT_HANDLE_DONE;
    rc = rt__metrics_defer_timeline(m, start, end, g, done, done_arg);
    if (rc == 0) return RT_HANDLE_LATER;
    rt_reply_json_error(
        out, 503, rc == -EAGAIN ? "too many timeline queries pending" : "shutting down", NULL);
    return RT_HANDLE_DONE;
}

static rt_handle_result_t corrections(rt_metrics_t *m, const char *query, rt_reply_t *out)
{
    char v[32];
    long limit = 10;
    int rc = rt__query_get(query, "limit", v, sizeof v);
    if (rc != 0) {
        char *end = NULL;
        errno = 0;
        limit = rc == 1 ? strtol(v, &end, 10) : 0;
        if (rc != 1 || !v[0] || *end || errno || limit < 1 || limit > 100) {
            rt_reply_json_error(out, 400, "limit must be an integer from 1 to 100", "limit");
            return RT_HANDLE_DONE;
        }
    }
    rt_m_snap_t *s = rt__snap_acquire(m);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) abort();
    fputc('[', f);
    for (int i = 0; i < s->ncorr_items && i < limit; i++)
        fprintf(f, "%s%s", i ? "," : "", s->corr_items[i]);
    fputc(']', f);
    fclose(f);
    rt__snap_release(s);
    reply_json(out, buf);
    return RT_HANDLE_DONE;
}

rt_handle_result_t rt_metrics_handle(void *ctx, const char *path, const char *query,
                                     rt_reply_t *out, rt_reply_done_cb done, void *done_arg)
{
    rt_metrics_t *m = ctx;
    if (!query) query = "";
    if (strcmp(path, "/metrics") == 0) {
        rt_m_snap_t *s = rt__snap_acquire(m);
        size_t len;
        char *body = rt__prom_render(m, s, &len);
        rt__snap_release(s);
        rt_reply_owned(out, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
        snprintf(out->headers, sizeof out->headers, NO_STORE);
        return RT_HANDLE_DONE;
    }
    if (strncmp(path, DASH, strlen(DASH)) != 0) return RT_HANDLE_NOT_MINE;
    const char *what = path + strlen(DASH);
    if (strcmp(what, "overview") == 0) {
        reply_json(out, overview_cached(m));
        return RT_HANDLE_DONE;
    }
    if (strcmp(what, "timeline") == 0) return timeline(m, query, out, done, done_arg);
    if (strcmp(what, "corrections") == 0) return corrections(m, query, out);
    return RT_HANDLE_NOT_MINE;
}

/* ---- named values --------------------------------------------------------------------------- */

static const char *const value_names[] = {"intents_total",          "intents_created_10m",
                                          "intents_created_30m",    "intents_created_1h",
                                          "failed_rate_10m",        "correction_rate_1h",
                                          "avg_processing_time_ms", "avg_processing_time_s",
                                          "events_per_second",      "events_last_5m",
                                          "etl_lag_seconds",        "listener_connected",
                                          "active_connections",     "slow_consumer_disconnects",
                                          "ring_overflows",         NULL};

const char *const *rt_metrics_value_names(void)
{
    return value_names;
}

static double ratio(int64_t a, int64_t b)
{
    return b > 0 ? (double)a / (double)b : 0;
}

int rt_metrics_value(rt_metrics_t *m, const char *name, double *out)
{
    int i = 0;
    while (value_names[i] && strcmp(value_names[i], name) != 0)
        i++;
    if (!value_names[i]) return -1;
    const rt_metrics_opts_t *o = &rt__metrics_pub(m)->opts;
    rt_fanout_stats_t fs = {0};
    if (o->fanout) rt_fanout_stats(o->fanout, &fs);
    rt_m_snap_t *s = rt__snap_acquire(m);
    double v = 0;
    switch (i) {
    case 0:
        v = (double)s->total_intents;
        break;
    case 1:
        v = (double)s->created_10m;
        break;
    case 2:
        v = (double)s->created_30m;
        break;
    case 3:
        v = (double)s->last_hour;
        break;
    case 4:
        v = ratio(s->failed_10m, s->created_10m);
        break;
    case 5:
        v = ratio(s->corr_intents_1h, s->created_1h_rec);
        break;
    case 6:
        v = s->avg_proc_ms_10m;
        break;
    case 7:
        v = s->avg_proc_ms_10m / 1000.0;
        break;
    case 8:
        v = (double)s->events_last_60s / 60.0;
        break;
    case 9:
        v = (double)s->events_last_5m;
        break;
    case 10:
        v = o->etl ? (double)atomic_load(&rt_etl_stats(o->etl)->lag_ms) / 1000.0 : 0;
        break;
    case 11:
        v = o->listener ? atomic_load(&rt_listener_stats(o->listener)->connected) : 0;
        break;
    case 12:
        v = (double)(fs.active[RT_TRANSPORT_WS] + fs.active[RT_TRANSPORT_SSE]);
        break;
    case 13:
        v = (double)fs.slow_disconnects;
        break;
    default:
        for (unsigned k = 0; k < o->bus->nsubs; k++)
            v += (double)atomic_load(&o->bus->subs[k]->overflows);
        break;
    }
    rt__snap_release(s);
    *out = v;
    return 0;
}
