/* server.h — the server under test, started by fuzz and shrink
 * (--server-cmd): a shell command run in its own process group, its output
 * appended to a log file, watched for an exit, a crash signal or a
 * sanitizer report, and started again after one. */
#ifndef WSRR_REPLAY_SERVER_H
#define WSRR_REPLAY_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct fz_server;

/* Run `sh -c cmd` (standard output and error appended to log_path) and
 * wait until HOST:PORT of target (ws:// or wss://) accepts a TCP
 * connection, at most wait_ms. NULL with a one-line error when it cannot be
 * started, exits first, or does not listen in time. */
struct fz_server *fz_server_start(const char *cmd, const char *target, const char *log_path,
                                  uint64_t wait_ms, char *err, size_t errlen);

/* Has it failed since the last call? 0: no. 1: it exited, was killed by a
 * signal, or wrote a sanitizer report to its log; kind is then "exit",
 * "signal" or "sanitizer" and what says which ("status 3", "SIGSEGV",
 * "heap-use-after-free"). A sanitizer report from a process still running
 * is reported once. */
int fz_server_check(struct fz_server *sv, char *kind, size_t kcap, char *what, size_t wcap);

/* After a run whose connections ended abruptly (dropped, reset, refused):
 * give a dying server time to be seen dying. Like fz_server_check, but
 * while the server is still there and accepts no connection (a process
 * that is exiting has closed its listener), waits for it to exit or
 * accept again, up to the start wait; kind "hang" when it does neither. */
int fz_server_settle(struct fz_server *sv, char *kind, size_t kcap, char *what, size_t wcap);

/* Stop it (if it runs) and start it again; 0 or -1 with err. */
int fz_server_restart(struct fz_server *sv, char *err, size_t errlen);

/* How many times it was (re)started. */
unsigned fz_server_starts(const struct fz_server *sv);

/* The last `cap - 1` bytes (at most) of its log, NUL-terminated. */
void fz_server_log_tail(struct fz_server *sv, char *out, size_t cap);

/* SIGTERM to its process group, SIGKILL after 2 s; frees sv. */
void fz_server_stop(struct fz_server *sv);

#endif
