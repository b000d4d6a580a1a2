/* output.c — how verbs write captures: never half a file, never over the
 * input, and with --force never destroying OUT before the new one is
 * complete. */
#include "tool.h"
#include "wsrr/capture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tool_output_open(const char *verb, struct tool_output *out, const char *path, bool force,
                     const char *input, struct wsrr_capture_opts *opts)
{
    char err[512];
    struct stat a, b;
    memset(out, 0, sizeof(*out));
    out->path = path;
    if (input && strcmp(path, "-") && strcmp(input, "-") && stat(input, &a) == 0 &&
        stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return tool_fail(verb, EXIT_BAD_INPUT, "%s: OUT is the input file; choose another name",
                         path);
    const char *target = path;
    if (force && strcmp(path, "-")) {
        /* a temporary file in OUT's directory, so rename() is atomic */
        const char *slash = strrchr(path, '/');
        int dirlen = slash ? (int)(slash - path + 1) : 0;
        int n = snprintf(out->tmp, sizeof(out->tmp), "%.*s.%s.tmp-XXXXXX", dirlen, path,
                         slash ? slash + 1 : path);
        if (n >= (int)sizeof(out->tmp))
            return tool_fail(verb, EXIT_BAD_INPUT, "%s: path too long", path);
        int fd = mkstemp(out->tmp);
        if (fd < 0)
            return tool_fail(verb, EXIT_BAD_INPUT, "cannot create a file beside %s: %s", path,
                             strerror(errno));
        close(fd);
        target = out->tmp;
        opts->overwrite = true;
        if (!opts->mode) { /* mkstemp made it 0600; give it the usual mode */
            mode_t mask = umask(0);
            umask(mask);
            opts->mode = 0666 & ~mask;
        }
    } else {
        opts->overwrite = false;
    }
    out->w = wsrr_capture_writer_open(target, opts, err, sizeof(err));
    if (!out->w) {
        if (out->tmp[0])
            unlink(out->tmp);
        return tool_fail(verb, EXIT_BAD_INPUT, "%s", err);
    }
    return 0;
}

int tool_output_close(const char *verb, struct tool_output *out, bool ok)
{
    char err[512];
    const char *written = out->tmp[0] ? out->tmp : out->path;
    bool is_stdout = strcmp(out->path, "-") == 0;
    if (!ok) {
        wsrr_capture_writer_abort(out->w);
        out->w = NULL;
        if (!is_stdout)
            unlink(written);
        return EXIT_BAD_INPUT;
    }
    int rc = wsrr_capture_writer_close(out->w, err, sizeof(err));
    out->w = NULL;
    if (rc < 0) {
        if (!is_stdout)
            unlink(written);
        return tool_fail(verb, EXIT_BAD_INPUT, "%s", err);
    }
    if (out->tmp[0] && rename(out->tmp, out->path) < 0) {
        int e = errno;
        unlink(out->tmp);
        return tool_fail(verb, EXIT_BAD_INPUT, "cannot replace %s: %s", out->path, strerror(e));
    }
    return EXIT_OK;
}
