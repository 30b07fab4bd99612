/*
 * cmd_tokenize.c — `duet tokenize`: text to ids, or ids back to text.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "duet.h"

static const char *help =
    "usage: duet tokenize [options] --text TEXT\n"
    "       duet tokenize [options] --decode 'ID ID ...'\n"
    "\n"
    "Print the token ids of TEXT (space-separated, one line), or the text of ids.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE     GGUF model (default: $DUET_MODEL or the default model)\n"
    "  -t, --text TEXT      text to tokenize\n"
    "  -f, --file FILE      tokenize the contents of FILE\n"
    "  -d, --decode IDS     decode ids (separated by spaces or commas)\n"
    "      --add-bos        prepend BOS when the model asks for it\n"
    "      --special        parse special tokens such as <|im_start|> in the text\n"
    "  -h, --help           this help\n";

static int decode_ids(duet_model *m, const char *list)
{
    const char *p = list;
    int vocab = duet_model_vocab_size(m);
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        char *end;
        long id = strtol(p, &end, 10);
        if (end == p || (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            fprintf(stderr, "duet tokenize: --decode: '%.*s' is not a token id\n",
                    (int)strcspn(p, " ,\t\n"), p);
            return -1;
        }
        if (id < 0 || id >= vocab) {
            fprintf(stderr, "duet tokenize: --decode: id %ld is outside the vocabulary (0..%d)\n",
                    id, vocab - 1);
            return -1;
        }
        size_t len;
        const char *bytes = duet_token_bytes(m, (int32_t)id, &len);
        fwrite(bytes, 1, len, stdout);
        p = end;
    }
    printf("\n");
    return 0;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n + 65536 > cap) {
            char *nb = realloc(buf, cap = n + 65536 * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, 65536, f);
        n += got;
    } while (got);
    fclose(f);
    *len = n;
    return buf;
}

int cmd_tokenize(int argc, char **argv)
{
    enum { OPT_BOS = 256, OPT_SPECIAL };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},  {"text", required_argument, 0, 't'},
        {"file", required_argument, 0, 'f'},   {"decode", required_argument, 0, 'd'},
        {"add-bos", no_argument, 0, OPT_BOS},  {"special", no_argument, 0, OPT_SPECIAL},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    char model_path[4096];
    const char *text = NULL, *file = NULL, *decode = NULL;
    int add_bos = 0, special = 0, c, ret = 1;
    cli_default_model(model_path, sizeof model_path);
    optind = 1;
    opterr = 0; /* our own one-line messages */
    while ((c = getopt_long(argc, argv, "m:t:f:d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': snprintf(model_path, sizeof model_path, "%s", optarg); break;
        case 't': text = optarg; break;
        case 'f': file = optarg; break;
        case 'd': decode = optarg; break;
        case OPT_BOS: add_bos = 1; break;
        case OPT_SPECIAL: special = 1; break;
        case 'h': fputs(help, stdout); return 0;
        default:
            cli_bad_option("tokenize", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || (!!text + !!file + !!decode) != 1) {
        fprintf(stderr, "duet tokenize: give exactly one of --text, --file, --decode\n");
        return 2;
    }

    duet_model *m = NULL;
    char *buf = NULL;
    int32_t *ids = NULL;
    duet_model_options mo = {.device = "cpu", .n_threads = 1};
    if (duet_model_load(model_path, &mo, &m)) {
        fprintf(stderr, "duet tokenize: %s\n", duet_last_error());
        goto out;
    }
    if (decode) {
        ret = decode_ids(m, decode) ? 1 : 0;
        goto out;
    }
    size_t len = text ? strlen(text) : 0, n = 0;
    if (file && !(text = buf = slurp(file, &len))) {
        fprintf(stderr, "duet tokenize: cannot read '%s'\n", file);
        goto out;
    }
    if (!(ids = malloc(sizeof *ids * (len + 2))) ||
        duet_tokenize(m, text, len, add_bos, special, ids, len + 2, &n)) {
        fprintf(stderr, "duet tokenize: %s\n", duet_last_error());
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    ret = 0;
out:
    free(ids);
    free(buf);
    duet_model_free(m);
    return ret;
}
