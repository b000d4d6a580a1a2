/* cmd_demo.c — `wsrr demo`: the newcomer's first command. A small agent
 * backend with a genuine race (wsrr-demo-agent, written with
 * libwebsockets), a scripted client that hits it, the proxy recording, the
 * race replayed until it comes back every time, the capture checked against
 * the fixed backend, and `wsrr serve` making the client fail with no
 * backend. Every step prints the command a user would type. */
#include "tool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: wsrr demo [--keep]\n"
    "\n"
    "Run the built-in demo on loopback: an agent backend whose runs of one user\n"
    "race (wsrr-demo-agent, built with libwebsockets), a client whose three runs\n"
    "make it close one connection with 1011, wsrr proxy recording that, wsrr\n"
    "replay bringing the 1011 back in every run (the rate is measured and\n"
    "printed at the end), the same capture checked against the backend with the\n"
    "bug fixed, and wsrr serve failing the client the same way with no backend.\n"
    "Each step prints the command a user would type.\n"
    "\n"
    "  --keep       keep the capture (its path is printed)\n"
    "  -h, --help   this text\n"
    "\n"
    "Exit status: 0 the demo ran; 1 a step did not do what it should; 2 the\n"
    "demo's backend (wsrr-demo-agent, next to wsrr) is missing.\n";

static int run_demo(int argc, char **argv);

const struct verb verb_demo = {"demo", "the built-in demo: record a race, replay it, serve it",
                               usage, run_demo};

static char self[4096], agent[4096], dir[64];
static pid_t kids[8];
static int nkids;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    bool tty = isatty(1);
    va_list ap;
    va_start(ap, fmt);
    printf("\n%s== ", tty ? "\033[1m" : "");
    vprintf(fmt, ap);
    printf("%s\n", tty ? "\033[0m" : "");
    va_end(ap);
    fflush(stdout);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Is someone listening on the port yet? Asked by trying to bind it, not by
 * connecting: a probe connection would be recorded, or served. */
static bool wait_port(int port)
{
    for (int i = 0; i < 100; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bool taken =
            fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno == EADDRINUSE;
        if (fd >= 0)
            close(fd);
        if (taken)
            return true;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* The command as a user types it ("wsrr" for ourselves). */
static void show(char *const *av, bool background)
{
    printf("$ ");
    for (int i = 0; av[i]; i++)
        printf("%s%s", i ? " " : "",
               i == 0 && !strcmp(av[0], self) ? "wsrr"
               : i == 0                       ? strrchr(av[0], '/') + 1
                                              : av[i]);
    printf("%s\n", background ? " &" : "");
    fflush(stdout);
}

/* Start av; its standard output goes to out_fd (-1: ours), standard error
 * to /dev/null when quiet. */
static pid_t spawn(char *const *av, int out_fd, bool quiet)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (out_fd >= 0)
            dup2(out_fd, 1);
        if (quiet) {
            FILE *n = freopen("/dev/null", "w", stderr);
            (void)n;
        }
        execv(av[0], av);
        fprintf(stderr, "wsrr demo: %s: %s\n", av[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static pid_t background(char *const *av)
{
    show(av, true);
    pid_t pid = spawn(av, -1, true);
    if (pid > 0 && nkids < 8)
        kids[nkids++] = pid;
    return pid;
}

static void stop(pid_t pid)
{
    int st;
    if (pid <= 0)
        return; /* never kill(-1): that is every process of the user */
    kill(pid, SIGINT);
    waitpid(pid, &st, 0);
    for (int i = 0; i < nkids; i++)
        if (kids[i] == pid)
            kids[i] = kids[--nkids];
}

/* Run av to the end; its output is shown and, when out is given, kept
 * there. Returns the exit status. */
static int run(char *const *av, char *out, size_t cap)
{
    show(av, false);
    int p[2] = {-1, -1};
    if (out && pipe(p) < 0)
        return -1;
    pid_t pid = spawn(av, out ? p[1] : -1, false);
    size_t n = 0;
    if (pid < 0) {
        if (out) {
            close(p[0]);
            close(p[1]);
            out[0] = '\0';
        }
        return -1;
    }
    if (out) {
        close(p[1]);
        ssize_t k;
        char buf[4096];
        while ((k = read(p[0], buf, sizeof(buf))) > 0) {
            fwrite(buf, 1, (size_t)k, stdout);
            size_t m = (size_t)k < cap - 1 - n ? (size_t)k : cap - 1 - n;
            memcpy(out + n, buf, m);
            n += m;
        }
        out[n] = '\0';
        close(p[0]);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    fflush(stdout);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void cleanup(void)
{
    while (nkids)
        stop(kids[nkids - 1]);
}

static int run_demo(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"keep", no_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool keep = false;
    int opt;
    while ((opt = tool_getopt(&verb_demo, argc, argv, "h", longopts)) != -1) {
        if (opt == 'k')
            keep = true;
        else if (opt == 'h')
            return EXIT_OK;
        else
            return EXIT_BAD_INPUT;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return tool_fail("demo", EXIT_BAD_INPUT, "cannot find my own executable");
    self[n] = '\0';
    snprintf(agent, sizeof(agent), "%.*s/wsrr-demo-agent", (int)(strrchr(self, '/') - self), self);
    if (access(agent, X_OK) != 0)
        return tool_fail("demo", EXIT_BAD_INPUT,
                         "%s is missing (it is built with libwebsockets: apt-get install "
                         "libwebsockets-dev, then rebuild)",
                         agent);
    snprintf(dir, sizeof(dir), "/tmp/wsrr-demo.XXXXXX");
    if (!mkdtemp(dir))
        return tool_fail("demo", EXIT_BAD_INPUT, "mkdtemp: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    atexit(cleanup);

    char bport[8], fport[8], pport[8], sport[8], cap[128], url[96], target[96], out[16384];
    char rate[160] = "";
    snprintf(bport, sizeof(bport), "%d", free_port());
    snprintf(pport, sizeof(pport), "%d", free_port());
    snprintf(cap, sizeof(cap), "%s/demo.wsrr", dir);
    snprintf(target, sizeof(target), "ws://127.0.0.1:%s", bport);
    int failed = 0;

    say("1. Record: the proxy in front of an agent backend, three runs, one of them fails");
    printf("# wsrr-demo-agent (libwebsockets) streams agent events; two runs of the same user\n"
           "# that overlap make it close one of them with 1011, as a crashing handler does\n");
    char *be[] = {agent, "backend", bport, NULL};
    background(be);
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%s", pport);
    char *px[] = {self, "proxy", "--listen", listen, "--upstream", target, "--record", cap, NULL};
    if (!wait_port(atoi(bport)))
        return tool_fail("demo", EXIT_FAILURE_FOUND, "the demo backend did not start");
    snprintf(url, sizeof(url), "ws://127.0.0.1:%s/v1/agent", pport);
    char *cl[] = {agent, "client", url, NULL};
    bool hit = false;
    for (int attempt = 0; attempt < 3 && !hit; attempt++) {
        if (attempt) {
            printf("# the runs did not overlap this time (a race): again, into a new file\n");
            unlink(cap);
            snprintf(pport, sizeof(pport), "%d", free_port());
            snprintf(listen, sizeof(listen), "127.0.0.1:%s", pport);
            snprintf(url, sizeof(url), "ws://127.0.0.1:%s/v1/agent", pport);
        }
        pid_t proxy = background(px);
        if (proxy < 0 || !wait_port(atoi(pport)))
            return tool_fail("demo", EXIT_FAILURE_FOUND, "the proxy did not start");
        run(cl, out, sizeof(out));
        hit = strstr(out, "received 1011") != NULL;
        stop(proxy);
    }
    char *cat[] = {self, "cat", cap, "--kind", "close", NULL};
    run(cat, NULL, 0);
    if (!hit)
        printf("# (the runs never overlapped: run 'wsrr demo' again to see the race)\n");

    say("2. Replay: the 1011 comes back on every run, not a few times in ten");
    printf("# every connection again, each client message sent once the server messages that\n"
           "# came before it in the capture (on any connection) have come back\n");
    char *rp[] = {self, "replay", cap, "--target", target, "--reproduce", "--repeat", "10", NULL};
    int rc = run(rp, out, sizeof(out));
    char *line = strstr(out, "reproduced ");
    if (line)
        snprintf(rate, sizeof(rate), "%.*s", (int)strcspn(line, "\n"), line);
    failed |= hit && rc != 0;

    say("3. The same capture against the backend with the bug fixed: what CI runs");
    snprintf(fport, sizeof(fport), "%d", free_port());
    char ftarget[96];
    snprintf(ftarget, sizeof(ftarget), "ws://127.0.0.1:%s", fport);
    char *fb[] = {agent, "backend", fport, "--fixed", NULL};
    background(fb);
    wait_port(atoi(fport));
    char *ck[] = {self, "replay", cap, "--target", ftarget, "--check", "--timeout", "1000", NULL};
    rc = run(ck, NULL, 0);
    printf("(exit status %d: 0 is no 1011 and no divergence; against the buggy backend, 1)\n", rc);
    failed |= rc != 0;

    say("4. No backend at all: wsrr serve plays the backend's side of the capture");
    printf("# the client fails as it did against the backend: same run, same code, same reason\n");
    snprintf(sport, sizeof(sport), "%d", free_port());
    snprintf(listen, sizeof(listen), "127.0.0.1:%s", sport);
    char *sv[] = {self, "serve", cap, "--listen", listen, "--exit-after", "3", "-q", NULL};
    pid_t serve = background(sv);
    wait_port(atoi(sport));
    snprintf(url, sizeof(url), "ws://127.0.0.1:%s/v1/agent", sport);
    char served[16384];
    run(cl, served, sizeof(served));
    failed |= hit && !strstr(served, "received 1011");
    stop(serve);

    cleanup();
    say("done: the 1011 that happened once was %s", rate[0] ? rate : "not replayed");
    printf(
        "# docs/replay.md explains the timing modes; 'wsrr replay --help', 'wsrr serve --help'\n");
    if (keep) {
        printf("# the capture: %s\n", cap);
    } else {
        unlink(cap);
        rmdir(dir);
    }
    return failed ? EXIT_FAILURE_FOUND : EXIT_OK;
}
