/* server.c — the server under test as a child process (server.h). */
#include "server.h"

#include "wsrr/common.h"

#include <errno.h>
#include <event2/http.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fz_server {
    char *cmd, *log_path;
    char host[256];
    int port;
    uint64_t wait_ms;
    pid_t pid, pgid; /* the shell; its process group (kept after the shell is reaped) */
    unsigned starts;
    off_t scanned; /* log bytes already looked at for sanitizer reports */
};

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define ACCEPT_WAIT_MS                                                                             \
    500 /* a listener that does not complete a connect by then is not accepting */

static bool accepts(const struct fz_server *sv)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
    char port[16];
    snprintf(port, sizeof(port), "%d", sv->port);
    if (getaddrinfo(sv->host, port, &hints, &ai) != 0)
        return false;
    bool ok = false;
    for (struct addrinfo *a = ai; a && !ok; a = a->ai_next) {
        /* not blocking: a server whose backlog is full would hold the
         * caller (and the fuzz lock it holds) for the SYN retries */
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            ok = true;
        } else if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int e = 0;
            socklen_t el = sizeof(e);
            ok = poll(&p, 1, ACCEPT_WAIT_MS) == 1 &&
                 getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0;
        }
        close(fd);
    }
    freeaddrinfo(ai);
    return ok;
}

static void describe_status(int status, char *kind, size_t kcap, char *what, size_t wcap)
{
    if (WIFSIGNALED(status)) {
        snprintf(kind, kcap, "signal");
        const char *n = sigabbrev_np(WTERMSIG(status));
        snprintf(what, wcap, "SIG%s", n ? n : "?");
    } else if (WIFEXITED(status) && WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 128 + 32) {
        /* sh reports its child's death by signal N as 128 + N */
        snprintf(kind, kcap, "signal");
        const char *n = sigabbrev_np(WEXITSTATUS(status) - 128);
        snprintf(what, wcap, "SIG%s", n ? n : "?");
    } else {
        snprintf(kind, kcap, "exit");
        snprintf(what, wcap, "status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

static int spawn(struct fz_server *sv, char *err, size_t errlen)
{
    /* a listener there now is not ours: the runs would test it instead */
    if (accepts(sv)) {
        snprintf(err, errlen,
                 "--server-cmd: something already listens on %s:%d (a server left running?); "
                 "the runs would test that one",
                 sv->host, sv->port);
        return -1;
    }
    int fd = open(sv->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", sv->log_path, strerror(errno));
        return -1;
    }
    dprintf(fd, "---- wsrr: start %u: %s\n", sv->starts + 1, sv->cmd);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        snprintf(err, errlen, "--server-cmd: fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        /* wsrr killed (SIGKILL, an abort) takes the server along: no
         * server left running on the port. The signal follows the thread
         * that forked (a fuzz worker lives until the end, when the server
         * is stopped anyway); with `exec` in CMD the server is this
         * process, else the shell (its children are the group's, stopped
         * with it). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* gone already, between fork and prctl */
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        /* nothing else of ours (other workers' replay sockets) */
        close_range(3, ~0U, 0);
        signal(SIGPIPE, SIG_DFL);
        /* a crash is seen by its signal; writing a core file first would
         * keep the dying server around for seconds */
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        execl("/bin/sh", "sh", "-c", sv->cmd, (char *)NULL);
        _exit(127);
    }
    close(fd);
    setpgid(pid, pid);
    sv->pid = sv->pgid = pid;
    sv->starts++;
    uint64_t t0 = wsrr_now_ns();
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            char kind[16], what[64];
            describe_status(status, kind, sizeof(kind), what, sizeof(what));
            sv->pid = 0;
            snprintf(err, errlen,
                     "--server-cmd: the server ended (%s %s) before it listened on %s:%d; its "
                     "output is in %s",
                     kind, what, sv->host, sv->port, sv->log_path);
            return -1;
        }
        if (accepts(sv))
            return 0;
        if ((wsrr_now_ns() - t0) / 1000000 > sv->wait_ms) {
            snprintf(err, errlen,
                     "--server-cmd: the server did not listen on %s:%d within %llu ms; its "
                     "output is in %s",
                     sv->host, sv->port, (unsigned long long)sv->wait_ms, sv->log_path);
            return -1;
        }
        nap_ms(10);
    }
}

struct fz_server *fz_server_start(const char *cmd, const char *target, const char *log_path,
                                  uint64_t wait_ms, char *err, size_t errlen)
{
    struct evhttp_uri *u = evhttp_uri_parse(target);
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    if (!host || !scheme) {
        snprintf(err, errlen, "--target %s: expected ws://HOST:PORT", target);
        evhttp_uri_free(u);
        return NULL;
    }
    struct fz_server *sv = calloc(1, sizeof(*sv));
    if (!sv || !(sv->cmd = strdup(cmd)) || !(sv->log_path = strdup(log_path))) {
        if (sv)
            free(sv->cmd);
        free(sv);
        evhttp_uri_free(u);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(sv->host, sizeof(sv->host), "%s", host);
    sv->port = evhttp_uri_get_port(u) > 0  ? evhttp_uri_get_port(u)
               : strcasecmp(scheme, "wss") ? 80
                                           : 443;
    evhttp_uri_free(u);
    sv->wait_ms = wait_ms;
    /* what the shell starts is reparented to us when the shell dies first,
     * so that terminate() can reap it and know the group is gone */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    struct stat stt;
    sv->scanned = stat(log_path, &stt) == 0 ? stt.st_size : 0;
    if (spawn(sv, err, errlen) < 0) {
        fz_server_stop(sv);
        return NULL;
    }
    return sv;
}

/* A sanitizer report written since the last look: its kind in what. */
static bool sanitizer_report(struct fz_server *sv, char *what, size_t wcap)
{
    FILE *f = fopen(sv->log_path, "r");
    if (!f)
        return false;
    bool found = false;
    if (fseeko(f, sv->scanned, SEEK_SET) == 0) {
        char line[1024];
        off_t at = sv->scanned;
        while (fgets(line, sizeof(line), f)) {
            size_t n = strlen(line);
            if (n && line[n - 1] != '\n' && feof(f))
                break; /* still being written: look at it again next time */
            at += (off_t)n;
            if (found)
                continue;
            const char *p;
            if ((p = strstr(line, "Sanitizer: ")) && strstr(line, "ERROR")) {
                p += strlen("Sanitizer: ");
                snprintf(what, wcap, "%.*s", (int)strcspn(p, " \n"), p);
                found = true;
            } else if ((p = strstr(line, "runtime error: "))) {
                p += strlen("runtime error: ");
                snprintf(what, wcap, "%.*s", (int)strcspn(p, ":\n"), p);
                found = true;
            } else if (strstr(line, "WARNING: ThreadSanitizer:")) {
                snprintf(what, wcap, "data race");
                found = true;
            }
        }
        sv->scanned = at;
    }
    fclose(f);
    return found;
}

int fz_server_check(struct fz_server *sv, char *kind, size_t kcap, char *what, size_t wcap)
{
    int status;
    if (sv->pid > 0 && waitpid(sv->pid, &status, WNOHANG) == sv->pid) {
        sv->pid = 0;
        describe_status(status, kind, kcap, what, wcap);
        char san[128];
        if (sanitizer_report(sv, san, sizeof(san))) {
            snprintf(kind, kcap, "sanitizer");
            snprintf(what, wcap, "%s", san);
        }
        return 1;
    }
    if (sv->pid > 0 && sanitizer_report(sv, what, wcap)) {
        snprintf(kind, kcap, "sanitizer");
        return 1;
    }
    return 0;
}

/* Its whole process group (sh and what it started): SIGTERM, then SIGKILL
 * after 2 s; returns once no process of the group is left, so that the
 * port is free for the next start. */
int fz_server_settle(struct fz_server *sv, char *kind, size_t kcap, char *what, size_t wcap)
{
    uint64_t t0 = wsrr_now_ns();
    for (;;) {
        if (fz_server_check(sv, kind, kcap, what, wcap))
            return 1;
        uint64_t ms = (wsrr_now_ns() - t0) / 1000000;
        if (accepts(sv))
            return 0;
        if (ms >= sv->wait_ms) {
            snprintf(kind, kcap, "hang");
            snprintf(what, wcap, "no longer accepts connections");
            return 1;
        }
        nap_ms(5);
    }
}

static void terminate(struct fz_server *sv)
{
    pid_t pg = sv->pgid;
    if (pg <= 0)
        return;
    kill(-pg, SIGTERM);
    for (int i = 0; i < 400; i++) {
        /* the shell's children are ours to reap too (a subreaper): a
         * zombie would still count as a member of the group */
        pid_t p;
        while ((p = waitpid(-pg, NULL, WNOHANG)) > 0)
            if (p == sv->pid)
                sv->pid = 0;
        if (sv->pid <= 0 && kill(-pg, 0) < 0 && errno == ESRCH)
            break;
        if (i == 200)
            kill(-pg, SIGKILL);
        nap_ms(10);
    }
    if (sv->pid > 0) {
        kill(-pg, SIGKILL);
        waitpid(sv->pid, NULL, 0);
        sv->pid = 0;
    }
    while (waitpid(-pg, NULL, WNOHANG) > 0)
        ;
    sv->pgid = 0;
}

int fz_server_restart(struct fz_server *sv, char *err, size_t errlen)
{
    terminate(sv);
    int rc = spawn(sv, err, errlen);
    struct stat stt;
    if (stat(sv->log_path, &stt) == 0 && rc == 0)
        sv->scanned = sv->scanned > stt.st_size ? stt.st_size : sv->scanned;
    return rc;
}

unsigned fz_server_starts(const struct fz_server *sv)
{
    return sv->starts;
}

void fz_server_log_tail(struct fz_server *sv, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(sv->log_path, "r");
    if (!f || cap < 2) {
        if (f)
            fclose(f);
        return;
    }
    fseeko(f, 0, SEEK_END);
    off_t end = ftello(f), from = end > (off_t)(cap - 1) ? end - (off_t)(cap - 1) : 0;
    fseeko(f, from, SEEK_SET);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

void fz_server_stop(struct fz_server *sv)
{
    if (!sv)
        return;
    terminate(sv);
    free(sv->cmd);
    free(sv->log_path);
    free(sv);
}
