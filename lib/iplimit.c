/*
 * Per-address counters in an open-addressing table. Entries whose count drops
 * to zero are removed with backward-shift deletion, so the table holds only
 * addresses that are connected now and never fills with the history of every
 * client ever seen.
 */
#include "iplimit.h"

#include <stdlib.h>
#include <string.h>

static size_t hash_addr(const unsigned char a[16], size_t cap)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 16; i++) h = (h ^ a[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static int empty(const rt_iplimit_entry_t *e)
{
    return e->count == 0;
}

void rt_iplimit_init(rt_iplimit_t *l, uint32_t limit)
{
    pthread_mutex_init(&l->mu, NULL);
    l->cap = 1024;
    l->used = 0;
    l->limit = limit;
    l->slots = calloc(l->cap, sizeof *l->slots);
    if (!l->slots) abort();
}

void rt_iplimit_close(rt_iplimit_t *l)
{
    free(l->slots);
    l->slots = NULL;
    pthread_mutex_destroy(&l->mu);
}

static rt_iplimit_entry_t *lookup(rt_iplimit_t *l, const unsigned char a[16], int create)
{
    if (create && (l->used + 1) * 2 > l->cap) {
        size_t old_cap = l->cap;
        rt_iplimit_entry_t *old = l->slots;
        l->cap *= 2;
        l->slots = calloc(l->cap, sizeof *l->slots);
        if (!l->slots) abort();
        for (size_t i = 0; i < old_cap; i++) {
            if (empty(&old[i])) continue;
            size_t j = hash_addr(old[i].addr, l->cap);
            while (!empty(&l->slots[j])) j = (j + 1) & (l->cap - 1);
            l->slots[j] = old[i];
        }
        free(old);
    }
    size_t i = hash_addr(a, l->cap);
    while (!empty(&l->slots[i])) {
        if (memcmp(l->slots[i].addr, a, 16) == 0) return &l->slots[i];
        i = (i + 1) & (l->cap - 1);
    }
    if (!create) return NULL;
    memcpy(l->slots[i].addr, a, 16);
    l->used++;
    return &l->slots[i];
}

static void remove_slot(rt_iplimit_t *l, rt_iplimit_entry_t *e)
{
    size_t mask = l->cap - 1, hole = (size_t)(e - l->slots);
    for (size_t j = (hole + 1) & mask; !empty(&l->slots[j]); j = (j + 1) & mask) {
        size_t home = hash_addr(l->slots[j].addr, l->cap);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            l->slots[hole] = l->slots[j];
            hole = j;
        }
    }
    memset(&l->slots[hole], 0, sizeof l->slots[hole]);
    l->used--;
}

int rt_iplimit_acquire(rt_iplimit_t *l, const unsigned char addr[16])
{
    pthread_mutex_lock(&l->mu);
    rt_iplimit_entry_t *e = lookup(l, addr, 0);
    int ok = 1;
    if (e && l->limit && e->count >= l->limit) {
        ok = 0;
    } else if (e) {
        e->count++;
    } else {
        e = lookup(l, addr, 1);
        e->count = 1;
    }
    pthread_mutex_unlock(&l->mu);
    return ok;
}

void rt_iplimit_release(rt_iplimit_t *l, const unsigned char addr[16])
{
    pthread_mutex_lock(&l->mu);
    rt_iplimit_entry_t *e = lookup(l, addr, 0);
    if (e && --e->count == 0) remove_slot(l, e);
    pthread_mutex_unlock(&l->mu);
}

uint32_t rt_iplimit_count(rt_iplimit_t *l, const unsigned char addr[16])
{
    pthread_mutex_lock(&l->mu);
    rt_iplimit_entry_t *e = lookup(l, addr, 0);
    uint32_t n = e ? e->count : 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}
