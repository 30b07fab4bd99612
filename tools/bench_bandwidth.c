/*
 * bench_bandwidth.c — `duet bench bandwidth`: the device-local copy rate of
 * a Vulkan device, the memory ceiling a decode step is compared with
 * (achieved bandwidth = bytes a step must read / step time). Measured in
 * the same run as the benchmark it normalizes, on the same device.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "device.h"
#include "duet.h"
#ifdef DUET_HAVE_VULKAN
#include "vulkan_backend.h"
#endif

static const char *help =
    "usage: duet bench bandwidth [options]\n"
    "\n"
    "Device-local copy bandwidth of a Vulkan device: COPIES buffer-to-buffer copies\n"
    "of SIZE bytes in one submission, timed from submit to fence, REPEAT times after\n"
    "a warm-up. GB/s counts bytes read plus bytes written (10^9 bytes per GB).\n"
    "\n"
    "options:\n"
    "      --device SPEC   vulkan | vulkan:N (default vulkan)\n"
    "      --size MIB      bytes per copy in MiB (default 1024; clamped to one\n"
    "                      allocation of the device)\n"
    "      --copies N      copies per submission (default 20)\n"
    "      --repeat N      timed submissions (default 5)\n"
    "      --json          one JSON object on stdout instead of text\n"
    "  -h, --help          this help\n";

#ifdef DUET_HAVE_VULKAN
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
#endif

int cmd_bench_bandwidth(int argc, char **argv)
{
    enum { O_DEVICE = 256, O_SIZE, O_COPIES, O_REPEAT, O_JSON };
    static const struct option longopts[] = {
        {"device", required_argument, 0, O_DEVICE}, {"size", required_argument, 0, O_SIZE},
        {"copies", required_argument, 0, O_COPIES}, {"repeat", required_argument, 0, O_REPEAT},
        {"json", no_argument, 0, O_JSON},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *cmd = "bench bandwidth", *spec = "vulkan";
    long size_mib = 1024, copies = 20, repeat = 5;
    int json = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_DEVICE: spec = optarg; break;
        case O_SIZE:
            if (cli_parse_int(cmd, "--size", optarg, 1, 1 << 20, &size_mib))
                return 2;
            break;
        case O_COPIES:
            if (cli_parse_int(cmd, "--copies", optarg, 1, 10000, &copies))
                return 2;
            break;
        case O_REPEAT:
            if (cli_parse_int(cmd, "--repeat", optarg, 1, 1000, &repeat))
                return 2;
            break;
        case O_JSON: json = 1; break;
        case 'h': fputs(help, stdout); return 0;
        default: cli_bad_option(cmd, argv[optind - 1]); return 2;
        }
    }
    if (optind < argc) {
        cli_extra_arg(cmd, argv[optind]);
        return 2;
    }
    if (strncmp(spec, "vulkan", 6) != 0) {
        fprintf(stderr, "duet %s: --device '%s': only Vulkan devices (vulkan, vulkan:N)\n", cmd,
                spec);
        return 2;
    }
#ifndef DUET_HAVE_VULKAN
    (void)size_mib, (void)copies, (void)repeat, (void)json;
    fprintf(stderr, "duet %s: this build of duet has no Vulkan backend\n", cmd);
    return 2;
#else
    duet_device *d = NULL;
    double *gbps = calloc((size_t)repeat, sizeof *gbps);
    uint64_t used = 0;
    int ret = 1;
    if (!gbps)
        goto out;
    if (duet_device_open(spec, NULL, &d)) {
        fprintf(stderr, "duet %s: --device '%s': %s\n", cmd, spec, duet_last_error());
        ret = 2;
        goto out;
    }
    duet_device_info info;
    duet_dev_info(d, &info);
    if (duet_vulkan_copy_bandwidth(d, (uint64_t)size_mib << 20, (int)copies, (int)repeat, &used,
                                   gbps)) {
        fprintf(stderr, "duet %s: %s\n", cmd, duet_last_error());
        goto out;
    }
    double runs[1000];
    memcpy(runs, gbps, sizeof *gbps * (size_t)repeat);
    qsort(gbps, (size_t)repeat, sizeof *gbps, cmp_double);
    double med = repeat % 2 ? gbps[repeat / 2] : 0.5 * (gbps[repeat / 2 - 1] + gbps[repeat / 2]);
    double best = gbps[repeat - 1];
    if (json) {
        printf("{\"device\": \"%s\", \"bytes_per_copy\": %llu, \"copies\": %ld, \"repeat\": %ld, "
               "\"copy_gbps_median\": %.2f, \"copy_gbps_best\": %.2f, \"copy_gbps\": [",
               info.name, (unsigned long long)used, copies, repeat, med, best);
        for (long i = 0; i < repeat; i++)
            printf(i ? ", %.2f" : "%.2f", runs[i]);
        printf("]}\n");
    } else {
        printf("%s: %ld copies of %.0f MiB: median %.1f GB/s, best %.1f GB/s (read + write)\n",
               info.name, copies, used / 1048576.0, med, best);
    }
    ret = 0;
out:
    duet_device_close(d);
    free(gbps);
    return ret;
#endif
}
