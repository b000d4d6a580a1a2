/* common.c — small helpers shared by all modules. */
#include "wsrr/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

const char *wsrr_dir_name(enum wsrr_dir d)
{
    return d == WSRR_DIR_C2S ? "client" : "server";
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wsrr_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t wsrr_wall_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

int wsrr_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -code;
}
