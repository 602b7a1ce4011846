/*
 * The inside of a JSON string, and base64.
 */
#include <ctype.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <uv.h>

#include "oa_codec.h"

/* Length of the valid UTF-8 sequence starting at p, or 0 when the bytes there are not one. Overlong forms,
 * surrogates and code points above U+10FFFF are refused, as RFC 3629 asks. */
static size_t utf8_seq_len(const unsigned char *p)
{
    unsigned char c = p[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

int oa_json_escape(oa_buf_t *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    const char *esc;
    char u[8];
    size_t n;
    int rc = 0;

    while (*p != '\0' && rc == 0) {
        switch (*p) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            esc = NULL;
            break;
        }
        if (esc == NULL && *p < 0x20) {
            snprintf(u, sizeof(u), "\\u%04x", *p);
            esc = u;
        }
        if (esc != NULL) {
            rc = oa_buf_append_str(b, esc);
            p++;
            continue;
        }
        /* Bytes a peer sent us may be anything: each one that does not start valid UTF-8 becomes U+FFFD. */
        n = utf8_seq_len(p);
        if (n == 0) {
            rc = oa_buf_append(b, "\\ufffd", 6);
            p++;
            continue;
        }
        rc = oa_buf_append(b, p, n);
        p += n;
    }
    return rc;
}

int oa_base64_encode(oa_buf_t *b, const void *data, size_t len)
{
    size_t need = (len + 2) / 3 * 4;
    int rc;

    if (len > INT_MAX / 2)
        return UV_ENOMEM;
    /* EVP_EncodeBlock writes a terminating NUL after the text, for which oa_buf_reserve always keeps room. */
    rc = oa_buf_reserve(b, need);
    if (rc != 0)
        return rc;
    EVP_EncodeBlock((unsigned char *)b->data + b->len, data, (int)len);
    b->len += need;
    b->data[b->len] = '\0';
    return 0;
}

static int b64_char_ok(unsigned char c)
{
    return isalnum(c) || c == '+' || c == '/';
}

static unsigned b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (unsigned)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (unsigned)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0' + 52);
    return c == '+' ? 62u : 63u;
}

/* Every byte string has exactly one accepted spelling. EVP_DecodeBlock does the decoding but counts padding as data
 * bytes, hence the adjustment. */
int oa_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outmax, size_t *outlen)
{
    size_t i, pad = 0;
    unsigned last;
    int n;

    if (inlen == 0 || inlen % 4 != 0 || inlen > INT_MAX)
        return UV_EINVAL;
    if (in[inlen - 1] == '=')
        pad = in[inlen - 2] == '=' ? 2 : 1;
    for (i = 0; i < inlen - pad; i++)
        if (!b64_char_ok((unsigned char)in[i]))
            return UV_EINVAL;
    last = b64_value((unsigned char)in[inlen - pad - 1]);
    if ((pad == 1 && (last & 0x3u) != 0) || (pad == 2 && (last & 0xfu) != 0))
        return UV_EINVAL;
    /* EVP_DecodeBlock writes whole groups of three, padding included. */
    if (inlen / 4 * 3 > outmax)
        return UV_EINVAL;
    n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)inlen);
    if (n < 0 || (size_t)n != inlen / 4 * 3)
        return UV_EINVAL;
    *outlen = inlen / 4 * 3 - pad;
    return 0;
}
