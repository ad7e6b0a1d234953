/*
 * A set of positive 64-bit sequence numbers: open addressing with linear
 * probing and backward-shift deletion, so there are no tombstones and lookups
 * stay short after many deletes. Owned and used by one thread.
 */
#ifndef RT_SEQSET_H
#define RT_SEQSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct rt_seqset {
    int64_t *slots; /* 0 = empty */
    size_t cap;     /* power of two */
    size_t count;
} rt_seqset_t;

void rt_seqset_init(rt_seqset_t *s);
void rt_seqset_close(rt_seqset_t *s);
/* Adds seq (> 0). Returns 1 if it was added, 0 if it was already there. */
int rt_seqset_add(rt_seqset_t *s, int64_t seq);
int rt_seqset_contains(const rt_seqset_t *s, int64_t seq);
/* Returns 1 if seq was removed, 0 if it was not there. */
int rt_seqset_remove(rt_seqset_t *s, int64_t seq);

#endif
