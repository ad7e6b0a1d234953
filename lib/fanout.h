/*
 * The fan-out pool: N threads, each with its own libuv loop, its own
 * listening socket on the shared address (SO_REUSEPORT: the kernel spreads
 * connections over the loops), its own connections and its own bus ring.
 * Nothing about a connection is shared between threads, so delivering an
 * event takes no lock: per subscriber it is a filter check, a reference and a
 * pointer in the connection's queue; queued events go out several per write.
 *
 * Serves the HTTP surface of DESIGN §5: WebSocket and SSE streams with
 * filters and resume, health endpoints. See fanout.c for the connection state
 * machine.
 *
 * Threads: new/start/shutdown/free from the main thread. The stats are
 * atomics, readable from any thread.
 */
#ifndef RT_FANOUT_H
#define RT_FANOUT_H

#include "bus.h"
#include "config.h"
#include "listener.h"
#include "reply.h"

#include <stdint.h>

typedef enum { RT_TRANSPORT_WS = 0, RT_TRANSPORT_SSE, RT_TRANSPORT_HTTP, RT_TRANSPORT__COUNT } rt_transport_t;

/* Why a connection was refused or cut off (for realtime_refused_connections_total). */
typedef enum {
    RT_REFUSE_MAX_CONNS = 0,
    RT_REFUSE_PER_IP,
    RT_REFUSE_ORIGIN,
    RT_REFUSE_AUTH,
    RT_REFUSE_BAD_REQUEST,
    RT_REFUSE_HEADER_TOO_LARGE,
    RT_REFUSE_HEADER_TIMEOUT,
    RT_REFUSE_RATE_LIMIT,
    RT_REFUSE_NOT_FOUND,
    RT_REFUSE_METHOD,
    RT_REFUSE__COUNT
} rt_refuse_reason_t;

const char *rt_refuse_reason_name(rt_refuse_reason_t r);

/* Upper bounds (seconds) of the delivery latency buckets. */
#define RT_LATENCY_NB 14
extern const double rt_latency_bounds_s[RT_LATENCY_NB];

/* A snapshot, summed over the loops (each loop counts in its own cache line,
 * so the delivery path never contends on a shared counter). */
typedef struct rt_fanout_stats {
    long active[RT_TRANSPORT__COUNT];
    unsigned long accepted;
    unsigned long refused[RT_REFUSE__COUNT];
    unsigned long slow_disconnects; /* clients cut off past --client-max-queued */
    unsigned long ping_timeouts;    /* WS clients that missed two pongs */
    unsigned long events_sent;      /* event deliveries queued to clients */
    unsigned long resumes;          /* resume requests served */
    unsigned long resyncs;          /* resume requests answered with resync */
    unsigned long ring_overflows;   /* loop rings that overflowed (recovered) */
    /* Delivery latency, from the listener's receive (rt_event_t.recv_ns) to
     * the moment the event's last byte went to the socket: a Prometheus-style
     * histogram, lat[i] counting deliveries <= rt_latency_bounds_s[i]
     * (not cumulative; lat[RT_LATENCY_NB] counts the rest). */
    unsigned long lat[RT_LATENCY_NB + 1];
    double lat_sum_s;
    unsigned long lat_count;
} rt_fanout_stats_t;

typedef struct rt_fanout rt_fanout_t;

/* Prepares the pool from cfg (listen address, threads, limits). Subscribes
 * one bus ring per loop, so call before anything publishes. Returns NULL with
 * a one-line reason in err (e.g. a bad --listen). */
rt_fanout_t *rt_fanout_new(const rt_config_t *cfg, rt_bus_t *bus, rt_listener_t *listener,
                           char *err, size_t errlen);
/* Binds every loop's socket, then starts the threads. Returns 0 or a
 * negative errno (bind failures are reported here, before any thread runs). */
int rt_fanout_start(rt_fanout_t *f);
/* Routes GET requests for prefix to fn (see reply.h), after the built-in
 * routes: "/x/" (ending in '/') matches every path under it, any other
 * prefix (and "/") one exact path. Before rt_fanout_start; at most 8.
 * Returns 0, -EBUSY (started), -ENOSPC or -EINVAL. Handlers that defer must
 * have answered every request before rt_fanout_free (after
 * rt_fanout_shutdown, late answers are dropped). */
int rt_fanout_add_handler(rt_fanout_t *f, const char *prefix, rt_handler_fn fn, void *ctx);
/* Adds fields to GET /health/realtime: fn(arg, obj) sets members of the
 * response's JSON object (a jansson json_t *), on a loop thread, so it must
 * only read state that is safe to read from any thread. Before
 * rt_fanout_start; at most 4. Returns 0, -EBUSY or -ENOSPC. */
typedef void (*rt_health_fn)(void *arg, void *json_object);
int rt_fanout_add_health(rt_fanout_t *f, rt_health_fn fn, void *arg);
/* The port actually bound (useful with port 0). */
int rt_fanout_port(const rt_fanout_t *f);
/* Graceful stop: stop accepting, WS close 1001, end SSE streams, let queued
 * writes drain for up to --shutdown-timeout, then stop the loops and join. */
void rt_fanout_shutdown(rt_fanout_t *f);
void rt_fanout_free(rt_fanout_t *f);
void rt_fanout_stats(rt_fanout_t *f, rt_fanout_stats_t *out);
/* Number of loops, and loop i's bus ring (depth and overflows for health). */
int rt_fanout_loops(const rt_fanout_t *f);
rt_bus_sub_t *rt_fanout_ring(const rt_fanout_t *f, int i);

/* Parses "HOST:PORT" / "[V6]:PORT" into a sockaddr. Returns 0 or -EINVAL. */
struct sockaddr_storage;
int rt_parse_listen(const char *s, struct sockaddr_storage *out);

#endif
