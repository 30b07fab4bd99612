/*
 * cmd_devices.c — `duet devices`: every device of every backend built in,
 * with the spec to pass to --device. A backend whose driver is missing is
 * a line saying so, not an error: the CPU always exists.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "device.h"
#include "duet.h"
#include "error.h"
#ifdef DUET_HAVE_VULKAN
#include "vulkan_backend.h"
#endif

enum { MAX_VK_DEVICES = 16 };

static const char *help =
    "usage: duet devices [--json]\n"
    "List the devices of every backend this build has, and the spec that selects each\n"
    "with --device (cpu, vulkan:N).\n\n"
    "  --json      print the list as JSON\n"
    "  -h, --help  this help\n";

static double gib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }

/* The CPU: opened to ask it (cheap: no model, a thread pool). */
static int add_cpu(json_t *list, int as_json)
{
    duet_device *d = NULL;
    duet_device_options opts = {0};
    if (duet_cpu_device_create(&opts, &d) != DUET_OK) {
        fprintf(stderr, "duet devices: cpu: %s\n", duet_last_error());
        return -1;
    }
    duet_device_info info;
    duet_dev_info(d, &info);
    duet_device_close(d);
    if (as_json) {
        json_array_append_new(
            list, json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:I, s:i, s:b, s:b}", "backend",
                            "cpu", "index", 0, "name", info.name, "type", "cpu", "spec", "cpu",
                            "mem_total", (json_int_t)info.mem_total, "mem_free",
                            (json_int_t)info.mem_free, "threads", info.n_threads, "usable", 1,
                            "preferred", 1));
    } else {
        printf("cpu\n  [0] %s\n      type cpu, memory %.1f GiB (%.1f GiB free), %d threads\n"
               "      usable, preferred; select with --device cpu\n",
               info.name, gib(info.mem_total), gib(info.mem_free), info.n_threads);
    }
    return 0;
}

static void add_vulkan(json_t *root, json_t *list, int as_json)
{
#ifdef DUET_HAVE_VULKAN
    duet_vulkan_device_desc desc[MAX_VK_DEVICES];
    int n = 0;
    if (duet_vulkan_list_devices(desc, MAX_VK_DEVICES, &n) != DUET_OK) {
        if (as_json)
            json_object_set_new(root, "vulkan_unavailable", json_string(duet_last_error()));
        else
            printf("vulkan\n  %s\n", duet_last_error());
        duet_error_clear();
        return;
    }
    if (!as_json)
        printf("vulkan\n");
    if (n == 0 && !as_json)
        printf("  no Vulkan devices\n");
    for (int i = 0; i < n && i < MAX_VK_DEVICES; i++) {
        const duet_vulkan_device_desc *v = &desc[i];
        char spec[24];
        snprintf(spec, sizeof spec, "vulkan:%d", v->index);
        if (as_json) {
            json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:b, s:b}", "backend",
                                  "vulkan", "index", v->index,
                                  "name", v->name, "type", v->type, "spec", spec, "mem_total",
                                  (json_int_t)v->mem_bytes, "usable", v->usable != 0,
                                  "preferred", v->preferred != 0);
            json_object_set_new(o, "features", json_string(v->features));
            json_object_set_new(o, "subgroup_size", json_integer(v->subgroup_size));
            json_object_set_new(o, "max_shared", json_integer(v->max_shared));
            json_object_set_new(o, "max_alloc", json_integer((json_int_t)v->max_alloc));
            json_object_set_new(o, "max_storage_range",
                                json_integer((json_int_t)v->max_storage_range));
            json_array_append_new(list, o);
        } else {
            printf("  [%d] %s\n      type %s, memory %.1f GiB, subgroup %u, shared %u KiB\n"
                   "      features: %s\n      %s%s; select with --device %s\n",
                   v->index, v->name, v->type, gib(v->mem_bytes), v->subgroup_size,
                   v->max_shared / 1024, v->features[0] ? v->features : "(none)",
                   v->usable ? "usable" : "not usable (needs Vulkan 1.2 and a compute queue)",
                   v->preferred ? ", preferred" : "", spec);
        }
    }
    if (n > MAX_VK_DEVICES && !as_json)
        printf("  ... and %d more\n", n - MAX_VK_DEVICES);
#else
    if (as_json)
        json_object_set_new(root, "vulkan_unavailable",
                            json_string("Vulkan: not built in (glslc was missing at build time)"));
    else
        printf("vulkan\n  not available: this build has no Vulkan backend (glslc was "
               "missing at build time)\n");
    (void)list;
#endif
}

int cmd_devices(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int as_json = 0, opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'j': as_json = 1; break;
        case 'h': fputs(help, stdout); return 0;
        default: cli_bad_option("devices", argv[optind - 1]); return 2;
        }
    }
    if (optind < argc) {
        cli_extra_arg("devices", argv[optind]);
        return 2;
    }
    json_t *root = json_object(), *list = json_array();
    int rc = 0;
    if (add_cpu(list, as_json))
        rc = 1;
    if (rc == 0)
        add_vulkan(root, list, as_json);
    json_object_set_new(root, "devices", list);
    if (rc == 0 && as_json) {
        json_dumpf(root, stdout, JSON_INDENT(1));
        putchar('\n');
    }
    json_decref(root);
    return rc;
}
