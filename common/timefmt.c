#include <stdio.h>
#include <sys/time.h>

#include "oa_util.h"

static const char *const wdays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

char *oa_time_rfc1123(time_t t, char out[OA_RFC1123_LEN])
{
    struct tm tm;

    /* Names are spelled out here rather than with strftime so the locale can never change them. */
    gmtime_r(&t, &tm);
    snprintf(out, OA_RFC1123_LEN, "%s, %02d %s %04d %02d:%02d:%02d GMT", wdays[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], (tm.tm_year + 1900) % 10000, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return out;
}

char *oa_time_iso8601_ms(int64_t unix_ms, char out[OA_ISO8601_LEN])
{
    time_t t;
    struct tm tm;

    if (unix_ms < 0)
        unix_ms = 0; /* the clock before 1970 is a broken clock; show the epoch rather than a garbled field */
    t = (time_t)(unix_ms / 1000);

    gmtime_r(&t, &tm);
    snprintf(out, OA_ISO8601_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (tm.tm_year + 1900) % 10000,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
    return out;
}

int64_t oa_time_now_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}
