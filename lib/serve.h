/*
 * `rtbridge serve`: the process. Owns the bus, the listener thread and the
 * housekeeping timers on the main thread's loop, and the signals: SIGINT and
 * SIGTERM stop everything cleanly, SIGHUP reloads what can be reloaded.
 */
#ifndef RT_SERVE_H
#define RT_SERVE_H

#include "config.h"

/* Runs until a stop signal. Returns the process exit status. Main thread. */
int rt_serve_run(const rt_config_t *cfg);

#endif
