/*
 * Logging: one line per record, written with a single write(2) so lines from
 * different threads never interleave. Text for people, JSON lines for
 * containers. Every record carries a UTC timestamp, the level, the
 * component tag and the name of the thread that wrote it.
 *
 * All functions are thread-safe. rt_log_setup() is meant to be called once
 * before threads start; the level may be changed at any time (SIGHUP).
 */
#ifndef RT_LOG_H
#define RT_LOG_H

#include <stdarg.h>

typedef enum { RT_LOG_DEBUG = 0, RT_LOG_INFO, RT_LOG_WARN, RT_LOG_ERROR } rt_log_level_t;
typedef enum { RT_LOG_TEXT = 0, RT_LOG_JSON } rt_log_format_t;

void rt_log_setup(rt_log_level_t level, rt_log_format_t format, int fd);
void rt_log_set_level(rt_log_level_t level);
int rt_log_enabled(rt_log_level_t level);

/* Parses "debug|info|warn|error"; returns 0 or -EINVAL. */
int rt_log_level_parse(const char *s, rt_log_level_t *out);

/* Names the calling thread in log lines (and for the kernel, up to 15 bytes). */
void rt_log_thread_name(const char *name);

void rt_log(rt_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rt_logv(rt_log_level_t level, const char *component, const char *fmt, va_list ap);

#define rt_debug(comp, ...)                                                                        \
    do {                                                                                           \
        if (rt_log_enabled(RT_LOG_DEBUG)) rt_log(RT_LOG_DEBUG, comp, __VA_ARGS__);                 \
    } while (0)
#define rt_info(comp, ...) rt_log(RT_LOG_INFO, comp, __VA_ARGS__)
#define rt_warn(comp, ...) rt_log(RT_LOG_WARN, comp, __VA_ARGS__)
#define rt_error(comp, ...) rt_log(RT_LOG_ERROR, comp, __VA_ARGS__)

#endif
