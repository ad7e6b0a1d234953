/*
 * Waiting for a deferred HTTP handler answer (reply.h) in tests: pass
 * replywait_done as the done callback and the waiter as its argument, then
 * replywait_wait. Thread-safe: done() may run on any thread.
 */
#ifndef RT_REPLYWAIT_H
#define RT_REPLYWAIT_H

#include "reply.h"

#include <pthread.h>

typedef struct replywait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int called; /* how many times done() ran */
    rt_reply_t r;
} replywait_t;

void replywait_init(replywait_t *w);
void replywait_done(void *arg, rt_reply_t *r);
/* Waits up to timeout_ms for the first done(); returns how many ran. */
int replywait_wait(replywait_t *w, int timeout_ms);
void replywait_destroy(replywait_t *w);

#endif
