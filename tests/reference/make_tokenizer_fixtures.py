#!/usr/bin/env python3
"""Reference token ids for tests/runtime/test_tokenizer.c, from HF tokenizers.

Usage: python make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes into tests/reference/fixtures/:
  tokenizer_smollm2.json  [{"text", "ids", "ids_plain", "roundtrip"}] for every
                          string of tokenizer_corpus.json. "ids" splits special
                          tokens out of the text (HF's default); "ids_plain"
                          tokenizes them as text (encode_special_tokens). No
                          BOS/EOS is added.
  tokenizer_pretok.json   {pre name: [{"text", "pieces"}]}: the pre-tokenizer
                          splits of llama-bpe, qwen2, gpt-2 and smollm, for the
                          models whose GGUFs we do not have.
  tokenizer_spm.json      a tiny SentencePiece BPE model (pieces, scores,
                          types) trained here, with the ids sentencepiece gives.

Why the SmolLM2 tokenizer is rebuilt instead of taken from transformers:
transformers' GGUF conversion (integrations/gguf/gguf_tokenizer_mapping.py)
has no entry for tokenizer.ggml.pre = "smollm", so it keeps GPT2Tokenizer's
default pre-tokenizer, ByteLevel(use_regex=True), without the digit split.
SmolLM2's real tokenizer.json has
  Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false,
           use_regex=true)]
and a BPE model with unk_token=null, ignore_merges=false, no byte fallback.
We build exactly that from the GGUF's vocab and merges and add the control
tokens as special added tokens (normalized=false), as the conversion does.
The script prints how many corpus strings the two disagree on.
"""
import json
import os
import random
import sys

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
DEFAULT_MODEL = os.path.expanduser("~/.cache/duet/models/SmolLM2-135M-Instruct.Q4_1.gguf")

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


def unmap(piece):
    return bytes(BYTE_OF[c] for c in piece)


def pre_tokenizers_by_name():
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def split(rx):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(rx), behavior="isolated"), bl])

    return {
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                    use_regex=True)]),
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "llama-bpe": split(LLAMA3_REGEX),
        "qwen2": split(QWEN2_REGEX),
    }


def read_gguf_vocab(path):
    r = gguf.GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    return strings("tokenizer.ggml.tokens"), ints("tokenizer.ggml.token_type"), \
        strings("tokenizer.ggml.merges")


def smollm2_tokenizer(tokens, types, merges):
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers_by_name()["smollm"]
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


def write(name, obj):
    path = os.path.join(FIXTURES, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {path}")


def make_smollm2(model_path, corpus):
    tokens, types, merges = read_gguf_vocab(model_path)
    tok = smollm2_tokenizer(tokens, types, merges)
    cases = []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        roundtrip = tok.decode(plain, skip_special_tokens=False) == text
        cases.append({"text": text, "ids": ids, "ids_plain": plain, "roundtrip": roundtrip})
    write("tokenizer_smollm2.json", cases)

    try:  # how far transformers' own GGUF conversion is from the real tokenizer
        from transformers import AutoTokenizer
        conv = AutoTokenizer.from_pretrained(os.path.dirname(model_path),
                                             gguf_file=os.path.basename(model_path))
        pre = conv.backend_tokenizer.pre_tokenizer
        diff = [c["text"] for c in cases
                if conv.encode(c["text"], add_special_tokens=False) != c["ids"]]
        print(f"transformers GGUF conversion: pre_tokenizer {pre}; differs on "
              f"{len(diff)}/{len(cases)} corpus strings, e.g. {diff[:3]!r}")
    except Exception as e:  # informational only
        print(f"transformers GGUF conversion not compared: {e}")


def invalid_utf8_inputs():
    fixed = [b"\x80", b"abc\xff", b"\xe2\x82", b"x \xe2\x82 y", b"\xed\xa0\x80 surrogate",
             b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 too big", b"\xf0\x9f\x98", b"12\x8034",
             b"  \x81  \x82\n", b"\xc3\xa9\xc3", b"it\xe2\x80s", b"don'\xfft", b"\xff\xfe 1\x80\x802"]
    rng = random.Random(1234)
    alphabet = b"a 1\n'!\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x80\xbf\xff\xc0\xed\xa0"
    rand = [bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(60)]
    return fixed + rand


def make_pretok(corpus):
    """Splits of valid text, and of ill-formed UTF-8 as HF splits the text
    Python decodes from it with errors='replace' (each maximal ill-formed
    subpart one U+FFFD), which is what duet matches its regexes against."""
    out = {}
    for name, pt in pre_tokenizers_by_name().items():
        rows = []
        for text in corpus:
            pieces = [unmap(p).decode("utf-8") for p, _ in pt.pre_tokenize_str(text)]
            assert "".join(pieces) == text, (name, text)
            rows.append({"text": text, "pieces": pieces})
        out[name] = rows
        out[name + " invalid"] = [
            {"hex": raw.hex(), "pieces": [unmap(p).decode("utf-8") for p, _ in
                                          pt.pre_tokenize_str(raw.decode("utf-8", "replace"))]}
            for raw in invalid_utf8_inputs()]
    write("tokenizer_pretok.json", out)


SPM_TRAIN = """The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces.
Hello world! Hello there, hello again. The the the and and of of to to in in.
Sentences with numbers 1 2 3 and 42 and 2024 appear here too.
Byte fallback covers characters the vocabulary has never seen.
"""
SPM_TESTS = ["Hello world", "hello", " leading space", "two  spaces", "The quick brown fox",
             "", " ", "unseen: \u00e9\u4e16\U0001F600", "numbers 123 and 42", "a\nnewline",
             "tabs\tare bytes", "the lazy dog jumps", "THE END", "ÿ", "tokenizer tokenizers"]


def make_spm(workdir):
    try:
        import sentencepiece as spm
    except ImportError:
        print("sentencepiece not installed: tokenizer_spm.json not written")
        return
    corpus = os.path.join(workdir, "spm_train.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(20):
            f.write(SPM_TRAIN)
    prefix = os.path.join(workdir, "spm_tiny")
    # identity normalization and kept whitespace: the llama tokenizers' settings,
    # so the C side needs no normalizer
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=400,
        byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1)
    cases = [{"text": t, "ids": sp.encode(t)} for t in SPM_TESTS]
    write("tokenizer_spm.json", {"tokens": pieces, "scores": scores, "token_type": types,
                                 "bos": 1, "eos": 2, "unk": 0, "cases": cases})


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    with open(os.path.join(HERE, "tokenizer_corpus.json"), encoding="utf-8") as f:
        corpus = json.load(f)
    os.makedirs(FIXTURES, exist_ok=True)
    make_smollm2(model_path, corpus)
    make_pretok(corpus)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        make_spm(d)


if __name__ == "__main__":
    main()
