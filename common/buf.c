#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "oa_util.h"

void oa_buf_init(oa_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int oa_buf_reserve(oa_buf_t *b, size_t n)
{
    size_t need, cap;
    char *p;

    /* One byte more than asked for keeps room for the terminating NUL. */
    if (n > SIZE_MAX - b->len - 1)
        return UV_ENOMEM;
    need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (p == NULL)
        return UV_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int oa_buf_append(oa_buf_t *b, const void *p, size_t n)
{
    int rc = oa_buf_reserve(b, n);

    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int oa_buf_append_str(oa_buf_t *b, const char *s)
{
    return oa_buf_append(b, s, strlen(s));
}

int oa_buf_printf(oa_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return UV_EINVAL;
    rc = oa_buf_reserve(b, (size_t)n);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void oa_buf_consume(oa_buf_t *b, size_t n)
{
    if (n >= b->len) {
        oa_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void oa_buf_reset(oa_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void oa_buf_free(void *b_)
{
    oa_buf_t *b = b_;

    free(b->data);
    oa_buf_init(b);
}

bool oa_secure_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const unsigned char *pa = a, *pb = b;
    unsigned char diff = (unsigned char)(alen != blen);
    size_t i;

    /* Walk the first string whole so the time depends on the lengths only. */
    for (i = 0; i < alen; i++)
        diff |= (unsigned char)(pa[i] ^ (blen ? pb[i % blen] : 0));
    return diff == 0;
}
