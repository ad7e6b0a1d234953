/*
 * The dashboard's files: GET / (index.html) and GET /static/<name> (the
 * JavaScript client, the page's script and style). They are embedded in the
 * binary from lib/web/ at build time (lib/web-embed.sh), so a container needs
 * no files; --web-root DIR serves them from DIR instead while developing, so
 * an edit shows on reload without a rebuild.
 *
 * Only flat names are served: [A-Za-z0-9._-], starting with a letter or a
 * digit, with a known extension (the content type comes from one table in
 * static.c for both modes). A name with '/' or a leading '.' is never looked
 * up, so no path can leave DIR. Anything else is RT_HANDLE_NOT_MINE (404).
 *
 * Threads: rt_static_handle runs on the fan-out loops, from any of them at
 * once; it keeps no state. With --web-root it reads the file on the loop
 * (small local files, development only); embedded files are answered from
 * static memory without copying.
 */
#ifndef RT_STATIC_H
#define RT_STATIC_H

#include "reply.h"

#include <stddef.h>

/* One embedded file (generated into the build directory by lib/web-embed.sh). */
typedef struct rt_static_asset {
    const char *name; /* base name, e.g. "rtclient.js" */
    const unsigned char *data;
    size_t len;
} rt_static_asset_t;

extern const rt_static_asset_t rt_static_assets[];
extern const size_t rt_static_assets_count;

/* The rt_handler_fn for "/" and "/static/". ctx: the --web-root directory
 * (const char *), or NULL for the embedded files. */
rt_handle_result_t rt_static_handle(void *ctx, const char *path, const char *query,
                                    rt_reply_t *out, rt_reply_done_cb done, void *done_arg);

/* The Content-Type for a file name by its extension; NULL when unknown
 * (such a file is not served). */
const char *rt_static_content_type(const char *name);

/* Checks at start that dir is a readable directory. Returns 0, or -errno with
 * a one-line reason in err. */
int rt_static_check_root(const char *dir, char *err, size_t errlen);

#endif
