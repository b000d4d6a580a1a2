/* test_redact.c — credentials in heads and text messages become keyed
 * placeholders; everything else stays byte for byte. */
#include "check.h"
#include "wsrr/redact.h"

#include <event2/buffer.h>

static struct wsrr_redactor *red;

static char *head(const char *raw, int *rc)
{
    struct wsrr_http_parser p;
    bool response = strncmp(raw, "HTTP/", 5) == 0;
    wsrr_http_parser_init(&p, response, 0, 0);
    REQUIRE(wsrr_http_parse(&p, (const uint8_t *)raw, strlen(raw)) > 0);
    struct evbuffer *out = evbuffer_new();
    *rc = wsrr_redact_head(red, wsrr_http_parser_head(&p), out);
    size_t n = evbuffer_get_length(out);
    char *s = malloc(n + 1);
    evbuffer_remove(out, s, n);
    s[n] = '\0';
    evbuffer_free(out);
    wsrr_http_parser_finish(&p);
    return s;
}

static char *text(const char *in, int *rc)
{
    struct evbuffer *out = evbuffer_new();
    *rc = wsrr_redact_text(red, (const uint8_t *)in, strlen(in), out);
    size_t n = evbuffer_get_length(out);
    char *s = malloc(n + 1);
    evbuffer_remove(out, s, n);
    s[n] = '\0';
    evbuffer_free(out);
    return s;
}

/* Does s match the pattern, where '#' stands for one hex digit? */
static bool like(const char *s, const char *pat)
{
    for (; *pat; s++, pat++) {
        if (*pat == '#') {
            if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
                return false;
        } else if (*s != *pat) {
            return false;
        }
    }
    return *s == '\0';
}

#define JWT                                                                                        \
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."                            \
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

static void test_heads(void)
{
    int rc;
    char *s = head("GET /ws?room=7&token=s3cr3t&api_key=k HTTP/1.1\r\n"
                   "Host: example.com\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: chat, " JWT "\r\n"
                   "Authorization: Bearer abc.def\r\n"
                   "Cookie: session=xyz; theme=dark\r\n"
                   "X-Api-Key: k123\r\n"
                   "X-Request-Id: 42\r\n"
                   "\r\n",
                   &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(like(s, "GET /ws?room=7&token=<redacted:token:########>&api_key=<redacted:api_key:"
                      "########> HTTP/1.1\r\n"
                      "Host: example.com\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: chat, <redacted:protocol:########>\r\n"
                      "Authorization: Bearer <redacted:authorization:########>\r\n"
                      "Cookie: session=<redacted:cookie.session:########>; "
                      "theme=<redacted:cookie.theme:########>\r\n"
                      "X-Api-Key: <redacted:x-api-key:########>\r\n"
                      "X-Request-Id: 42\r\n"
                      "\r\n"),
              "%s", s);
    free(s);

    s = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             "Set-Cookie: sid=abc; Path=/; HttpOnly\r\n\r\n",
             &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(like(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Set-Cookie: sid=<redacted:cookie.sid:########>; Path=/; HttpOnly\r\n\r\n"),
              "%s", s);
    free(s);

    /* nothing to redact: 0, nothing written */
    s = head("GET /chat?room=1 HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Protocol: chat.v2\r\n\r\n",
             &rc);
    CHECK_INT(rc, 0);
    CHECK_STR(s, "");
    free(s);
}

static void test_fingerprints(void)
{
    int rc;
    char *a = head("GET / HTTP/1.1\r\nAuthorization: Bearer one\r\n\r\n", &rc);
    char *b = head("GET / HTTP/1.1\r\nAuthorization: Bearer one\r\n\r\n", &rc);
    char *c = head("GET / HTTP/1.1\r\nAuthorization: Bearer two\r\n\r\n", &rc);
    CHECK_STR(a, b); /* equal secrets stay equal */
    CHECK(strcmp(a, c) != 0);
    struct wsrr_redactor *saved = red;
    red = wsrr_redactor_new(); /* another capture, another key */
    char *d = head("GET / HTTP/1.1\r\nAuthorization: Bearer one\r\n\r\n", &rc);
    CHECK(strcmp(a, d) != 0);
    wsrr_redactor_free(red);
    red = saved;
    free(a);
    free(b);
    free(c);
    free(d);
}

static void test_text(void)
{
    int rc;
    /* the value goes, every other byte stays (spacing, 1.0, key order) */
    char *s = text("{\"type\": \"auth\", \"token\" : \"abc123\", \"n\": 1.0}", &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(
        like(s, "{\"type\": \"auth\", \"token\" : \"<redacted:token:########>\", \"n\": 1.0}"),
        "%s", s);
    free(s);
    s = text("{\"data\":{\"access_token\":\"x\",\"user\":\"ada\"},\"items\":[{\"clientSecret\":"
             "\"y\\\"z\"}]}",
             &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(like(s,
                   "{\"data\":{\"access_token\":\"<redacted:access_token:########>\",\"user\":"
                   "\"ada\"},\"items\":[{\"clientSecret\":\"<redacted:clientsecret:########>\"}]}"),
              "%s", s);
    free(s);
    /* JWTs anywhere: in a value of an innocent key, in plain text */
    s = text("{\"note\":\"use " JWT " now\"}", &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(like(s, "{\"note\":\"use <redacted:jwt:########> now\"}"), "%s", s);
    free(s);
    s = text("Bearer " JWT, &rc);
    CHECK_INT(rc, 1);
    CHECK_MSG(like(s, "Bearer <redacted:jwt:########>"), "%s", s);
    free(s);
    /* every credential name, not only the ones a quick pre-scan would spot:
     * these three went through unredacted before the scanner became exact */
    const char *names[][2] = {
        {"{\"Authorization\":\"Bearer abc\"}",
         "{\"Authorization\":\"<redacted:authorization:########>\"}"},
        {"{\"signature\":\"c2ln\"}", "{\"signature\":\"<redacted:signature:########>\"}"},
        {"{\"x-api-key\":\"k\"}", "{\"x-api-key\":\"<redacted:x-api-key:########>\"}"},
        {"[{\"a\":{\"b\":[\"pwd\",{\"pwd\":\"p\\\\\"}]}}]",
         "[{\"a\":{\"b\":[\"pwd\",{\"pwd\":\"<redacted:pwd:########>\"}]}}]"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        s = text(names[i][0], &rc);
        CHECK_MSG(rc == 1 && like(s, names[i][1]), "%s -> %d %s", names[i][0], rc, s);
        free(s);
    }
    /* look-alikes are left alone */
    const char *keep[] = {
        "{\"author\":\"Jane\",\"tokens\":187}",     /* a count, not a token */
        "{\"token\":null,\"password\":12}",         /* not strings */
        "{\"type\":\"tool_executing\",\"step\":2}", /* the common case */
        "{\"key\":\"value\"}",                      /* 'key' alone is not a credential in JSON */
        "{\"msg\":\"the word eyJ is not a JWT\"}",  /* too short */
        "{\"token\":\"\"}",                         /* empty value: nothing to hide */
        "unterminated \"token\": \"abc",            /* not JSON: no key/value */
    };
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        s = text(keep[i], &rc);
        CHECK_MSG(rc == 0 && s[0] == '\0', "%s -> %d %s", keep[i], rc, s);
        free(s);
    }
}

static void test_empty(void)
{
    /* an empty text frame arrives as (NULL, 0) */
    struct evbuffer *out = evbuffer_new();
    CHECK_INT(wsrr_redact_text(red, NULL, 0, out), 0);
    CHECK_INT(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

static void test_names(void)
{
    CHECK(wsrr_redact_name("Authorization", 13, 'h'));
    CHECK(wsrr_redact_name("X-Auth-Token", 12, 'h'));
    CHECK(wsrr_redact_name("X-Amz-Security-Token", 20, 'h'));
    CHECK(!wsrr_redact_name("Sec-WebSocket-Key", 17, 'h'));
    CHECK(!wsrr_redact_name("Content-Type", 12, 'h'));
    CHECK(wsrr_redact_name("sig", 3, 'q'));
    CHECK(wsrr_redact_name("X-Amz-Signature", 15, 'q'));
    CHECK(!wsrr_redact_name("room", 4, 'q'));
    CHECK(wsrr_redact_name("refreshToken", 12, 'j'));
    CHECK(wsrr_redact_name("API-KEY", 7, 'j'));
    CHECK(!wsrr_redact_name("author", 6, 'j'));
    CHECK(!wsrr_redact_name("tokens", 6, 'j'));
    /* a long name counts by how it ends, not by its first 63 characters */
    const char *lng =
        "a_very_long_field_name_that_goes_on_and_on_for_more_than_sixty_four_refresh_token";
    CHECK(wsrr_redact_name(lng, strlen(lng), 'j'));
    const char *lng2 =
        "refresh_token_a_very_long_field_name_that_goes_on_for_more_than_sixty_four_bytes";
    CHECK(!wsrr_redact_name(lng2, strlen(lng2), 'j'));
    CHECK(wsrr_redact_name(lng2, strlen(lng2), 'h'));

    /* every JSON credential name, in the spellings normalise() folds, is
     * redacted in text (the text scanner looks at a key's last letters
     * before asking wsrr_redact_name) */
    const char *json_names[] = {"token",
                                "secret",
                                "password",
                                "passwd",
                                "apikey",
                                "signature",
                                "jwt",
                                "auth",
                                "authorization",
                                "session",
                                "sessionid",
                                "cookie",
                                "credential",
                                "credentials",
                                "privatekey",
                                "pwd",
                                "Access-Token",
                                "CLIENT_SECRET",
                                "s_e_s_s_i_o_n_i_d",
                                "PrivateKey--",
                                "JWT_"};
    for (size_t i = 0; i < sizeof(json_names) / sizeof(json_names[0]); i++) {
        char in[128];
        snprintf(in, sizeof(in), "{\"%s\":\"v\"}", json_names[i]);
        int rc;
        char *s = text(in, &rc);
        CHECK_MSG(rc == 1 && strstr(s, "<redacted:"), "%s -> %d %s", in, rc, s);
        free(s);
    }
}

int main(void)
{
    static const uint8_t key[32] = {1, 2, 3};
    red = wsrr_redactor_new_with_key(key, sizeof(key));
    test_heads();
    test_fingerprints();
    test_text();
    test_names();
    test_empty();
    wsrr_redactor_free(red);
    return check_finish("test_redact");
}
