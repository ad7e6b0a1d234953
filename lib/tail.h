/*
 * Rendering events for `rtbridge tail`: one line per event, either the exact
 * WebSocket message (json) or a short line for people (text).
 */
#ifndef RT_TAIL_H
#define RT_TAIL_H

#include "event.h"

#include <stdio.h>

/* Writes ev as one line (newline included) to out. format: rt_tail_format_t.
 * Returns 0, or -errno if the write failed (e.g. -EPIPE). */
int rt_tail_write(FILE *out, const rt_event_t *ev, int format);

#include "config.h"

/* `rtbridge tail`: starts a listener and a bus with one consumer, prints every
 * event to out until SIGINT/SIGTERM (or out is closed), then stops cleanly.
 * Returns the process exit status. Main thread only. */
int rt_tail_run(const rt_config_t *cfg, FILE *out);
#endif
