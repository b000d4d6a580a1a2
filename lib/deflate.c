/* deflate.c — permessage-deflate (RFC 7692) with zlib; see wsrr/deflate.h.
 *
 * Streams are raw deflate (negative windowBits). zlib state is allocated on
 * the first message, so an idle connection costs only the small struct here;
 * once allocated it stays until wsrr_pmd_free() (with no context takeover it
 * is reset, not freed, after each message: resetting is far cheaper than
 * allocating 40-260 KB again).
 */
#include "wsrr/deflate.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define ZLIB_CONST
#include <zlib.h>

#define DEFAULT_MAX_MESSAGE (64ull << 20)
#define CHUNK_MIN           1024
#define CHUNK_MAX           (64 * 1024)
#define PIECE_MAX           (1u << 30) /* zlib's avail_in is an unsigned int */

static const uint8_t sync_tail[4] = {0x00, 0x00, 0xff, 0xff};

/* ---- parameters (RFC 7692 7.1) ---- */

static bool name_is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* A window-bits value: 8..15 in plain decimal without leading zeros, as a
 * token or a quoted-string (unescaped first). Returns -1 otherwise. */
static int parse_bits(const struct wsrr_ext_param *prm)
{
    char v[3];
    size_t n = 0;

    for (size_t i = 0; i < prm->value_len; i++) {
        char c = prm->value[i];
        if (prm->quoted && c == '\\' && i + 1 < prm->value_len)
            c = prm->value[++i];
        if (n == sizeof(v))
            return -1;
        v[n++] = c;
    }
    if (n == 1 && (v[0] == '8' || v[0] == '9'))
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + (v[1] - '0');
    return -1;
}

int wsrr_pmd_params_parse(const struct wsrr_ext *e, bool response, struct wsrr_pmd_params *out,
                          char *err, size_t errlen)
{
    struct wsrr_pmd_params p = {.server_max_window_bits = 15, .client_max_window_bits = 15};
    bool seen_cmwb = false;

    if (!name_is(e->name, e->name_len, WSRR_PMD_NAME))
        return wsrr_seterr(err, errlen, EINVAL, "extension %.*s is not " WSRR_PMD_NAME,
                           (int)(e->name_len > 40 ? 40 : e->name_len), e->name);
    for (size_t i = 0; i < e->nparams; i++) {
        const struct wsrr_ext_param *prm = &e->params[i];
        int nlen = (int)(prm->name_len > 40 ? 40 : prm->name_len);
        bool *flag = NULL;
        bool dup;

        if (name_is(prm->name, prm->name_len, "server_no_context_takeover"))
            flag = &p.server_no_context_takeover;
        else if (name_is(prm->name, prm->name_len, "client_no_context_takeover"))
            flag = &p.client_no_context_takeover;

        if (flag) {
            if (*flag)
                return wsrr_seterr(err, errlen, EINVAL, WSRR_PMD_NAME ": duplicate parameter %.*s",
                                   nlen, prm->name);
            if (prm->value)
                return wsrr_seterr(err, errlen, EINVAL,
                                   WSRR_PMD_NAME ": parameter %.*s takes no value", nlen,
                                   prm->name);
            *flag = true;
            continue;
        }

        bool server = name_is(prm->name, prm->name_len, "server_max_window_bits");
        if (!server && !name_is(prm->name, prm->name_len, "client_max_window_bits"))
            return wsrr_seterr(err, errlen, EINVAL, WSRR_PMD_NAME ": unknown parameter %.*s", nlen,
                               prm->name);
        dup = server ? p.server_max_window_bits_set : seen_cmwb;
        if (dup)
            return wsrr_seterr(err, errlen, EINVAL, WSRR_PMD_NAME ": duplicate parameter %.*s",
                               nlen, prm->name);
        if (!prm->value) {
            if (server || response)
                return wsrr_seterr(err, errlen, EINVAL,
                                   WSRR_PMD_NAME ": %.*s needs a value (8..15)", nlen, prm->name);
            seen_cmwb = true;
            p.client_max_window_bits_novalue = true;
            continue;
        }
        int bits = parse_bits(prm);
        if (bits < 0)
            return wsrr_seterr(
                err, errlen, EINVAL, WSRR_PMD_NAME ": %.*s=%.*s: expected a decimal 8..15", nlen,
                prm->name, (int)(prm->value_len > 20 ? 20 : prm->value_len), prm->value);
        if (server) {
            p.server_max_window_bits = (uint8_t)bits;
            p.server_max_window_bits_set = true;
        } else {
            seen_cmwb = true;
            p.client_max_window_bits = (uint8_t)bits;
            p.client_max_window_bits_set = true;
        }
    }
    *out = p;
    return 0;
}

int wsrr_pmd_params_format(const struct wsrr_pmd_params *p, bool response, char *out, size_t cap)
{
    char smwb[32] = "", cmwb[32] = "";

    if (p->server_max_window_bits_set || p->server_max_window_bits != 15)
        snprintf(smwb, sizeof(smwb), "; server_max_window_bits=%u", p->server_max_window_bits);
    if (p->client_max_window_bits_set || p->client_max_window_bits != 15)
        snprintf(cmwb, sizeof(cmwb), "; client_max_window_bits=%u", p->client_max_window_bits);
    else if (!response && p->client_max_window_bits_novalue)
        snprintf(cmwb, sizeof(cmwb), "; client_max_window_bits");
    return snprintf(out, cap, "%s%s%s%s%s", WSRR_PMD_NAME,
                    p->server_no_context_takeover ? "; server_no_context_takeover" : "",
                    p->client_no_context_takeover ? "; client_no_context_takeover" : "", smwb,
                    cmwb);
}

int wsrr_pmd_negotiate(const struct wsrr_ext *exts, size_t n, struct wsrr_pmd_params *accepted)
{
    for (size_t i = 0; i < n; i++) {
        struct wsrr_pmd_params o;
        if (!name_is(exts[i].name, exts[i].name_len, WSRR_PMD_NAME) ||
            wsrr_pmd_params_parse(&exts[i], false, &o, NULL, 0) != 0)
            continue; /* RFC 7692 5: decline an invalid offer, try the next */
        /* Every valid offer is acceptable (window bits 8 included, see
         * deflater_init), and the answer echoes what the client asked for.
         * client_max_window_bits without a value is answered by leaving the
         * parameter out: the client then compresses with 15. */
        struct wsrr_pmd_params a = {
            .server_no_context_takeover = o.server_no_context_takeover,
            .client_no_context_takeover = o.client_no_context_takeover,
            .server_max_window_bits = o.server_max_window_bits,
            .server_max_window_bits_set = o.server_max_window_bits_set,
            .client_max_window_bits = o.client_max_window_bits_set ? o.client_max_window_bits : 15,
            .client_max_window_bits_set = o.client_max_window_bits_set,
        };
        *accepted = a;
        return 1;
    }
    return 0;
}

int wsrr_pmd_from_response(const char *value, size_t len, struct wsrr_pmd_params *out, char *err,
                           size_t errlen)
{
    struct wsrr_ext exts[16];
    struct wsrr_ext_param params[64];
    int found = 0;

    int n = wsrr_ext_parse(value, len, exts, 16, params, 64, err, errlen);
    if (n < 0)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        if (!name_is(exts[i].name, exts[i].name_len, WSRR_PMD_NAME))
            continue;
        if (found)
            return wsrr_seterr(err, errlen, EINVAL, WSRR_PMD_NAME " selected twice");
        int r = wsrr_pmd_params_parse(&exts[i], true, out, err, errlen);
        if (r < 0)
            return r;
        found = 1;
    }
    return found;
}

/* ---- streams ---- */

struct wsrr_pmd_stream {
    z_stream z;
    bool inflater;
    bool live;        /* z holds zlib state */
    bool no_takeover; /* the sender starts every message with an empty window */
    bool boundary;    /* inflater: between blocks, byte-aligned (see inflate_feed) */
    bool failed;      /* inflater: this message failed, skip the rest of it */
    int failed_code;
    int wbits; /* deflater window bits as given to zlib */
    int level;
    enum wsrr_dir sender;
    uint64_t max_message, msg_out;
    char errmsg[160];
};

static int stream_err(struct wsrr_pmd_stream *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int stream_err(struct wsrr_pmd_stream *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof(s->errmsg), fmt, ap);
    va_end(ap);
    return -code;
}

static struct wsrr_pmd_stream *stream_new(const struct wsrr_pmd_params *p, enum wsrr_dir sender)
{
    static const struct wsrr_pmd_params dflt = {.server_max_window_bits = 15,
                                                .client_max_window_bits = 15};
    struct wsrr_pmd_stream *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    if (!p)
        p = &dflt;
    s->sender = sender;
    if (sender == WSRR_DIR_C2S) {
        s->no_takeover = p->client_no_context_takeover;
        s->wbits = p->client_max_window_bits;
    } else {
        s->no_takeover = p->server_no_context_takeover;
        s->wbits = p->server_max_window_bits;
    }
    if (s->wbits < 8 || s->wbits > 15)
        s->wbits = 15;
    return s;
}

struct wsrr_pmd_stream *wsrr_pmd_inflater_new(const struct wsrr_pmd_params *p, enum wsrr_dir sender,
                                              uint64_t max_message)
{
    struct wsrr_pmd_stream *s = stream_new(p, sender);

    if (!s)
        return NULL;
    s->inflater = true;
    s->boundary = true;
    s->max_message = max_message ? max_message : DEFAULT_MAX_MESSAGE;
    return s;
}

struct wsrr_pmd_stream *wsrr_pmd_deflater_new(const struct wsrr_pmd_params *p, enum wsrr_dir sender,
                                              int level)
{
    if (level < -1 || level > 9)
        return NULL;
    struct wsrr_pmd_stream *s = stream_new(p, sender);
    if (!s)
        return NULL;
    s->level = level;
    /* zlib refuses windowBits 8 for raw deflate (since 1.2.9; older versions
     * silently used 9). A 9-bit deflater is still correct for a peer that
     * allowed only 8 bits: zlib never emits a distance beyond
     * w_size - MIN_LOOKAHEAD = 512 - 262 = 250 bytes, which fits in the
     * 256-byte window the peer promised to keep. */
    if (s->wbits == 8)
        s->wbits = 9;
    return s;
}

void wsrr_pmd_free(struct wsrr_pmd_stream *s)
{
    if (!s)
        return;
    if (s->live) {
        if (s->inflater)
            inflateEnd(&s->z);
        else
            deflateEnd(&s->z);
    }
    free(s);
}

const char *wsrr_pmd_error(const struct wsrr_pmd_stream *s)
{
    return s->errmsg;
}

static int ensure_live(struct wsrr_pmd_stream *s)
{
    int r;

    if (s->live)
        return 0;
    memset(&s->z, 0, sizeof(s->z));
    /* Inflate always with a 32 KB window: it accepts whatever window the
     * sender used, whatever it announced. */
    if (s->inflater)
        r = inflateInit2(&s->z, -15);
    else
        r = deflateInit2(&s->z, s->level, Z_DEFLATED, -s->wbits, 8, Z_DEFAULT_STRATEGY);
    if (r != Z_OK)
        return stream_err(s, r == Z_MEM_ERROR ? ENOMEM : EINVAL, "zlib %s init failed: %s",
                          s->inflater ? "inflate" : "deflate", s->z.msg ? s->z.msg : "error");
    s->live = true;
    return 0;
}

/* After a final block (BFINAL) the raw stream is over and the next bytes
 * start a new one. The window goes with it: a sender that ends a message
 * with a final block has restarted its compressor, so it cannot refer back.
 * (Carrying the window over with inflateGetDictionary would cost a 32 KB
 * copy per final block, which a hostile sender could repeat every 2 bytes.) */
static void inflate_restart(struct wsrr_pmd_stream *s)
{
    inflateReset(&s->z);
    s->boundary = true;
}

/* Inflate in[0..n) into out, in bounded chunks, checking the message cap
 * before committing any output. `tail` marks our own 00 00 FF FF: if a final
 * block ends inside it, the rest of it is dropped.
 *
 * s->boundary tracks whether the stream sits between blocks on a byte
 * boundary, which tells whether a message still needs the tail. zlib says
 * so in data_type (128: stopped at a block boundary; low bits: bits
 * pending), but a call that had nothing to do clears the 128 (inflate()
 * moves TYPE to TYPEDO on entry), so only calls that consumed or produced
 * something update it. */
static int inflate_feed(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n,
                        struct evbuffer *out, bool tail)
{
    z_stream *z = &s->z;
    size_t off = 0, want = CHUNK_MIN;

    if (n / 2 > want)
        want = n / 2 > CHUNK_MAX ? CHUNK_MAX : n / 2;
    do {
        size_t piece = n - off > PIECE_MAX ? PIECE_MAX : n - off;
        z->next_in = in + off;
        z->avail_in = (uInt)piece;
        off += piece;

        for (;;) {
            uint64_t room = s->max_message - s->msg_out;
            struct evbuffer_iovec v;

            if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
                return stream_err(s, ENOMEM, "out of memory inflating");
            size_t give = v.iov_len;
            if (give > CHUNK_MAX)
                give = CHUNK_MAX;
            /* One byte more than the cap allows, to tell "exactly at the
             * cap" from "over it". */
            if ((uint64_t)give > room)
                give = (size_t)room + 1;
            z->next_out = v.iov_base;
            z->avail_out = (uInt)give;
            uInt in_before = z->avail_in;

            int zr = inflate(z, Z_SYNC_FLUSH);
            size_t got = give - z->avail_out;
            if (got || z->avail_in != in_before)
                s->boundary = (z->data_type & 128) && (z->data_type & 63) == 0;

            if (zr == Z_DATA_ERROR || zr == Z_NEED_DICT || zr == Z_STREAM_ERROR)
                return stream_err(s, EBADMSG, "corrupt deflate data from %s: %s",
                                  wsrr_dir_name(s->sender), z->msg ? z->msg : "zlib error");
            if (zr == Z_MEM_ERROR)
                return stream_err(s, ENOMEM, "out of memory inflating");
            if ((uint64_t)got > room)
                return stream_err(s, EMSGSIZE, "message from %s inflates beyond %" PRIu64 " bytes",
                                  wsrr_dir_name(s->sender), s->max_message);
            v.iov_len = got;
            if (got && evbuffer_commit_space(out, &v, 1) != 0)
                return stream_err(s, ENOMEM, "out of memory inflating");
            s->msg_out += got;

            if (zr == Z_STREAM_END) {
                inflate_restart(s);
                if (tail) {
                    z->avail_in = 0;
                    return 0;
                }
                if (z->avail_in == 0)
                    break;
                continue;
            }
            if (z->avail_in == 0 && z->avail_out != 0)
                break;
            if (got == 0 && z->avail_in == in_before && z->avail_out != 0)
                return stream_err(s, EBADMSG, "inflate made no progress on data from %s",
                                  wsrr_dir_name(s->sender));
            if (z->avail_out == 0 && want < CHUNK_MAX)
                want *= 2;
        }
    } while (off < n);
    return 0;
}

int wsrr_pmd_inflate(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, bool fin,
                     struct evbuffer *out)
{
    int r;

    if (!s->inflater)
        return stream_err(s, EINVAL, "inflate on a deflater");
    if (s->failed) {
        if (fin)
            s->failed = false;
        return s->failed_code;
    }
    if (n == 0 && !fin)
        return 0;
    if ((r = ensure_live(s)) < 0)
        return r;

    r = inflate_feed(s, in, n, out, false);
    if (r == 0 && fin) {
        /* RFC 7692 7.2.2: append 00 00 FF FF. A sender that left its flush
         * marker in, or ended with a final block, is already at a block
         * boundary; appending there would leave a half-read stored block. */
        if (!s->boundary)
            r = inflate_feed(s, sync_tail, sizeof(sync_tail), out, true);
        if (r == 0 && !s->boundary)
            r = stream_err(s, EBADMSG, "message from %s ends inside a deflate block",
                           wsrr_dir_name(s->sender));
    }
    if (r < 0) {
        inflate_restart(s);
        s->msg_out = 0;
        if (!fin) {
            s->failed = true;
            s->failed_code = r;
        }
        return r;
    }
    if (fin) {
        s->msg_out = 0;
        if (s->no_takeover)
            inflate_restart(s);
    }
    return 0;
}

static int deflate_feed(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, bool fin,
                        struct evbuffer *out)
{
    z_stream *z = &s->z;
    size_t off = 0, want;

    want = n / 2 + 64;
    if (want < 256)
        want = 256;
    if (want > CHUNK_MAX)
        want = CHUNK_MAX;
    do {
        size_t piece = n - off > PIECE_MAX ? PIECE_MAX : n - off;
        z->next_in = in + off;
        z->avail_in = (uInt)piece;
        off += piece;
        int flush = fin && off == n ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        uint8_t hold[4];
        size_t nhold = 0;

        /* With Z_SYNC_FLUSH the output ends with 00 00 FF FF, which must not
         * be sent: the last 4 bytes of each chunk are held back and put in
         * front of the next one, so the tail is never committed. */
        for (;;) {
            struct evbuffer_iovec v;
            if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
                return stream_err(s, ENOMEM, "out of memory deflating");
            size_t give = v.iov_len > CHUNK_MAX ? CHUNK_MAX : v.iov_len;
            uint8_t *o = v.iov_base;
            memcpy(o, hold, nhold);
            z->next_out = o + nhold;
            z->avail_out = (uInt)(give - nhold);

            int zr = deflate(z, flush);
            if (zr == Z_STREAM_ERROR)
                return stream_err(s, EIO, "zlib deflate failed: %s", z->msg ? z->msg : "error");
            size_t total = give - z->avail_out;
            bool more = z->avail_out == 0 || (flush == Z_NO_FLUSH && z->avail_in != 0);

            if (flush == Z_SYNC_FLUSH) {
                if (more) {
                    nhold = 4;
                    memcpy(hold, o + total - 4, 4);
                    total -= 4;
                } else if (total >= 4 && memcmp(o + total - 4, sync_tail, 4) == 0) {
                    total -= 4;
                } else if (total == 0) {
                    /* Nothing pending and the stream already flushed
                     * (zlib answers Z_BUF_ERROR): an empty message is the
                     * header byte of an empty stored block, whose LEN/NLEN
                     * the receiver appends. */
                    o[0] = 0x00;
                    total = 1;
                } else {
                    return stream_err(s, EIO, "deflate output does not end with 00 00 FF FF");
                }
            }
            v.iov_len = total;
            if (total && evbuffer_commit_space(out, &v, 1) != 0)
                return stream_err(s, ENOMEM, "out of memory deflating");
            if (!more)
                break;
            if (want < CHUNK_MAX)
                want *= 2;
        }
    } while (off < n);
    return 0;
}

int wsrr_pmd_deflate(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, bool fin,
                     struct evbuffer *out)
{
    int r;

    if (s->inflater)
        return stream_err(s, EINVAL, "deflate on an inflater");
    if (n == 0 && !fin)
        return 0;
    if ((r = ensure_live(s)) < 0)
        return r;
    r = deflate_feed(s, in, n, fin, out);
    /* After an error the message is lost either way; start the next one
     * from a clean state rather than from half a flush. */
    if (r < 0 || (fin && s->no_takeover))
        deflateReset(&s->z);
    return r;
}
