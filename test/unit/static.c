/*
 * Unit tests for lib/static.c: the embedded files are byte-for-byte the ones
 * in lib/web/ with the right content types and headers; unknown names and
 * every path that could leave the web root are not served; --web-root serves
 * from disk with the same rules.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "static.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads a whole file (the tests run from the repository root). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) break;
        n += r;
    }
    fclose(f);
    *len = n;
    return buf;
}

static rt_handle_result_t get(void *ctx, const char *path, rt_reply_t *r)
{
    memset(r, 0, sizeof *r);
    return rt_static_handle(ctx, path, "", r, NULL, NULL);
}

static void reply_free(rt_reply_t *r)
{
    if (!r->body_static) free(r->body);
}

static void test_embedded_files_match_lib_web(void **state)
{
    (void)state;
    static const struct {
        const char *path, *file, *type;
    } cases[] = {
        {"/", "lib/web/index.html", "text/html; charset=utf-8"},
        {"/static/rtclient.js", "lib/web/rtclient.js", "text/javascript; charset=utf-8"},
        {"/static/app.js", "lib/web/app.js", "text/javascript; charset=utf-8"},
        {"/static/style.css", "lib/web/style.css", "text/css; charset=utf-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rt_reply_t r;
        assert_int_equal(get(NULL, cases[i].path, &r), RT_HANDLE_DONE);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.content_type, cases[i].type);
        assert_true(r.body_static);
        size_t len;
        char *want = slurp(cases[i].file, &len);
        assert_int_equal(r.len, len);
        assert_memory_equal(r.body, want, len);
        free(want);
        assert_non_null(strstr(r.headers, "Cache-Control: no-cache\r\n"));
        assert_non_null(strstr(r.headers, "X-Content-Type-Options: nosniff\r\n"));
        int html = strcmp(cases[i].path, "/") == 0;
        assert_int_equal(strstr(r.headers, "Content-Security-Policy: ") != NULL, html);
        reply_free(&r);
    }
}

static void test_every_embedded_file_has_a_content_type(void **state)
{
    (void)state;
    assert_true(rt_static_assets_count >= 4);
    for (size_t i = 0; i < rt_static_assets_count; i++) {
        const rt_static_asset_t *a = &rt_static_assets[i];
        assert_non_null(rt_static_content_type(a->name));
        assert_int_equal(a->data[a->len], '\0'); /* text files are C strings too */
    }
    assert_null(rt_static_content_type("Makefile"));
    assert_null(rt_static_content_type("x.exe"));
    assert_string_equal(rt_static_content_type("a.mjs"), "text/javascript; charset=utf-8");
}

/* Paths as the fan-out hands them over: already percent-decoded. */
static const char *const refused[] = {
    "/static/",          "/static/nope.js",      "/static/../Makefile", "/static/../lib/web/app.js",
    "/static/.hidden.js", "/static/sub/app.js",  "/static/app.js/",     "/static/app",
    "/static/-x.js",     "/index.html",         "/staticapp.js",       "/static//app.js",
    "/static/%2e%2e/x.js", "/static/app.js\\x.js", "/other/app.js",
};

static void test_unknown_and_escaping_paths_are_not_served(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        rt_reply_t r;
        if (get(NULL, refused[i], &r) != RT_HANDLE_NOT_MINE) fail_msg("served %s", refused[i]);
    }
    /* A name longer than any served one. */
    char long_path[200] = "/static/";
    memset(long_path + 8, 'a', 120);
    strcpy(long_path + 128, ".js");
    rt_reply_t r;
    assert_int_equal(get(NULL, long_path, &r), RT_HANDLE_NOT_MINE);
}

typedef struct {
    char dir[64], root[80], secret[96];
} tree_t;

/* dir/secret.txt outside the root, dir/root/{index.html,x.css,sub.js/}. */
static void make_tree(tree_t *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/rt-static-test.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->root, sizeof t->root, "%s/root", t->dir);
    snprintf(t->secret, sizeof t->secret, "%s/secret.txt", t->dir);
    assert_int_equal(mkdir(t->root, 0755), 0);
    char p[160];
    FILE *f;
    assert_non_null(f = fopen(t->secret, "w"));
    fputs("secret", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/index.html", t->root);
    assert_non_null(f = fopen(p, "w"));
    fputs("<p>from disk</p>", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/x.css", t->root);
    assert_non_null(f = fopen(p, "w"));
    fclose(f);
    snprintf(p, sizeof p, "%s/sub.js", t->root);
    assert_int_equal(mkdir(p, 0755), 0);
}

static void remove_tree(tree_t *t)
{
    char p[160];
    snprintf(p, sizeof p, "%s/sub.js", t->root);
    rmdir(p);
    snprintf(p, sizeof p, "%s/index.html", t->root);
    unlink(p);
    snprintf(p, sizeof p, "%s/x.css", t->root);
    unlink(p);
    rmdir(t->root);
    unlink(t->secret);
    rmdir(t->dir);
}

static void test_web_root_serves_from_disk_and_nothing_outside(void **state)
{
    (void)state;
    tree_t t;
    make_tree(&t);
    rt_reply_t r;
    assert_int_equal(get(t.root, "/", &r), RT_HANDLE_DONE);
    assert_false(r.body_static);
    assert_int_equal(r.len, strlen("<p>from disk</p>"));
    assert_memory_equal(r.body, "<p>from disk</p>", r.len);
    assert_string_equal(r.content_type, "text/html; charset=utf-8");
    reply_free(&r);
    /* An empty file is a file. */
    assert_int_equal(get(t.root, "/static/x.css", &r), RT_HANDLE_DONE);
    assert_int_equal(r.len, 0);
    reply_free(&r);
    /* Not in the root (though embedded), a directory, outside the root. */
    assert_int_equal(get(t.root, "/static/app.js", &r), RT_HANDLE_NOT_MINE);
    assert_int_equal(get(t.root, "/static/sub.js", &r), RT_HANDLE_NOT_MINE);
    assert_int_equal(get(t.root, "/static/../secret.txt", &r), RT_HANDLE_NOT_MINE);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (get(t.root, refused[i], &r) != RT_HANDLE_NOT_MINE) fail_msg("served %s", refused[i]);
    remove_tree(&t);
}

static void test_check_root(void **state)
{
    (void)state;
    tree_t t;
    make_tree(&t);
    char err[256];
    assert_int_equal(rt_static_check_root(t.root, err, sizeof err), 0);
    assert_int_equal(rt_static_check_root(t.secret, err, sizeof err), -ENOTDIR);
    assert_non_null(strstr(err, "--web-root: "));
    assert_non_null(strstr(err, "not a directory"));
    remove_tree(&t);
    assert_int_equal(rt_static_check_root(t.root, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "No such file or directory"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_files_match_lib_web),
        cmocka_unit_test(test_every_embedded_file_has_a_content_type),
        cmocka_unit_test(test_unknown_and_escaping_paths_are_not_served),
        cmocka_unit_test(test_web_root_serves_from_disk_and_nothing_outside),
        cmocka_unit_test(test_check_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
