/*
 * bare-write: the physical limit of loopback fan-out on this machine, to
 * compare rtbridge's deliveries/s with (issue #4). One process writes the
 * same message to N TCP connections over loopback, round after round; a
 * second process (forked, so each side stays under the 20 000-descriptor
 * limit) reads them with epoll into one 64 KiB buffer, the way
 * rtbridge-loadgen's clients do, and counts bytes.
 *
 *   --batch 1   one write(2) per message per connection: what a server pays
 *               when every event goes out on its own;
 *   --batch B   B messages per connection in one writev(2): what coalescing
 *               B queued events per client buys.
 *
 * The writer's sockets are blocking, so it runs exactly as fast as the
 * reader and the kernel let it; --rate paces it instead (events per second,
 * one message per connection each). Prints one line (and --json FILE):
 * messages written and read per second, and the CPU seconds of each side.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "bare-write"
#define MAX_BATCH 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, PROG ": %s: %s\n", what, strerror(errno));
    exit(1);
}

static double cpu_of(const struct rusage *ru, int sys)
{
    const struct timeval *t = sys ? &ru->ru_stime : &ru->ru_utime;
    return (double)t->tv_sec + t->tv_usec / 1e6;
}

/* What the reader sends back through the pipe. */
typedef struct report {
    uint64_t bytes;
    double first, last; /* monotonic seconds of the first and last byte */
    double user, sys;
    int connected;
    int err;
} report_t;

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            return -1;
        }
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The reader: connects n sockets, says so, then reads until every one is at
 * EOF (the writer closes them when done). Bounded by a deadline. */
static void reader(const struct sockaddr_in *addr, int n, int ready_fd, int report_fd,
                   double deadline_s)
{
    report_t rep;
    memset(&rep, 0, sizeof rep);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            rep.err = errno;
            break;
        }
        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0) {
            rep.err = errno;
            close(fd);
            break;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        rep.connected++;
    }
    char c = 1;
    if (write_all(ready_fd, &c, 1) < 0) die("ready pipe");
    static char buf[64 * 1024];
    struct epoll_event evs[1024];
    int open = rep.connected;
    while (open > 0 && now_s() < deadline_s) {
        int k = epoll_wait(ep, evs, 1024, 100);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < k; i++) {
            ssize_t r = read(evs[i].data.fd, buf, sizeof buf);
            if (r > 0) {
                double t = now_s();
                if (!rep.bytes) rep.first = t;
                rep.last = t;
                rep.bytes += (uint64_t)r;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, evs[i].data.fd, NULL);
                close(evs[i].data.fd);
                open--;
            }
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    rep.user = cpu_of(&ru, 0);
    rep.sys = cpu_of(&ru, 1);
    if (write_all(report_fd, &rep, sizeof rep) < 0) die("report pipe");
    _exit(0);
}

int main(int argc, char **argv)
{
    int n = 1000, size = 260, batch = 1;
    double duration = 5, rate = 0;
    const char *json = NULL;
    /* Options come in pairs: --name VALUE. */
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: " PROG " [--conns N] [--size BYTES] [--batch B] [--duration S]"
                   " [--rate EVENTS_PER_S] [--json FILE]\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, PROG ": %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--conns"))
            n = atoi(v);
        else if (!strcmp(a, "--size"))
            size = atoi(v);
        else if (!strcmp(a, "--batch"))
            batch = atoi(v);
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--rate"))
            rate = atof(v);
        else if (!strcmp(a, "--json"))
            json = v;
        else {
            fprintf(stderr, PROG ": unknown option %s\n", a);
            return 2;
        }
    }
    if (n < 1 || n > 19000 || size < 1 || size > 65536 || batch < 1 || batch > MAX_BATCH ||
        duration <= 0 || duration > 600 || rate < 0) {
        fprintf(stderr,
                PROG ": bad arguments (conns 1..19000, size 1..65536, batch 1..%d, "
                     "duration 0..600)\n",
                MAX_BATCH);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof addr;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&addr, &al) < 0)
        die("listen");
    int ready[2], rep[2];
    if (pipe(ready) < 0 || pipe(rep) < 0) die("pipe");
    double t0 = now_s();
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(ls);
        close(ready[0]);
        close(rep[0]);
        reader(&addr, n, ready[1], rep[1], t0 + duration + 120);
    }
    close(ready[1]);
    close(rep[1]);

    int *fds = calloc((size_t)n, sizeof *fds);
    if (!fds) die("calloc");
    int accepted = 0;
    for (; accepted < n; accepted++) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) die("accept");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[accepted] = fd;
    }
    close(ls);
    char c;
    if (read_all(ready[0], &c, 1) < 0) die("reader did not start");

    char *msg = malloc((size_t)size);
    if (!msg) die("malloc");
    memset(msg, 'x', (size_t)size);
    msg[size - 1] = '\n';
    struct iovec iov[MAX_BATCH];
    for (int k = 0; k < batch; k++)
        iov[k] = (struct iovec){msg, (size_t)size};

    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    double start = now_s(), end = start + duration;
    uint64_t rounds = 0, written = 0;
    int failed = 0;
    while (!failed) {
        double t = now_s();
        if (t >= end) break;
        if (rate > 0) {
            /* Round r (of batch events) is due at start + r * batch / rate. */
            double due = start + (double)rounds * batch / rate;
            if (due > t) {
                struct timespec ts = {(time_t)(due - t),
                                      (long)((due - t - (time_t)(due - t)) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        for (int i = 0; i < n; i++) {
            ssize_t w = batch == 1 ? write(fds[i], msg, (size_t)size) : writev(fds[i], iov, batch);
            if (w != (ssize_t)size * batch) {
                /* A blocking socket returns short only on error or a signal. */
                fprintf(stderr, PROG ": write returned %zd: %s\n", w, strerror(errno));
                failed = 1;
                break;
            }
        }
        rounds++;
        written += (uint64_t)n * (uint64_t)batch;
    }
    double wall = now_s() - start;
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    report_t r;
    if (read_all(rep[0], &r, sizeof r) < 0) die("reader report");
    int st;
    waitpid(child, &st, 0);

    double wuser = cpu_of(&ru1, 0) - cpu_of(&ru0, 0), wsys = cpu_of(&ru1, 1) - cpu_of(&ru0, 1);
    uint64_t read_msgs = r.bytes / (uint64_t)size;
    double rspan = r.last - start;
    printf(PROG ": %d connections, %d-byte messages, %s: %.0f messages/s written, %.0f/s read"
                " (%llu of %llu arrived), writer CPU %.2f s (%.2f us/message), reader CPU %.2f s"
                " (%.2f us/message), %.1f s\n",
           n, size, batch == 1 ? "one write per message" : "writev batches", written / wall,
           rspan > 0 ? read_msgs / rspan : 0, (unsigned long long)read_msgs,
           (unsigned long long)written, wuser + wsys, written ? (wuser + wsys) * 1e6 / written : 0,
           r.user + r.sys, read_msgs ? (r.user + r.sys) * 1e6 / read_msgs : 0, wall);
    if (batch > 1) printf(PROG ": batch %d messages per writev\n", batch);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) die(json);
        fprintf(f,
                "{\"tool\":\"bare-write\",\"conns\":%d,\"size\":%d,\"batch\":%d,\"rate\":%g,"
                "\"duration_s\":%.3f,\"written\":%llu,\"read\":%llu,\"written_per_s\":%.1f,"
                "\"read_per_s\":%.1f,\"writer_cpu_s\":%.3f,\"reader_cpu_s\":%.3f,"
                "\"writer_us_per_msg\":%.4f,\"reader_us_per_msg\":%.4f,\"connected\":%d}\n",
                n, size, batch, rate, wall, (unsigned long long)written,
                (unsigned long long)read_msgs, written / wall, rspan > 0 ? read_msgs / rspan : 0,
                wuser + wsys, r.user + r.sys, written ? (wuser + wsys) * 1e6 / written : 0,
                read_msgs ? (r.user + r.sys) * 1e6 / read_msgs : 0, r.connected);
        fclose(f);
    }
    (void)t0;
    return failed || r.connected != n || read_msgs != written ? 1 : 0;
}
