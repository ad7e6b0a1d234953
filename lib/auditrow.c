/*
 * The audit-log transform (see auditrow.h): a validating JSON scanner that
 * records value spans instead of building a tree, exact integer checks on
 * decimal text, and ISO 8601 times to microseconds.
 *
 * The scanner is iterative (a growable stack of open brackets), so nesting
 * depth costs memory, not C stack: a deeply nested payload from the database
 * cannot crash the ETL.
 */
#include "auditrow.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum jtype { J_NONE = 0, J_NULL, J_FALSE, J_TRUE, J_NUMBER, J_STRING, J_OBJECT, J_ARRAY };

typedef struct jval {
    enum jtype t;
    const char *s, *e; /* raw text of the value */
} jval_t;

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at the opening quote; returns the byte after the closing one, or NULL. */
static const char *scan_string(const char *p, const char *e)
{
    for (p++; p < e;) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c != '\\') {
            p++;
            continue;
        }
        if (++p >= e) return NULL;
        if (*p == 'u') {
            if (e - p < 5) return NULL;
            for (int i = 1; i <= 4; i++)
                if (hexval(p[i]) < 0) return NULL;
            p += 5;
        } else if (strchr("\"\\/bfnrt", *p) && *p) {
            p++;
        } else {
            return NULL;
        }
    }
    return NULL;
}

static const char *scan_number(const char *p, const char *e)
{
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && is_digit(*p))
            p++;
    } else {
        return NULL;
    }
    if (p < e && *p == '.') {
        if (++p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        if (++p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p))
            p++;
    }
    return p;
}

static const char *scan_literal(const char *p, const char *e, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(e - p) < n || memcmp(p, lit, n) != 0) return NULL;
    return p + n;
}

/* A key and its colon: p at the opening quote. */
static const char *scan_key(const char *p, const char *e)
{
    if (p >= e || *p != '"') return NULL;
    if (!(p = scan_string(p, e))) return NULL;
    p = ws(p, e);
    if (p >= e || *p != ':') return NULL;
    return p + 1;
}

/* Scans one JSON value starting at p (after whitespace). Fills v and returns
 * the byte after it, or NULL if the text is not JSON. */
static const char *scan_value(const char *p, const char *e, jval_t *v)
{
    char local[64], *stack = local;
    size_t depth = 0, cap = sizeof local;
    const char *r = NULL;
    int want_value = 1;

    p = ws(p, e);
    if (p >= e) return NULL;
    v->s = p;
    switch (*p) {
    case '{':
        v->t = J_OBJECT;
        break;
    case '[':
        v->t = J_ARRAY;
        break;
    case '"':
        v->t = J_STRING;
        break;
    case 't':
        v->t = J_TRUE;
        break;
    case 'f':
        v->t = J_FALSE;
        break;
    case 'n':
        v->t = J_NULL;
        break;
    default:
        v->t = J_NUMBER;
        break;
    }
    for (;;) {
        if (want_value) {
            p = ws(p, e);
            if (p >= e) goto out;
            char c = *p;
            if (c == '{' || c == '[') {
                if (depth == cap) {
                    char *n = malloc(cap * 2);
                    if (!n) abort();
                    memcpy(n, stack, depth);
                    if (stack != local) free(stack);
                    stack = n;
                    cap *= 2;
                }
                stack[depth++] = c == '{' ? '}' : ']';
                p = ws(p + 1, e);
                if (p < e && *p == stack[depth - 1]) {
                    p++;
                    depth--;
                    want_value = 0;
                } else if (c == '{') {
                    if (!(p = scan_key(p, e))) goto out;
                }
                continue;
            }
            if (c == '"')
                p = scan_string(p, e);
            else if (c == 't')
                p = scan_literal(p, e, "true");
            else if (c == 'f')
                p = scan_literal(p, e, "false");
            else if (c == 'n')
                p = scan_literal(p, e, "null");
            else
                p = scan_number(p, e);
            if (!p) goto out;
            want_value = 0;
            continue;
        }
        if (depth == 0) {
            r = p;
            goto out;
        }
        p = ws(p, e);
        if (p >= e) goto out;
        if (*p == ',') {
            p = ws(p + 1, e);
            if (stack[depth - 1] == '}' && !(p = scan_key(p, e))) goto out;
            want_value = 1;
        } else if (*p == stack[depth - 1]) {
            p++;
            depth--;
        } else {
            goto out;
        }
    }
out:
    if (stack != local) free(stack);
    v->e = r;
    return r;
}

/* Appends code point cp as UTF-8. */
static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

static unsigned hex4(const char *p)
{
    return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* Decodes a scanned string value into out (room for its raw length). Returns
 * the decoded length, or -1 for what PostgreSQL's jsonb refuses too (\u0000,
 * a lone surrogate). *chars receives the length in characters. */
static long decode_string(const jval_t *v, char *out, size_t *chars)
{
    const char *p = v->s + 1, *e = v->e - 1;
    char *o = out;
    size_t n = 0;
    while (p < e) {
        unsigned char c = (unsigned char)*p;
        if (c != '\\') {
            *o++ = (char)c;
            if ((c & 0xC0) != 0x80) n++;
            p++;
            continue;
        }
        p++;
        switch (*p++) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned cp = hex4(p);
            p += 4;
            if (cp == 0) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
                unsigned lo = hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            o = put_utf8(o, cp);
            break;
        }
        default:
            *o++ = p[-1];
            break; /* \" \\ \/ */
        }
        n++;
    }
    *chars = n;
    return (long)(o - out);
}

/* ---- numbers -------------------------------------------------------------------- */

int rt_json_integral(const char *s, size_t n, int64_t lo, int64_t hi, int64_t *out)
{
    const char *p = s, *e = s + n;
    int neg = 0;
    if (p < e && *p == '-') neg = 1, p++;
    const char *ib = p;
    while (p < e && is_digit(*p))
        p++;
    const char *ie = p, *fb = p, *fe = p;
    if (p < e && *p == '.') {
        fb = ++p;
        while (p < e && is_digit(*p))
            p++;
        fe = p;
    }
    long exp = 0;
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        while (p < e && is_digit(*p)) {
            if (exp < 1000000) exp = exp * 10 + (*p - '0');
            p++;
        }
        if (eneg) exp = -exp;
    }
    if (p != e || ie == ib) return 0;

    /* The digits as one sequence d[0..nd) (integer part, then fraction);
     * the value is d * 10^(exp - nfrac). */
    long ni = (long)(ie - ib), nf = (long)(fe - fb), nd = ni + nf;
#define DIGIT(k) ((k) < ni ? ib[(k)] : fb[(k)-ni])
    long first = 0, last = nd - 1;
    while (first < nd && DIGIT(first) == '0')
        first++;
    uint64_t mag = 0;
    if (first < nd) {
        while (DIGIT(last) == '0')
            last--;
        long scale = exp - nf + (nd - 1 - last); /* power of ten after the last non-zero */
        if (scale < 0) return 0;                 /* a fraction */
        long digits = last - first + 1 + scale;
        if (digits > 19) return 0; /* past any int64 */
        for (long k = first; k <= last; k++)
            mag = mag * 10 + (uint64_t)(DIGIT(k) - '0');
        for (long k = 0; k < scale; k++)
            mag *= 10;
    }
#undef DIGIT
    int64_t v;
    if (!neg) {
        if (mag > (uint64_t)INT64_MAX) return 0;
        v = (int64_t)mag;
    } else {
        if (mag > (uint64_t)INT64_MAX + 1) return 0;
        v = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    }
    if (v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

/* ---- times ---------------------------------------------------------------------- */

/* Howard Hinnant's algorithms, valid for every year here. */
int64_t rt_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void rt_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int num2(const char *p)
{
    return (p[0] - '0') * 10 + (p[1] - '0');
}

static int all_digits(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(p[i])) return 0;
    return 1;
}

int rt_auditrow_parse_time(const char *s, size_t n, rt_auditrow_t *row)
{
    const char *p = s, *e = s + n;
    if (n < 10 || !all_digits(p, 4) || p[4] != '-' || !all_digits(p + 5, 2) || p[7] != '-' ||
        !all_digits(p + 8, 2))
        return -1;
    int y = num2(p) * 100 + num2(p + 2), mo = num2(p + 5), d = num2(p + 8);
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y == 0 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap)) return -1;
    p += 10;
    int h = 0, mi = 0, sec = 0;
    int64_t frac_us = 0;
    if (p < e && (*p == 'T' || *p == ' ')) {
        if (e - p < 6 || !all_digits(p + 1, 2) || p[3] != ':' || !all_digits(p + 4, 2)) return -1;
        h = num2(p + 1), mi = num2(p + 4);
        if (h > 23 || mi > 59) return -1;
        p += 6;
        if (p < e && *p == ':') {
            if (e - p < 3 || !all_digits(p + 1, 2)) return -1;
            sec = num2(p + 1);
            if (sec > 59) return -1;
            p += 3;
            if (p < e && *p == '.') {
                const char *fb = p;
                p++;
                if (p >= e || !is_digit(*p)) return -1;
                while (p < e && is_digit(*p))
                    p++;
                /* As PostgreSQL reads it: the fraction as a double, rounded
                 * to the nearest microsecond. */
                char tmp[40];
                size_t fl = (size_t)(p - fb);
                if (fl >= sizeof tmp) fl = sizeof tmp - 1;
                memcpy(tmp, fb, fl);
                tmp[fl] = '\0';
                frac_us = (int64_t)rint(strtod(tmp, NULL) * 1000000.0);
            }
        }
    }
    int has_off = 0;
    int64_t off_s = 0;
    if (p < e && *p == 'Z') {
        has_off = 1;
        p++;
    } else if (p < e && (*p == '+' || *p == '-')) {
        int sign = *p == '-' ? -1 : 1;
        if (e - p < 3 || !all_digits(p + 1, 2)) return -1;
        int oh = num2(p + 1), om = 0;
        if (oh > 15) return -1;
        p += 3;
        if (p < e) {
            if (*p == ':') p++;
            if (e - p < 2 || !all_digits(p, 2)) return -1;
            om = num2(p);
            if (om > 59) return -1;
            p += 2;
        }
        has_off = 1;
        off_s = sign * (oh * 3600 + om * 60);
    }
    if (p != e) return -1;

    int64_t minute = rt_days_from_civil(y, (unsigned)mo, (unsigned)d) * 1440 + h * 60 + mi;
    int64_t rest_us = sec * 1000000LL + frac_us;
    row->has_time = 1;
    row->time_local = !has_off;
    row->local_minute = minute;
    row->local_rest_us = rest_us;
    row->utc_us = has_off ? (minute * 60 - off_s) * 1000000LL + rest_us : 0;
    return 0;
}

void rt_auditrow_set_utc(rt_auditrow_t *row, int64_t minute_utc_s)
{
    row->utc_us = minute_utc_s * 1000000LL + row->local_rest_us;
    row->time_local = 0;
}

/* Writes v (0 <= v < 10^width) as width digits. */
static char *put_digits(char *o, int64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        o[i] = (char)('0' + v % 10);
    return o + width;
}

/* By hand rather than snprintf: it runs once per row loaded. */
size_t rt_format_utc(int64_t us, char *out)
{
    int64_t s = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
    int64_t frac = us - s * 1000000;
    int64_t days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    int64_t sod = s - days * 86400, y;
    unsigned m, d;
    rt_civil_from_days(days, &y, &m, &d);
    char *o = out;
    int bc = y <= 0; /* PostgreSQL has no year 0: 0 is 1 BC */
    if (bc) y = 1 - y;
    if (y > 9999) {
        int n = snprintf(out, 16, "%lld", (long long)y);
        o += n > 0 ? n : 0;
    } else {
        o = put_digits(o, y, 4);
    }
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    *o++ = ' ';
    o = put_digits(o, sod / 3600, 2);
    *o++ = ':';
    o = put_digits(o, sod / 60 % 60, 2);
    *o++ = ':';
    o = put_digits(o, sod % 60, 2);
    *o++ = '.';
    o = put_digits(o, frac, 6);
    memcpy(o, bc ? "+00 BC" : "+00", bc ? 7 : 4);
    return (size_t)(o + (bc ? 6 : 3) - out);
}

/* ---- the row -------------------------------------------------------------------- */

/* A key and its length. */
typedef struct jkey {
    const char *name;
    size_t len;
} jkey_t;
#define KEY(s)                                                                                     \
    {                                                                                              \
        s, sizeof s - 1                                                                            \
    }

enum field { F_LOG_ID, F_EVENT_TYPE, F_INTENT_ID, F_ACTOR, F_CREATED_AT, F_PAYLOAD, NOUTER };
static const jkey_t OUTER[NOUTER] = {KEY("log_id"), KEY("event_type"), KEY("intent_id"),
                                     KEY("actor"),  KEY("created_at"), KEY("payload")};
enum pfield { P_BRIDGE, P_OLD, P_NEW, P_DURATION, P_SUCCESS, NINNER };
static const jkey_t INNER[NINNER] = {KEY("bridge_type"), KEY("old_status"), KEY("new_status"),
                                     KEY("duration_ms"), KEY("success")};

/* Scans the object at p (its opening brace) up to e, validating it, and
 * records the members whose keys are in names (the last of equal keys wins,
 * as in jsonb; keys with escapes are decoded first). Returns the byte after
 * the closing brace, or NULL if the text is not a JSON object. */
static const char *members(const char *p, const char *e, const jkey_t *names, int nnames,
                           jval_t *found)
{
    if (p >= e || *p != '{') return NULL;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        if (p >= e || *p != '"') return NULL;
        const char *ks = p, *ke = scan_string(p, e);
        if (!ke) return NULL;
        p = ws(ke, e);
        if (p >= e || *p != ':') return NULL;
        jval_t val;
        if (!(p = scan_value(p + 1, e, &val))) return NULL;
        const char *key = ks + 1;
        size_t klen = (size_t)(ke - ks - 2);
        char kbuf[16];
        int usable = 1;
        if (memchr(key, '\\', klen)) {
            size_t chars;
            jval_t kv = {J_STRING, ks, ke};
            long kl = klen <= sizeof kbuf ? decode_string(&kv, kbuf, &chars) : -1;
            usable = kl >= 0;
            key = kbuf;
            klen = usable ? (size_t)kl : 0;
        }
        for (int i = 0; i < nnames && usable; i++)
            if (names[i].len == klen && memcmp(names[i].name, key, klen) == 0) found[i] = val;
        p = ws(p, e);
        if (p < e && *p == ',') {
            p = ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}') return p + 1;
        return NULL;
    }
}

static int given(const jval_t *v)
{
    return v->t != J_NONE && v->t != J_NULL;
}

/* A string field of at most maxlen characters, else NULL (bad if given). */
static rt_str_t text_field(const jval_t *v, size_t maxlen, char **scratch, int *bad)
{
    rt_str_t s = {NULL, 0};
    if (v->t == J_STRING) {
        size_t chars;
        long n = decode_string(v, *scratch, &chars);
        if (n >= 0 && chars <= maxlen) {
            s.ptr = *scratch;
            s.len = (size_t)n;
            *scratch += n;
            return s;
        }
    }
    if (given(v)) *bad = 1;
    return s;
}

static int is_uuid(const char *s, size_t n)
{
    if (n != 36) return 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return 0;
        } else if (hexval(s[i]) < 0) {
            return 0;
        }
    }
    return 1;
}

void rt_auditrow_parse(const char *json, size_t len, char *scratch, rt_auditrow_t *row)
{
    memset(row, 0, sizeof *row);
    row->success = 1;
    jval_t f[NOUTER], g[NINNER];
    memset(f, 0, sizeof f);
    memset(g, 0, sizeof g);
    const char *e = json + len;
    const char *end = members(ws(json, e), e, OUTER, NOUTER, f);
    if (!end || ws(end, e) != e) {
        row->bad = 1; /* not a JSON object: no log_id, the caller skips it */
        return;
    }
    int bad = 0;

    int64_t v;
    if (f[F_LOG_ID].t == J_NUMBER &&
        rt_json_integral(f[F_LOG_ID].s, (size_t)(f[F_LOG_ID].e - f[F_LOG_ID].s), 1, INT64_MAX,
                         &v)) {
        row->has_log_id = 1;
        row->log_id = v;
    } else {
        bad = 1;
    }
    row->event_type = text_field(&f[F_EVENT_TYPE], 100, &scratch, &bad);
    row->actor = text_field(&f[F_ACTOR], 100, &scratch, &bad);
    rt_str_t iid = text_field(&f[F_INTENT_ID], 36, &scratch, &bad);
    if (iid.ptr && is_uuid(iid.ptr, iid.len)) {
        memcpy(row->intent_id, iid.ptr, 36);
        row->intent_id[36] = '\0';
    } else if (iid.ptr) {
        bad = 1;
    }
    rt_str_t t = f[F_CREATED_AT].t == J_STRING ? text_field(&f[F_CREATED_AT], 64, &scratch, &bad)
                                               : (rt_str_t){NULL, 0};
    if (!t.ptr || rt_auditrow_parse_time(t.ptr, t.len, row) < 0) bad = 1;

    jval_t *pl = &f[F_PAYLOAD];
    if (given(pl)) {
        row->payload.ptr = pl->s;
        row->payload.len = (size_t)(pl->e - pl->s);
        if (pl->t == J_OBJECT)
            members(pl->s, pl->e, INNER, NINNER, g);
        else
            bad = 1;
    }
    row->bridge_type = text_field(&g[P_BRIDGE], 100, &scratch, &bad);
    row->status_from = text_field(&g[P_OLD], 50, &scratch, &bad);
    row->status_to = text_field(&g[P_NEW], 50, &scratch, &bad);
    jval_t *dur = &g[P_DURATION];
    if (dur->t == J_NUMBER &&
        rt_json_integral(dur->s, (size_t)(dur->e - dur->s), INT32_MIN, INT32_MAX, &v)) {
        row->has_duration = 1;
        row->duration_ms = (int32_t)v;
    } else if (given(dur)) {
        bad = 1;
    }
    jval_t *ok = &g[P_SUCCESS];
    if (ok->t == J_TRUE || ok->t == J_FALSE) {
        row->success = ok->t == J_TRUE;
    } else if (ok->t != J_NONE) {
        row->success = -1; /* JSON null, or the wrong type */
        if (ok->t != J_NULL) bad = 1;
    }
    row->bad = bad;
}
