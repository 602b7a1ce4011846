/*
 * Text encodings the daemon writes itself, where jansson's full encoder is not at hand or too slow: the inside of
 * a JSON string, and base64.
 */
#ifndef OA_CODEC_H
#define OA_CODEC_H

#include <stddef.h>

#include "oa_util.h"

/*
 * Appends s as the inside of a JSON string (RFC 8259), without the quotes: '"' and '\' escaped, control bytes as
 * \b \f \n \r \t or \u00XX, and every byte that does not start a valid UTF-8 sequence (RFC 3629: no overlong forms,
 * surrogates or code points above U+10FFFF) as \ufffd, so that the result is valid JSON whatever s holds.
 * Returns 0 or UV_ENOMEM.
 */
int oa_json_escape(oa_buf_t *b, const char *s);

/* Appends the standard base64 (RFC 4648 section 4, with padding) of len bytes. Returns 0 or UV_ENOMEM. */
int oa_base64_encode(oa_buf_t *b, const void *data, size_t len);

/*
 * Decodes standard base64 with padding, strictly: only the alphabet, a length that is a multiple of four, '=' only
 * as the last one or two characters, and no bits set in the padding. Writes at most outmax bytes to out. Returns 0
 * with *outlen set to the number of bytes decoded, or UV_EINVAL when in is not such a base64 text or does not fit.
 */
int oa_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outmax, size_t *outlen);

#endif
