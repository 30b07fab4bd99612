#!/usr/bin/env python3
"""Make the model-level reference fixture for tests/runtime/test_model_reference.c.

The reference is Hugging Face transformers running the GGUF file in float32:
transformers dequantizes every tensor of the file (Q4_1, Q8_0, F32) exactly and
runs its own Llama implementation, which shares no code with duet or llama.cpp.
Its logits are therefore "what the quantized model computes", free of any
activation quantization, and the test measures how far duet is from that.

For each prompt the fixture holds
  * the prompt token ids (HF tokenizer read from the same GGUF, no BOS added),
  * 64 greedy tokens (argmax at every step, end-of-generation tokens do NOT
    stop the loop, so every prompt gives 64 positions to compare),
  * for every position of prompt+generated: the top-20 (id, logit), the logits
    of one fixed set of 256 vocabulary ids (seeded, shared by all positions)
    and the top1-top2 margin, which explains divergences at near-ties.

Usage:
  make_model_fixtures.py [--model PATH] [--out PATH] [--threads N]
                         [--numpy-check] # also check against a float64 numpy forward
                         [--llama-cpp]   # also compare with llama-cpp-python

Deterministic: one torch thread, deterministic algorithms, fixed RNG seed.
"""
import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np
import torch

N_GENERATE = 64
N_TOP = 20
N_FIXED = 256
FIXED_SEED = 20261128
DECIMALS = 4

PROMPTS = [
    ("story",
     "The old lighthouse keeper climbed the spiral stairs every evening, and"),
    ("code_python",
     "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("chat_capital",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
     "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
     "<|im_end|>\n<|im_start|>assistant\n"),
    ("list",
     "Things to pack for a weekend hiking trip:\n1. Water bottle\n2. Rain jacket\n3."),
    ("question",
     "Question: Why is the sky blue during the day but red at sunset?\nAnswer:"),
    ("arithmetic",
     "17 + 25 = 42\n6 * 7 = 42\n100 - 58 = 42\n9 * 9 ="),
    ("french_unicode",
     "Le café était très chaud ; l'été à Paris — c'est magnifique. En résumé,"),
    ("chat_c_code",
     "<|im_start|>user\nWrite a C function that reverses a string in place."
     "<|im_end|>\n<|im_start|>assistant\n"),
]


def default_model_path():
    cache = os.environ.get("DUET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "duet"))
    return os.environ.get("DUET_MODEL",
                          os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def byte_decoder():
    """Inverse of GPT-2's byte-to-unicode map: byte-level BPE token strings
    spell raw bytes with printable code points."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok, ids, special_ids):
    """Raw bytes of each token; special tokens as their text."""
    dec = byte_decoder()
    out = []
    for t, s in zip(ids, tok.convert_ids_to_tokens(ids)):
        if t in special_ids:
            out.append(s.encode("utf-8"))
        else:
            out.append(bytes(dec[c] for c in s))
    return out


def versions():
    import gguf  # noqa: F401  (version via metadata; the module has no __version__)
    import importlib.metadata as md
    import tokenizers
    import transformers
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "gguf": md.version("gguf"),
    }
    try:
        v["accelerate"] = md.version("accelerate")
    except md.PackageNotFoundError:
        pass
    return v


def cache_kwarg(model):
    """transformers 5.x renamed past_key_values to cache; accept either."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def greedy(model, prompt_ids, n):
    """Plain greedy decoding with a KV cache; never stops early."""
    key = cache_kwarg(model)
    out = model(input_ids=torch.tensor([prompt_ids], dtype=torch.long), use_cache=True)
    nxt = int(torch.argmax(out.logits[0, -1]))
    gen = [nxt]
    while len(gen) < n:
        past = getattr(out, key)
        out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{key: past})
        nxt = int(torch.argmax(out.logits[0, -1]))
        gen.append(nxt)
    return gen


@torch.no_grad()
def teacher_forced_logits(model, seq):
    out = model(input_ids=torch.tensor([seq], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()  # [n][vocab]


def summarize_positions(logits, fixed_ids):
    r = lambda a: [round(float(x), DECIMALS) for x in a]
    top_ids, top_logits, fixed, margin = [], [], [], []
    for row in logits:
        # Stable sort so equal logits order by id, the same on every run.
        order = np.argsort(-row, kind="stable")[:N_TOP]
        top_ids.append([int(i) for i in order])
        top_logits.append(r(row[order]))
        fixed.append(r(row[fixed_ids]))
        margin.append(round(float(row[order[0]] - row[order[1]]), DECIMALS))
    return {"top_ids": top_ids, "top_logits": top_logits,
            "fixed_logits": fixed, "margin": margin}


def nmse(a, b):
    return float(np.sum((a - b) ** 2) / max(np.sum(b ** 2), 1e-30))


def compare_llama_cpp(model_path, prompts_out, fixed_ids, threads):
    """Context only: how far llama.cpp (quantized activations) is from the
    float32 reference on the same teacher-forced sequences."""
    from llama_cpp import Llama
    import llama_cpp
    n_ctx = max(len(p["prompt_ids"]) + N_GENERATE for p in prompts_out) + 8
    llm = Llama(model_path=model_path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                logits_all=True, verbose=False)
    rows = []
    for p in prompts_out:
        seq = p["prompt_ids"] + p["greedy_ids"]
        llm.reset()
        llm.eval(seq)
        lc = np.array(llm.scores[:len(seq)], dtype=np.float32)
        pos = p["positions"]
        agree, nm = 0, []
        for i in range(len(seq)):
            ref_ids = pos["top_ids"][i] + fixed_ids
            ref = np.array(pos["top_logits"][i] + pos["fixed_logits"][i], dtype=np.float64)
            got = lc[i][ref_ids].astype(np.float64)
            nm.append(nmse(got, ref))
            agree += int(np.argmax(lc[i]) == pos["top_ids"][i][0])
        # llama.cpp's own greedy run from the prompt, for the "identical text" column.
        llm.reset()
        gen = []
        for t in llm.generate(p["prompt_ids"], temp=0.0, top_k=1, repeat_penalty=1.0):
            gen.append(int(t))
            if len(gen) == N_GENERATE:
                break
        first = next((k for k, (a, b) in enumerate(zip(gen, p["greedy_ids"])) if a != b), None)
        rows.append({"name": p["name"], "positions": len(seq), "top1_agree": agree,
                     "nmse_mean": float(np.mean(nm)), "nmse_max": float(np.max(nm)),
                     "greedy_identical": first is None and len(gen) == N_GENERATE,
                     "greedy_first_diff": first})
    return {"llama_cpp_python": llama_cpp.__version__, "n_threads": threads, "rows": rows}


def numpy_check(model_path, prompts_out, fixed_ids):
    """Second, independent reference: a float64 Llama forward in numpy read
    straight from the GGUF (gguf.quants dequantization, llama.cpp's tensor
    layout, so rotary pairs are adjacent). Agreement with transformers shows
    the fixture is the model itself, not one implementation's quirk."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    rd = GGUFReader(model_path)
    w = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)
         .reshape([int(x) for x in reversed(t.shape.tolist())]) for t in rd.tensors}
    field = lambda k: rd.fields[k].contents()
    n_layer, n_head = field("llama.block_count"), field("llama.attention.head_count")
    n_kv, eps = field("llama.attention.head_count_kv"), field("llama.attention.layer_norm_rms_epsilon")
    theta, dim = field("llama.rope.freq_base"), field("llama.embedding_length")
    hd = dim // n_head
    emb = w["token_embd.weight"]
    out_w = w.get("output.weight", emb)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    def rope(x, pos):
        ang = pos[:, None] * theta ** (-2.0 * np.arange(hd // 2) / hd)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        o = np.empty_like(x)
        o[..., 0::2], o[..., 1::2] = a * c - b * s, a * s + b * c
        return o

    def forward(ids):
        t = len(ids)
        pos = np.arange(t, dtype=np.float64)
        mask = np.triu(np.full((t, t), -np.inf), 1)
        x = emb[ids]
        for l in range(n_layer):
            g = lambda n: w[f"blk.{l}.{n}.weight"]
            h = rms(x, g("attn_norm"))
            q = rope((h @ g("attn_q").T).reshape(t, n_head, hd), pos)
            k = rope((h @ g("attn_k").T).reshape(t, n_kv, hd), pos)
            v = (h @ g("attn_v").T).reshape(t, n_kv, hd)
            o = np.empty((t, n_head, hd))
            for j in range(n_head):
                kv = j // (n_head // n_kv)
                sc = q[:, j] @ k[:, kv].T / np.sqrt(hd) + mask
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                o[:, j] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
            x = x + o.reshape(t, dim) @ g("attn_output").T
            h = rms(x, g("ffn_norm"))
            gate, up = h @ g("ffn_gate").T, h @ g("ffn_up").T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ g("ffn_down").T
        return rms(x, w["output_norm.weight"]) @ out_w.T

    tot = agree = 0
    nms = []
    for p in prompts_out:
        seq = p["prompt_ids"] + p["greedy_ids"]
        lg = forward(np.array(seq))
        pos = p["positions"]
        for i in range(len(seq)):
            ref = np.array(pos["top_logits"][i] + pos["fixed_logits"][i])
            nms.append(nmse(lg[i][pos["top_ids"][i] + fixed_ids], ref))
            agree += int(np.argmax(lg[i]) == pos["top_ids"][i][0])
        tot += len(seq)
    print(f"numpy float64 vs transformers float32: top-1 {agree}/{tot}, "
          f"NMSE mean {np.mean(nms):.2e} max {np.max(nms):.2e}", file=sys.stderr)
    return agree == tot and max(nms) < 1e-8


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "fixtures", "model_smollm2_135m_q4_1.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--numpy-check", action="store_true",
                    help="cross-check the fixture with an independent float64 numpy forward")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="compare llama-cpp-python with the reference; writes <out>.llamacpp.json")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        sys.exit(f"model {args.model} not found; run scripts/fetch-model.sh first")

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    mdir, mfile = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(mdir, gguf_file=mfile)
    model = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=mfile, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    special_ids = set(tok.all_special_ids) | {
        i for i, t in tok.added_tokens_decoder.items() if t.special}

    fixed_ids = sorted(int(i) for i in
                       np.random.default_rng(FIXED_SEED).choice(vocab, N_FIXED, replace=False))

    probe = "Hello world"
    hf_adds_bos = tok(probe).input_ids != tok(probe, add_special_tokens=False).input_ids

    prompts_out = []
    for name, text in PROMPTS:
        prompt_ids = tok(text, add_special_tokens=False).input_ids
        gen = greedy(model, prompt_ids, N_GENERATE)
        seq = prompt_ids + gen
        logits = teacher_forced_logits(model, seq)
        # The one-pass teacher-forced argmax should reproduce the incremental
        # greedy run except at near-ties; record where it does not.
        tf_pred = [int(np.argmax(logits[i])) for i in range(len(prompt_ids) - 1, len(seq) - 1)]
        tf_mismatch = [k for k, (a, b) in enumerate(zip(tf_pred, gen)) if a != b]
        pieces = token_bytes(tok, gen, special_ids)
        eos_at = next((k for k, t in enumerate(gen) if t == tok.eos_token_id), None)
        prompts_out.append({
            "name": name,
            "text": text,
            "prompt_ids": prompt_ids,
            "greedy_ids": gen,
            "greedy_text": tok.decode(gen, skip_special_tokens=False),
            "greedy_token_bytes_hex": [b.hex() for b in pieces],
            "greedy_token_special": [int(t in special_ids) for t in gen],
            "greedy_first_eos": eos_at,
            "teacher_forced_vs_greedy_mismatch": tf_mismatch,
            "positions": summarize_positions(logits, fixed_ids),
        })
        print(f"{name:15s} prompt={len(prompt_ids):3d} positions={len(seq):3d} "
              f"first_eos={eos_at} tf_mismatch={tf_mismatch}", file=sys.stderr)

    if args.numpy_check and not numpy_check(args.model, prompts_out, fixed_ids):
        sys.exit("the numpy float64 forward disagrees with transformers; fixture not trusted")

    fixture = {
        "format": 1,
        "description": "float32 HF transformers reference for the GGUF model; see docs/REFERENCE.md",
        "model": {
            "file": mfile,
            "size": os.path.getsize(args.model),
            "sha256": sha256_of(args.model),
            "vocab_size": vocab,
        },
        "versions": versions(),
        "hf_adds_bos": bool(hf_adds_bos),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "n_generate": N_GENERATE,
        "n_top": N_TOP,
        "fixed_seed": FIXED_SEED,
        "fixed_ids": fixed_ids,
        "logit_decimals": DECIMALS,
        "prompts": prompts_out,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)

    if args.llama_cpp:
        rep = compare_llama_cpp(args.model, prompts_out, fixed_ids, max(args.threads, 2))
        with open(args.out + ".llamacpp.json", "w") as f:
            json.dump(rep, f, indent=1)
            f.write("\n")
        tot = sum(r["positions"] for r in rep["rows"])
        agree = sum(r["top1_agree"] for r in rep["rows"])
        print(f"llama.cpp vs reference: top-1 {agree}/{tot} = {100.0 * agree / tot:.2f}%",
              file=sys.stderr)
        for r in rep["rows"]:
            print(f"  {r['name']:15s} top1 {r['top1_agree']}/{r['positions']} "
                  f"nmse mean {r['nmse_mean']:.2e} max {r['nmse_max']:.2e} "
                  f"greedy {'yes' if r['greedy_identical'] else 'no (first diff %s)' % r['greedy_first_diff']}",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
