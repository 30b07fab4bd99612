/*
 * tokenizer.h — text <-> token ids from a GGUF's tokenizer metadata.
 *
 * Two models: byte-level BPE (tokenizer.ggml.model = "gpt2"), whose
 * pre-tokenizer regexes are chosen by tokenizer.ggml.pre ("smollm",
 * "llama-bpe"/"llama3", "qwen2", "gpt-2", ... run through PCRE2 with UTF and
 * UCP), and SentencePiece BPE ("llama") with byte fallback (<0xNN> tokens).
 * Special tokens (control / user-defined types) are matched as whole
 * strings when parse_special is set, before pre-tokenization, as HF
 * tokenizers does for added tokens.
 *
 * Results must equal HF tokenizers' for the same model (tested on a corpus
 * in tests/reference/fixtures).
 */
#ifndef DUET_TOKENIZER_H
#define DUET_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "gguf.h"

typedef struct duet_tokenizer duet_tokenizer;

/* Build from GGUF metadata. An unknown tokenizer.ggml.model or .pre fails
 * with DUET_ERR_UNSUPPORTED listing the supported names. On failure *out
 * is NULL. The tokenizer copies what it needs; g may be closed after. */
duet_status duet_tokenizer_load(const duet_gguf *g, duet_tokenizer **out);
void duet_tokenizer_free(duet_tokenizer *t);

int duet_tokenizer_vocab_size(const duet_tokenizer *t);
int32_t duet_tokenizer_bos(const duet_tokenizer *t); /* -1 if none */
int32_t duet_tokenizer_eos(const duet_tokenizer *t); /* -1 if none */
int duet_tokenizer_add_bos(const duet_tokenizer *t); /* GGUF add_bos_token */

/* End-of-generation: EOS, EOT and the control tokens chat models end a
 * turn with ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", ...). */
int duet_tokenizer_is_eog(const duet_tokenizer *t, int32_t id);
/* Control (special) tokens, which skip_special_tokens drops on decode. */
int duet_tokenizer_is_special(const duet_tokenizer *t, int32_t id);

/* Id of a token given its exact text, or -1. */
int32_t duet_tokenizer_find(const duet_tokenizer *t, const char *text, size_t len);

/* Encode len bytes of text (need not be valid UTF-8, need not be NUL-
 * terminated). add_bos prepends BOS when the model asks for it and the
 * text does not already start with it. The ids are malloc'd into *ids
 * (caller frees), their count into *n. Fails only for out of memory or
 * for text longer than DUET_TOKENIZER_MAX_TEXT (DUET_ERR_INVALID_ARG).
 * Without parse_special, control tokens are plain text but user-defined
 * ones are still matched whole (as HF and llama.cpp do). Ill-formed UTF-8
 * is pre-tokenized as if each maximal ill-formed subpart were U+FFFD, but
 * byte-level BPE encodes the original bytes (a byte the vocabulary lacks
 * is dropped, as in HF) and SentencePiece sends them to <0xNN> tokens. */
#define DUET_TOKENIZER_MAX_TEXT (512 * 1024 * 1024)
duet_status duet_tokenizer_encode(const duet_tokenizer *t, const char *text, size_t len,
                                  int add_bos, int parse_special,
                                  int32_t **ids /* OUT */, size_t *n /* OUT */);

/* The raw bytes a token stands for (byte-level BPE unmapped, "▁" turned
 * into a space and <0xNN> into its byte for SentencePiece; special tokens
 * as their text). NULL for an id out of range. */
const char *duet_tokenizer_token_bytes(const duet_tokenizer *t, int32_t id, size_t *len);

/* Streaming UTF-8 assembly: tokens may end in the middle of a character;
 * push the bytes of each token and get back only complete characters.
 * Invalid sequences come out as U+FFFD, once each. */
typedef struct duet_utf8_stream {
    unsigned char pending[4];
    int n_pending;
} duet_utf8_stream;

/* Append the complete text from bytes[0..n) (plus what was pending) to
 * out, which must have room for DUET_UTF8_STREAM_OUT_MAX(n) bytes (each
 * ill-formed byte may grow into a 3-byte U+FFFD); returns the bytes
 * written. The stream starts zeroed: duet_utf8_stream st = {0}. */
#define DUET_UTF8_STREAM_OUT_MAX(n) (3 * (size_t)(n) + 9)
size_t duet_utf8_stream_push(duet_utf8_stream *st, const char *bytes, size_t n, char *out);
/* At end of generation: the pending incomplete tail as U+FFFD (0 or 3
 * bytes written to out, which must hold 4). */
size_t duet_utf8_stream_flush(duet_utf8_stream *st, char *out);

#endif
