/*
 * A latency histogram in the style of HdrHistogram: log-linear buckets over
 * the whole uint64 range, so recording is a few shifts and an increment, the
 * memory is fixed (no allocation, no growth), and any percentile is reported
 * with a bounded relative error.
 *
 * Values below 256 have a bucket each (exact). Above that, every power of two
 * [2^k, 2^(k+1)) is split into 128 equal sub-buckets, so a bucket is at most
 * 1/128 of its lowest value wide. A percentile is reported as the middle of
 * its bucket (clamped to the exact minimum and maximum that were recorded),
 * which is within 1/256 (0.4 %) of the true order statistic.
 *
 * Percentile p (0..100) is the value v of the ceil(p/100 * count)-th smallest
 * recording (the first for p = 0), the usual "nearest rank" definition; p100
 * is the exact maximum.
 *
 * Not thread-safe: keep one histogram per thread and merge them with
 * rt_hist_merge when reading (merging is exact: counts simply add up).
 */
#ifndef RT_HIST_H
#define RT_HIST_H

#include <stddef.h>
#include <stdint.h>

#define RT_HIST_SUB_BITS 7                            /* 128 sub-buckets per power of two */
#define RT_HIST_LINEAR (1u << (RT_HIST_SUB_BITS + 1)) /* 256 exact buckets at the bottom */
#define RT_HIST_HALF (1u << RT_HIST_SUB_BITS)         /* 128 */
#define RT_HIST_BUCKETS (RT_HIST_LINEAR + (64 - RT_HIST_SUB_BITS - 1) * RT_HIST_HALF)

typedef struct rt_hist {
    uint64_t count;
    uint64_t min; /* exact; UINT64_MAX when empty */
    uint64_t max; /* exact; 0 when empty */
    long double sum;
    uint64_t counts[RT_HIST_BUCKETS];
} rt_hist_t;

/* Empties h. The caller embeds or allocates it (about 59 KiB). */
void rt_hist_init(rt_hist_t *h);

/* Records one value, or n equal values. */
void rt_hist_record(rt_hist_t *h, uint64_t v);
void rt_hist_record_n(rt_hist_t *h, uint64_t v, uint64_t n);

/* Adds every recording of src to dst (src is unchanged). */
void rt_hist_merge(rt_hist_t *dst, const rt_hist_t *src);

/* The p-th percentile, p in [0, 100] (clamped); 0 for an empty histogram. */
uint64_t rt_hist_percentile(const rt_hist_t *h, double p);

/* Arithmetic mean of the recorded values (exact up to long double); 0 when empty. */
double rt_hist_mean(const rt_hist_t *h);

/* Bucket geometry, for tests and for printing a distribution: the index a
 * value lands in, and the lowest and highest value of a bucket. */
size_t rt_hist_index(uint64_t v);
uint64_t rt_hist_bucket_low(size_t i);
uint64_t rt_hist_bucket_high(size_t i);

#endif
