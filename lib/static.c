#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Larger files are refused from --web-root: the dashboard's are kilobytes. */
#define MAX_DISK_FILE (8u << 20)
#define MAX_NAME 64

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
    {".txt", "text/plain; charset=utf-8"},
};

/* The page loads only its own files and talks only to its own origin ('self'
 * covers ws: and wss: to the same host); inline styles and scripts are not
 * used. Other files need no policy of their own. */
#define HTML_HEADERS                                                                               \
    "Cache-Control: no-cache\r\n"                                                                  \
    "X-Content-Type-Options: nosniff\r\n"                                                          \
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; "                         \
    "frame-ancestors 'none'\r\n"
#define ASSET_HEADERS "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"

const char *rt_static_content_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    for (size_t i = 0; i < sizeof content_types / sizeof content_types[0]; i++)
        if (strcmp(dot, content_types[i].ext) == 0) return content_types[i].type;
    return NULL;
}

/* A flat file name: no '/', no leading '.', so it names a file directly in
 * the web root and nothing else ("..", ".git", "a/../../etc" all fail). */
static int valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > MAX_NAME) return 0;
    if (strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n)
        return 0;
    return (name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
           (name[0] >= '0' && name[0] <= '9');
}

static const rt_static_asset_t *find_embedded(const char *name)
{
    for (size_t i = 0; i < rt_static_assets_count; i++)
        if (strcmp(rt_static_assets[i].name, name) == 0) return &rt_static_assets[i];
    return NULL;
}

/* Reads root/name into a malloc'd buffer. Returns 0, or -errno (-ENOENT for
 * anything that is not a regular file). */
static int read_disk(const char *root, const char *name, char **body, size_t *len)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", root, name);
    if (n < 0 || (size_t)n >= sizeof path) return -ENAMETOOLONG;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -ENOENT;
        goto out;
    }
    if ((unsigned long long)st.st_size > MAX_DISK_FILE) {
        rc = -EFBIG;
        goto out;
    }
    size_t want = (size_t)st.st_size, got = 0;
    buf = malloc(want ? want : 1);
    if (!buf) abort();
    while (got < want) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = -errno;
            goto out;
        }
        if (r == 0) break; /* truncated meanwhile: serve what is there */
        got += (size_t)r;
    }
    *body = buf;
    *len = got;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

rt_handle_result_t rt_static_handle(void *ctx, const char *path, const char *query,
                                    rt_reply_t *out, rt_reply_done_cb done, void *done_arg)
{
    (void)query;
    (void)done;
    (void)done_arg;
    static const char prefix[] = "/static/";
    const char *root = ctx;
    const char *name;
    if (strcmp(path, "/") == 0)
        name = "index.html";
    else if (strncmp(path, prefix, sizeof prefix - 1) == 0)
        name = path + sizeof prefix - 1;
    else
        return RT_HANDLE_NOT_MINE;
    const char *type = rt_static_content_type(name);
    if (!valid_name(name) || !type) return RT_HANDLE_NOT_MINE;

    if (root) {
        char *body;
        size_t len;
        if (read_disk(root, name, &body, &len) < 0) return RT_HANDLE_NOT_MINE;
        rt_reply_owned(out, 200, type, body, len);
    } else {
        const rt_static_asset_t *a = find_embedded(name);
        if (!a) return RT_HANDLE_NOT_MINE;
        memset(out, 0, sizeof *out);
        out->status = 200;
        out->content_type = type;
        out->body = (char *)a->data; /* static: body_static says not to free it */
        out->len = a->len;
        out->body_static = 1;
    }
    snprintf(out->headers, sizeof out->headers, "%s",
             strcmp(name, "index.html") == 0 ? HTML_HEADERS : ASSET_HEADERS);
    return RT_HANDLE_DONE;
}

int rt_static_check_root(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        int e = errno;
        snprintf(err, errlen, "--web-root: %s: %s", dir, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--web-root: %s: not a directory", dir);
        return -ENOTDIR;
    }
    if (access(dir, R_OK | X_OK) < 0) {
        int e = errno;
        snprintf(err, errlen, "--web-root: %s: %s", dir, strerror(e));
        return -e;
    }
    return 0;
}
