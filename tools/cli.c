#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

int cli_parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno) {
        fprintf(stderr, "duet %s: %s '%s' is not an integer\n", cmd, flag, s);
        return -1;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s %ld is out of range; it must be in [%ld, %ld]\n", cmd, flag,
                v, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                    double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || isnan(v)) {
        fprintf(stderr, "duet %s: %s '%s' is not a number\n", cmd, flag, s);
        return -1;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s %g is out of range; it must be in [%g, %g]\n", cmd, flag, v,
                lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-') {
        fprintf(stderr, "duet %s: %s '%s' must be a non-negative integer\n", cmd, flag, s);
        return -1;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) {
        fprintf(stderr, "duet %s: %s '%s' is not a non-negative 64-bit integer\n", cmd, flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

const char *cli_default_model(char *buf, size_t cap)
{
    const char *env = getenv("DUET_MODEL");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return buf;
    }
    const char *cache = getenv("DUET_CACHE");
    if (cache && *cache) {
        snprintf(buf, cap, "%s/models/%s", cache, DEFAULT_MODEL_FILE);
    } else {
        const char *home = getenv("HOME");
        snprintf(buf, cap, "%s/.cache/duet/models/%s", home ? home : ".", DEFAULT_MODEL_FILE);
    }
    return buf;
}

double cli_peak_rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = strtod(line + 6, NULL);
    fclose(f);
    return kib / 1024.0;
}

int cli_bad_option(const char *cmd, const char *arg)
{
    fprintf(stderr, "duet %s: unknown option or missing value in '%s' (see duet %s --help)\n", cmd,
            arg, cmd);
    return -1;
}

int cli_extra_arg(const char *cmd, const char *arg)
{
    fprintf(stderr, "duet %s: unexpected argument '%s' (see duet %s --help)\n", cmd, arg, cmd);
    return -1;
}
