/*
 * Bus implementation. See bus.h for the contract.
 *
 * ThreadSanitizer does not understand concurrencykit's inline-assembly
 * atomics, so under TSan each pointer handed through a ring is annotated
 * (release before enqueue, acquire after dequeue): that is the happens-before
 * edge the ring really provides. The ring's own slot accesses are suppressed
 * in test/tsan.supp.
 */
#include "bus.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(RT_TSAN)
#include <sanitizer/tsan_interface.h>
#define TSAN_RELEASE(p) __tsan_release(p)
#define TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define TSAN_RELEASE(p) ((void)0)
#define TSAN_ACQUIRE(p) ((void)0)
#endif

rt_bus_t *rt_bus_new(void)
{
    rt_bus_t *bus = calloc(1, sizeof *bus);
    if (!bus) abort();
    atomic_init(&bus->published, 0);
    return bus;
}

void rt_bus_free(rt_bus_t *bus)
{
    if (!bus) return;
    for (unsigned i = 0; i < bus->nsubs; i++) {
        rt_bus_sub_t *sub = bus->subs[i];
        rt_event_t *evs[64];
        size_t n;
        while ((n = rt_bus_drain(sub, evs, 64)) > 0)
            for (size_t j = 0; j < n; j++) rt_event_unref(evs[j]);
        pthread_mutex_destroy(&sub->mu);
        pthread_cond_destroy(&sub->cv);
        free(sub->buf);
        free(sub);
    }
    free(bus);
}

rt_bus_sub_t *rt_bus_subscribe(rt_bus_t *bus, const char *name, unsigned capacity,
                               unsigned type_mask, rt_bus_wake_cb wake, void *wake_arg)
{
    if (capacity < 4 || (capacity & (capacity - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (bus->nsubs >= RT_BUS_MAX_SUBS) {
        errno = ENOSPC;
        return NULL;
    }
    rt_bus_sub_t *sub = calloc(1, sizeof *sub);
    if (!sub) abort();
    sub->buf = calloc(capacity, sizeof(ck_ring_buffer_t));
    if (!sub->buf) abort();
    ck_ring_init(&sub->ring, capacity);
    if (!ck_ring_valid(&sub->ring)) abort();
    sub->size = capacity;
    sub->type_mask = type_mask;
    snprintf(sub->name, sizeof sub->name, "%s", name);
    sub->wake = wake;
    sub->wake_arg = wake_arg;
    atomic_init(&sub->enqueued, 0);
    atomic_init(&sub->overflows, 0);
    atomic_init(&sub->need_recovery, 0);
    atomic_init(&sub->sleeping, 0);
    atomic_init(&sub->kicked, 0);
    pthread_mutex_init(&sub->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sub->cv, &ca);
    pthread_condattr_destroy(&ca);
    bus->subs[bus->nsubs++] = sub;
    return sub;
}

static void wake_sleeper(rt_bus_sub_t *sub)
{
    /* Both sides do a read-modify-write on `sleeping`, and RMWs on one
     * location are totally ordered: if ours comes first, the consumer's
     * exchange synchronises with it and its re-check of the ring sees our
     * entry; if the consumer's comes first, we read 1 and signal it under its
     * mutex (held from before it set the flag until pthread_cond_wait
     * releases it), so the wake-up cannot be lost. */
    if (atomic_fetch_add_explicit(&sub->sleeping, 0, memory_order_acq_rel)) {
        pthread_mutex_lock(&sub->mu);
        pthread_cond_signal(&sub->cv);
        pthread_mutex_unlock(&sub->mu);
    }
}

/* Enqueues ev on sub if it wants the type. Returns 1 if something happened
 * that the consumer must be woken for (an entry, or an overflow). */
static int enqueue_one(rt_bus_sub_t *sub, rt_event_t *ev, unsigned *overflowed)
{
    if (!(sub->type_mask & (1u << ev->type))) return 0;
    rt_event_ref(ev);
    TSAN_RELEASE(ev);
    if (!ck_ring_enqueue_mpmc(&sub->ring, sub->buf, ev)) {
        rt_event_unref(ev);
        atomic_fetch_add_explicit(&sub->overflows, 1, memory_order_relaxed);
        atomic_store_explicit(&sub->need_recovery, 1, memory_order_release);
        (*overflowed)++;
    } else {
        atomic_fetch_add_explicit(&sub->enqueued, 1, memory_order_relaxed);
    }
    return 1;
}

static void wake(rt_bus_sub_t *sub)
{
    if (sub->wake)
        sub->wake(sub->wake_arg);
    else
        wake_sleeper(sub);
}

unsigned rt_bus_publish(rt_bus_t *bus, rt_event_t *ev)
{
    return rt_bus_publish_batch(bus, &ev, 1);
}

unsigned rt_bus_publish_batch(rt_bus_t *bus, rt_event_t *const *evs, size_t n)
{
    unsigned overflowed = 0;
    atomic_fetch_add_explicit(&bus->published, n, memory_order_relaxed);
    for (unsigned i = 0; i < bus->nsubs; i++) {
        rt_bus_sub_t *sub = bus->subs[i];
        int woke = 0;
        for (size_t j = 0; j < n; j++) woke |= enqueue_one(sub, evs[j], &overflowed);
        /* Woken on overflow too: the consumer must learn it has to recover. */
        if (woke) wake(sub);
    }
    return overflowed;
}

size_t rt_bus_drain(rt_bus_sub_t *sub, rt_event_t **out, size_t max)
{
    size_t n = 0;
    while (n < max) {
        void *p;
        if (!ck_ring_dequeue_mpmc(&sub->ring, sub->buf, &p)) break;
        TSAN_ACQUIRE(p);
        out[n++] = p;
    }
    return n;
}

unsigned rt_bus_depth(const rt_bus_sub_t *sub)
{
    return ck_ring_size(&sub->ring);
}

int rt_bus_take_recovery(rt_bus_sub_t *sub)
{
    return atomic_exchange_explicit(&sub->need_recovery, 0, memory_order_acq_rel);
}

int rt_bus_wait(rt_bus_sub_t *sub, int timeout_ms)
{
    pthread_mutex_lock(&sub->mu);
    atomic_exchange_explicit(&sub->sleeping, 1, memory_order_acq_rel);
    int ready = ck_ring_size(&sub->ring) > 0 ||
                atomic_load_explicit(&sub->need_recovery, memory_order_acquire);
    if (!ready && !atomic_exchange(&sub->kicked, 0)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&sub->cv, &sub->mu);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += timeout_ms / 1000;
            ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&sub->cv, &sub->mu, &ts);
        }
        atomic_exchange(&sub->kicked, 0);
        ready = ck_ring_size(&sub->ring) > 0 ||
                atomic_load_explicit(&sub->need_recovery, memory_order_acquire);
    }
    atomic_store_explicit(&sub->sleeping, 0, memory_order_relaxed);
    pthread_mutex_unlock(&sub->mu);
    return ready;
}

void rt_bus_kick(rt_bus_sub_t *sub)
{
    pthread_mutex_lock(&sub->mu);
    atomic_store(&sub->kicked, 1);
    pthread_cond_signal(&sub->cv);
    pthread_mutex_unlock(&sub->mu);
}
