#!/usr/bin/env python3
"""Golden values and fixtures for gemkit's Llama decoder (llama2.c / HF checkpoints).

Run from the repository root with the system torch (1.13, CPU):

    /usr/bin/python3 tests/goldens/make_llama_goldens.py

Writes (deterministic; a second run gives byte-identical files):

  tests/goldens/llama_stories260k.json   stories260K: prompt ids, prompt logits, greedy decoding
  tests/goldens/llama_tiny.json          two small random models: tokens, logits, greedy ids
  tests/fixtures/tiny_gqa/model.bin      llama2.c format (negative vocab = unshared classifier)
  tests/fixtures/tiny_gqa/hf/{config.json,model.safetensors}
  tests/fixtures/tiny_mqa/model.bin      (tied classifier)
  tests/fixtures/tiny_mqa/hf/{config.json,model.safetensors}

The model code is in llama_ref.py. Every reference runs in float64 from the float32 weights;
logits are rounded to float32 and written with 9 significant digits. The script asserts its own
consistency (see check_* below) and stops on the first failure. See LLAMA.md.
"""

import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_ref as R  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "models", "llama2c")
DATA_REL = "../shared/data/models/llama2c"  # as seen from the repository root
FIXTURES_REL = "tests/fixtures"

PROMPT_TEXT = "Once upon a time, there was a little"
# [BOS] + tok512 encoding of PROMPT_TEXT, computed by Tokenizer.encode (llama2.c's BPE) and
# hardcoded here; the script asserts the two agree.
PROMPT_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376]
EXPECTED_START = "Once upon a time, there was a little girl named Lily."
N_GREEDY = 200
N_STEP_LOGITS = 5

TINY_MODELS = [
    # name, config, seed
    ("tiny_gqa", R.Config(dim=48, hidden_dim=100, n_layers=3, n_heads=6, n_kv_heads=2,
                          vocab_size=67, seq_len=64, shared=False), 1234),
    ("tiny_mqa", R.Config(dim=32, hidden_dim=72, n_layers=2, n_heads=4, n_kv_heads=1,
                          vocab_size=50, seq_len=64, shared=True), 5678),
]
TINY_SEQ_LEN = 20
TINY_GREEDY = 10
MIN_MARGIN = 1e-3  # smallest allowed top1 - top2 logit gap on a greedy path (fp32 robustness)


# ----------------------------------------------------------------------------
# serialisation
# ----------------------------------------------------------------------------

def T(x):
    """Tensor -> {"shape", "dtype": "f32", "data"} (rounded to float32, 9 significant digits)."""
    flat = x.detach().to(torch.float32).reshape(-1)
    assert torch.isfinite(flat).all(), "non-finite value in golden tensor"
    return {"shape": list(x.shape), "dtype": "f32",
            "data": [float(f"{v:.9g}") for v in flat.tolist()]}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def dump_json(path, obj, list_key=None):
    """One top-level key per line (and one element of obj[list_key] per line)."""
    def c(v):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    lines = []
    for k, v in obj.items():
        if k == list_key:
            inner = ",\n".join("  " + c(e) for e in v)
            lines.append(f" {c(k)}: [\n{inner}\n ]")
        else:
            lines.append(f" {c(k)}: {c(v)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def rel(path):
    return os.path.relpath(path, ROOT)


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------

def max_abs(a, b):
    return (a - b).abs().max().item()


def check_kv_matches_full(cfg, weights, seq, kv_logits, what):
    """KV-cache logits (list, one per position of seq) == full-sequence forward, float64 1e-9."""
    full = R.forward(cfg, weights, seq)
    kv = torch.stack(kv_logits)
    err = max_abs(full, kv)
    assert err < 1e-9, f"{what}: KV-cache vs full forward differ by {err}"
    return full


def check_hf_equivalence(cfg, weights, hf_weights_permuted, seq, what):
    """forward(rotate_half RoPE, HF-permuted q/k) == forward(interleaved RoPE, llama2.c weights)."""
    a = R.forward(cfg, weights, seq, rope="interleaved")
    b = R.forward(cfg, hf_weights_permuted, seq, rope="rotate_half")
    err = max_abs(a, b)
    assert err < 1e-9, f"{what}: HF rotate_half forward differs from llama2.c forward by {err}"
    # and the permutation really matters: without it rotate_half gives something else
    c = R.forward(cfg, weights, seq, rope="rotate_half")
    assert max_abs(a, c) > 1e-3, f"{what}: permutation check is vacuous"
    return err


def check_same_weights(a, b, what):
    assert set(a) == set(b), f"{what}: names differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k} shape/dtype"
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def check_roundtrips(cfg, weights, bin_path, hf_dir, what):
    """Reading back the written .bin and HF dir gives the same config and identical tensors."""
    cfg2, w2, _ = R.read_llama2c(bin_path)
    assert cfg2 == cfg, f"{what}: bin config {cfg2} != {cfg}"
    check_same_weights(weights, w2, f"{what} (bin)")
    cfg3, w3 = R.read_hf(hf_dir)
    assert cfg3 == cfg, f"{what}: HF config {cfg3} != {cfg}"
    check_same_weights(weights, w3, f"{what} (hf)")
    tensors, meta = R.read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    check_same_weights(R.llama2c_to_hf(cfg, weights), tensors, f"{what} (safetensors)")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert ("lm_head.weight" in tensors) == (not cfg.shared)
    # q/k permutation is a bijection and its inverse is exact
    for i in range(cfg.n_layers):
        q = weights["wq"][i]
        assert torch.equal(R.permute_rows_from_hf(R.permute_rows_to_hf(q, cfg.n_heads),
                                                  cfg.n_heads), q)
    # safetensors header: 8-byte aligned
    with open(os.path.join(hf_dir, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0
    _, hf_perm = R.read_hf(hf_dir, unpermute=False)
    return hf_perm


def check_repeated_full_argmax(cfg, weights, prompt, new, what):
    """Greedy ids == argmax of a fresh full-sequence forward on the growing sequence."""
    seq = list(prompt)
    for j, tok in enumerate(new):
        nxt = int(torch.argmax(R.forward(cfg, weights, seq)[-1]))
        assert nxt == tok, f"{what}: step {j}: full-forward argmax {nxt} != KV greedy {tok}"
        seq.append(nxt)


def margin(logits):
    top = torch.topk(logits, 2).values
    return (top[0] - top[1]).item()


def forward_f32(cfg, weights, seq):
    """The same forward computed in float32 (to report how far fp32 drifts)."""
    return R.forward(cfg, weights, seq, dtype=torch.float32)


# ----------------------------------------------------------------------------
# stories260K
# ----------------------------------------------------------------------------

def stories260k():
    bin_path = os.path.join(DATA, "stories260K.bin")
    tok_path = os.path.join(DATA, "tok512.bin")
    cfg, weights, rope = R.read_llama2c(bin_path)
    tok = R.Tokenizer(tok_path)

    # the .bin writer reproduces the original file byte for byte (given its RoPE tables),
    # and the HF writer round-trips
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "model.bin")
        R.write_llama2c(p, cfg, weights, rope=rope)
        with open(p, "rb") as a, open(bin_path, "rb") as b:
            assert a.read() == b.read(), "write_llama2c does not reproduce stories260K.bin"
        hf_dir = os.path.join(tmp, "hf")
        R.write_hf(hf_dir, cfg, weights)
        hf_perm = check_roundtrips(cfg, weights, p, hf_dir, "stories260K")

    # prompt
    ids = tok.encode(PROMPT_TEXT)
    assert ids == PROMPT_IDS, f"encode gives {ids}, hardcoded {PROMPT_IDS}"
    assert tok.decode(ids[1:], prev=1) == PROMPT_TEXT
    w64 = R.to_f64(weights)
    cache = R.KVCache(cfg)
    kv = [R.step(cfg, w64, cache, t, i) for i, t in enumerate(PROMPT_IDS)]
    prompt_logits = check_kv_matches_full(cfg, weights, PROMPT_IDS, kv, "stories260K prompt")

    # greedy from BOS
    new, step_logits = R.generate_greedy(cfg, weights, [1], N_GREEDY)
    text = tok.decode(new, prev=1)
    assert text.startswith(EXPECTED_START), f"greedy text: {text[:80]!r}"
    full_seq = [1] + new[:-1]
    check_kv_matches_full(cfg, weights, full_seq, step_logits, "stories260K greedy")
    check_repeated_full_argmax(cfg, weights, [1], new, "stories260K")
    hf_err = check_hf_equivalence(cfg, weights, hf_perm, full_seq, "stories260K")
    margins = [margin(l) for l in step_logits]
    f32 = forward_f32(cfg, weights, full_seq)
    f32_err = max_abs(f32.double(), torch.stack(step_logits))
    f32_same = bool((f32.argmax(-1) == torch.tensor(new)).all())
    print(f"stories260K: prompt {PROMPT_IDS}")
    print(f"  greedy[:30] {new[:30]}")
    print(f"  text {text[:120]!r}...")
    print(f"  min greedy margin {min(margins):.4g} at step {int(np.argmin(margins))}; "
          f"fp32 forward: max |dlogit| {f32_err:.3g}, same greedy ids: {f32_same}; "
          f"HF-vs-llama2c {hf_err:.2g}; BOS in continuation at {[i for i, t in enumerate(new) if t == 1]}")
    assert min(margins) > MIN_MARGIN

    out = {
        "version": 1,
        "generator": "make_llama_goldens.py",
        "torch": torch.__version__,
        "model": {"file": f"{DATA_REL}/stories260K.bin", "sha256": sha256(bin_path),
                  "config": cfg.as_dict()},
        "tokenizer": {"file": f"{DATA_REL}/tok512.bin", "sha256": sha256(tok_path)},
        "prompt": {"text": PROMPT_TEXT, "ids": PROMPT_IDS},
        "prompt_logits": T(prompt_logits),
        "greedy": {
            "start": [1],
            "n_new": N_GREEDY,
            "ids": new,
            "text": text,
            "step_logits": T(torch.stack(step_logits[:N_STEP_LOGITS])),
            "min_margin": float(f"{min(margins):.6g}"),
        },
        "notes": ("positions start at 0 with BOS; prompt_logits[t] are the logits after "
                  "prompt.ids[:t+1]; greedy.ids are the 200 argmax tokens after BOS (no stop on "
                  "BOS/EOS, ties to the lowest id), step_logits[j] the logits whose argmax is "
                  "greedy.ids[j]; text is llama2.c's decode of greedy.ids (space after BOS "
                  "stripped); min_margin is the smallest top1-top2 gap over all 200 steps"),
    }
    path = os.path.join(HERE, "llama_stories260k.json")
    dump_json(path, out)
    return path


# ----------------------------------------------------------------------------
# tiny random models
# ----------------------------------------------------------------------------

def random_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in cfg.shapes().items():
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        w[name] = (1.0 + 0.1 * r) if name.startswith("rms") else 0.3 * r
    return w


def tiny():
    cases, files = [], []
    for name, cfg, seed in TINY_MODELS:
        weights = random_weights(cfg, seed)
        g = torch.Generator().manual_seed(seed + 1)
        tokens = torch.randint(0, cfg.vocab_size, (TINY_SEQ_LEN,), generator=g).tolist()

        d = os.path.join(ROOT, FIXTURES_REL, name)
        bin_path, hf_dir = os.path.join(d, "model.bin"), os.path.join(d, "hf")
        R.write_llama2c(bin_path, cfg, weights)
        R.write_hf(hf_dir, cfg, weights)
        hf_perm = check_roundtrips(cfg, weights, bin_path, hf_dir, name)
        files += [bin_path, os.path.join(hf_dir, "config.json"),
                  os.path.join(hf_dir, "model.safetensors")]

        w64 = R.to_f64(weights)
        cache = R.KVCache(cfg)
        kv = [R.step(cfg, w64, cache, t, i) for i, t in enumerate(tokens)]
        logits = check_kv_matches_full(cfg, weights, tokens, kv, f"{name} tokens")
        new, step_logits = R.generate_greedy(cfg, weights, tokens, TINY_GREEDY)
        full_seq = tokens + new[:-1]
        check_kv_matches_full(cfg, weights, full_seq, kv + step_logits[1:], f"{name} greedy")
        check_repeated_full_argmax(cfg, weights, tokens, new, name)
        hf_err = check_hf_equivalence(cfg, weights, hf_perm, full_seq, name)
        margins = [margin(l) for l in step_logits]
        f32_err = max_abs(forward_f32(cfg, weights, tokens).double(), logits)
        print(f"{name}: tokens {tokens}\n  greedy {new}; min margin {min(margins):.4g}; "
              f"fp32 max |dlogit| {f32_err:.3g}; HF-vs-llama2c {hf_err:.2g}")
        assert min(margins) > MIN_MARGIN, f"{name}: greedy margin {min(margins)}; change seed"

        cases.append({
            "name": name,
            "seed": seed,
            "bin": rel(bin_path),
            "hf": rel(hf_dir),
            "sha256": {"bin": sha256(bin_path),
                       "safetensors": sha256(os.path.join(hf_dir, "model.safetensors"))},
            "config": cfg.as_dict(),
            "tokens": tokens,
            "logits": T(logits),
            "greedy": new,
            "greedy_min_margin": float(f"{min(margins):.6g}"),
        })
    out = {
        "version": 1,
        "generator": "make_llama_goldens.py",
        "torch": torch.__version__,
        "notes": ("random weights: 0.3*randn, norm gains 1+0.1*randn (torch.Generator(seed), "
                  "drawn in llama2.c file order); tokens from torch.randint with seed+1; "
                  "logits[t] are the logits after tokens[:t+1] (positions from 0); greedy are the "
                  "10 argmax tokens after tokens (ties to the lowest id)"),
        "models": cases,
    }
    path = os.path.join(HERE, "llama_tiny.json")
    dump_json(path, out, list_key="models")
    return [path] + files


def main():
    torch.set_num_threads(1)
    paths = [stories260k()] + tiny()
    for p in paths:
        print(f"  {rel(p)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
