/* Unit tests for lib/hist.c: bucket geometry, percentiles against a sorted
 * reference (nearest rank, within the documented 1/256 relative error),
 * merging, and the empty histogram. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "hist.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rnd64(uint64_t *s)
{
    /* splitmix64: reproducible, no libc state. */
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The nearest-rank order statistic of sorted v[0..n-1]. */
static uint64_t ref_percentile(const uint64_t *v, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-9);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return v[rank - 1];
}

/* Asserts |got - want| <= want / 256 and prints both sides when not. */
static void check_close(const char *what, double p, uint64_t got, uint64_t want)
{
    double err = fabs((double)got - (double)want);
    double lim = (double)want / 256.0;
    if (err > lim) {
        print_error("%s p%g: got %llu, want %llu (error %.0f > %.1f)\n", what, p,
                    (unsigned long long)got, (unsigned long long)want, err, lim);
        fail();
    }
}

static const double PCTS[] = {0, 1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100};

static void check_against_reference(const char *what, uint64_t *vals, size_t n)
{
    rt_hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    rt_hist_init(h);
    long double sum = 0;
    for (size_t i = 0; i < n; i++) {
        rt_hist_record(h, vals[i]);
        sum += vals[i];
    }
    qsort(vals, n, sizeof *vals, cmp_u64);
    assert_int_equal(h->count, n);
    assert_int_equal(h->min, vals[0]);
    assert_int_equal(h->max, vals[n - 1]);
    for (size_t i = 0; i < sizeof PCTS / sizeof PCTS[0]; i++)
        check_close(what, PCTS[i], rt_hist_percentile(h, PCTS[i]),
                    ref_percentile(vals, n, PCTS[i]));
    assert_int_equal(rt_hist_percentile(h, 100), vals[n - 1]); /* exact */
    double mean = (double)(sum / n);
    assert_true(fabs(rt_hist_mean(h) - mean) <= mean * 1e-12);
    free(h);
}

static void test_empty(void **state)
{
    (void)state;
    rt_hist_t *h = malloc(sizeof *h), *g = malloc(sizeof *g);
    assert_non_null(h);
    assert_non_null(g);
    rt_hist_init(h);
    rt_hist_init(g);
    assert_int_equal(h->count, 0);
    assert_int_equal(rt_hist_percentile(h, 50), 0);
    assert_int_equal(rt_hist_percentile(h, 100), 0);
    assert_true(rt_hist_mean(h) == 0.0);
    rt_hist_merge(h, g); /* empty into empty */
    assert_int_equal(h->count, 0);
    assert_int_equal(h->min, UINT64_MAX);
    assert_int_equal(h->max, 0);
    rt_hist_record(g, 1234);
    rt_hist_merge(h, g); /* into an empty one: same as the source */
    assert_int_equal(h->count, 1);
    assert_int_equal(h->min, 1234);
    assert_int_equal(h->max, 1234);
    assert_int_equal(rt_hist_percentile(h, 0), 1234);
    assert_int_equal(rt_hist_percentile(h, 50), 1234);
    rt_hist_record_n(h, 99, 0); /* n = 0 records nothing */
    assert_int_equal(h->count, 1);
    assert_int_equal(h->min, 1234);
    free(g);
    free(h);
}

/* Buckets tile the whole uint64 range without gaps or overlaps, every value
 * lands in the bucket that holds it, and no bucket is wider than 1/128 of
 * its lowest value (above the exact range). */
static void test_geometry(void **state)
{
    (void)state;
    assert_int_equal(rt_hist_index(0), 0);
    assert_int_equal(rt_hist_index(255), 255);
    assert_int_equal(rt_hist_index(256), 256);
    assert_int_equal(rt_hist_index(UINT64_MAX), RT_HIST_BUCKETS - 1);
    assert_int_equal(rt_hist_bucket_low(0), 0);
    assert_int_equal(rt_hist_bucket_high(RT_HIST_BUCKETS - 1), UINT64_MAX);
    for (size_t i = 0; i + 1 < RT_HIST_BUCKETS; i++) {
        uint64_t lo = rt_hist_bucket_low(i), hi = rt_hist_bucket_high(i);
        assert_true(lo <= hi);
        assert_int_equal(hi + 1, rt_hist_bucket_low(i + 1));
        assert_int_equal(rt_hist_index(lo), i);
        assert_int_equal(rt_hist_index(hi), i);
        if (i >= RT_HIST_LINEAR) assert_true((double)(hi - lo + 1) <= (double)lo / 128.0);
    }
    uint64_t s = 1;
    for (int k = 0; k < 200000; k++) {
        uint64_t v = rnd64(&s) >> (rnd64(&s) % 64);
        size_t i = rt_hist_index(v);
        assert_true(i < RT_HIST_BUCKETS);
        assert_true(rt_hist_bucket_low(i) <= v && v <= rt_hist_bucket_high(i));
    }
}

/* Below 256 every value has its own bucket: percentiles are exact, and the
 * rank arithmetic must not be pushed off by floating point (99.5 % of 200 is
 * rank 199 exactly, 99.9 % of 1000 is rank 999). */
static void test_exact_small(void **state)
{
    (void)state;
    rt_hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    rt_hist_init(h);
    for (uint64_t v = 0; v < 200; v++)
        rt_hist_record(h, v);
    assert_int_equal(rt_hist_percentile(h, 0), 0);
    assert_int_equal(rt_hist_percentile(h, 50), 99);
    assert_int_equal(rt_hist_percentile(h, 99.5), 198);
    assert_int_equal(rt_hist_percentile(h, 100), 199);
    assert_int_equal(rt_hist_percentile(h, 250), 199); /* clamped */
    assert_int_equal(rt_hist_percentile(h, -3), 0);
    assert_int_equal(rt_hist_percentile(h, NAN), 0);
    rt_hist_init(h);
    for (int k = 0; k < 4; k++)
        for (uint64_t v = 1; v <= 250; v++)
            rt_hist_record(h, v);                       /* 1000 values */
    assert_int_equal(rt_hist_percentile(h, 99.9), 250); /* rank 999 */
    assert_int_equal(rt_hist_percentile(h, 99.6), 249); /* rank 996: 249 ends at 996 */
    assert_int_equal(rt_hist_percentile(h, 90), 225);
    rt_hist_init(h);
    rt_hist_record_n(h, 7, 3);
    rt_hist_record(h, 100);
    assert_int_equal(rt_hist_percentile(h, 75), 7);
    assert_int_equal(rt_hist_percentile(h, 76), 100);
    assert_true(rt_hist_mean(h) == (7.0 * 3 + 100) / 4);
    free(h);
}

/* 1 .. 1 000 000 once each. */
static void test_uniform(void **state)
{
    (void)state;
    size_t n = 1000000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = i + 1;
    check_against_reference("uniform", v, n);
    free(v);
}

/* Latency-like: mostly ~100 µs with a long tail up to seconds, in ns. */
static void test_long_tail(void **state)
{
    (void)state;
    size_t n = 300000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++) {
        double u = ((double)(rnd64(&s) >> 11) + 0.5) / 9007199254740992.0;
        /* Pareto with x_m = 50 µs, alpha = 1.5 */
        v[i] = (uint64_t)(50000.0 / pow(u, 1.0 / 1.5));
    }
    check_against_reference("pareto", v, n);
    /* A bimodal one, with both modes far apart and huge values. */
    for (size_t i = 0; i < n; i++)
        v[i] = (rnd64(&s) & 1) ? 1000 + rnd64(&s) % 50 : (UINT64_C(1) << 62) + rnd64(&s) % 1000000;
    check_against_reference("bimodal", v, n);
    free(v);
}

/* Merging per-thread histograms is the same as recording everything in one. */
static void test_merge(void **state)
{
    (void)state;
    rt_hist_t *all = malloc(sizeof *all), *part[4], *m = malloc(sizeof *m);
    assert_non_null(all);
    assert_non_null(m);
    rt_hist_init(all);
    rt_hist_init(m);
    for (int k = 0; k < 4; k++) {
        part[k] = malloc(sizeof *part[k]);
        assert_non_null(part[k]);
        rt_hist_init(part[k]);
    }
    uint64_t s = 7;
    for (int i = 0; i < 500000; i++) {
        uint64_t v = rnd64(&s) % 50000000;
        rt_hist_record(all, v);
        rt_hist_record(part[rnd64(&s) % 3], v); /* part[3] stays empty */
    }
    for (int k = 0; k < 4; k++)
        rt_hist_merge(m, part[k]);
    assert_int_equal(m->count, all->count);
    assert_int_equal(m->min, all->min);
    assert_int_equal(m->max, all->max);
    assert_memory_equal(m->counts, all->counts, sizeof all->counts);
    for (size_t i = 0; i < sizeof PCTS / sizeof PCTS[0]; i++)
        assert_int_equal(rt_hist_percentile(m, PCTS[i]), rt_hist_percentile(all, PCTS[i]));
    assert_true(fabs(rt_hist_mean(m) - rt_hist_mean(all)) <= rt_hist_mean(all) * 1e-12);
    for (int k = 0; k < 4; k++)
        free(part[k]);
    free(m);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),       cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_exact_small), cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_long_tail),   cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
