/* Unit tests for lib/pgconn.c's worker helpers (the connect itself is covered
 * by the listener and ETL integration tests). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "event.h"
#include "pgconn.h"

#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A wake-up that is not a stop (the ETL's "events arrived") must not turn the
 * backoff sleep into a busy loop: it sleeps the whole time on little CPU. */
static void test_sleep_with_pending_wakeup_does_not_spin(void **state)
{
    (void)state;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(fd >= 0);
    uint64_t one = 1;
    assert_int_equal(write(fd, &one, sizeof one), sizeof one);
    atomic_int stopping = 0;
    uint64_t t0 = rt_mono_ns(), c0 = thread_cpu_ns();
    rt_sleep_or_stop(fd, &stopping, 300);
    uint64_t wall = rt_mono_ns() - t0, cpu = thread_cpu_ns() - c0;
    if (wall < 300000000u) fail_msg("returned after %llu ms, want >= 300", (unsigned long long)(wall / 1000000u));
    if (cpu > 100000000u) fail_msg("used %llu ms of CPU sleeping 300 ms", (unsigned long long)(cpu / 1000000u));
    close(fd);
}

static void test_sleep_returns_when_stopping(void **state)
{
    (void)state;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    atomic_int stopping = 1;
    uint64_t t0 = rt_mono_ns();
    rt_sleep_or_stop(fd, &stopping, 10000);
    assert_true(rt_mono_ns() - t0 < 1000000000u);
    close(fd);
}

static void test_oneline(void **state)
{
    (void)state;
    char a[] = "server closed the connection unexpectedly\n\tThis probably means\r\n  ";
    assert_string_equal(rt_pg_oneline(a),
                        "server closed the connection unexpectedly  This probably means");
    char b[] = "";
    assert_string_equal(rt_pg_oneline(b), "");
    char c[] = "one line";
    assert_string_equal(rt_pg_oneline(c), "one line");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sleep_with_pending_wakeup_does_not_spin),
        cmocka_unit_test(test_sleep_returns_when_stopping),
        cmocka_unit_test(test_oneline),
    };
    return cmocka_run_group_tests_name("pgconn", tests, NULL, NULL);
}
