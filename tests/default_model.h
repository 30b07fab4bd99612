/*
 * default_model.h — where the tests find the default model: $DUET_MODEL,
 * else $DUET_CACHE/models/..., else ~/.cache/duet/models/... (as
 * scripts/fetch-model.sh puts it). Header-only; tests include it.
 */
#ifndef DUET_TEST_DEFAULT_MODEL_H
#define DUET_TEST_DEFAULT_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
/* Load the test model: the default model on the CPU, unless the
 * environment says otherwise (CTest runs some tests a second time so):
 *   DUET_TEST_DEVICE        a device spec ("vulkan"); exits 77 (skip) when
 *                           that backend has no device here
 *   DUET_TEST_DUMMY_CONFIG  an HF config.json: a seeded dummy model of that
 *                           shape (Q4_1) instead of the default model
 * NULL (after a message naming the path and the fix) when it cannot be
 * loaded. */
static inline duet_model *duet_test_load_model(void)
{
    char path[4096];
    duet_model *m = NULL;
    const char *device = getenv("DUET_TEST_DEVICE"), *dummy = getenv("DUET_TEST_DUMMY_CONFIG");
    duet_model_options mo = {.device = device && *device ? device : "cpu"};
    if (dummy && *dummy) {
        snprintf(path, sizeof path, "%s", dummy);
        mo.load_format = "dummy";
        mo.dummy_seed = 1;
    } else {
        duet_test_model_path(path, sizeof path);
    }
    duet_status rc = duet_model_load(path, &mo, &m);
    if (rc == DUET_ERR_UNSUPPORTED && strcmp(mo.device, "cpu") != 0) {
        fprintf(stderr, "skip: device '%s': %s\n", mo.device, duet_last_error());
        exit(77);
    }
    if (rc) {
        fprintf(stderr, "cannot load %s on %s: %s (run scripts/fetch-model.sh)\n", path,
                mo.device, duet_last_error());
        return NULL;
    }
    return m;
}
#endif

#endif
