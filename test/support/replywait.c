#include "replywait.h"

#include <string.h>
#include <time.h>

void replywait_init(replywait_t *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

void replywait_done(void *arg, rt_reply_t *r)
{
    replywait_t *w = arg;
    pthread_mutex_lock(&w->mu);
    w->r = *r;
    w->called++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int replywait_wait(replywait_t *w, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->called && pthread_cond_timedwait(&w->cv, &w->mu, &dl) == 0) {
    }
    int n = w->called;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void replywait_destroy(replywait_t *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}
