#include "reply.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rt_reply_owned(rt_reply_t *r, int status, const char *content_type, char *body, size_t len)
{
    memset(r, 0, sizeof *r);
    r->status = status;
    r->content_type = content_type;
    r->body = body;
    r->len = len;
}

void rt_reply_json_error(rt_reply_t *r, int status, const char *msg, const char *param)
{
    json_t *j = json_pack("{s:s}", "error", msg);
    if (param) json_object_set_new(j, "parameter", json_string(param));
    char *body = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!body) abort();
    rt_reply_owned(r, status, "application/json", body, strlen(body));
    snprintf(r->headers, sizeof r->headers, "Cache-Control: no-store\r\n");
}
