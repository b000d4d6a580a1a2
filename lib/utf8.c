/* utf8.c — incremental UTF-8 validation (RFC 3629), see wsrr/frame.h.
 *
 * A small DFA: bytes are mapped to 12 classes, and the state says what the
 * next byte of the current sequence may be. The states that follow a lead
 * byte with a restricted second byte (E0, ED, F0, F4) are what reject
 * overlongs, surrogates and code points above U+10FFFF at the earliest byte
 * that proves them, so a caller validating a fragmented message learns about
 * an error in the fragment that carries it. Runs of ASCII between sequences
 * are skipped eight bytes at a time.
 */
#include "wsrr/frame.h"

/* States. ACCEPT (0) and REJECT (1) are public; the rest are "inside a
 * sequence, expecting ...". */
enum {
    S_ACCEPT = 0,
    S_REJECT = 1,
    S_CONT1 = 2, /* one more 80-BF */
    S_CONT2 = 3, /* two more 80-BF */
    S_E0 = 4,    /* after E0: A0-BF (no overlong 3-byte forms) */
    S_ED = 5,    /* after ED: 80-9F (no surrogates) */
    S_F0 = 6,    /* after F0: 90-BF (no overlong 4-byte forms) */
    S_F1 = 7,    /* after F1-F3: 80-BF, then two more */
    S_F4 = 8,    /* after F4: 80-8F (nothing above U+10FFFF) */
    S_COUNT = 9,
};

/* Byte classes. */
enum {
    C_ASCII = 0, /* 00-7F */
    C_80 = 1,    /* 80-8F */
    C_90 = 2,    /* 90-9F */
    C_A0 = 3,    /* A0-BF */
    C_BAD = 4,   /* C0, C1, F5-FF: never valid */
    C_2 = 5,     /* C2-DF */
    C_E0 = 6,
    C_3 = 7, /* E1-EC, EE, EF */
    C_ED = 8,
    C_F0 = 9,
    C_F1 = 10, /* F1-F3 */
    C_F4 = 11,
};

#define R2(c)  c, c
#define R4(c)  R2(c), R2(c)
#define R8(c)  R4(c), R4(c)
#define R16(c) R8(c), R8(c)
#define R64(c) R16(c), R16(c), R16(c), R16(c)

/* clang-format off */
static const uint8_t byte_class[256] = {
    R64(C_ASCII), R64(C_ASCII),                 /* 00-7F */
    R16(C_80),                                  /* 80-8F */
    R16(C_90),                                  /* 90-9F */
    R16(C_A0), R16(C_A0),                       /* A0-BF */
    R2(C_BAD),                                  /* C0-C1 */
    R16(C_2), R8(C_2), R4(C_2), R2(C_2),        /* C2-DF */
    C_E0,                                       /* E0 */
    R8(C_3), R4(C_3),                           /* E1-EC */
    C_ED,                                       /* ED */
    R2(C_3),                                    /* EE-EF */
    C_F0,                                       /* F0 */
    C_F1, C_F1, C_F1,                           /* F1-F3 */
    C_F4,                                       /* F4 */
    R8(C_BAD), R2(C_BAD), C_BAD,                /* F5-FF */
};
/* clang-format on */

/* next state = transition[state][class]; X rejects, A accepts */
#define X  S_REJECT
#define A  S_ACCEPT
#define C1 S_CONT1
#define C2 S_CONT2
/* clang-format off */
static const uint8_t transition[S_COUNT][12] = {
    /*          ASCII 80  90  A0  BAD C2-DF E0    E1-EF ED    F0    F1-F3 F4 */
    [S_ACCEPT] = {A,  X,  X,  X,  X,  C1,   S_E0, C2,   S_ED, S_F0, S_F1, S_F4},
    [S_REJECT] = {X,  X,  X,  X,  X,  X,    X,    X,    X,    X,    X,    X},
    [S_CONT1]  = {X,  A,  A,  A,  X,  X,    X,    X,    X,    X,    X,    X},
    [S_CONT2]  = {X,  C1, C1, C1, X,  X,    X,    X,    X,    X,    X,    X},
    [S_E0]     = {X,  X,  X,  C1, X,  X,    X,    X,    X,    X,    X,    X},
    [S_ED]     = {X,  C1, C1, X,  X,  X,    X,    X,    X,    X,    X,    X},
    [S_F0]     = {X,  X,  C2, C2, X,  X,    X,    X,    X,    X,    X,    X},
    [S_F1]     = {X,  C2, C2, C2, X,  X,    X,    X,    X,    X,    X,    X},
    [S_F4]     = {X,  C2, X,  X,  X,  X,    X,    X,    X,    X,    X,    X},
};
/* clang-format on */
#undef X
#undef A
#undef C1
#undef C2

#define ASCII_MASK 0x8080808080808080ULL

uint32_t wsrr_utf8_feed(uint32_t state, const uint8_t *s, size_t n)
{
    size_t i = 0;

    if (state >= S_COUNT || state == S_REJECT)
        return S_REJECT;
    while (i < n) {
        if (state == S_ACCEPT && s[i] < 0x80) {
            /* An ASCII run between characters: 8 bytes at a time. */
            i++;
            while (n - i >= 8) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & ASCII_MASK)
                    break;
                i += 8;
            }
            while (i < n && s[i] < 0x80)
                i++;
            continue;
        }
        state = transition[state][byte_class[s[i++]]];
        if (state == S_REJECT)
            return S_REJECT;
    }
    return state;
}

bool wsrr_utf8_valid(const uint8_t *s, size_t n)
{
    return wsrr_utf8_feed(WSRR_UTF8_ACCEPT, s, n) == WSRR_UTF8_ACCEPT;
}
