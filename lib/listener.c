/*
 * The listener thread. It sleeps in poll(2) on two descriptors: the libpq
 * socket and an eventfd used to stop it. Queries it needs (the replay after a
 * reconnect, the periodic refresh, fetching an oversize payload) run on the
 * same connection between notifications; libpq keeps notifications that
 * arrive meanwhile and PQnotifies() returns them afterwards.
 *
 * The correctness argument for exactly-once delivery is in listener.h. In
 * short, the state is (xmin, seen): xmin is the xmin of the last snapshot
 * taken while LISTEN was active, seen is the set of seqs published whose rows
 * may still have xid >= xmin. A "sync" publishes every visible, unseen
 * journal row with xid >= xmin (after a reconnect those are what was missed),
 * then moves xmin forward and schedules the rows below the new xmin for
 * removal from seen; they are removed when the marker notification sent after
 * the sync comes back, because the server delivers notifications in commit
 * order, so any notification of those rows has arrived by then.
 */
#include "listener.h"

#include "event.h"
#include "log.h"
#include "pgconn.h"
#include "seqset.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define COMP "listener"
#define MARKER_CHANNEL "rt_listener_marker"
#define FETCH_BATCH 5000 /* keep in step with the LIMIT below */
#define CONNECT_TIMEOUT_MS 10000

struct rt_listener {
    char *conninfo;
    char **chans;
    int nchans;
    char *chan_array; /* "{a,b}" for = ANY($n::text[]) */
    int64_t reconnect_min_ms, reconnect_max_ms, refresh_ms;
    rt_bus_t *bus;

    pthread_t thread;
    int started;
    int wakefd;
    atomic_int stopping;

    PGconn *conn;
    int ever_connected;
    unsigned rng;

    rt_seqset_t seen;
    int have_xmin;
    char xmin[32]; /* xid8 as text */

    int64_t *prune;
    size_t nprune, capprune;
    char marker[64]; /* token of the marker in flight, "" if none */
    uint64_t marker_counter;
    uint64_t next_refresh_ns;

    /* Events parsed but not yet on the bus: a burst of notifications is
     * published as one batch, with one wake-up per consumer. */
    rt_event_t *batch[256];
    size_t nbatch;

    uint64_t invalid_log_window_ns;
    unsigned invalid_logged;

    rt_listener_stats_t stats;
};

/* ---- setup ------------------------------------------------------------------ */

static int valid_channel(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

rt_listener_t *rt_listener_new(const rt_listener_opts_t *opts)
{
    if (!opts->conninfo || !opts->channels || !opts->bus) {
        errno = EINVAL;
        return NULL;
    }
    rt_listener_t *l = calloc(1, sizeof *l);
    if (!l) abort();
    l->conninfo = strdup(opts->conninfo);
    l->reconnect_min_ms = opts->reconnect_min_ms > 0 ? opts->reconnect_min_ms : 100;
    l->reconnect_max_ms = opts->reconnect_max_ms > 0 ? opts->reconnect_max_ms : 30000;
    l->refresh_ms = opts->refresh_ms > 0 ? opts->refresh_ms : 5000;
    l->bus = opts->bus;
    l->wakefd = -1;
    l->rng = (unsigned)getpid() ^ (unsigned)rt_mono_ns();

    char *copy = strdup(opts->channels), *save = NULL;
    size_t arr_len = 3;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!valid_channel(tok)) {
            free(copy);
            rt_listener_free(l);
            errno = EINVAL;
            return NULL;
        }
        l->chans = realloc(l->chans, sizeof(char *) * (size_t)(l->nchans + 1));
        if (!l->chans) abort();
        l->chans[l->nchans++] = strdup(tok);
        arr_len += strlen(tok) + 1;
    }
    free(copy);
    if (l->nchans == 0) {
        rt_listener_free(l);
        errno = EINVAL;
        return NULL;
    }
    l->chan_array = malloc(arr_len);
    if (!l->chan_array) abort();
    char *p = l->chan_array;
    *p++ = '{';
    for (int i = 0; i < l->nchans; i++) {
        if (i) *p++ = ',';
        size_t n = strlen(l->chans[i]);
        memcpy(p, l->chans[i], n);
        p += n;
    }
    *p++ = '}';
    *p = '\0';

    rt_seqset_init(&l->seen);
    atomic_init(&l->stopping, 0);
    return l;
}

void rt_listener_free(rt_listener_t *l)
{
    if (!l) return;
    rt_listener_stop(l);
    for (int i = 0; i < l->nchans; i++) free(l->chans[i]);
    free(l->chans);
    free(l->chan_array);
    free(l->conninfo);
    free(l->prune);
    if (l->seen.slots) rt_seqset_close(&l->seen);
    free(l);
}

rt_listener_stats_t *rt_listener_stats(rt_listener_t *l)
{
    return &l->stats;
}

/* ---- helpers ---------------------------------------------------------------- */

static int stopping(rt_listener_t *l)
{
    return atomic_load_explicit(&l->stopping, memory_order_acquire);
}

static void disconnect(rt_listener_t *l, const char *why)
{
    if (!l->conn) return;
    if (why) rt_warn(COMP, "connection lost: %s", why);
    PQfinish(l->conn);
    l->conn = NULL;
    atomic_store(&l->stats.connected, 0);
    /* A marker in flight died with the connection: keep the rows it would
     * have pruned (harmless) and stop waiting for it. */
    l->marker[0] = '\0';
    l->nprune = 0;
}

static const char *conn_error(PGconn *c)
{
    const char *m = PQerrorMessage(c);
    static _Thread_local char buf[256];
    snprintf(buf, sizeof buf, "%s", m && *m ? m : "unknown error");
    return rt_pg_oneline(buf);
}

/* Runs a command that returns no rows; returns 0 or -1 (error logged). */
static int exec_cmd(rt_listener_t *l, const char *sql)
{
    PGresult *r = PQexec(l->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) rt_warn(COMP, "%s: %s", sql, conn_error(l->conn));
    PQclear(r);
    return ok ? 0 : -1;
}

static void flush_batch(rt_listener_t *l)
{
    if (!l->nbatch) return;
    rt_bus_publish_batch(l->bus, l->batch, l->nbatch);
    for (size_t i = 0; i < l->nbatch; i++) rt_event_unref(l->batch[i]);
    l->nbatch = 0;
}

static void publish(rt_listener_t *l, rt_event_t *ev, int replayed)
{
    if (l->nbatch == sizeof l->batch / sizeof l->batch[0]) flush_batch(l);
    l->batch[l->nbatch++] = ev;
    atomic_fetch_add_explicit(&l->stats.published, 1, memory_order_relaxed);
    if (replayed) atomic_fetch_add_explicit(&l->stats.replayed, 1, memory_order_relaxed);
    if (ev->seq > atomic_load_explicit(&l->stats.last_seq, memory_order_relaxed))
        atomic_store_explicit(&l->stats.last_seq, ev->seq, memory_order_relaxed);
    atomic_store_explicit(&l->stats.last_event_ns, ev->recv_ns, memory_order_relaxed);
}

static void note_invalid(rt_listener_t *l, const char *channel, int64_t seq, const char *why)
{
    atomic_fetch_add_explicit(&l->stats.invalid, 1, memory_order_relaxed);
    /* At most 10 lines a second, so a flood of bad payloads cannot flood the log. */
    uint64_t now = rt_mono_ns();
    if (now - l->invalid_log_window_ns > 1000000000u) {
        l->invalid_log_window_ns = now;
        l->invalid_logged = 0;
    }
    if (l->invalid_logged++ < 10)
        rt_warn(COMP, "skipped notification on %s (seq %" PRId64 "): %s", channel, seq, why);
}

/* Handles one payload, from a notification or from the journal. The seq is
 * marked seen whatever happens, so a bad row is reported once, not again on
 * every replay. */
static void handle_payload(rt_listener_t *l, const char *channel, const char *payload, size_t len,
                           int replayed, int from_journal);

static void fetch_by_ref(rt_listener_t *l, const char *channel, int64_t seq, int replayed)
{
    char seqs[24];
    snprintf(seqs, sizeof seqs, "%" PRId64, seq);
    const char *params[1] = {seqs};
    PGresult *r = PQexecParams(l->conn, "SELECT channel, payload FROM rt_journal WHERE seq = $1",
                               1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rt_warn(COMP, "fetching seq %s by reference: %s", seqs, conn_error(l->conn));
        /* Not marked seen: the next sync (after the reconnect this error
         * usually means) publishes it. */
        PQclear(r);
        return;
    }
    if (PQntuples(r) != 1) {
        rt_seqset_add(&l->seen, seq);
        note_invalid(l, channel, seq, "referenced journal row not found (pruned?)");
        PQclear(r);
        return;
    }
    atomic_fetch_add_explicit(&l->stats.by_ref, 1, memory_order_relaxed);
    handle_payload(l, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1),
                   replayed, 1);
    PQclear(r);
}

static void handle_payload(rt_listener_t *l, const char *channel, const char *payload, size_t len,
                           int replayed, int from_journal)
{
    rt_event_t *ev = NULL;
    int64_t seq = 0;
    char why[160];
    rt_parse_result_t res =
        rt_event_parse_notify(channel, payload, len, rt_now_ns(), &ev, &seq, why, sizeof why);

    if (seq > 0 && rt_seqset_contains(&l->seen, seq)) {
        if (ev) rt_event_unref(ev);
        if (!replayed) atomic_fetch_add_explicit(&l->stats.duplicates, 1, memory_order_relaxed);
        return;
    }
    switch (res) {
    case RT_PARSE_OK:
        rt_seqset_add(&l->seen, seq);
        publish(l, ev, replayed);
        break;
    case RT_PARSE_BY_REF:
        if (from_journal) {
            /* The journal always holds the full payload; a reference there
             * would loop. */
            rt_seqset_add(&l->seen, seq);
            note_invalid(l, channel, seq, "journal payload is itself a reference");
        } else {
            fetch_by_ref(l, channel, seq, replayed);
        }
        break;
    default:
        if (seq > 0) rt_seqset_add(&l->seen, seq);
        note_invalid(l, channel, seq, why);
        break;
    }
}

/* ---- the snapshot protocol --------------------------------------------------- */

/* Reads the xmin of the current transaction's snapshot into buf. */
static int read_xmin(rt_listener_t *l, char *buf, size_t cap)
{
    PGresult *r = PQexec(l->conn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (ok)
        snprintf(buf, cap, "%s", PQgetvalue(r, 0, 0));
    else
        rt_warn(COMP, "reading snapshot xmin: %s", conn_error(l->conn));
    PQclear(r);
    return ok ? 0 : -1;
}

/* Before the first LISTEN: every row visible now predates this listener, so
 * the rows at or above the snapshot's xmin are marked seen (the later syncs
 * look only that far back) and not published. */
static int initial_snapshot(rt_listener_t *l)
{
    if (exec_cmd(l, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") < 0) return -1;
    char xmin[32];
    if (read_xmin(l, xmin, sizeof xmin) < 0) goto fail;
    const char *params[2] = {xmin, l->chan_array};
    PGresult *r = PQexecParams(l->conn,
                               "SELECT seq FROM rt_journal WHERE xid >= $1::xid8 "
                               "AND channel = ANY($2::text[])",
                               2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rt_error(COMP, "reading rt_journal: %s (has `rtbridge migrate` run?)",
                 conn_error(l->conn));
        PQclear(r);
        goto fail;
    }
    for (int i = 0; i < PQntuples(r); i++) rt_seqset_add(&l->seen, atoll(PQgetvalue(r, i, 0)));
    PQclear(r);
    if (exec_cmd(l, "COMMIT") < 0) return -1;
    snprintf(l->xmin, sizeof l->xmin, "%s", xmin);
    l->have_xmin = 1;
    return 0;
fail:
    exec_cmd(l, "ROLLBACK");
    return -1;
}

static void prune_push(rt_listener_t *l, int64_t seq)
{
    if (l->nprune == l->capprune) {
        l->capprune = l->capprune ? l->capprune * 2 : 1024;
        l->prune = realloc(l->prune, l->capprune * sizeof *l->prune);
        if (!l->prune) abort();
    }
    l->prune[l->nprune++] = seq;
}

/* Publishes every visible journal row with xid >= l->xmin not yet published,
 * in seq order, then advances xmin and sends the marker that will prune the
 * seen set. Returns 0, or -1 if the connection failed. */
static int sync_journal(rt_listener_t *l, int replay)
{
    if (exec_cmd(l, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") < 0) return -1;
    char xmin_new[32];
    if (read_xmin(l, xmin_new, sizeof xmin_new) < 0) goto fail;

    l->nprune = 0;
    int64_t after = 0;
    uint64_t published = 0;
    for (;;) {
        char afters[24];
        snprintf(afters, sizeof afters, "%" PRId64, after);
        const char *params[4] = {l->xmin, xmin_new, l->chan_array, afters};
        /* The payload is fetched only for rows not seen yet: on a live
         * connection that is almost none of them. */
        PGresult *r = PQexecParams(
            l->conn,
            "SELECT seq, xid >= $2::xid8 FROM rt_journal WHERE xid >= $1::xid8 AND channel = ANY($3::text[]) "
            "AND seq > $4::bigint ORDER BY seq LIMIT 5000",
            4, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            rt_warn(COMP, "reading rt_journal: %s", conn_error(l->conn));
            PQclear(r);
            goto fail;
        }
        int n = PQntuples(r);
        /* Collect the unseen seqs of this batch as an array literal. */
        size_t cap = 16 + (size_t)n * 21, len = 0;
        char *missing = malloc(cap);
        if (!missing) abort();
        missing[len++] = '{';
        int nmissing = 0;
        for (int i = 0; i < n; i++) {
            int64_t seq = atoll(PQgetvalue(r, i, 0));
            int keep = PQgetvalue(r, i, 1)[0] == 't';
            if (!keep) prune_push(l, seq);
            if (!rt_seqset_contains(&l->seen, seq)) {
                len += (size_t)snprintf(missing + len, cap - len, "%s%" PRId64,
                                        nmissing ? "," : "", seq);
                nmissing++;
            }
            after = seq;
        }
        missing[len++] = '}';
        missing[len] = '\0';
        PQclear(r);

        if (nmissing > 0) {
            const char *p2[1] = {missing};
            PGresult *rows = PQexecParams(l->conn,
                                          "SELECT channel, payload FROM rt_journal "
                                          "WHERE seq = ANY($1::bigint[]) ORDER BY seq",
                                          1, NULL, p2, NULL, NULL, 0);
            if (PQresultStatus(rows) != PGRES_TUPLES_OK) {
                rt_warn(COMP, "reading rt_journal payloads: %s", conn_error(l->conn));
                PQclear(rows);
                free(missing);
                goto fail;
            }
            for (int i = 0; i < PQntuples(rows); i++) {
                handle_payload(l, PQgetvalue(rows, i, 0), PQgetvalue(rows, i, 1),
                               (size_t)PQgetlength(rows, i, 1), 1, 1);
                published++;
            }
            PQclear(rows);
            flush_batch(l);
        }
        free(missing);
        if (n < FETCH_BATCH) break;
    }
    if (exec_cmd(l, "COMMIT") < 0) return -1;
    if (replay || published)
        rt_info(COMP, "%s: %" PRIu64 " journal rows published (xmin %s -> %s)",
                replay ? "replay" : "refresh", published, l->xmin, xmin_new);
    snprintf(l->xmin, sizeof l->xmin, "%s", xmin_new);

    /* Our own NOTIFY commits after every transaction whose rows we just
     * scheduled for pruning, so by the time it comes back their
     * notifications (if any were still queued for us) have been handled. */
    snprintf(l->marker, sizeof l->marker, "%d:%" PRIu64, PQbackendPID(l->conn),
             ++l->marker_counter);
    char sql[128];
    snprintf(sql, sizeof sql, "NOTIFY " MARKER_CHANNEL ", '%s'", l->marker);
    if (exec_cmd(l, sql) < 0) return -1;
    l->next_refresh_ns = rt_mono_ns() + (uint64_t)l->refresh_ms * 1000000u;
    return 0;
fail:
    exec_cmd(l, "ROLLBACK");
    return -1;
}

static void on_marker(rt_listener_t *l, const char *token)
{
    if (!l->marker[0] || strcmp(token, l->marker) != 0) return;
    for (size_t i = 0; i < l->nprune; i++) rt_seqset_remove(&l->seen, l->prune[i]);
    l->nprune = 0;
    l->marker[0] = '\0';
}

/* ---- connection ------------------------------------------------------------- */

static int connect_db(rt_listener_t *l)
{
    char err[256];
    PGconn *c = rt_pg_connect(l->conninfo, "rtbridge-listener", l->wakefd, &l->stopping,
                              CONNECT_TIMEOUT_MS, err, sizeof err);
    if (!c) {
        if (!stopping(l)) rt_warn(COMP, "connect failed: %s", err);
        return -1;
    }
    l->conn = c;

    if (!l->have_xmin && initial_snapshot(l) < 0) goto fail;
    for (int i = 0; i < l->nchans; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "LISTEN \"%s\"", l->chans[i]);
        if (exec_cmd(l, sql) < 0) goto fail;
    }
    if (exec_cmd(l, "LISTEN " MARKER_CHANNEL) < 0) goto fail;
    if (sync_journal(l, l->ever_connected) < 0) goto fail;
    return 0;
fail:
    PQfinish(l->conn);
    l->conn = NULL;
    return -1;
}

/* ---- the thread --------------------------------------------------------------- */

static int64_t backoff_ms(rt_listener_t *l, unsigned attempt)
{
    int64_t d = l->reconnect_min_ms;
    for (unsigned i = 0; i < attempt && d < l->reconnect_max_ms; i++) d *= 2;
    if (d > l->reconnect_max_ms) d = l->reconnect_max_ms;
    /* Jitter over [d/2, d], so a fleet of instances does not reconnect in step. */
    int64_t half = d / 2;
    return half + (half > 0 ? (int64_t)(rand_r(&l->rng) % (unsigned)(half + 1)) : 0);
}

static void drain_notifications(rt_listener_t *l)
{
    PGnotify *n;
    while ((n = PQnotifies(l->conn)) != NULL) {
        if (strcmp(n->relname, MARKER_CHANNEL) == 0) {
            on_marker(l, n->extra);
        } else {
            atomic_fetch_add_explicit(&l->stats.notifications, 1, memory_order_relaxed);
            handle_payload(l, n->relname, n->extra, strlen(n->extra), 0, 0);
        }
        PQfreemem(n);
    }
    flush_batch(l);
}

static void *listener_main(void *arg)
{
    rt_listener_t *l = arg;
    rt_log_thread_name("listener");
    unsigned attempt = 0;

    while (!stopping(l)) {
        if (!l->conn) {
            if (connect_db(l) == 0) {
                if (l->ever_connected) atomic_fetch_add(&l->stats.reconnects, 1);
                rt_info(COMP, "%s, listening on %s", l->ever_connected ? "reconnected" : "connected",
                        l->chan_array);
                l->ever_connected = 1;
                attempt = 0;
                atomic_store(&l->stats.connected, 1);
                drain_notifications(l);
            } else if (!stopping(l)) {
                atomic_fetch_add(&l->stats.connect_failures, 1);
                int64_t d = backoff_ms(l, attempt++);
                rt_info(COMP, "retrying in %" PRId64 " ms", d);
                rt_sleep_or_stop(l->wakefd, &l->stopping, d);
            }
            continue;
        }

        uint64_t now = rt_mono_ns();
        int timeout = l->next_refresh_ns > now ? (int)((l->next_refresh_ns - now) / 1000000u) + 1 : 0;
        struct pollfd pfds[2] = {
            {.fd = PQsocket(l->conn), .events = POLLIN},
            {.fd = l->wakefd, .events = POLLIN},
        };
        if (poll(pfds, 2, timeout) < 0 && errno != EINTR) {
            rt_error(COMP, "poll: %s", strerror(errno));
            continue;
        }
        if (pfds[0].revents) {
            if (!PQconsumeInput(l->conn) || PQstatus(l->conn) != CONNECTION_OK) {
                disconnect(l, conn_error(l->conn));
                continue;
            }
            drain_notifications(l);
        }
        if (rt_mono_ns() >= l->next_refresh_ns && !l->marker[0]) {
            if (sync_journal(l, 0) < 0) {
                disconnect(l, conn_error(l->conn));
                continue;
            }
            drain_notifications(l);
        } else if (rt_mono_ns() >= l->next_refresh_ns) {
            l->next_refresh_ns = rt_mono_ns() + (uint64_t)l->refresh_ms * 1000000u;
        }
    }
    flush_batch(l);
    disconnect(l, NULL);
    return NULL;
}

int rt_listener_start(rt_listener_t *l)
{
    if (l->started) return -EALREADY;
    l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wakefd < 0) return -errno;
    int rc = pthread_create(&l->thread, NULL, listener_main, l);
    if (rc) {
        close(l->wakefd);
        l->wakefd = -1;
        return -rc;
    }
    l->started = 1;
    return 0;
}

void rt_listener_stop(rt_listener_t *l)
{
    if (!l->started) return;
    atomic_store_explicit(&l->stopping, 1, memory_order_release);
    rt_wake(l->wakefd);
    pthread_join(l->thread, NULL);
    close(l->wakefd);
    l->wakefd = -1;
    l->started = 0;
}
