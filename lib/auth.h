/*
 * Client authentication for the HTTP surface: an optional static bearer token
 * and/or an HS256 JWT secret. With neither configured every client is let in.
 * With both, a token passing either check is accepted.
 *
 * Tokens never reach the logs: callers log only the outcome.
 * Read-only after rt_auth_init; any thread.
 */
#ifndef RT_AUTH_H
#define RT_AUTH_H

typedef struct rt_auth {
    const char *token;      /* borrowed; NULL or "" when unset */
    const char *jwt_secret; /* borrowed; NULL or "" when unset */
} rt_auth_t;

void rt_auth_init(rt_auth_t *a, const char *token, const char *jwt_secret);
int rt_auth_enabled(const rt_auth_t *a);

/* 0 if token is accepted, else -1 with a short reason for the client
 * ("invalid token", "token expired", ...). */
int rt_auth_check(const rt_auth_t *a, const char *token, const char **why);

/* The token of an "Authorization: Bearer <token>" value, or NULL. */
const char *rt_auth_bearer(const char *authorization);

#endif
