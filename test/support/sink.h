/*
 * Receivers for notification tests, on 127.0.0.1 and an ephemeral port, each
 * served by one thread of its own (poll over every connection):
 *
 *  - an HTTP server that records each request's body and answers 200, or
 *    500 for the next N requests whose body contains a given string, or
 *    never answers requests whose body contains another (a hanging
 *    receiver: the connection stays open until the client gives up);
 *  - an SMTP sink that accepts any message (EHLO, MAIL, RCPT, DATA, QUIT)
 *    and records the envelope and the data.
 *
 * Recorded items are read with sink_count/sink_wait/sink_item from the test
 * thread; everything is guarded by the sink's mutex.
 */
#ifndef RT_TEST_SINK_H
#define RT_TEST_SINK_H

#include <stddef.h>

typedef struct sink sink_t;

sink_t *sink_http_start(void);
sink_t *sink_smtp_start(void);
int sink_port(const sink_t *s);
/* Stops the thread and closes every connection. */
void sink_stop(sink_t *s);

/* HTTP: answer 500 to the next n requests whose body contains match. */
void sink_fail_next(sink_t *s, const char *match, int n);
/* HTTP: never answer requests whose body contains match. */
void sink_hang(sink_t *s, const char *match);

/* Items recorded so far whose text contains match (NULL: all). An HTTP item
 * is the body; an SMTP item is "FROM:<..>\nTO:<..>\n...\n\n" then the data. */
size_t sink_count(sink_t *s, const char *match);
/* Waits up to timeout_ms until sink_count(s, match) >= want; returns it. */
size_t sink_wait(sink_t *s, const char *match, size_t want, int timeout_ms);
/* A malloc'd copy of the k-th recorded item containing match and the status
 * it was answered with (HTTP; 250 for SMTP; 0 while hanging); NULL if none. */
char *sink_item(sink_t *s, const char *match, size_t k, int *status);

#endif
