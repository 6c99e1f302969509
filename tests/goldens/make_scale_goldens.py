#!/usr/bin/env python3
"""Goldens for the paper's model shapes: Llama-3.2-1B and Mistral-7B, cut to one layer.

Run from the repository root with the system torch (1.13, CPU):

    /usr/bin/python3 tests/goldens/make_scale_goldens.py

Writes tests/goldens/scale.json (a few KB). The weights are not stored anywhere: they come from
one deterministic generator that src/io/synthetic.ts defines identically, in Hugging Face layout
(q and k rows in rotate_half order), rounded to bfloat16 as a bf16 checkpoint stores them:

    x   = (index + 0x9E3779B9 * seed) mod 2^32, seed = 1 + the tensor's place in name order
    x  ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16   (mod 2^32)
    u   = (x >> 8) / 2^24 * 2 - 1                       (in [-1, 1), float64)
    w   = float32(u * 0.02), or float32(1 + u * 0.1) for norm weights, then bfloat16 (nearest even)

The reference is the Hugging Face Llama forward written out in float64 (RMSNorm, rotate_half
RoPE with Llama 3 frequency scaling where the config has it, grouped-query attention with a causal
mask, SwiGLU), on the bf16 weights widened to float64. For 16 tokens it records, per position,
the log-sum-exp of the logits, their argmax and the logits at 24 fixed vocabulary ids; the mean
next-token cross-entropy over the 15 predicted positions; and the L2 norm of that loss's
gradient for every parameter. Running it twice gives the same file.
"""

import json
import math
import os

import numpy as np
import torch

F64 = torch.float64
HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    "llama-3.2-1b-1layer": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
    },
    "mistral-7b-1layer": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    },
}

TOKENS = 16
PROBE_IDS = 24


def names_and_shapes(c):
    d, ff, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, d))]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (d, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, d)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (ff, d)),
            (p + "mlp.up_proj.weight", (ff, d)),
            (p + "mlp.down_proj.weight", (d, ff)),
        ]
    out.append(("model.norm.weight", (d,)))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, d)))
    return sorted(out)


def synthetic(seed, n, norm):
    """The generator of the module docstring, vectorised (uint64 arithmetic masked to 32 bits)."""
    m = np.uint64(0xFFFFFFFF)
    x = (np.arange(n, dtype=np.uint64) + np.uint64((0x9E3779B9 * seed) & 0xFFFFFFFF)) & m
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & m
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & m
    x ^= x >> np.uint64(16)
    u = (x >> np.uint64(8)).astype(np.float64) / 2.0**24 * 2.0 - 1.0
    w = (1.0 + u * 0.1 if norm else u * 0.02).astype(np.float32)
    bits = w.view(np.uint32).astype(np.uint64)
    bf = ((bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)) & np.uint64(0xFFFF)
    return (bf << np.uint64(16)).astype(np.uint32).view(np.float32)


def weights(c):
    out = {}
    for seed, (name, shape) in enumerate(names_and_shapes(c), start=1):
        n = int(np.prod(shape))
        out[name] = torch.from_numpy(synthetic(seed, n, name.endswith("norm.weight")).reshape(shape))
    return out


def inv_freq(c):
    hd = c["hidden_size"] // c["num_attention_heads"]
    f = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=F64) / hd))
    rs = c.get("rope_scaling")
    if not rs:
        return f
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / f
    lo_wl, hi_wl = old / lo, old / hi
    smooth = (old / wavelen - lo) / (hi - lo)
    scaled = torch.where(wavelen > lo_wl, f / factor, f)
    mid = (wavelen <= lo_wl) & (wavelen >= hi_wl)
    return torch.where(mid, (1 - smooth) * f / factor + smooth * f, scaled)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def forward(c, w, ids):
    d, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, eps, t = d // nh, c["rms_norm_eps"], len(ids)
    rms = lambda x, g: x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g  # noqa: E731
    ang = torch.arange(t, dtype=F64)[:, None] * inv_freq(c)[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x = w["model.embed_tokens.weight"][ids]
    mask = torch.full((t, t), float("-inf"), dtype=F64).triu(1)
    for l in range(c["num_hidden_layers"]):
        p = lambda n: w[f"model.layers.{l}.{n}.weight"]  # noqa: E731
        a = rms(x, p("input_layernorm"))
        q = (a @ p("self_attn.q_proj").T).view(t, nh, hd).transpose(0, 1)
        k = (a @ p("self_attn.k_proj").T).view(t, nkv, hd).transpose(0, 1)
        v = (a @ p("self_attn.v_proj").T).view(t, nkv, hd).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1)
        x = x + (att @ v).transpose(0, 1).reshape(t, d) @ p("self_attn.o_proj").T
        m = rms(x, p("post_attention_layernorm"))
        g = m @ p("mlp.gate_proj").T
        x = x + (torch.nn.functional.silu(g) * (m @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    h = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight"]
    return h @ head.T


def golden(name, c):
    w32 = weights(c)
    w = {k: v.to(F64).requires_grad_(True) for k, v in w32.items()}
    v = c["vocab_size"]
    # Token ids spread over the whole vocabulary (first, last and in between).
    ids = [(i * 7919 + 11) % v for i in range(TOKENS)]
    ids[0], ids[-1] = 0, v - 1
    logits = forward(c, w, torch.tensor(ids))
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    loss.backward()
    probe = [(j * 104729 + 3) % v for j in range(PROBE_IDS)]
    with torch.no_grad():
        lse = torch.logsumexp(logits, -1)
    return {
        "config": c,
        "tokens": ids,
        "probe_ids": probe,
        "logsumexp": [round(float(x), 9) for x in lse],
        "argmax": [int(x) for x in logits.argmax(-1)],
        "probe_logits": [[round(float(logits[i, j]), 9) for j in probe] for i in range(TOKENS)],
        "loss": round(float(loss), 12),
        "grad_norms": {k: round(float(p.grad.norm()), 12) for k, p in sorted(w.items())},
        "weight_checksums": {k: round(float(t.to(F64).abs().sum()), 6) for k, t in sorted(w32.items())},
    }


def main():
    torch.set_num_threads(2)
    out = {name: golden(name, c) for name, c in MODELS.items()}
    path = os.path.join(HERE, "scale.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}: " + ", ".join(f"{n} loss {out[n]['loss']:.6f}" for n in out))


if __name__ == "__main__":
    main()
