/*
 * tail output. The json form is the event's pre-rendered WebSocket message, so
 * what an operator sees is byte for byte what a WebSocket client receives.
 * The text form pulls a few well-known fields out of the payload.
 */
#include "tail.h"

#include "bus.h"
#include "config.h"
#include "listener.h"
#include "log.h"

#include <errno.h>
#include <signal.h>
#include <uv.h>
#include <inttypes.h>
#include <jansson.h>
#include <string.h>

static void text_field(FILE *out, json_t *obj, const char *name, const char *label)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return;
    if (json_is_string(v))
        fprintf(out, " %s=%s", label, json_string_value(v));
    else if (json_is_integer(v))
        fprintf(out, " %s=%" JSON_INTEGER_FORMAT, label, json_integer_value(v));
    else if (json_is_boolean(v))
        fprintf(out, " %s=%s", label, json_is_true(v) ? "true" : "false");
}

int rt_tail_write(FILE *out, const rt_event_t *ev, int format)
{
    if (format == RT_TAIL_TEXT) {
        char when[80];
        rt_format_time(when, sizeof when, ev->recv_ns);
        fprintf(out, "%s %-14s #%" PRId64, when, rt_event_type_name(ev->type), ev->seq);
        json_t *body = json_loadb(ev->body, ev->body_len, 0, NULL);
        if (json_is_object(body)) {
            static const char *const fields[][2] = {
                {"intent_id", "intent"}, {"log_id", "log"},      {"event_type", "op"},
                {"status", "status"},    {"version", "version"}, {"actor", "actor"},
            };
            for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
                text_field(out, body, fields[i][0], fields[i][1]);
        }
        json_decref(body);
        fputc('\n', out);
    } else {
        fwrite(ev->msg, 1, ev->msg_len, out);
        fputc('\n', out);
    }
    if (fflush(out) != 0 || ferror(out)) return errno ? -errno : -EIO;
    return 0;
}

/* ---- the command ------------------------------------------------------------ */

typedef struct tail_ctx {
    uv_loop_t loop;
    uv_async_t wake;
    uv_signal_t sigint, sigterm;
    rt_bus_sub_t *sub;
    FILE *out;
    int format;
    int status;
    uint64_t printed;
} tail_ctx_t;

static void wake_cb(void *arg)
{
    uv_async_send(arg);
}

static void stop_loop(tail_ctx_t *t)
{
    uv_close((uv_handle_t *)&t->wake, NULL);
    uv_close((uv_handle_t *)&t->sigint, NULL);
    uv_close((uv_handle_t *)&t->sigterm, NULL);
}

static void on_wake(uv_async_t *h)
{
    tail_ctx_t *t = h->data;
    rt_event_t *evs[256];
    size_t n;
    if (rt_bus_take_recovery(t->sub))
        rt_warn("tail", "output too slow: %" PRIuFAST64 " events dropped so far (ring overflow)",
                atomic_load(&t->sub->overflows));
    while ((n = rt_bus_drain(t->sub, evs, 256)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (t->status == 0 && rt_tail_write(t->out, evs[i], t->format) < 0) {
                /* The reader went away (e.g. `| head`): stop quietly. */
                t->status = -1;
            }
            t->printed++;
            rt_event_unref(evs[i]);
        }
    }
    if (t->status < 0 && !uv_is_closing((uv_handle_t *)&t->wake)) stop_loop(t);
}

static void on_signal(uv_signal_t *h, int signum)
{
    tail_ctx_t *t = h->data;
    rt_info("tail", "%s: stopping", strsignal(signum));
    if (!uv_is_closing((uv_handle_t *)&t->wake)) stop_loop(t);
}

int rt_tail_run(const rt_config_t *cfg, FILE *out)
{
    tail_ctx_t t = {.out = out, .format = cfg->tail_format};
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&t.loop);
    uv_async_init(&t.loop, &t.wake, on_wake);
    uv_signal_init(&t.loop, &t.sigint);
    uv_signal_init(&t.loop, &t.sigterm);
    t.wake.data = t.sigint.data = t.sigterm.data = &t;
    uv_signal_start(&t.sigint, on_signal, SIGINT);
    uv_signal_start(&t.sigterm, on_signal, SIGTERM);

    rt_bus_t *bus = rt_bus_new();
    t.sub = rt_bus_subscribe(bus, "tail", (unsigned)cfg->bus_ring_size, RT_BUS_ALL_TYPES, wake_cb,
                             &t.wake);
    rt_listener_opts_t lo = {
        .conninfo = cfg->database_url,
        .channels = cfg->channels,
        .reconnect_min_ms = cfg->reconnect_min_ms,
        .reconnect_max_ms = cfg->reconnect_max_ms,
        .bus = bus,
    };
    rt_listener_t *l = rt_listener_new(&lo);
    int rc = l ? rt_listener_start(l) : -errno;
    if (rc < 0) {
        rt_error("tail", "cannot start the listener: %s", strerror(-rc));
        stop_loop(&t);
        uv_run(&t.loop, UV_RUN_DEFAULT);
        uv_loop_close(&t.loop);
        rt_listener_free(l);
        rt_bus_free(bus);
        return 1;
    }
    uv_run(&t.loop, UV_RUN_DEFAULT);
    /* Stop the producer before the ring it writes to goes away. */
    rt_listener_free(l);
    rt_bus_free(bus);
    uv_loop_close(&t.loop);
    rt_info("tail", "printed %" PRIu64 " events", t.printed);
    return 0;
}
