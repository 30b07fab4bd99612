/*
 * cli.h — helpers shared by the duet subcommands: strict number parsing
 * with messages that name the flag, the value and the limit, and the
 * default model location.
 */
#ifndef DUET_CLI_H
#define DUET_CLI_H

#include <stddef.h>
#include <stdint.h>

/* One-line errors of a getopt loop (both return -1): an unknown option or
 * a missing value, and a positional argument nobody asked for. */
int cli_bad_option(const char *cmd, const char *arg);
int cli_extra_arg(const char *cmd, const char *arg);

/* Parse a whole decimal integer into [lo, hi]; on failure print
 * "duet <cmd>: --flag 'value': ..." to stderr and return -1. */
int cli_parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                    double *out);
int cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);

/* $DUET_MODEL, else $DUET_CACHE/models/<default>, DUET_CACHE defaulting to
 * ~/.cache/duet. Writes into buf. */
const char *cli_default_model(char *buf, size_t cap);

/* Peak resident set size of this process in MiB (from /proc). */
double cli_peak_rss_mib(void);

int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_throughput(int argc, char **argv);
int duet_cmd_bench_sampler(int argc, char **argv);
int duet_cmd_bench_serve(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_devices(int argc, char **argv);
int cmd_conform(int argc, char **argv);

#endif
