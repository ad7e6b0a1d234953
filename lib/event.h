/*
 * An event is one change that subscribers see: written once by its producer,
 * then only read, by any number of threads, until the last reference drops.
 *
 * Everything a subscriber sends is rendered here, once: the JSON message of
 * the WebSocket and tail protocols, that message framed as a WebSocket text
 * frame (server frames are unmasked, so the bytes are the same for every
 * client), and the Server-Sent Events chunk. A fan-out loop then only filters
 * and queues pointers.
 *
 * The whole event is one allocation: header, then the strings.
 */
#ifndef RT_EVENT_H
#define RT_EVENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    RT_EV_INTENT_UPDATE = 0,
    RT_EV_AUDIT_LOG,
    RT_EV_STATS_UPDATED,
    RT_EV_ALERT_FIRING,
    RT_EV_ALERT_RESOLVED,
    RT_EV_HEALTH_CHANGED,
    RT_EV_SYSTEM_NOTIFICATION,
    RT_EV__COUNT
} rt_event_type_t;

typedef struct rt_event {
    atomic_uint refs;
    rt_event_type_t type;
    int64_t seq;          /* journal id; 0 for events that are not journaled */
    uint64_t recv_ns;     /* CLOCK_REALTIME when the listener received it */
    const char *channel;  /* NOTIFY channel, "" for others */
    const char *key;      /* routing key (intent_id), "" when none */
    const char *body;     /* the notify payload (JSON object) */
    size_t body_len;
    const char *msg;      /* {"type":..,"id":..,"data":..,"timestamp":..} */
    size_t msg_len;
    const char *ws_frame; /* msg as one unmasked WebSocket text frame */
    size_t ws_frame_len;
    const char *sse;      /* "id: ..\nevent: ..\ndata: ..\n\n" */
    size_t sse_len;
} rt_event_t;

/* Wire name ("intent_update", ...) and back; from_name returns -1 if unknown. */
const char *rt_event_type_name(rt_event_type_t t);
int rt_event_type_from_name(const char *name);

/* Builds an event with one reference owned by the caller. body must be a JSON
 * value (it is embedded verbatim in the rendered encodings). Aborts on OOM. */
rt_event_t *rt_event_new(rt_event_type_t type, int64_t seq, const char *channel, const char *key,
                         const char *body, size_t body_len, uint64_t recv_ns);

static inline rt_event_t *rt_event_ref(rt_event_t *ev)
{
    atomic_fetch_add_explicit(&ev->refs, 1, memory_order_relaxed);
    return ev;
}

/* Drops one reference; the last one frees. Any thread. */
void rt_event_unref(rt_event_t *ev);

/* Adds n references at once (the bus takes one per ring). */
static inline void rt_event_ref_n(rt_event_t *ev, unsigned n)
{
    atomic_fetch_add_explicit(&ev->refs, n, memory_order_relaxed);
}

/* Result of parsing a NOTIFY payload. */
typedef enum {
    RT_PARSE_OK = 0,      /* event built */
    RT_PARSE_BY_REF,      /* payload is {"seq":N,"ref":true}: fetch row N from rt_journal */
    RT_PARSE_BAD_JSON,    /* not a JSON object */
    RT_PARSE_MISSING,     /* a required field is missing or has the wrong type */
} rt_parse_result_t;

/* Turns the payload of a notification on channel into an event (*out, one
 * reference), or says why not. *seq_out receives the seq when one could be
 * read (also for BY_REF and MISSING), else 0. why (may be NULL) gets a short
 * reason for logs. Channels: intent_changed → intent_update keyed by
 * intent_id; audit_log_created → audit_log keyed by intent_id (log_id
 * required); any other channel → the payload's "type" if it names a known
 * event type, else system_notification. seq is required on every channel. */
rt_parse_result_t rt_event_parse_notify(const char *channel, const char *payload, size_t len,
                                        uint64_t recv_ns, rt_event_t **out, int64_t *seq_out,
                                        char *why, size_t whylen);

/* Formats a CLOCK_REALTIME ns value as ISO 8601 UTC with milliseconds
 * ("2026-01-02T03:04:05.678Z"); returns the length. */
size_t rt_format_time(char *buf, size_t cap, uint64_t ns);

/* Current CLOCK_REALTIME in nanoseconds. */
uint64_t rt_now_ns(void);
/* Monotonic clock in nanoseconds. */
uint64_t rt_mono_ns(void);

#endif
