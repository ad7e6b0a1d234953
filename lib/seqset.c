/*
 * Sequence set. The table doubles at 50% load and never shrinks below its
 * first size; seqs are mixed with a 64-bit multiplicative hash because
 * journal ids are dense and would otherwise cluster.
 */
#include "seqset.h"

#include <assert.h>
#include <stdlib.h>

#define INITIAL_CAP 1024

static size_t slot_of(int64_t seq, size_t cap)
{
    uint64_t h = (uint64_t)seq * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}

void rt_seqset_init(rt_seqset_t *s)
{
    s->cap = INITIAL_CAP;
    s->count = 0;
    s->slots = calloc(s->cap, sizeof *s->slots);
    if (!s->slots) abort();
}

void rt_seqset_close(rt_seqset_t *s)
{
    free(s->slots);
    s->slots = NULL;
    s->cap = s->count = 0;
}

static void grow(rt_seqset_t *s)
{
    size_t old_cap = s->cap;
    int64_t *old = s->slots;
    s->cap *= 2;
    s->slots = calloc(s->cap, sizeof *s->slots);
    if (!s->slots) abort();
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i]) continue;
        size_t j = slot_of(old[i], s->cap);
        while (s->slots[j]) j = (j + 1) & (s->cap - 1);
        s->slots[j] = old[i];
    }
    free(old);
}

int rt_seqset_add(rt_seqset_t *s, int64_t seq)
{
    assert(seq > 0);
    if ((s->count + 1) * 2 > s->cap) grow(s);
    size_t i = slot_of(seq, s->cap);
    while (s->slots[i]) {
        if (s->slots[i] == seq) return 0;
        i = (i + 1) & (s->cap - 1);
    }
    s->slots[i] = seq;
    s->count++;
    return 1;
}

int rt_seqset_contains(const rt_seqset_t *s, int64_t seq)
{
    size_t i = slot_of(seq, s->cap);
    while (s->slots[i]) {
        if (s->slots[i] == seq) return 1;
        i = (i + 1) & (s->cap - 1);
    }
    return 0;
}

int rt_seqset_remove(rt_seqset_t *s, int64_t seq)
{
    size_t mask = s->cap - 1, i = slot_of(seq, s->cap);
    while (s->slots[i] != seq) {
        if (!s->slots[i]) return 0;
        i = (i + 1) & mask;
    }
    /* Backward shift: pull later members of the probe run into the hole when
     * their home slot does not lie cyclically between the hole and them. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
        size_t home = slot_of(s->slots[j], s->cap);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    s->slots[hole] = 0;
    s->count--;
    return 1;
}
