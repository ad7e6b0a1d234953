/*
 * Log-linear latency histogram (see hist.h for the bucket layout and the
 * error bound). Bucket i >= 256 is (e, sub): e = 1 + (i - 256) / 128 is the
 * shift and sub = 128 + (i - 256) % 128 the top eight bits of the value, so
 * the bucket holds [sub << e, ((sub + 1) << e) - 1].
 */
#include "hist.h"

#include <math.h>
#include <string.h>

void rt_hist_init(rt_hist_t *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

size_t rt_hist_index(uint64_t v)
{
    if (v < RT_HIST_LINEAR) return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned e = msb - RT_HIST_SUB_BITS; /* >= 1 */
    uint64_t sub = v >> e;               /* 128 .. 255 */
    return RT_HIST_LINEAR + (size_t)(e - 1) * RT_HIST_HALF + (size_t)(sub - RT_HIST_HALF);
}

uint64_t rt_hist_bucket_low(size_t i)
{
    if (i < RT_HIST_LINEAR) return (uint64_t)i;
    size_t j = i - RT_HIST_LINEAR;
    unsigned e = (unsigned)(j / RT_HIST_HALF) + 1;
    uint64_t sub = RT_HIST_HALF + j % RT_HIST_HALF;
    return sub << e;
}

uint64_t rt_hist_bucket_high(size_t i)
{
    if (i < RT_HIST_LINEAR) return (uint64_t)i;
    unsigned e = (unsigned)((i - RT_HIST_LINEAR) / RT_HIST_HALF) + 1;
    /* low + width - 1 never overflows, even for the very last bucket. */
    return rt_hist_bucket_low(i) + ((UINT64_C(1) << e) - 1);
}

void rt_hist_record_n(rt_hist_t *h, uint64_t v, uint64_t n)
{
    if (n == 0) return;
    h->counts[rt_hist_index(v)] += n;
    h->count += n;
    h->sum += (long double)v * (long double)n;
    if (v < h->min) h->min = v;
    if (v > h->max) h->max = v;
}

void rt_hist_record(rt_hist_t *h, uint64_t v)
{
    rt_hist_record_n(h, v, 1);
}

void rt_hist_merge(rt_hist_t *dst, const rt_hist_t *src)
{
    if (src->count == 0) return;
    for (size_t i = 0; i < RT_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min) dst->min = src->min;
    if (src->max > dst->max) dst->max = src->max;
}

uint64_t rt_hist_percentile(const rt_hist_t *h, double p)
{
    if (h->count == 0) return 0;
    if (!(p > 0)) p = 0; /* also catches NaN */
    if (p > 100) p = 100;
    /* Nearest rank. p/100*count is computed in floating point, where e.g.
     * 99.9/100*1000 comes out a hair above 999; shave a relative 1e-12 off so
     * an exact rank is not pushed to the next one. */
    double x = p / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)ceil(x * (1.0 - 1e-12));
    if (rank < 1) rank = 1;
    if (rank >= h->count) return h->max;
    uint64_t seen = 0;
    for (size_t i = 0; i < RT_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo = rt_hist_bucket_low(i), hi = rt_hist_bucket_high(i);
            uint64_t v = lo + (hi - lo) / 2;
            if (v < h->min) v = h->min;
            if (v > h->max) v = h->max;
            return v;
        }
    }
    return h->max; /* not reached: the counts add up to count */
}

double rt_hist_mean(const rt_hist_t *h)
{
    if (h->count == 0) return 0;
    return (double)(h->sum / (long double)h->count);
}
