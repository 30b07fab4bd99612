/*
 * engine_args.h — the engine flags shared by every subcommand that runs
 * the batched engine (generate --prompts-file, bench throughput), with
 * vLLM's names.
 */
#ifndef DUET_ENGINE_ARGS_H
#define DUET_ENGINE_ARGS_H

#include <getopt.h>

#include "duet.h"

/* getopt_long ids of the engine flags start here. */
enum { ENGINE_ARG_FIRST = 1000 };

/* The long options (terminated by a zero entry) and their help text. */
extern const struct option engine_arg_options[];
extern const char engine_arg_help[];

/* Handle one engine flag (id from getopt_long). Returns 1 if the flag was
 * an engine flag and parsed, 0 if it is not one of them, -1 after printing
 * an error. */
int engine_arg_parse(const char *cmd, int id, const char *value, duet_engine_options *o);

/* engine_arg_parse, then model_arg_parse: 1 if either took the flag, 0 if
 * neither, -1 after printing an error. */
int shared_arg_parse(const char *cmd, int id, const char *value, duet_engine_options *eo,
                     duet_model_options *mo, char *model_path, size_t cap);

/* Concatenate a with the engine and the model-source options into out. */
void engine_args_merge(const struct option *a, struct option *out, int cap);

/* Model-source flags (--load-format, --model-config, --dummy-dtype,
 * --dummy-seed), shared by every subcommand that loads a model. */
extern const struct option model_arg_options[];
extern const char model_arg_help[];

/* Print a command's help, then the engine and model-source flags; returns 1
 * (the getopt loops' "help was shown"). */
int engine_args_help(const char *help);
/* Like engine_arg_parse; --model-config also replaces model_path. */
int model_arg_parse(const char *cmd, int id, const char *value, duet_model_options *mo,
                    char *model_path, size_t cap);

#endif
