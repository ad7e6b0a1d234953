/* Unit tests for lib/seqset.c against a plain bitmap as the reference. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "seqset.h"

#include <stdlib.h>

static void test_add_contains_remove(void **state)
{
    (void)state;
    rt_seqset_t s;
    rt_seqset_init(&s);
    assert_int_equal(rt_seqset_add(&s, 5), 1);
    assert_int_equal(rt_seqset_add(&s, 5), 0);
    assert_true(rt_seqset_contains(&s, 5));
    assert_false(rt_seqset_contains(&s, 6));
    assert_int_equal(rt_seqset_remove(&s, 6), 0);
    assert_int_equal(rt_seqset_remove(&s, 5), 1);
    assert_false(rt_seqset_contains(&s, 5));
    assert_int_equal(s.count, 0);
    rt_seqset_close(&s);
}

/* Random operations, dense and sparse keys, checked against a bitmap; the
 * table grows many times and deletions exercise the backward shift. */
static void test_random_against_reference(void **state)
{
    (void)state;
    const int64_t range[] = {5000, 1 << 22};
    for (int r = 0; r < 2; r++) {
        rt_seqset_t s;
        rt_seqset_init(&s);
        unsigned char *ref = calloc((size_t)range[r] + 1, 1);
        size_t n = 0;
        unsigned seed = 12345u + (unsigned)r;
        for (int i = 0; i < 400000; i++) {
            int64_t k = 1 + (int64_t)(rand_r(&seed) % (unsigned)range[r]);
            int op = rand_r(&seed) % 3;
            if (op < 2) {
                int added = rt_seqset_add(&s, k);
                assert_int_equal(added, !ref[k]);
                if (!ref[k]) n++;
                ref[k] = 1;
            } else {
                int removed = rt_seqset_remove(&s, k);
                assert_int_equal(removed, ref[k]);
                if (ref[k]) n--;
                ref[k] = 0;
            }
            assert_int_equal(s.count, n);
        }
        size_t bad = 0;
        for (int64_t k = 1; k <= range[r]; k++)
            if (rt_seqset_contains(&s, k) != ref[k]) bad++;
        assert_int_equal(bad, 0);
        free(ref);
        rt_seqset_close(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_contains_remove),
        cmocka_unit_test(test_random_against_reference),
    };
    return cmocka_run_group_tests_name("seqset", tests, NULL, NULL);
}
