/* Unit tests for lib/bus.c: delivery exactly once per consumer under many
 * producers and consumers, reference counts, overflow accounting, waking. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bus.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static rt_event_t *mk(int64_t seq, rt_event_type_t type)
{
    return rt_event_new(type, seq, "c", "k", "{}", 2, 0);
}

static void test_subscribe_rejects_bad_capacity(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    errno = 0;
    assert_null(rt_bus_subscribe(bus, "x", 1000, RT_BUS_ALL_TYPES, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    assert_null(rt_bus_subscribe(bus, "x", 2, RT_BUS_ALL_TYPES, NULL, NULL));
    assert_non_null(rt_bus_subscribe(bus, "x", 1024, RT_BUS_ALL_TYPES, NULL, NULL));
    rt_bus_free(bus);
}

static void test_fifo_and_refcounts(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *a = rt_bus_subscribe(bus, "a", 64, RT_BUS_ALL_TYPES, NULL, NULL);
    rt_bus_sub_t *b = rt_bus_subscribe(bus, "b", 64, RT_BUS_ALL_TYPES, NULL, NULL);
    rt_event_t *evs[20];
    for (int i = 0; i < 20; i++) {
        evs[i] = mk(i + 1, RT_EV_INTENT_UPDATE);
        assert_int_equal(rt_bus_publish(bus, evs[i]), 0);
        /* ours + one per ring */
        assert_int_equal(atomic_load(&evs[i]->refs), 3);
    }
    assert_int_equal(rt_bus_depth(a), 20);
    rt_event_t *out[32];
    size_t n = rt_bus_drain(a, out, 32);
    assert_int_equal(n, 20);
    for (int i = 0; i < 20; i++) {
        assert_ptr_equal(out[i], evs[i]);
        rt_event_unref(out[i]);
    }
    n = rt_bus_drain(b, out, 7);
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++) rt_event_unref(out[i]);
    /* 13 events are still in ring b: freeing the bus must drop those refs. */
    rt_bus_free(bus);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(atomic_load(&evs[i]->refs), 1);
        rt_event_unref(evs[i]);
    }
}

static void test_overflow_counted_and_flagged(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *s = rt_bus_subscribe(bus, "small", 4, RT_BUS_ALL_TYPES, NULL, NULL);
    rt_bus_sub_t *big = rt_bus_subscribe(bus, "big", 64, RT_BUS_ALL_TYPES, NULL, NULL);
    assert_int_equal(rt_bus_take_recovery(s), 0);
    unsigned over = 0;
    rt_event_t *evs[10];
    for (int i = 0; i < 10; i++) {
        evs[i] = mk(i + 1, RT_EV_AUDIT_LOG);
        over += rt_bus_publish(bus, evs[i]);
    }
    /* usable capacity is size - 1 */
    assert_int_equal(over, 7);
    assert_int_equal(atomic_load(&s->overflows), 7);
    assert_int_equal(atomic_load(&big->overflows), 0);
    assert_int_equal(rt_bus_take_recovery(s), 1);
    assert_int_equal(rt_bus_take_recovery(s), 0);
    assert_int_equal(rt_bus_take_recovery(big), 0);
    rt_event_t *out[16];
    size_t n = rt_bus_drain(s, out, 16);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i]->seq, (int64_t)i + 1);
        rt_event_unref(out[i]);
    }
    /* Dropped events hold no reference from the small ring. */
    for (int i = 3; i < 10; i++) assert_int_equal(atomic_load(&evs[i]->refs), 2);
    rt_bus_free(bus);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(atomic_load(&evs[i]->refs), 1);
        rt_event_unref(evs[i]);
    }
}

static void test_type_mask(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *audit =
        rt_bus_subscribe(bus, "etl", 16, 1u << RT_EV_AUDIT_LOG, NULL, NULL);
    rt_event_t *i1 = mk(1, RT_EV_INTENT_UPDATE), *a1 = mk(2, RT_EV_AUDIT_LOG);
    rt_bus_publish(bus, i1);
    rt_bus_publish(bus, a1);
    rt_event_t *out[4];
    assert_int_equal(rt_bus_drain(audit, out, 4), 1);
    assert_ptr_equal(out[0], a1);
    rt_event_unref(out[0]);
    assert_int_equal(atomic_load(&i1->refs), 1);
    rt_event_unref(i1);
    rt_event_unref(a1);
    rt_bus_free(bus);
}

static int wakes;
static void count_wake(void *arg)
{
    (void)arg;
    wakes++;
}

static void test_wake_callback_per_publish(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *s = rt_bus_subscribe(bus, "w", 4, RT_BUS_ALL_TYPES, count_wake, NULL);
    wakes = 0;
    for (int i = 0; i < 5; i++) {
        rt_event_t *e = mk(i + 1, RT_EV_INTENT_UPDATE);
        rt_bus_publish(bus, e);
        rt_event_unref(e);
    }
    /* Woken on overflow too, so the consumer learns it must recover. */
    assert_int_equal(wakes, 5);
    (void)s;
    rt_bus_free(bus);
}

static void test_batch_wakes_once_and_keeps_order(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *all = rt_bus_subscribe(bus, "all", 8, RT_BUS_ALL_TYPES, count_wake, NULL);
    rt_bus_sub_t *audit = rt_bus_subscribe(bus, "audit", 64, 1u << RT_EV_AUDIT_LOG, count_wake, NULL);
    rt_event_t *evs[10];
    for (int i = 0; i < 10; i++)
        evs[i] = mk(i + 1, i % 2 ? RT_EV_AUDIT_LOG : RT_EV_INTENT_UPDATE);
    wakes = 0;
    /* ring "all" holds 7: three overflow */
    assert_int_equal(rt_bus_publish_batch(bus, evs, 10), 3);
    assert_int_equal(wakes, 2); /* one per ring, not one per event */
    assert_int_equal(atomic_load(&all->overflows), 3);
    assert_int_equal(rt_bus_take_recovery(all), 1);
    rt_event_t *out[16];
    size_t n = rt_bus_drain(all, out, 16);
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i]->seq, (int64_t)i + 1);
        rt_event_unref(out[i]);
    }
    n = rt_bus_drain(audit, out, 16);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i]->seq, 2 * (int64_t)i + 2);
        rt_event_unref(out[i]);
    }
    /* A batch with nothing for a ring does not wake it. */
    wakes = 0;
    rt_bus_publish_batch(bus, evs, 1); /* an intent: "audit" is not woken */
    assert_int_equal(wakes, 1);
    rt_bus_free(bus);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(atomic_load(&evs[i]->refs), 1);
        rt_event_unref(evs[i]);
    }
}

static void test_wait_timeout_and_kick(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *s = rt_bus_subscribe(bus, "w", 8, RT_BUS_ALL_TYPES, NULL, NULL);
    assert_int_equal(rt_bus_wait(s, 10), 0);
    rt_bus_kick(s);
    assert_int_equal(rt_bus_wait(s, -1), 0); /* returns at once: kicked */
    rt_event_t *e = mk(1, RT_EV_INTENT_UPDATE);
    rt_bus_publish(bus, e);
    rt_event_unref(e);
    assert_int_equal(rt_bus_wait(s, -1), 1);
    rt_bus_free(bus);
}

/* ---- many producers, many consumers -------------------------------------- */

/* Two producers: ck's MPMC enqueue spins while an earlier producer finishes
 * its commit, so more producers than cores turns every preemption into a
 * stall (TOOLCHAIN.md). rtbridge has few producers (the listener, a few
 * workers); the test matches that on this 2-core machine. */
#define PRODUCERS 2
#define CONSUMERS 4
/* ThreadSanitizer makes each atomic ~50x slower; its run is about
 * interleavings, not volume. */
#if defined(RT_TSAN)
#define PER_PRODUCER 4000
#else
#define PER_PRODUCER 50000
#endif

typedef struct {
    rt_bus_t *bus;
    int id;
} producer_arg_t;

typedef struct {
    rt_bus_sub_t *sub;
    unsigned char *seen; /* count per seq */
    int64_t last[PRODUCERS];
    long received;
    int order_errors;
} consumer_arg_t;

static atomic_int producers_done;

static void *producer(void *p)
{
    producer_arg_t *a = p;
    for (int i = 0; i < PER_PRODUCER; i++) {
        int64_t seq = (int64_t)a->id * PER_PRODUCER + i + 1;
        rt_event_t *e = mk(seq, RT_EV_INTENT_UPDATE);
        /* Rings are large enough that nothing overflows here. */
        assert_int_equal(rt_bus_publish(a->bus, e), 0);
        rt_event_unref(e);
    }
    atomic_fetch_add(&producers_done, 1);
    return NULL;
}

static void *consumer(void *p)
{
    consumer_arg_t *c = p;
    rt_event_t *out[128];
    for (;;) {
        size_t n = rt_bus_drain(c->sub, out, 128);
        for (size_t i = 0; i < n; i++) {
            int64_t seq = out[i]->seq;
            int prod = (int)((seq - 1) / PER_PRODUCER);
            c->seen[seq]++;
            if (seq <= c->last[prod]) c->order_errors++;
            c->last[prod] = seq;
            c->received++;
            rt_event_unref(out[i]);
        }
        if (n == 0) {
            if (atomic_load(&producers_done) == PRODUCERS && rt_bus_depth(c->sub) == 0) break;
            rt_bus_wait(c->sub, 50);
        }
    }
    return NULL;
}

static void test_mpmc_exactly_once(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    consumer_arg_t cons[CONSUMERS];
    pthread_t ct[CONSUMERS], pt[PRODUCERS];
    producer_arg_t pa[PRODUCERS];
    atomic_store(&producers_done, 0);
    size_t total = (size_t)PRODUCERS * PER_PRODUCER;
    for (int i = 0; i < CONSUMERS; i++) {
        memset(&cons[i], 0, sizeof cons[i]);
        /* A ring that can hold everything: this test is about delivery. */
        cons[i].sub = rt_bus_subscribe(bus, "c", 1u << 18, RT_BUS_ALL_TYPES, NULL, NULL);
        cons[i].seen = calloc(total + 1, 1);
        pthread_create(&ct[i], NULL, consumer, &cons[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pa[i] = (producer_arg_t){bus, i};
        pthread_create(&pt[i], NULL, producer, &pa[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) pthread_join(pt[i], NULL);
    for (int i = 0; i < CONSUMERS; i++) pthread_join(ct[i], NULL);
    assert_int_equal(atomic_load(&bus->published), total);
    for (int i = 0; i < CONSUMERS; i++) {
        assert_int_equal(cons[i].received, total);
        assert_int_equal(cons[i].order_errors, 0);
        size_t bad = 0;
        for (size_t s = 1; s <= total; s++)
            if (cons[i].seen[s] != 1) bad++;
        assert_int_equal(bad, 0);
        assert_int_equal(atomic_load(&cons[i].sub->overflows), 0);
        free(cons[i].seen);
    }
    rt_bus_free(bus);
}

/* Two consumer threads draining the same ring: together they see each event
 * exactly once. */
static void test_shared_ring_two_consumers(void **state)
{
    (void)state;
    rt_bus_t *bus = rt_bus_new();
    rt_bus_sub_t *sub = rt_bus_subscribe(bus, "pool", 1u << 18, RT_BUS_ALL_TYPES, NULL, NULL);
    size_t total = (size_t)PRODUCERS * PER_PRODUCER;
    unsigned char *seen = calloc(total + 1, 1);
    consumer_arg_t c[2];
    pthread_t ct[2], pt[PRODUCERS];
    producer_arg_t pa[PRODUCERS];
    atomic_store(&producers_done, 0);
    for (int i = 0; i < 2; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].sub = sub;
        c[i].seen = calloc(total + 1, 1);
        pthread_create(&ct[i], NULL, consumer, &c[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pa[i] = (producer_arg_t){bus, i};
        pthread_create(&pt[i], NULL, producer, &pa[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) pthread_join(pt[i], NULL);
    for (int i = 0; i < 2; i++) pthread_join(ct[i], NULL);
    assert_int_equal(c[0].received + c[1].received, total);
    size_t bad = 0;
    for (size_t s = 1; s <= total; s++)
        if (c[0].seen[s] + c[1].seen[s] != 1) bad++;
    assert_int_equal(bad, 0);
    free(c[0].seen);
    free(c[1].seen);
    free(seen);
    rt_bus_free(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subscribe_rejects_bad_capacity),
        cmocka_unit_test(test_fifo_and_refcounts),
        cmocka_unit_test(test_overflow_counted_and_flagged),
        cmocka_unit_test(test_type_mask),
        cmocka_unit_test(test_wake_callback_per_publish),
        cmocka_unit_test(test_batch_wakes_once_and_keeps_order),
        cmocka_unit_test(test_wait_timeout_and_kick),
        cmocka_unit_test(test_mpmc_exactly_once),
        cmocka_unit_test(test_shared_ring_two_consumers),
    };
    return cmocka_run_group_tests_name("bus", tests, NULL, NULL);
}
