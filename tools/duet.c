/*
 * duet.c — the duet program: one binary, one subcommand per job.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "duet.h"

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"generate", cmd_generate, "run a prompt through a model and stream the text"},
    {"tokenize", cmd_tokenize, "text to token ids, or ids back to text (--decode)"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server with metrics and a live dashboard"},
    {"devices", cmd_devices, "list the devices of every backend and the --device spec of each"},
    {"conform", cmd_conform, "compare two backends: every device op, and a model end to end"},
    {"bench", cmd_bench, "benchmarks: latency, throughput, serve, sampler, forward, bandwidth"},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: duet <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(to, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(to, "\n'duet <command> --help' describes a command's options.\n"
                "Environment: DUET_MODEL (default model file), DUET_CACHE (default "
                "~/.cache/duet).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("duet %s\n", DUET_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (!strcmp(argv[1], subcommands[i].name))
            return subcommands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "duet: unknown command '%s' (see duet --help)\n", argv[1]);
    return 2;
}
