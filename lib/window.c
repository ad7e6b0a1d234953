/*
 * Replay window: a circular array of event pointers. Searches go from the
 * newest end because a resuming client usually left moments ago.
 */
#include "window.h"

#include <stdlib.h>

void rt_window_init(rt_window_t *w, size_t cap)
{
    w->cap = cap;
    w->start = w->count = 0;
    w->evs = cap ? calloc(cap, sizeof *w->evs) : NULL;
    if (cap && !w->evs) abort();
}

void rt_window_clear(rt_window_t *w)
{
    for (size_t i = 0; i < w->count; i++) rt_event_unref(rt_window_at(w, i));
    w->start = w->count = 0;
}

void rt_window_close(rt_window_t *w)
{
    rt_window_clear(w);
    free(w->evs);
    w->evs = NULL;
    w->cap = 0;
}

void rt_window_push(rt_window_t *w, rt_event_t *ev)
{
    if (!w->cap) return;
    rt_event_ref(ev);
    if (w->count == w->cap) {
        rt_event_unref(w->evs[w->start]);
        w->evs[w->start] = ev;
        w->start = (w->start + 1) % w->cap;
    } else {
        w->evs[(w->start + w->count) % w->cap] = ev;
        w->count++;
    }
}

long rt_window_find(const rt_window_t *w, int64_t seq)
{
    for (size_t i = w->count; i-- > 0;)
        if (rt_window_at(w, i)->seq == seq) return (long)i;
    return -1;
}
