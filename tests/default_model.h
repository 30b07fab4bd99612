/*
 * default_model.h — where the tests find the default model: $DUET_MODEL,
 * else $DUET_CACHE/models/..., else ~/.cache/duet/models/... (as
 * scripts/fetch-model.sh puts it). Header-only; tests include it.
 */
#ifndef DUET_TEST_DEFAULT_MODEL_H
#define DUET_TEST_DEFAULT_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#define DUET_TEST_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

static inline void duet_test_model_path(char *path, size_t cap)
{
    const char *env = getenv("DUET_MODEL"), *cache = getenv("DUET_CACHE"),
               *home = getenv("HOME");
    if (env && *env)
        snprintf(path, cap, "%s", env);
    else if (cache && *cache)
        snprintf(path, cap, "%s/models/%s", cache, DUET_TEST_MODEL_FILE);
    else
        snprintf(path, cap, "%s/.cache/duet/models/%s", home ? home : ".", DUET_TEST_MODEL_FILE);
}

#ifdef DUET_H
/* Load the default model on the CPU; NULL (after a message naming the
 * path and the fix) when it cannot be loaded. */
static inline duet_model *duet_test_load_model(void)
{
    char path[4096];
    duet_model *m = NULL;
    duet_test_model_path(path, sizeof path);
    duet_model_options mo = {.device = "cpu"};
    if (duet_model_load(path, &mo, &m)) {
        fprintf(stderr, "cannot load %s: %s (run scripts/fetch-model.sh)\n", path,
                duet_last_error());
        return NULL;
    }
    return m;
}
#endif

#endif
