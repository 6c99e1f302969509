"""Embeds texts with a gemkit GEM checkpoint using numpy alone, to show what an embedding is.

    python3 examples/embed_numpy.py CHECKPOINT_DIR TEXTS.txt OUT.npy

CHECKPOINT_DIR is what `deno task train` saves (runs/gem/ckpt-NNNNNN): config.json and
model.safetensors (a Hugging Face Llama), gem.json (the special token ids, the mask, the pooling)
and the tokenizer (llama2.c's tokenizer.bin format here). Each text is tokenized with BOS, the k
special tokens are appended, the Llama runs with GEM's mask (text tokens causal; each special
sees the text and itself, not the other specials), and the specials' final-normed last-layer
states are pooled as gem.json says and L2-normalised. Writes float32 [n, d] like `deno task embed
--pooling gem`.
"""

import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": None}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        if t["dtype"] == "BF16":  # top half of a float32
            raw = np.frombuffer(data[a:b], np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], kinds[t["dtype"]]).astype(np.float32)
        out[name] = arr.reshape(t["shape"])
    return out


def read_llama2c_tokenizer(path, vocab_size):
    """llama2.c's tokenizer.bin: int32 max length, then per token float32 score, int32 length, bytes."""
    with open(path, "rb") as f:
        f.read(4)
        pieces, scores = [], []
        for _ in range(vocab_size):
            score, n = struct.unpack("<fi", f.read(8))
            pieces.append(f.read(n))
            scores.append(score)
    return pieces, scores


def encode(text, pieces, scores):
    """run.c's encode(): BOS, a dummy-prefix space, codepoints (bytes + 3 as fallback), then
    merge the adjacent pair with the best score until none is in the vocabulary."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    ids = [1]
    if text:
        ids.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        ids.extend([lookup[b]] if b in lookup else [x + 3 for x in b])
    while True:
        best, at, best_id = -1e10, -1, -1
        for i in range(1, len(ids) - 1):
            j = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]], -1)
            if j >= 0 and scores[j] > best:
                best, at, best_id = scores[j], i, j
        if at < 0:
            return ids
        ids[at : at + 2] = [best_id]


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    """Hugging Face's rotate-half RoPE on [T, H, D]."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(pos, inv)  # [T, D/2]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :].astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :].astype(np.float32)
    rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def embed(ids, k, W, cfg):
    """The pooled special states of one text (ids end with the k specials)."""
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    n = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    d = x.shape[1] // hq
    pos = np.arange(n)
    # GEM's mask for "text <specials>": text tokens see earlier text; a special sees the text and
    # itself. So key j is visible to query i when j <= i and j is text, or j == i.
    text = pos < n - k
    allowed = (pos[None, :] <= pos[:, None]) & (text[None, :] | (pos[None, :] == pos[:, None]))
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, hq, d)
        kk = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, hkv, d)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, hkv, d)
        q, kk = rope(q, pos, theta), rope(kk, pos, theta)
        kk, v = np.repeat(kk, hq // hkv, axis=1), np.repeat(v, hq // hkv, axis=1)
        s = np.einsum("ihd,jhd->hij", q, kk) / np.sqrt(d)
        s = np.where(allowed[None], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hij,jhd->ihd", a, v).reshape(n, hq * d)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, W["model.norm.weight"], eps)
    return x[n - k :]


def main(ckpt, texts_path, out_path):
    cfg = json.load(open(f"{ckpt}/config.json"))
    gem = json.load(open(f"{ckpt}/gem.json"))
    W = read_safetensors(f"{ckpt}/model.safetensors")
    base_vocab = min(gem["specialIds"])
    pieces, scores = read_llama2c_tokenizer(f"{ckpt}/tokenizer.bin", base_vocab)
    texts = open(texts_path, encoding="utf-8").read().splitlines()
    rows = []
    for t in texts:
        ids = encode(t, pieces, scores)[: cfg["max_position_embeddings"] - gem["k"]]
        states = embed(ids + gem["specialIds"], gem["k"], W, cfg)
        v = {"mean": states.mean(0), "last": states[-1], "concat": states.reshape(-1)}[gem["pooling"]]
        rows.append(v / np.linalg.norm(v))
    np.save(out_path, np.stack(rows).astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:4])
