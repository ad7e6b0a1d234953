/*
 * Events: parse a NOTIFY payload once, render every wire encoding once, share
 * the bytes by reference count. See event.h for the contract.
 */
#include "event.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const type_names[RT_EV__COUNT] = {
    "intent_update",  "audit_log",      "stats_updated",      "alert_firing",
    "alert_resolved", "health_changed", "system_notification",
};

const char *rt_event_type_name(rt_event_type_t t)
{
    return (unsigned)t < RT_EV__COUNT ? type_names[t] : "unknown";
}

int rt_event_type_from_name(const char *name)
{
    for (int i = 0; i < RT_EV__COUNT; i++)
        if (strcmp(name, type_names[i]) == 0) return i;
    return -1;
}

uint64_t rt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t rt_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t rt_format_time(char *buf, size_t cap, uint64_t ns)
{
    time_t sec = (time_t)(ns / 1000000000u);
    struct tm tm;
    gmtime_r(&sec, &tm);
    return (size_t)snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                            (unsigned)(ns % 1000000000u / 1000000u));
}

/* A WebSocket frame header for an unmasked, final text frame of len bytes. */
static size_t ws_header(unsigned char *h, size_t len)
{
    h[0] = 0x81;
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

rt_event_t *rt_event_new(rt_event_type_t type, int64_t seq, const char *channel, const char *key,
                         const char *body, size_t body_len, uint64_t recv_ns)
{
    if (!channel) channel = "";
    if (!key) key = "";
    const char *tname = rt_event_type_name(type);
    size_t chan_len = strlen(channel), key_len = strlen(key);

    char when[80];
    rt_format_time(when, sizeof when, recv_ns);
    char seqs[24];
    snprintf(seqs, sizeof seqs, "%" PRId64, seq);

    /* {"type":"T","id":S,"data":B,"timestamp":"W"} */
    size_t msg_len = strlen("{\"type\":\"\",\"id\":,\"data\":,\"timestamp\":\"\"}") + strlen(tname) +
                     strlen(seqs) + body_len + strlen(when);
    unsigned char hdr[10];
    size_t hdr_len = ws_header(hdr, msg_len);
    /* id: S\nevent: T\ndata: B\n\n. An event that is not journaled (seq 0:
     * stats_updated, application events) has no id line: a browser keeps
     * the last id it had, where "id: 0" would make it resume from 0, and be
     * sent everything the journal still holds. */
    int sse_id = seq > 0;
    size_t sse_len = strlen("event: \ndata: \n\n") +
                     (sse_id ? strlen("id: \n") + strlen(seqs) : 0) + strlen(tname) + body_len;

    size_t total = sizeof(rt_event_t) + chan_len + 1 + key_len + 1 + body_len + 1 + hdr_len +
                   msg_len + 1 + sse_len + 1;
    rt_event_t *ev = malloc(total);
    if (!ev) abort();
    char *p = (char *)(ev + 1);

    atomic_init(&ev->refs, 1);
    ev->type = type;
    ev->seq = seq;
    ev->recv_ns = recv_ns;

    memcpy(p, channel, chan_len + 1);
    ev->channel = p;
    p += chan_len + 1;
    memcpy(p, key, key_len + 1);
    ev->key = p;
    p += key_len + 1;
    memcpy(p, body, body_len);
    p[body_len] = '\0';
    ev->body = p;
    ev->body_len = body_len;
    p += body_len + 1;

    /* The frame header sits right before the message so the frame is the
     * header and the message, contiguous. */
    memcpy(p, hdr, hdr_len);
    ev->ws_frame = p;
    ev->ws_frame_len = hdr_len + msg_len;
    p += hdr_len;
    int n = snprintf(p, msg_len + 1, "{\"type\":\"%s\",\"id\":%s,\"data\":", tname, seqs);
    memcpy(p + n, body, body_len);
    n += (int)body_len;
    n += snprintf(p + n, msg_len + 1 - (size_t)n, ",\"timestamp\":\"%s\"}", when);
    assert((size_t)n == msg_len);
    ev->msg = p;
    ev->msg_len = msg_len;
    p += msg_len + 1;

    n = sse_id ? snprintf(p, sse_len + 1, "id: %s\nevent: %s\ndata: ", seqs, tname)
               : snprintf(p, sse_len + 1, "event: %s\ndata: ", tname);
    memcpy(p + n, body, body_len);
    n += (int)body_len;
    memcpy(p + n, "\n\n", 3);
    n += 2;
    assert((size_t)n == sse_len);
    ev->sse = p;
    ev->sse_len = sse_len;
    return ev;
}

void rt_event_unref(rt_event_t *ev)
{
    /* acq_rel: the freeing thread must see every write made before the other
     * threads dropped their references. */
    if (atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1) free(ev);
}

static void set_why(char *why, size_t whylen, const char *fmt, const char *arg)
{
    if (why && whylen) snprintf(why, whylen, fmt, arg);
}

rt_parse_result_t rt_event_parse_notify(const char *channel, const char *payload, size_t len,
                                        uint64_t recv_ns, rt_event_t **out, int64_t *seq_out,
                                        char *why, size_t whylen)
{
    *out = NULL;
    *seq_out = 0;
    json_error_t jerr;
    json_t *root = json_loadb(payload, len, 0, &jerr);
    if (!root) {
        set_why(why, whylen, "invalid JSON: %s", jerr.text);
        return RT_PARSE_BAD_JSON;
    }
    rt_parse_result_t res = RT_PARSE_MISSING;
    if (!json_is_object(root)) {
        set_why(why, whylen, "%s", "payload is not a JSON object");
        res = RT_PARSE_BAD_JSON;
        goto done;
    }
    json_t *jseq = json_object_get(root, "seq");
    if (!json_is_integer(jseq) || json_integer_value(jseq) <= 0) {
        set_why(why, whylen, "%s", "missing or invalid \"seq\"");
        goto done;
    }
    int64_t seq = (int64_t)json_integer_value(jseq);
    *seq_out = seq;
    if (json_is_true(json_object_get(root, "ref"))) {
        res = RT_PARSE_BY_REF;
        goto done;
    }

    rt_event_type_t type;
    const char *key = "";
    json_t *jid = json_object_get(root, "intent_id");
    if (strcmp(channel, "intent_changed") == 0) {
        type = RT_EV_INTENT_UPDATE;
        if (!json_is_string(jid)) {
            set_why(why, whylen, "%s", "missing or invalid \"intent_id\"");
            goto done;
        }
    } else if (strcmp(channel, "audit_log_created") == 0) {
        type = RT_EV_AUDIT_LOG;
        if (!json_is_integer(json_object_get(root, "log_id"))) {
            set_why(why, whylen, "%s", "missing or invalid \"log_id\"");
            goto done;
        }
    } else {
        json_t *jt = json_object_get(root, "type");
        int t = json_is_string(jt) ? rt_event_type_from_name(json_string_value(jt)) : -1;
        type = t >= 0 ? (rt_event_type_t)t : RT_EV_SYSTEM_NOTIFICATION;
    }
    if (json_is_string(jid)) key = json_string_value(jid);

    /* Embedded verbatim unless it contains a line break, which would split an
     * SSE data line; then it is re-serialised compactly. */
    if (memchr(payload, '\n', len) || memchr(payload, '\r', len)) {
        char *compact = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!compact) abort();
        *out = rt_event_new(type, seq, channel, key, compact, strlen(compact), recv_ns);
        free(compact);
    } else {
        *out = rt_event_new(type, seq, channel, key, payload, len, recv_ns);
    }
    res = RT_PARSE_OK;
done:
    json_decref(root);
    return res;
}
