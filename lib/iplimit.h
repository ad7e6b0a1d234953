/*
 * Connections per client address, counted across every fan-out loop (the
 * kernel spreads one address's connections over the loops). Touched only on
 * accept and close, never per event, so a mutex is fine here.
 */
#ifndef RT_IPLIMIT_H
#define RT_IPLIMIT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rt_iplimit_entry {
    unsigned char addr[16]; /* IPv4 mapped into IPv6 */
    uint32_t count;
} rt_iplimit_entry_t;

typedef struct rt_iplimit {
    pthread_mutex_t mu;
    rt_iplimit_entry_t *slots;
    size_t cap, used;
    uint32_t limit; /* 0: unlimited */
} rt_iplimit_t;

void rt_iplimit_init(rt_iplimit_t *l, uint32_t limit);
void rt_iplimit_close(rt_iplimit_t *l);
/* Counts one more connection from addr (16 bytes) unless that would pass the
 * limit. Returns 1 if admitted, 0 if refused. */
int rt_iplimit_acquire(rt_iplimit_t *l, const unsigned char addr[16]);
/* Releases a connection admitted by rt_iplimit_acquire. */
void rt_iplimit_release(rt_iplimit_t *l, const unsigned char addr[16]);
/* Connections currently counted for addr. */
uint32_t rt_iplimit_count(rt_iplimit_t *l, const unsigned char addr[16]);

#endif
