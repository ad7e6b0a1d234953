/*
 * Token checks. The static token is compared in constant time. JWTs are
 * verified by libjwt (signature with the configured secret); we insist on
 * HS256, so a token signed "none" or with another algorithm is refused, and
 * check exp and nbf ourselves against the clock.
 */
#include "auth.h"

#include <jwt.h>
#include <openssl/crypto.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void rt_auth_init(rt_auth_t *a, const char *token, const char *jwt_secret)
{
    a->token = token && *token ? token : NULL;
    a->jwt_secret = jwt_secret && *jwt_secret ? jwt_secret : NULL;
}

int rt_auth_enabled(const rt_auth_t *a)
{
    return a->token || a->jwt_secret;
}

static int check_jwt(const rt_auth_t *a, const char *token, const char **why)
{
    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, token, (const unsigned char *)a->jwt_secret,
                   (int)strlen(a->jwt_secret)) != 0 ||
        !jwt) {
        *why = "invalid token";
        return -1;
    }
    int rc = -1;
    time_t now = time(NULL);
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        *why = "invalid token";
        goto done;
    }
    long exp = jwt_get_grant_int(jwt, "exp");
    if (exp > 0 && exp <= now) {
        *why = "token expired";
        goto done;
    }
    long nbf = jwt_get_grant_int(jwt, "nbf");
    if (nbf > 0 && nbf > now) {
        *why = "token not yet valid";
        goto done;
    }
    rc = 0;
done:
    jwt_free(jwt);
    return rc;
}

int rt_auth_check(const rt_auth_t *a, const char *token, const char **why)
{
    *why = "missing token";
    if (!token || !*token) return -1;
    *why = "invalid token";
    if (a->token) {
        size_t n = strlen(a->token);
        if (strlen(token) == n && CRYPTO_memcmp(token, a->token, n) == 0) return 0;
    }
    if (a->jwt_secret && check_jwt(a, token, why) == 0) return 0;
    return -1;
}

const char *rt_auth_bearer(const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return NULL;
    const char *t = authorization + 7;
    while (*t == ' ') t++;
    return *t ? t : NULL;
}
