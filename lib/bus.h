/*
 * The bus: one lock-free ck_ring (MPMC) per consumer. Publishing an event
 * takes one reference per ring that wants its type and enqueues a pointer; a
 * full ring never blocks the publisher: that consumer's overflow counter goes
 * up and it is flagged for recovery (it replays from the journal, DESIGN §4).
 *
 * Threads: rt_bus_subscribe() and rt_bus_free() run before publishing starts
 * and after it stops (main thread). rt_bus_publish() may be called by any
 * number of threads at once. Each ring may be drained by any number of
 * consumer threads (MPMC), though most consumers use one.
 *
 * Waking: a consumer with an event loop passes a wake callback (typically a
 * wrapper around uv_async_send, which coalesces); one without passes NULL and
 * blocks in rt_bus_wait(). In that case the publisher takes the consumer's
 * mutex only when the consumer is actually asleep.
 */
#ifndef RT_BUS_H
#define RT_BUS_H

#include "event.h"

#include <ck_ring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define RT_BUS_MAX_SUBS 64
#define RT_BUS_ALL_TYPES ((1u << RT_EV__COUNT) - 1)

typedef void (*rt_bus_wake_cb)(void *arg);

typedef struct rt_bus_sub {
    ck_ring_t ring;
    ck_ring_buffer_t *buf;
    unsigned size;
    unsigned type_mask; /* bit (1 << rt_event_type_t) set: deliver that type */
    char name[32];
    rt_bus_wake_cb wake;
    void *wake_arg;
    atomic_uint_fast64_t enqueued;
    atomic_uint_fast64_t overflows;
    atomic_int need_recovery;
    /* For consumers without a loop (wake == NULL). */
    atomic_int sleeping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int kicked;
} rt_bus_sub_t;

typedef struct rt_bus {
    rt_bus_sub_t *subs[RT_BUS_MAX_SUBS];
    unsigned nsubs;
    atomic_uint_fast64_t published;
} rt_bus_t;

rt_bus_t *rt_bus_new(void);
/* Unrefs every event still queued and frees the rings. */
void rt_bus_free(rt_bus_t *bus);

/* Adds a consumer ring of capacity (a power of two >= 4; usable capacity is
 * capacity - 1) receiving the types in type_mask. Returns NULL with errno
 * EINVAL (bad capacity) or ENOSPC (too many consumers). */
rt_bus_sub_t *rt_bus_subscribe(rt_bus_t *bus, const char *name, unsigned capacity,
                               unsigned type_mask, rt_bus_wake_cb wake, void *wake_arg);

/* Delivers ev to every interested ring. The caller keeps its own reference.
 * Never blocks. Returns how many rings overflowed. */
unsigned rt_bus_publish(rt_bus_t *bus, rt_event_t *ev);

/* Like rt_bus_publish for n events in order, waking each consumer once for the
 * whole batch instead of once per event (a producer that receives events in
 * bursts, like the listener, uses this). Returns how many enqueues overflowed. */
unsigned rt_bus_publish_batch(rt_bus_t *bus, rt_event_t *const *evs, size_t n);

/* Moves up to max events into out; the caller owns one reference to each. */
size_t rt_bus_drain(rt_bus_sub_t *sub, rt_event_t **out, size_t max);

/* Events currently queued (approximate while producers run). */
unsigned rt_bus_depth(const rt_bus_sub_t *sub);

/* Returns 1 (and clears the flag) if the ring overflowed since the last call:
 * the consumer has missed events and must recover them from the journal. */
int rt_bus_take_recovery(rt_bus_sub_t *sub);

/* For consumers without a loop: waits until the ring is non-empty, rt_bus_kick
 * is called, or timeout_ms passes (-1: no timeout). Returns 1 if events may be
 * queued, 0 on timeout or kick. */
int rt_bus_wait(rt_bus_sub_t *sub, int timeout_ms);
/* Wakes a consumer blocked in rt_bus_wait (e.g. to stop it). */
void rt_bus_kick(rt_bus_sub_t *sub);

#endif
