/* Scan a chunk of a Kineto trace's traceEvents array straight into columns.
 *
 * The pure-Python loader (qtrace/tracefile/decode.py) has msgspec decode each chunk into small
 * structs and then builds numpy columns from their fields: on the 407 MB benchmark trace about
 * two thirds of the decode time is that per-event Python work. This scanner reads the same JSON
 * and writes the same columns in one pass, without a Python object per event.
 *
 * It is a strict subset of the msgspec path: it succeeds only on a chunk that is a valid JSON
 * array (strict number grammar, valid UTF-8, valid escapes, no lone surrogates) of events whose
 * fields have the types decode.py's structs accept, and then gives exactly the columns that path
 * gives. On anything else (a ROCm trace's numbers written as text, a duplicated field, an escaped
 * key, a number it cannot convert exactly, bad JSON) it returns None and the caller decodes the
 * chunk with msgspec, which gives the columns or the one-line error as before.
 * tests/test_kineto_scan.py holds the two paths equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define NA_INT INT64_MIN
#define MAX_DEPTH 64
#define BAIL (-1)
#define NOMEM (-2)

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffers */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) return NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n)) return NOMEM;
    memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static void buf_free(Buf *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Interning: distinct byte strings and their int32 codes */

typedef struct {
    Buf arena;
    Py_ssize_t *off, *len;
    uint64_t *hash;
    int32_t *slots; /* open addressing; -1: empty */
    Py_ssize_t n, cap, nslots, reported;
} Intern;

static uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, (size_t)n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
    return h;
}

static int intern_grow_slots(Intern *t) {
    Py_ssize_t ns = t->nslots ? t->nslots * 2 : 1024;
    int32_t *slots = PyMem_Malloc((size_t)ns * sizeof(int32_t));
    if (!slots) return NOMEM;
    memset(slots, 0xFF, (size_t)ns * sizeof(int32_t));
    for (Py_ssize_t c = 0; c < t->n; c++) {
        Py_ssize_t i = (Py_ssize_t)(t->hash[c] & (uint64_t)(ns - 1));
        while (slots[i] >= 0) i = (i + 1) & (ns - 1);
        slots[i] = (int32_t)c;
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->nslots = ns;
    return 0;
}

/* The code of s[0:n], added if new; <0 on error. */
static int32_t intern_get(Intern *t, const char *s, Py_ssize_t n) {
    if ((t->n + 1) * 2 > t->nslots && intern_grow_slots(t)) return NOMEM;
    uint64_t h = hash_bytes(s, n);
    Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)(t->nslots - 1));
    for (;;) {
        int32_t c = t->slots[i];
        if (c < 0) break;
        if (t->hash[c] == h && t->len[c] == n && memcmp(t->arena.p + t->off[c], s, (size_t)n) == 0) return c;
        i = (i + 1) & (t->nslots - 1);
    }
    if (t->n >= INT32_MAX - 1) return NOMEM;
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 256;
        Py_ssize_t *off = PyMem_Realloc(t->off, (size_t)cap * sizeof(Py_ssize_t));
        if (!off) return NOMEM;
        t->off = off;
        Py_ssize_t *len = PyMem_Realloc(t->len, (size_t)cap * sizeof(Py_ssize_t));
        if (!len) return NOMEM;
        t->len = len;
        uint64_t *hash = PyMem_Realloc(t->hash, (size_t)cap * sizeof(uint64_t));
        if (!hash) return NOMEM;
        t->hash = hash;
        t->cap = cap;
    }
    Py_ssize_t at = t->arena.len;
    if (buf_put(&t->arena, s, n)) return NOMEM;
    int32_t c = (int32_t)t->n++;
    t->off[c] = at;
    t->len[c] = n;
    t->hash[c] = h;
    t->slots[i] = c;
    return c;
}

static void intern_free(Intern *t) {
    buf_free(&t->arena);
    PyMem_Free(t->off);
    PyMem_Free(t->len);
    PyMem_Free(t->hash);
    PyMem_Free(t->slots);
    memset(t, 0, sizeof(*t));
}

/* The entries added since the last call (bytes objects), or NULL on error. */
static PyObject *intern_new_entries(Intern *t) {
    PyObject *out = PyList_New(t->n - t->reported);
    if (!out) return NULL;
    for (Py_ssize_t c = t->reported; c < t->n; c++) {
        PyObject *b = PyBytes_FromStringAndSize(t->arena.p + t->off[c], t->len[c]);
        if (!b) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, c - t->reported, b);
    }
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON lexing (strict: RFC 8259 grammar, valid UTF-8) */

typedef struct {
    const unsigned char *p, *end;
    int depth;
} Lex;

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
    int esc; /* holds a backslash escape */
} Str;

static inline void ws(Lex *L) {
    while (L->p < L->end && (*L->p == ' ' || *L->p == '\n' || *L->p == '\r' || *L->p == '\t')) L->p++;
}

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return BAIL;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* One UTF-8 sequence starting at p (p[0] >= 0x80); its length, or BAIL. */
static int utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    Py_ssize_t left = end - p;
    if (c >= 0xC2 && c <= 0xDF) {
        if (left < 2 || (p[1] & 0xC0) != 0x80) return BAIL;
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return BAIL;
        if (c == 0xE0 && p[1] < 0xA0) return BAIL; /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return BAIL; /* a surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return BAIL;
        if (c == 0xF0 && p[1] < 0x90) return BAIL; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return BAIL; /* above U+10FFFF */
        return 4;
    }
    return BAIL;
}

/* A string at L->p (which is '"'); its content span in *s. */
static unsigned char PLAIN[256]; /* 1: a byte that stands for itself inside a string (set in the module init) */

static int lex_string(Lex *L, Str *s) {
    const unsigned char *p = L->p + 1, *end = L->end;
    s->p = p;
    s->esc = 0;
    for (;;) {
        while (p < end && PLAIN[*p]) p++;
        if (p >= end) return BAIL;
        unsigned c = *p;
        if (c == '"') break;
        if (c < 0x20) return BAIL;
        if (c == '\\') {
            if (p + 1 >= end) return BAIL;
            unsigned e = p[1];
            s->esc = 1;
            if (e == 'u') {
                unsigned u;
                if (end - p < 6 || hex4(p + 2, &u)) return BAIL;
                if (u >= 0xDC00 && u <= 0xDFFF) return BAIL; /* a lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    unsigned lo;
                    if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || hex4(p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return BAIL;
                    p += 12;
                } else {
                    p += 6;
                }
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't')
                return BAIL;
            p += 2;
            continue;
        }
        int k = utf8_seq(p, end);
        if (k < 0) return BAIL;
        p += k;
    }
    s->n = p - s->p;
    L->p = p + 1;
    return 0;
}

static void put_utf8(unsigned char **o, unsigned cp) {
    unsigned char *q = *o;
    if (cp < 0x80) {
        *q++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *q++ = (unsigned char)(0xC0 | (cp >> 6));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *q++ = (unsigned char)(0xE0 | (cp >> 12));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *q++ = (unsigned char)(0xF0 | (cp >> 18));
        *q++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = q;
}

/* The text of a lexed string (escapes resolved) as UTF-8; points into the input when it has none. */
static int str_text(const Str *s, Buf *tmp, const char **out, Py_ssize_t *n) {
    if (!s->esc) {
        *out = (const char *)s->p;
        *n = s->n;
        return 0;
    }
    tmp->len = 0;
    if (buf_reserve(tmp, s->n)) return NOMEM; /* never longer than the escaped text */
    unsigned char *o = (unsigned char *)tmp->p;
    const unsigned char *p = s->p, *e = s->p + s->n;
    while (p < e) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        unsigned c = p[1];
        if (c == 'u') {
            unsigned u;
            hex4(p + 2, &u);
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned lo;
                hex4(p + 2, &lo);
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(&o, u);
            continue;
        }
        p += 2;
        *o++ = c == 'b' ? '\b' : c == 'f' ? '\f' : c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : (unsigned char)c;
    }
    *out = tmp->p;
    *n = (Py_ssize_t)(o - (unsigned char *)tmp->p);
    return 0;
}

static int str_is(const Str *s, Buf *tmp, const char *lit, int *is) {
    const char *t;
    Py_ssize_t n;
    if (!s->esc) { /* the usual case: compare in place */
        Py_ssize_t k = (Py_ssize_t)strlen(lit);
        *is = s->n == k && memcmp(s->p, lit, (size_t)k) == 0;
        return 0;
    }
    if (str_text(s, tmp, &t, &n)) return NOMEM;
    Py_ssize_t k = (Py_ssize_t)strlen(lit);
    *is = n == k && memcmp(t, lit, (size_t)k) == 0;
    return 0;
}

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
    int is_int; /* no fraction, no exponent */
    int has_exp;
} Num;

static int lex_number(Lex *L, Num *num) {
    const unsigned char *p = L->p, *end = L->end;
    num->p = p;
    num->is_int = 1;
    num->has_exp = 0;
    if (p < end && *p == '-') p++;
    if (p >= end) return BAIL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return BAIL;
    }
    if (p < end && *p == '.') {
        num->is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        num->is_int = 0;
        num->has_exp = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    num->n = p - num->p;
    L->p = p;
    return 0;
}

/* An integer number as int64; BAIL outside int64 (msgspec would give a Python int there). */
static int num_int64(const Num *num, int64_t *out) {
    if (!num->is_int) return BAIL;
    const unsigned char *p = num->p, *e = num->p + num->n;
    int neg = *p == '-';
    if (neg) p++;
    uint64_t v = 0;
    for (; p < e; p++) {
        unsigned d = *p - '0';
        if (v > (UINT64_MAX - d) / 10) return BAIL;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return BAIL;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return BAIL;
        *out = (int64_t)v;
    }
    return 0;
}

/* A number as the float msgspec gives: an integer below 2**53 exactly, a decimal by Python's
 * correctly rounded parse; BAIL for an exponent (Kineto writes none; under- and overflow are
 * msgspec's to decide) or a number too long to copy. */
static int num_double(const Num *num, double *out) {
    if (num->has_exp) return BAIL;
    if (!num->is_int) {
        /* Clinger's fast path: digits (all of them, as an integer) below 2**53 and at most 22 decimals:
         * both the integer and the power of ten are exact doubles, so one division rounds correctly. */
        static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
        const unsigned char *p = num->p, *e = num->p + num->n;
        int neg = *p == '-';
        if (neg) p++;
        uint64_t m = 0;
        int digits = 0, decimals = -1;
        for (; p < e; p++) {
            if (*p == '.') {
                decimals = 0;
                continue;
            }
            m = m * 10 + (unsigned)(*p - '0');
            if (m || decimals >= 0) digits++;
            if (decimals >= 0) decimals++;
            if (digits > 17) break;
        }
        if (p == e && m <= ((uint64_t)1 << 53) && decimals >= 0 && decimals <= 22) {
            double v = (double)m / POW10[decimals];
            *out = neg ? -v : v;
            return 0;
        }
    }
    if (num->is_int) {
        int64_t v;
        if (num_int64(num, &v)) return BAIL;
        if (v > ((int64_t)1 << 53) || v < -((int64_t)1 << 53)) return BAIL; /* exact below 2**53 only */
        *out = (double)v;
        return 0;
    }
    char tmp[64];
    if (num->n >= (Py_ssize_t)sizeof(tmp)) return BAIL;
    memcpy(tmp, num->p, (size_t)num->n);
    tmp[num->n] = 0;
    char *endp = NULL;
    double v = PyOS_string_to_double(tmp, &endp, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return BAIL;
    }
    if (endp != tmp + num->n || !isfinite(v)) return BAIL;
    *out = v;
    return 0;
}

/* An object member's key and the ':' after it; BAIL unless L->p is at a string. */
static int lex_key(Lex *L, Str *key) {
    if (L->p >= L->end || *L->p != '"' || lex_string(L, key)) return BAIL;
    ws(L);
    if (L->p >= L->end || *L->p != ':') return BAIL;
    L->p++;
    ws(L);
    return 0;
}

/* After a member or element: 1 when a ',' follows (another comes), 0 when `close` ends the container. */
static int next_item(Lex *L, unsigned char close) {
    ws(L);
    if (L->p >= L->end) return BAIL;
    if (*L->p == ',') {
        L->p++;
        ws(L);
        return 1;
    }
    if (*L->p != close) return BAIL;
    L->p++;
    return 0;
}

static int skip_value(Lex *L);

static int lex_literal(Lex *L, const char *lit) {
    Py_ssize_t k = (Py_ssize_t)strlen(lit);
    if (L->end - L->p < k || memcmp(L->p, lit, (size_t)k) != 0) return BAIL;
    L->p += k;
    return 0;
}

static int skip_container(Lex *L, unsigned char close) {
    if (++L->depth > MAX_DEPTH) return BAIL;
    L->p++;
    ws(L);
    if (L->p < L->end && *L->p == close) {
        L->p++;
        L->depth--;
        return 0;
    }
    for (;;) {
        Str key;
        if (close == '}' && lex_key(L, &key)) return BAIL;
        if (skip_value(L)) return BAIL;
        int more = next_item(L, close);
        if (more < 0) return BAIL;
        if (!more) {
            L->depth--;
            return 0;
        }
    }
}

static int skip_value(Lex *L) {
    if (L->p >= L->end) return BAIL;
    unsigned c = *L->p;
    if (c == '"') {
        Str s;
        return lex_string(L, &s);
    }
    if (c == '{') return skip_container(L, '}');
    if (c == '[') return skip_container(L, ']');
    if (c == 't') return lex_literal(L, "true");
    if (c == 'f') return lex_literal(L, "false");
    if (c == 'n') return lex_literal(L, "null");
    Num num;
    return lex_number(L, &num);
}

/* ------------------------------------------------------------------------------------------ */
/* Events */

enum { A_EXT, A_CORR, A_DEVICE, A_STREAM, A_BYTES, A_MEM_BYTES, A_ADDR, A_TOTAL_ALLOC, A_TOTAL_RES, A_DEV_ID,
       A_DEV_TYPE, A_FROM, A_IN, A_TO, N_INT_ARGS };
static const char *INT_ARG_KEYS[N_INT_ARGS] = {"External id", "correlation", "device", "stream", "bytes", "Bytes",
                                              "Addr", "Total Allocated", "Total Reserved", "Device Id",
                                              "Device Type", "fromDevice", "inDevice", "toDevice"};
enum { R_DIMS, R_TYPE, R_STRIDES, N_RAW_ARGS };
static const char *RAW_ARG_KEYS[N_RAW_ARGS] = {"Input Dims", "Input type", "Input Strides"};

typedef struct {
    Str ph, cat, name;
    int has_ph, has_cat, has_name;
    int pid_kind, tid_kind; /* 0 absent (the int 0), 1 int, 2 text */
    int64_t pid_i, tid_i;
    Str pid_s, tid_s;
    int has_ts, has_dur;
    double ts, dur;
    int args; /* 0 absent, 1 null, 2 an object */
    int64_t iarg[N_INT_ARGS];
    const unsigned char *raw_p[N_RAW_ARGS];
    Py_ssize_t raw_n[N_RAW_ARGS];
} Event;

#define KEY_IS(k, lit) ((k)->n == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((k)->p, lit, sizeof(lit) - 1) == 0)

static Py_ssize_t INT_ARG_LEN[N_INT_ARGS], RAW_ARG_LEN[N_RAW_ARGS]; /* set in the module init */

static int arg_index(const Str *k, const char **keys, const Py_ssize_t *lens, int n) {
    for (int i = 0; i < n; i++)
        if (k->n == lens[i] && memcmp(k->p, keys[i], (size_t)lens[i]) == 0) return i;
    return -1;
}

static int parse_args(Lex *L, Event *ev) {
    uint32_t seen = 0;
    if (++L->depth > MAX_DEPTH) return BAIL;
    L->p++;
    ws(L);
    if (L->p < L->end && *L->p == '}') {
        L->p++;
        L->depth--;
        return 0;
    }
    for (;;) {
        Str key;
        if (lex_key(L, &key) || key.esc) return BAIL;
        int which = arg_index(&key, INT_ARG_KEYS, INT_ARG_LEN, N_INT_ARGS);
        int raw = which < 0 ? arg_index(&key, RAW_ARG_KEYS, RAW_ARG_LEN, N_RAW_ARGS) : -1;
        if (which >= 0) {
            if (seen & (1u << which)) return BAIL; /* a repeated field */
            seen |= 1u << which;
            if (L->p < L->end && *L->p == 'n') {
                if (lex_literal(L, "null")) return BAIL;
                ev->iarg[which] = NA_INT;
            } else {
                Num num;
                int64_t v;
                if (L->p >= L->end || (*L->p != '-' && (*L->p < '0' || *L->p > '9'))) return BAIL; /* text: ROCm */
                if (lex_number(L, &num) || num_int64(&num, &v) || v == NA_INT) return BAIL;
                ev->iarg[which] = v;
            }
        } else if (raw >= 0) {
            if (seen & (1u << (N_INT_ARGS + raw))) return BAIL;
            seen |= 1u << (N_INT_ARGS + raw);
            const unsigned char *start = L->p;
            if (skip_value(L)) return BAIL;
            ev->raw_p[raw] = start;
            ev->raw_n[raw] = L->p - start;
        } else if (skip_value(L)) {
            return BAIL;
        }
        int more = next_item(L, '}');
        if (more < 0) return BAIL;
        if (!more) {
            L->depth--;
            return 0;
        }
    }
}

static int parse_id(Lex *L, int *kind, int64_t *iv, Str *sv) {
    if (L->p >= L->end) return BAIL;
    if (*L->p == '"') {
        *kind = 2;
        return lex_string(L, sv);
    }
    Num num;
    if (*L->p != '-' && (*L->p < '0' || *L->p > '9')) return BAIL;
    if (lex_number(L, &num) || num_int64(&num, iv)) return BAIL;
    *kind = 1;
    return 0;
}

static int parse_time(Lex *L, int *has, double *v) {
    if (L->p < L->end && *L->p == 'n') {
        *has = 0;
        return lex_literal(L, "null");
    }
    Num num;
    if (L->p >= L->end || (*L->p != '-' && (*L->p < '0' || *L->p > '9'))) return BAIL;
    if (lex_number(L, &num) || num_double(&num, v)) return BAIL;
    *has = 1;
    return 0;
}

enum { F_PH, F_CAT, F_NAME, F_PID, F_TID, F_TS, F_DUR, F_ARGS };

static int parse_event(Lex *L, Event *ev) {
    memset(ev, 0, sizeof(*ev));
    for (int i = 0; i < N_INT_ARGS; i++) ev->iarg[i] = NA_INT;
    uint32_t seen = 0;
    if (L->p >= L->end || *L->p != '{') return BAIL; /* an event is an object */
    L->depth = 1;
    L->p++;
    ws(L);
    if (L->p < L->end && *L->p == '}') {
        L->p++;
        return 0;
    }
    for (;;) {
        Str key;
        if (lex_key(L, &key) || key.esc) return BAIL;
        int f = KEY_IS(&key, "ph") ? F_PH : KEY_IS(&key, "cat") ? F_CAT : KEY_IS(&key, "name") ? F_NAME
              : KEY_IS(&key, "pid") ? F_PID : KEY_IS(&key, "tid") ? F_TID : KEY_IS(&key, "ts") ? F_TS
              : KEY_IS(&key, "dur") ? F_DUR : KEY_IS(&key, "args") ? F_ARGS : -1;
        if (f >= 0) {
            if (seen & (1u << f)) return BAIL;
            seen |= 1u << f;
        }
        int rc = 0;
        switch (f) {
        case F_PH:
        case F_CAT:
        case F_NAME: {
            Str *s = f == F_PH ? &ev->ph : f == F_CAT ? &ev->cat : &ev->name;
            if (L->p >= L->end || *L->p != '"') return BAIL;
            rc = lex_string(L, s);
            break;
        }
        case F_PID:
            rc = parse_id(L, &ev->pid_kind, &ev->pid_i, &ev->pid_s);
            break;
        case F_TID:
            rc = parse_id(L, &ev->tid_kind, &ev->tid_i, &ev->tid_s);
            break;
        case F_TS:
            rc = parse_time(L, &ev->has_ts, &ev->ts);
            break;
        case F_DUR:
            rc = parse_time(L, &ev->has_dur, &ev->dur);
            break;
        case F_ARGS:
            if (L->p < L->end && *L->p == 'n') {
                rc = lex_literal(L, "null");
                ev->args = 1;
            } else if (L->p < L->end && *L->p == '{') {
                rc = parse_args(L, ev);
                ev->args = 2;
            } else {
                return BAIL;
            }
            break;
        default:
            rc = skip_value(L);
        }
        if (rc) return BAIL;
        int more = next_item(L, '}');
        if (more <= 0) return more;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Tables: the column layout of decode.py's _TABLE_COLUMNS (T: text code, R: raw code, F: float, I: int) */

enum { T_GPU, T_HOST, T_RUNTIME, T_MEMORY, N_TABLES };
#define MAX_COLS 11
static const char *TABLE_LAYOUT[N_TABLES] = {
    "TTIIFFIIIII", /* gpu: name cat device stream ts dur ext_id correlation bytes src_device dst_device */
    "TTTTFFIRRR",  /* host: name cat pid tid ts dur ext_id input_dims input_type input_strides */
    "TTTTFFII",    /* runtime: name cat pid tid ts dur ext_id correlation */
    "TTFIIIIII",   /* memory: pid tid ts device_type device_id addr bytes total_allocated total_reserved */
};

typedef struct {
    Buf col[N_TABLES][MAX_COLS];
} Out;

typedef struct {
    PyObject_HEAD
    Intern texts, raws;
    Out out;           /* the rows of the chunks scanned since the last take() */
    PyObject *other;   /* dict: text code of a counted category -> events, since the last take() */
    int64_t last_id[2];  /* the last integer pid / tid and its text's code: threads repeat */
    int32_t last_id_code[2];
    int8_t *cat_kind; /* per text code: the table an X event of that category goes to (+1), 0: none */
    int8_t *cat_counted;
    Py_ssize_t cat_cap;
    PyObject *kind_of; /* dict: category text -> table index, for X events */
    PyObject *counted; /* frozenset of category texts counted when not read */
    Buf tmp;
} Scanner;

static int scanner_cat_room(Scanner *self, int32_t code) {
    if (code < self->cat_cap) return 0;
    Py_ssize_t cap = self->cat_cap ? self->cat_cap : 256;
    while (cap <= code) cap *= 2;
    int8_t *k = PyMem_Realloc(self->cat_kind, (size_t)cap);
    if (!k) return NOMEM;
    self->cat_kind = k;
    int8_t *c = PyMem_Realloc(self->cat_counted, (size_t)cap);
    if (!c) return NOMEM;
    self->cat_counted = c;
    for (Py_ssize_t i = self->cat_cap; i < cap; i++) self->cat_kind[i] = self->cat_counted[i] = -1;
    self->cat_cap = cap;
    return 0;
}

/* The table (0..3) an X event of this category goes to, or -1; *counted when it is a counted one. */
static int scanner_kind(Scanner *self, int32_t code, int *counted) {
    if (scanner_cat_room(self, code)) return NOMEM;
    if (self->cat_kind[code] == -1) {
        PyObject *text = PyUnicode_DecodeUTF8(self->texts.arena.p + self->texts.off[code], self->texts.len[code],
                                              "strict");
        if (!text) return NOMEM;
        PyObject *k = PyDict_GetItemWithError(self->kind_of, text);
        if (!k && PyErr_Occurred()) {
            Py_DECREF(text);
            return NOMEM;
        }
        long kind = k ? PyLong_AsLong(k) : -1;
        int is_counted = PySet_Contains(self->counted, text);
        Py_DECREF(text);
        if (is_counted < 0 || (kind == -1 && PyErr_Occurred())) return NOMEM;
        self->cat_kind[code] = (int8_t)(kind >= 0 && kind < N_TABLES ? kind : -2);
        self->cat_counted[code] = (int8_t)is_counted;
    }
    *counted = self->cat_counted[code];
    return self->cat_kind[code] >= 0 ? self->cat_kind[code] : -1;
}

static int32_t text_code(Scanner *self, const Str *s) {
    const char *t;
    Py_ssize_t n;
    if (str_text(s, &self->tmp, &t, &n)) return NOMEM;
    return intern_get(&self->texts, t, n);
}

static int32_t id_code(Scanner *self, int which, int kind, int64_t iv, const Str *sv) {
    if (kind == 2) return text_code(self, sv);
    if (kind == 0) iv = 0; /* absent: the int 0 */
    if (self->last_id_code[which] >= 0 && self->last_id[which] == iv) return self->last_id_code[which];
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", (long long)iv);
    int32_t code = intern_get(&self->texts, num, n);
    if (code >= 0) {
        self->last_id[which] = iv;
        self->last_id_code[which] = code;
    }
    return code;
}

static int32_t raw_code(Scanner *self, const Event *ev, int r) {
    if (!ev->raw_p[r]) return 0; /* absent: code 0 (the caller's table holds b"" -> None there) */
    return intern_get(&self->raws, (const char *)ev->raw_p[r], ev->raw_n[r]);
}

static int put_i32(Buf *b, int32_t v) { return buf_put(b, &v, 4); }
static int put_i64(Buf *b, int64_t v) { return buf_put(b, &v, 8); }
static int put_f64(Buf *b, double v) { return buf_put(b, &v, 8); }

static int add_row(Scanner *self, Out *out, int table, const Event *ev) {
    Buf *c = out->col[table];
    double dur = ev->has_dur && ev->dur != 0.0 ? ev->dur : 0.0; /* absent, None, -0.0: 0.0 */
    int32_t code;
#define TEXT(i, expr) do { code = (expr); if (code < 0 || put_i32(&c[i], code)) return NOMEM; } while (0)
#define INT(i, v) do { if (put_i64(&c[i], (v))) return NOMEM; } while (0)
#define FLT(i, v) do { if (put_f64(&c[i], (v))) return NOMEM; } while (0)
    switch (table) {
    case T_GPU: {
        int64_t device = ev->iarg[A_DEVICE] != NA_INT ? ev->iarg[A_DEVICE] : ev->iarg[A_IN];
        TEXT(0, text_code(self, &ev->name));
        TEXT(1, text_code(self, &ev->cat));
        INT(2, device);
        INT(3, ev->iarg[A_STREAM]);
        FLT(4, ev->ts);
        FLT(5, dur);
        INT(6, ev->iarg[A_EXT]);
        INT(7, ev->iarg[A_CORR]);
        INT(8, ev->iarg[A_BYTES]);
        INT(9, ev->iarg[A_FROM]);
        INT(10, ev->iarg[A_TO]);
        break;
    }
    case T_HOST:
    case T_RUNTIME:
        TEXT(0, text_code(self, &ev->name));
        TEXT(1, text_code(self, &ev->cat));
        TEXT(2, id_code(self, 0, ev->pid_kind, ev->pid_i, &ev->pid_s));
        TEXT(3, id_code(self, 1, ev->tid_kind, ev->tid_i, &ev->tid_s));
        FLT(4, ev->ts);
        FLT(5, dur);
        INT(6, ev->iarg[A_EXT]);
        if (table == T_RUNTIME) {
            INT(7, ev->iarg[A_CORR]);
        } else {
            for (int r = 0; r < N_RAW_ARGS; r++) TEXT(7 + r, raw_code(self, ev, r));
        }
        break;
    case T_MEMORY:
        TEXT(0, id_code(self, 0, ev->pid_kind, ev->pid_i, &ev->pid_s));
        TEXT(1, id_code(self, 1, ev->tid_kind, ev->tid_i, &ev->tid_s));
        FLT(2, ev->ts);
        INT(3, ev->iarg[A_DEV_TYPE]);
        INT(4, ev->iarg[A_DEV_ID]);
        INT(5, ev->iarg[A_ADDR]);
        INT(6, ev->iarg[A_MEM_BYTES]);
        INT(7, ev->iarg[A_TOTAL_ALLOC]);
        INT(8, ev->iarg[A_TOTAL_RES]);
        break;
    }
#undef TEXT
#undef INT
#undef FLT
    return 0;
}

/* One event into its table (or counted, or dropped), as decode.py's _Columns.add does. */
static int place(Scanner *self, Out *out, const Event *ev, PyObject *other) {
    int is_x = 0, is_i = 0;
    if (ev->has_ph) {
        if (str_is(&ev->ph, &self->tmp, "X", &is_x) || str_is(&ev->ph, &self->tmp, "i", &is_i)) return NOMEM;
    }
    if (is_x) {
        int32_t cat = ev->has_cat ? text_code(self, &ev->cat) : intern_get(&self->texts, "", 0);
        if (cat < 0) return NOMEM;
        int counted = 0;
        int table = scanner_kind(self, cat, &counted);
        if (table == NOMEM) return NOMEM;
        if (table < 0) {
            if (counted) {
                PyObject *key = PyLong_FromLong(cat);
                if (!key) return NOMEM;
                PyObject *was = PyDict_GetItemWithError(other, key);
                long n = was ? PyLong_AsLong(was) + 1 : 1;
                PyObject *val = PyLong_FromLong(n);
                int rc = val ? PyDict_SetItem(other, key, val) : -1;
                Py_DECREF(key);
                Py_XDECREF(val);
                if (rc) return NOMEM;
            }
            return 0;
        }
        if (!ev->has_ts) return 0;
        return add_row(self, out, table, ev);
    }
    if (is_i && ev->has_name) {
        int is_mem;
        if (str_is(&ev->name, &self->tmp, "[memory]", &is_mem)) return NOMEM;
        if (is_mem && ev->args == 2 && ev->has_ts) return add_row(self, out, T_MEMORY, ev);
    }
    return 0;
}

static void out_free(Out *out) {
    for (int t = 0; t < N_TABLES; t++)
        for (int c = 0; c < MAX_COLS; c++) buf_free(&out->col[t][c]);
}

static int scan_array(Scanner *self, const unsigned char *p, Py_ssize_t n, Out *out, PyObject *other) {
    Lex L = {p, p + n, 0};
    Event ev;
    ws(&L);
    if (L.p >= L.end || *L.p != '[') return BAIL;
    L.p++;
    ws(&L);
    if (L.p < L.end && *L.p == ']') {
        L.p++;
    } else {
        for (;;) {
            if (parse_event(&L, &ev)) return BAIL;
            ev.has_ph = ev.ph.p != NULL;
            ev.has_cat = ev.cat.p != NULL;
            ev.has_name = ev.name.p != NULL;
            int rc = place(self, out, &ev, other);
            if (rc) return rc;
            int more = next_item(&L, ']');
            if (more < 0) return BAIL;
            if (!more) break;
        }
    }
    ws(&L);
    return L.p == L.end ? 0 : BAIL;
}

static Py_ssize_t out_bytes(const Out *out) {
    Py_ssize_t n = 0;
    for (int t = 0; t < N_TABLES; t++)
        for (int c = 0; c < MAX_COLS; c++) n += out->col[t][c].len;
    return n;
}

/* scan(chunk): the chunk's rows are kept (returns the bytes now held) or, when it is not one this
 * scanner reads, nothing of it is (returns -1). */
static PyObject *Scanner_scan(Scanner *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t len[N_TABLES][MAX_COLS];
    for (int t = 0; t < N_TABLES; t++)
        for (int c = 0; c < MAX_COLS; c++) len[t][c] = self->out.col[t][c].len;
    PyObject *other = PyDict_New();
    PyObject *result = NULL;
    int rc = other ? scan_array(self, view.buf, view.len, &self->out, other) : NOMEM;
    if (rc == 0) {
        /* counted categories: merged only now, so that a declined chunk adds nothing */
        PyObject *key, *val;
        Py_ssize_t pos = 0;
        while (rc == 0 && PyDict_Next(other, &pos, &key, &val)) {
            PyObject *was = PyDict_GetItemWithError(self->other, key);
            if (!was && PyErr_Occurred()) {
                rc = NOMEM;
                break;
            }
            PyObject *sum = was ? PyNumber_Add(was, val) : (Py_INCREF(val), val);
            if (!sum || PyDict_SetItem(self->other, key, sum)) rc = NOMEM;
            Py_XDECREF(sum);
        }
    }
    if (rc == 0) {
        result = PyLong_FromSsize_t(out_bytes(&self->out));
    } else {
        for (int t = 0; t < N_TABLES; t++) /* nothing of this chunk is kept */
            for (int c = 0; c < MAX_COLS; c++) self->out.col[t][c].len = len[t][c];
        if (rc == BAIL) {
            PyErr_Clear();
            result = PyLong_FromLong(-1);
        } else if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
    }
    Py_XDECREF(other);
    PyBuffer_Release(&view);
    return result;
}

/* take(): (new_texts, new_raws, tables, other) of the rows held, which are then dropped. */
static PyObject *Scanner_take(Scanner *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *tables = PyTuple_New(N_TABLES);
    if (!tables) return NULL;
    for (int t = 0; t < N_TABLES; t++) {
        Py_ssize_t ncol = (Py_ssize_t)strlen(TABLE_LAYOUT[t]);
        PyObject *cols = PyTuple_New(ncol);
        if (!cols) {
            Py_DECREF(tables);
            return NULL;
        }
        PyTuple_SET_ITEM(tables, t, cols);
        for (Py_ssize_t c = 0; c < ncol; c++) {
            Buf *b = &self->out.col[t][c];
            PyObject *data = PyBytes_FromStringAndSize(b->p ? b->p : "", b->len);
            if (!data) {
                Py_DECREF(tables);
                return NULL;
            }
            PyTuple_SET_ITEM(cols, c, data);
        }
    }
    PyObject *texts = intern_new_entries(&self->texts);
    PyObject *raws = texts ? intern_new_entries(&self->raws) : NULL;
    PyObject *other = raws ? PyDict_New() : NULL;
    if (!other) {
        Py_XDECREF(texts);
        Py_XDECREF(raws);
        Py_DECREF(tables);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(NNNN)", texts, raws, tables, self->other);
    if (!result) {
        Py_DECREF(other);
        return NULL;
    }
    self->other = other;
    self->texts.reported = self->texts.n;
    self->raws.reported = self->raws.n;
    for (int t = 0; t < N_TABLES; t++) {
        for (int c = 0; c < MAX_COLS; c++) {
            Buf *b = &self->out.col[t][c];
            if (b->cap > ((Py_ssize_t)1 << 22)) buf_free(b); /* an unusually big chunk's buffer goes back */
            b->len = 0;
        }
    }
    return result;
}

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"kind_of", "counted", NULL};
    PyObject *kind_of, *counted;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O", kwlist, &PyDict_Type, &kind_of, &counted)) return -1;
    PyObject *fs = PyFrozenSet_New(counted);
    if (!fs) return -1;
    PyObject *other = PyDict_New();
    if (!other) {
        Py_DECREF(fs);
        return -1;
    }
    Py_INCREF(kind_of);
    Py_XSETREF(self->kind_of, kind_of);
    Py_XSETREF(self->counted, fs);
    Py_XSETREF(self->other, other);
    self->last_id_code[0] = self->last_id_code[1] = -1;
    /* raw code 0 is "absent" */
    if (self->raws.n == 0 && intern_get(&self->raws, "", 0) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Scanner_dealloc(Scanner *self) {
    intern_free(&self->texts);
    intern_free(&self->raws);
    PyMem_Free(self->cat_kind);
    PyMem_Free(self->cat_counted);
    buf_free(&self->tmp);
    out_free(&self->out);
    Py_XDECREF(self->kind_of);
    Py_XDECREF(self->counted);
    Py_XDECREF(self->other);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)Scanner_scan, METH_O,
     "scan(chunk) -> int. chunk: a JSON array of trace events (any buffer). Its rows are kept and the bytes\n"
     "held are returned; or -1: the chunk is not one this scanner reads (decode it with msgspec), nothing kept."},
    {"take", (PyCFunction)Scanner_take, METH_NOARGS,
     "take() -> (new_texts, new_raws, tables, other), and the rows held are dropped.\n\n"
     "new_texts / new_raws: the distinct texts (UTF-8) and raw values added since the last take, in code order\n"
     "(raw code 0 is b'': absent). tables: per table (gpu, host, runtime, memory), its columns' bytes (int32\n"
     "codes, float64, int64) in TABLE_LAYOUT order. other: text code of a counted category -> events."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qtrace.tracefile._kineto_scan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scans chunks of a Kineto traceEvents array into columns; texts interned across chunks.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_kineto_scan", "Kineto trace chunks into columns (see qtrace.tracefile.decode).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kineto_scan(void) {
    for (int c = 0; c < 256; c++) PLAIN[c] = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
    for (int i = 0; i < N_INT_ARGS; i++) INT_ARG_LEN[i] = (Py_ssize_t)strlen(INT_ARG_KEYS[i]);
    for (int i = 0; i < N_RAW_ARGS; i++) RAW_ARG_LEN[i] = (Py_ssize_t)strlen(RAW_ARG_KEYS[i]);
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddStringConstant(m, "TABLE_LAYOUT_GPU", TABLE_LAYOUT[T_GPU]);
    PyModule_AddStringConstant(m, "TABLE_LAYOUT_HOST", TABLE_LAYOUT[T_HOST]);
    PyModule_AddStringConstant(m, "TABLE_LAYOUT_RUNTIME", TABLE_LAYOUT[T_RUNTIME]);
    PyModule_AddStringConstant(m, "TABLE_LAYOUT_MEMORY", TABLE_LAYOUT[T_MEMORY]);
    return m;
}
