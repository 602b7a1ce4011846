/*
 * Small helpers every module uses: a growable byte buffer, container_of, time formatting, whole-file reads and
 * atomic writes.
 */
#ifndef OA_UTIL_H
#define OA_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define oa_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define OA_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A growable byte buffer. data is always NUL-terminated (the NUL is not counted in len) once anything was
 * appended, so text can be used as a C string. Zero-initialise or call oa_buf_init before use. */
typedef struct oa_buf_s {
    char *data;
    size_t len;
    size_t cap;
} oa_buf_t;

void oa_buf_init(oa_buf_t *b);
/* Appends n bytes. Returns 0 or UV_ENOMEM (b unchanged). */
int oa_buf_append(oa_buf_t *b, const void *p, size_t n);
int oa_buf_append_str(oa_buf_t *b, const char *s);
int oa_buf_printf(oa_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ensures room for n more bytes without changing len. Returns 0 or UV_ENOMEM. */
int oa_buf_reserve(oa_buf_t *b, size_t n);
/* Drops the first n bytes (n <= len), keeping the rest. */
void oa_buf_consume(oa_buf_t *b, size_t n);
/* Sets len to 0, keeping the allocation. */
void oa_buf_reset(oa_buf_t *b);
/* Frees the storage; b is left empty and reusable. */
void oa_buf_free(void *b_);

/* Formats t as RFC 1123 in GMT, "Wed, 22 Dec 2021 12:50:11 GMT", into out (OA_RFC1123_LEN bytes). Returns out. */
#define OA_RFC1123_LEN 64
char *oa_time_rfc1123(time_t t, char out[OA_RFC1123_LEN]);
/* Formats t (wall clock, with milliseconds) as "2026-11-21T16:40:00.123Z" into out (OA_ISO8601_LEN bytes). */
#define OA_ISO8601_LEN 64
char *oa_time_iso8601_ms(int64_t unix_ms, char out[OA_ISO8601_LEN]);
/* Wall-clock time in milliseconds since the epoch. */
int64_t oa_time_now_ms(void);

/* Reads the whole file at path into out (replacing its content). Files larger than max bytes fail with
 * UV_EFBIG. Returns 0 or a negative UV_E* error. */
int oa_file_read(const char *path, size_t max, oa_buf_t *out);

/* Replaces the file at path with data, atomically: writes "<path>.tmp.<pid>", fsyncs it, renames it over path and
 * fsyncs the directory. On failure the old file is untouched and the temporary file removed. mode is the new
 * file's permission bits. Returns 0 or a negative UV_E* error. */
int oa_file_write_atomic(const char *path, const void *data, size_t len, int mode);

/* Removes path and fsyncs its directory; a file already absent is success. Returns 0 or a negative UV_E*. */
int oa_file_remove(const char *path);

/* Removes the "<base>.tmp.<pid>" files in dir, for each of the n names in bases, that oa_file_write_atomic left
 * behind when a process died in the middle of a write; one of another process still alive is kept (its write may be
 * in progress). Logs `stale_temp_file_removed` for each file removed. */
void oa_file_remove_stale_temps(const char *dir, const char *const *bases, size_t n);

/* Joins dir and name with one '/'; returns a malloc'ed string the caller frees, or NULL. */
char *oa_path_join(const char *dir, const char *name);

/* Compares two byte strings in time that depends only on the lengths. Returns true when equal. */
bool oa_secure_equal(const void *a, size_t alen, const void *b, size_t blen);

#endif
