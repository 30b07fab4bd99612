/* Stop strings over streamed text: held-back text, matches split across
 * pieces, overlapping stop strings, include_stop, and flushing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "stop_strings.h"

/* Feed pieces one by one; collect released text; return the piece index
 * at which a stop matched (or -1), flushing at the end when none did. */
static int run(const char *const *stops, int n_stops, int include, const char *const *pieces,
               int n_pieces, char *text, size_t cap, const char **matched)
{
    duet_stop_matcher m;
    assert_int_equal(duet_stop_init(&m, stops, n_stops, include), DUET_OK);
    size_t len = 0;
    int at = -1;
    for (int i = 0; i < n_pieces && at < 0; i++) {
        const char *out;
        size_t n;
        if (duet_stop_push(&m, pieces[i], strlen(pieces[i]), &out, &n))
            at = i;
        assert_true(len + n < cap);
        memcpy(text + len, out, n);
        len += n;
    }
    if (at < 0) {
        const char *out;
        size_t n;
        duet_stop_flush(&m, &out, &n);
        assert_true(len + n < cap);
        memcpy(text + len, out, n);
        len += n;
    }
    text[len] = 0;
    static char matched_copy[64];
    const char *ms = duet_stop_matched(&m);
    snprintf(matched_copy, sizeof matched_copy, "%s", ms ? ms : "");
    *matched = ms ? matched_copy : NULL;
    duet_stop_free(&m);
    return at;
}

static void test_split_across_pieces(void **state)
{
    (void)state;
    const char *stops[] = {"END"};
    const char *pieces[] = {"Hello E", "N", "D world"};
    char text[128];
    const char *ms;
    assert_int_equal(run(stops, 1, 0, pieces, 3, text, sizeof text, &ms), 2);
    assert_string_equal(text, "Hello ");
    assert_string_equal(ms, "END");
    assert_int_equal(run(stops, 1, 1, pieces, 3, text, sizeof text, &ms), 2);
    assert_string_equal(text, "Hello END");
}

static void test_held_back_then_released(void **state)
{
    (void)state;
    duet_stop_matcher m;
    const char *stops[] = {"</s>"};
    assert_int_equal(duet_stop_init(&m, stops, 1, 0), DUET_OK);
    const char *out;
    size_t n;
    assert_int_equal(duet_stop_push(&m, "a <", 3, &out, &n), 0);
    assert_int_equal(n, 2); /* "<" may begin "</s>": held */
    assert_memory_equal(out, "a ", 2);
    assert_int_equal(duet_stop_push(&m, "/", 1, &out, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(duet_stop_push(&m, "x", 1, &out, &n), 0);
    assert_int_equal(n, 3); /* "</x" cannot be a stop any more */
    assert_memory_equal(out, "</x", 3);
    duet_stop_free(&m);
}

static void test_overlapping_stops(void **state)
{
    (void)state;
    char text[128];
    const char *ms;
    /* "bcd" starts before "cde" ends: the earliest start wins. */
    const char *stops1[] = {"cde", "bcd"};
    const char *pieces1[] = {"ab", "cdef"};
    assert_int_equal(run(stops1, 2, 0, pieces1, 2, text, sizeof text, &ms), 1);
    assert_string_equal(text, "a");
    assert_string_equal(ms, "bcd");
    /* Same start: the longer stop string wins. */
    const char *stops2[] = {"ab", "abc"};
    const char *pieces2[] = {"xabc"};
    assert_int_equal(run(stops2, 2, 1, pieces2, 1, text, sizeof text, &ms), 0);
    assert_string_equal(text, "xabc");
    assert_string_equal(ms, "abc");
    /* A stop that is a prefix of another is found once complete. */
    const char *stops3[] = {"\n\n", "\n"};
    const char *pieces3[] = {"line", "\n", "more"};
    assert_int_equal(run(stops3, 2, 0, pieces3, 3, text, sizeof text, &ms), 1);
    assert_string_equal(text, "line");
}

static void test_stop_at_first_piece(void **state)
{
    (void)state;
    char text[64];
    const char *ms;
    const char *stops[] = {"Hi"};
    const char *pieces[] = {"Hi there"};
    assert_int_equal(run(stops, 1, 0, pieces, 1, text, sizeof text, &ms), 0);
    assert_string_equal(text, "");
    assert_string_equal(ms, "Hi");
}

static void test_no_match_flushes_everything(void **state)
{
    (void)state;
    char text[64];
    const char *ms;
    const char *stops[] = {"STOP"};
    const char *pieces[] = {"go ", "ST", "O"};
    assert_int_equal(run(stops, 1, 0, pieces, 3, text, sizeof text, &ms), -1);
    assert_string_equal(text, "go STO");
    assert_null(ms);
    /* No stop strings: text passes straight through. */
    const char *pieces2[] = {"a", "b"};
    assert_int_equal(run(NULL, 0, 0, pieces2, 2, text, sizeof text, &ms), -1);
    assert_string_equal(text, "ab");
}

static void test_multibyte(void **state)
{
    (void)state;
    char text[64];
    const char *ms;
    const char *stops[] = {"\xc3\xa9t\xc3\xa9"}; /* "été" */
    const char *pieces[] = {"un \xc3\xa9", "t", "\xc3\xa9 chaud"};
    assert_int_equal(run(stops, 1, 0, pieces, 3, text, sizeof text, &ms), 2);
    assert_string_equal(text, "un ");
}

static void test_empty_stop_rejected(void **state)
{
    (void)state;
    duet_stop_matcher m;
    const char *stops[] = {"ok", ""};
    assert_int_equal(duet_stop_init(&m, stops, 2, 0), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "stop[1]"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_across_pieces),
        cmocka_unit_test(test_held_back_then_released),
        cmocka_unit_test(test_overlapping_stops),
        cmocka_unit_test(test_stop_at_first_piece),
        cmocka_unit_test(test_no_match_flushes_everything),
        cmocka_unit_test(test_multibyte),
        cmocka_unit_test(test_empty_stop_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
