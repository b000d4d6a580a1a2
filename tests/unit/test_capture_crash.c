/* test_capture_crash.c — a child process appending records is killed with
 * SIGKILL at a random moment; every record of every batch the writer had
 * written before the kill must come back from the reader, in order, intact.
 *
 * The child reports, through a pipe, the last sequence number that was in a
 * written batch each time a batch is written; the parent kills it after a
 * random delay and compares. */
#include "check.h"
#include "wsrr/capture.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[] = "/tmp/wsrr-test-crash-XXXXXX";

static void record_text(uint64_t seq, char *buf, size_t cap, size_t *len)
{
    /* deterministic content of varying size, so batches have odd lengths */
    int n = snprintf(buf, cap, "record %llu:", (unsigned long long)seq);
    size_t extra = (seq * 2654435761u) % 300;
    for (size_t i = 0; i < extra && (size_t)n + 1 < cap; i++)
        buf[n++] = (char)('a' + (seq + i) % 26);
    *len = (size_t)n;
}

static void child(const char *path, int wfd, uint64_t seed)
{
    char err[256];
    struct wsrr_capture_opts o = {.flush_interval_ns = 2 * 1000 * 1000, .batch_bytes = 16384};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    if (!w)
        _exit(3);
    uint64_t zero = 0; /* "the header is on disk": the parent starts its clock */
    if (write(wfd, &zero, sizeof(zero)) < 0)
        _exit(5);
    uint64_t batches = 0, rnd = seed;
    for (uint64_t i = 1;; i++) {
        char text[400];
        size_t len;
        record_text(i, text, sizeof(text), &len);
        struct wsrr_record r = {
            .kind = WSRR_REC_NOTE, .conn = (uint32_t)(i % 7), .ts = WSRR_TS_NOW};
        r.u.note.text = (struct wsrr_span){(const uint8_t *)text, len};
        if (wsrr_capture_append(w, &r) < 0)
            _exit(4);
        if (check_rand(&rnd) % 64 == 0)
            wsrr_capture_writer_tick(w);
        struct wsrr_capture_stats st;
        wsrr_capture_writer_stats(w, &st);
        if (st.batches != batches) {
            batches = st.batches;
            if (write(wfd, &st.last_durable_seq, sizeof(st.last_durable_seq)) < 0)
                _exit(5);
        }
        if (check_rand(&rnd) % 16 == 0)
            usleep(50);
    }
}

static void one_run(int run, uint64_t seed)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/crash-%d.wsrr", dir, run);
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        child(path, pfd[1], seed);
    }
    close(pfd[1]);
    uint64_t rnd = seed, v;
    REQUIRE(read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v));
    usleep(2000 + (useconds_t)(check_rand(&rnd) % 60000));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    uint64_t durable = 0;
    while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v))
        durable = v;
    close(pfd[0]);

    char err[256];
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(r);
    struct wsrr_record rec;
    uint64_t expect = 1;
    bool content_ok = true;
    while (wsrr_capture_reader_next(r, &rec) == 1) {
        char text[400];
        size_t len;
        record_text(expect, text, sizeof(text), &len);
        if (rec.seq != expect || rec.u.note.text.n != len ||
            memcmp(rec.u.note.text.p, text, len) != 0)
            content_ok = false;
        expect++;
    }
    uint64_t got = expect - 1;
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(r, &s);
    CHECK_MSG(content_ok, "run %d: records contiguous and intact", run);
    CHECK_MSG(got >= durable, "run %d: recovered %llu records, %llu were durable", run,
              (unsigned long long)got, (unsigned long long)durable);
    CHECK_MSG(!s.trailer, "run %d: a killed writer leaves no trailer", run);
    CHECK_MSG(s.ndamage <= 1, "run %d: at most the batch being written is damaged (%zu)", run,
              s.ndamage);
    printf("run %d: killed after %llu durable records; recovered %llu, damage entries %zu\n", run,
           (unsigned long long)durable, (unsigned long long)got, s.ndamage);
    wsrr_capture_reader_close(r);
    unlink(path);
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
    printf("seed %llu (rerun: test_capture_crash %llu)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    REQUIRE(mkdtemp(dir));
    uint64_t rnd = seed;
    for (int run = 0; run < 20; run++)
        one_run(run, check_rand(&rnd) | 1);
    rmdir(dir);
    return check_finish("test_capture_crash");
}
