/*
 * The replay window: the last N events one fan-out loop delivered, in the
 * order it delivered them, each holding a reference. A client resuming from
 * seq S gets every event after S's position, which is exact even when
 * transactions committed out of seq order. Each loop owns its window, so no
 * lock is needed; the events themselves are shared by reference count.
 *
 * Owned and used by one thread.
 */
#ifndef RT_WINDOW_H
#define RT_WINDOW_H

#include "event.h"

#include <stddef.h>
#include <stdint.h>

typedef struct rt_window {
    rt_event_t **evs;
    size_t cap;   /* 0: the window is disabled */
    size_t start; /* index of the oldest */
    size_t count;
} rt_window_t;

void rt_window_init(rt_window_t *w, size_t cap);
/* Drops every reference and frees the storage. */
void rt_window_close(rt_window_t *w);
/* Forgets every event (after a ring overflow the window has a hole). */
void rt_window_clear(rt_window_t *w);
/* Appends ev (takes a new reference); the oldest falls out when full. */
void rt_window_push(rt_window_t *w, rt_event_t *ev);
/* The i-th oldest event (0 <= i < count). Borrowed. */
static inline rt_event_t *rt_window_at(const rt_window_t *w, size_t i)
{
    return w->evs[(w->start + i) % w->cap];
}
/* Position of the event with this seq, searching from the newest, or -1. */
long rt_window_find(const rt_window_t *w, int64_t seq);

#endif
