#!/usr/bin/env python3
"""A small PyTorch reference for the llama2.c Llama decoder, used to make golden values.

Contents
  Config / read_llama2c / write_llama2c   the llama2.c `.bin` checkpoint format
  forward                                 full-sequence forward with a causal mask (float64)
  KVCache / step                          one-token-at-a-time forward with a KV cache (float64)
  llama2c_to_hf / hf_to_llama2c           tensor renaming + the q/k row permutation HF uses
  write_hf / read_safetensors             HF layout: config.json + model.safetensors (by hand)
  Tokenizer                               llama2.c `tokenizer.bin` reader, BPE encode, decode

Model (as in llama2.c run.c):
  x = embed[tok]
  per layer: x += wo @ attn(rope(wq @ rms(x)), rope(wk @ rms(x)), wv @ rms(x))
             x += w2 @ (silu(w1 @ rms(x)) * (w3 @ rms(x)))
  logits = wcls @ rms(x)          (wcls is the token embedding when the classifier is shared)
  rms(x) = x / sqrt(mean(x^2) + 1e-5) * g
RoPE rotates interleaved pairs (x[2i], x[2i+1]) of each head by pos * theta^(-2i/head_dim).
Query head h reads kv head h // (n_heads / n_kv_heads).

Weights are kept as a dict of float32 tensors named as in llama2.c (`token_embedding`, `wq`, ...,
per-layer tensors stacked on a leading [n_layers] axis, `wcls` only when unshared). Matrices are
row-major [out, in], so y = W @ x. The forward passes upcast them to float64.

Uses torch 1.13 and numpy only (no safetensors / transformers packages).
"""

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

F32, F64 = torch.float32, torch.float64

ROPE_THETA = 10000.0
NORM_EPS = 1e-5

# llama2.c weight order in the .bin file (after the header); the two legacy RoPE tables follow
# `rms_final`, and `wcls` comes last only when the classifier is unshared.
LAYER_KEYS = ["rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"]


# ----------------------------------------------------------------------------
# config and the llama2.c .bin format
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here; `shared` carries the sign of the file header
    seq_len: int
    shared: bool = True  # classifier == token embedding

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def kv_dim(self):
        return self.dim * self.n_kv_heads // self.n_heads

    def shapes(self):
        """Name -> shape of every weight, in llama2.c file order (RoPE tables excluded)."""
        d, h, L, v, kv = self.dim, self.hidden_dim, self.n_layers, self.vocab_size, self.kv_dim
        s = {
            "token_embedding": (v, d),
            "rms_att": (L, d),
            "wq": (L, d, d),
            "wk": (L, kv, d),
            "wv": (L, kv, d),
            "wo": (L, d, d),
            "rms_ffn": (L, d),
            "w1": (L, h, d),
            "w2": (L, d, h),
            "w3": (L, h, d),
            "rms_final": (d,),
        }
        if not self.shared:
            s["wcls"] = (v, d)
        return s

    def header(self):
        vocab = self.vocab_size if self.shared else -self.vocab_size
        return [self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, vocab,
                self.seq_len]

    def as_dict(self):
        return {"dim": self.dim, "hidden_dim": self.hidden_dim, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "vocab_size": self.vocab_size, "seq_len": self.seq_len, "shared": self.shared,
                "head_dim": self.head_dim, "kv_dim": self.kv_dim,
                "rope_theta": ROPE_THETA, "norm_eps": NORM_EPS}


def legacy_rope_tables(cfg, theta=ROPE_THETA):
    """The freqs_cos / freqs_sin tables llama2.c's legacy export writes ([seq_len, head_dim/2]).

    Computed in float32 as llama2.c's model.py precompute_freqs_cis does. Readers skip them."""
    hd = cfg.head_dim
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    t = torch.arange(cfg.seq_len, device=freqs.device)
    ang = torch.outer(t, freqs).float()
    return torch.cos(ang), torch.sin(ang)


def read_llama2c(path):
    """Reads a llama2.c checkpoint. Returns (cfg, weights, rope_tables)."""
    with open(path, "rb") as f:
        buf = f.read()
    hdr = struct.unpack_from("<7i", buf, 0)
    dim, hidden, L, nh, nkv, vocab, seq_len = hdr
    cfg = Config(dim, hidden, L, nh, nkv, abs(vocab), seq_len, shared=vocab > 0)
    data = np.frombuffer(buf, dtype="<f4", offset=28)
    weights, off = {}, 0

    def take(shape):
        nonlocal off
        n = int(np.prod(shape))
        assert off + n <= data.size, f"{path}: file too short"
        t = torch.from_numpy(data[off:off + n].astype(np.float32).reshape(shape))
        off += n
        return t

    for name, shape in cfg.shapes().items():
        if name == "wcls":
            continue
        weights[name] = take(shape)
    half = (seq_len, cfg.head_dim // 2)
    rope = (take(half), take(half))
    if not cfg.shared:
        weights["wcls"] = take((cfg.vocab_size, dim))
    assert off == data.size, f"{path}: {data.size - off} trailing floats"
    return cfg, weights, rope


def write_llama2c(path, cfg, weights, rope=None):
    """Writes a llama2.c (legacy, version 0) checkpoint: 7 int32 header, then float32 weights.

    `rope` is the (cos, sin) legacy table pair to embed; it defaults to legacy_rope_tables(cfg)."""
    if rope is None:
        rope = legacy_rope_tables(cfg)
    shapes = cfg.shapes()
    assert set(weights) == set(shapes), sorted(set(weights) ^ set(shapes))
    parts = []
    for name, shape in shapes.items():
        if name == "wcls":
            continue
        parts.append(_f32_bytes(weights[name], shape))
    half = (cfg.seq_len, cfg.head_dim // 2)
    parts += [_f32_bytes(rope[0], half), _f32_bytes(rope[1], half)]
    if not cfg.shared:
        parts.append(_f32_bytes(weights["wcls"], shapes["wcls"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", *cfg.header()))
        for p in parts:
            f.write(p)


def _f32_bytes(t, shape):
    assert tuple(t.shape) == tuple(shape), (tuple(t.shape), shape)
    assert t.dtype == F32
    return t.contiguous().numpy().astype("<f4").tobytes()


# ----------------------------------------------------------------------------
# the model (float64)
# ----------------------------------------------------------------------------

def rope_freqs(head_dim, theta=ROPE_THETA):
    """freq_i = theta^(-2i/head_dim), i < head_dim/2, in float64.

    llama2.c computes 1/powf(theta, 2i/head_dim) in float32; the difference is a relative 1e-7 in
    the angle, far below float32 noise in the logits for the sequence lengths used here."""
    i = torch.arange(head_dim // 2, dtype=F64)
    return theta ** (-2.0 * i / head_dim)


def rope_interleaved(x, pos):
    """llama2.c RoPE. x [..., T, H, D] float64, pos int [T]: rotates pairs (x[2i], x[2i+1])."""
    D = x.shape[-1]
    ang = pos.to(F64)[:, None, None] * rope_freqs(D)  # [T, 1, D/2]
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def rope_rotate_half(x, pos):
    """HF Llama RoPE: rotates pairs (x[j], x[j + D/2]) with the same frequencies."""
    D = x.shape[-1]
    ang = pos.to(F64)[:, None, None] * rope_freqs(D)  # [T, 1, D/2]
    cos = torch.cat([torch.cos(ang), torch.cos(ang)], dim=-1).to(x.dtype)
    sin = torch.cat([torch.sin(ang), torch.sin(ang)], dim=-1).to(x.dtype)
    rotated = torch.cat([-x[..., D // 2:], x[..., : D // 2]], dim=-1)
    return x * cos + rotated * sin


ROPE = {"interleaved": rope_interleaved, "rotate_half": rope_rotate_half}


def rmsnorm(x, g, eps=NORM_EPS):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def to_f64(weights):
    """Upcasts a weight dict to float64 (what step() expects)."""
    return {k: v.to(F64) for k, v in weights.items()}


def classifier(cfg, w):
    return w["token_embedding"] if cfg.shared else w["wcls"]


def forward(cfg, weights, tokens, rope="interleaved", dtype=F64):
    """Full-sequence causal forward. tokens: list/1-D tensor of ids (positions 0..T-1).

    Returns logits [T, vocab] (float64 by default). `rope` picks the RoPE layout ("rotate_half" for weights
    whose q/k rows were permuted to the HF layout). `dtype` is the compute precision (float32 only
    to measure how far an fp32 implementation may drift from the float64 reference)."""
    w = {k: v.to(dtype) for k, v in weights.items()}
    apply_rope = ROPE[rope]
    tokens = torch.as_tensor(tokens, dtype=torch.int64)
    T = tokens.numel()
    assert T <= cfg.seq_len
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group = H // Hkv
    pos = torch.arange(T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = w["token_embedding"][tokens]  # [T, dim]
    for l in range(cfg.n_layers):
        h = rmsnorm(x, w["rms_att"][l])
        q = (h @ w["wq"][l].T).view(T, H, D)
        k = (h @ w["wk"][l].T).view(T, Hkv, D)
        v = (h @ w["wv"][l].T).view(T, Hkv, D)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        k = k.repeat_interleave(group, dim=1)  # query head h -> kv head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
        scores = scores.masked_fill(~causal, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, cfg.dim)
        x = x + o @ w["wo"][l].T
        h = rmsnorm(x, w["rms_ffn"][l])
        a, b = h @ w["w1"][l].T, h @ w["w3"][l].T
        x = x + (torch.nn.functional.silu(a) * b) @ w["w2"][l].T
    x = rmsnorm(x, w["rms_final"])
    return x @ classifier(cfg, w).T


class KVCache:
    """Per-layer key/value cache, float64 [n_layers, seq_len, kv_dim] (keys stored after RoPE)."""

    def __init__(self, cfg):
        self.k = torch.zeros(cfg.n_layers, cfg.seq_len, cfg.kv_dim, dtype=F64)
        self.v = torch.zeros(cfg.n_layers, cfg.seq_len, cfg.kv_dim, dtype=F64)


def step(cfg, w64, cache, token, pos):
    """One llama2.c-style decode step: logits (float64 [vocab]) for `token` at position `pos`.

    `w64` is the weight dict already upcast with to_f64(); the cache must hold positions < pos."""
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group = H // Hkv
    p = torch.tensor([pos])
    x = w64["token_embedding"][token]  # [dim]
    for l in range(cfg.n_layers):
        h = rmsnorm(x, w64["rms_att"][l])
        q = rope_interleaved((w64["wq"][l] @ h).view(1, H, D), p)[0]
        k = rope_interleaved((w64["wk"][l] @ h).view(1, Hkv, D), p)[0]
        cache.k[l, pos] = k.reshape(-1)
        cache.v[l, pos] = w64["wv"][l] @ h
        keys = cache.k[l, : pos + 1].view(pos + 1, Hkv, D)
        vals = cache.v[l, : pos + 1].view(pos + 1, Hkv, D)
        o = torch.empty(H, D, dtype=F64)
        for hq in range(H):
            kv = hq // group
            s = keys[:, kv, :] @ q[hq] / math.sqrt(D)  # [pos+1]
            o[hq] = torch.softmax(s, dim=0) @ vals[:, kv, :]
        x = x + w64["wo"][l] @ o.reshape(-1)
        h = rmsnorm(x, w64["rms_ffn"][l])
        x = x + w64["w2"][l] @ (torch.nn.functional.silu(w64["w1"][l] @ h) * (w64["w3"][l] @ h))
    x = rmsnorm(x, w64["rms_final"])
    return classifier(cfg, w64) @ x


def generate_greedy(cfg, weights, prompt, n_new):
    """Greedy decoding with the KV cache. Returns (new ids, per-step float64 logits list).

    Step j's logits are those after feeding prompt+new[:j], i.e. the ones new[j] is argmax of.
    Ties go to the lowest id (torch.argmax)."""
    w64 = to_f64(weights)
    cache = KVCache(cfg)
    seq = list(prompt)
    assert len(seq) + n_new - 1 <= cfg.seq_len
    logits = None
    for pos, tok in enumerate(seq):
        logits = step(cfg, w64, cache, tok, pos)
    new, all_logits = [], []
    for _ in range(n_new):
        all_logits.append(logits)
        nxt = int(torch.argmax(logits))
        new.append(nxt)
        seq.append(nxt)
        if len(new) < n_new:
            logits = step(cfg, w64, cache, nxt, len(seq) - 1)
    return new, all_logits


# ----------------------------------------------------------------------------
# HF layout
# ----------------------------------------------------------------------------

def permute_rows_to_hf(w, n_heads):
    """llama2.c (interleaved RoPE) q/k rows -> HF (rotate_half) rows, as in HF's
    convert_llama_weights_to_hf.py: w.view(n_heads, hd//2, 2, in).transpose(1, 2).reshape(out, in).

    Within each head, old row 2i+c moves to row c*hd/2 + i."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).transpose(1, 2).reshape(out, inp).contiguous()


def permute_rows_from_hf(w, n_heads):
    """Inverse of permute_rows_to_hf."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, inp).transpose(1, 2).reshape(out, inp).contiguous()


def llama2c_to_hf(cfg, weights):
    """llama2.c weight dict -> {HF tensor name: tensor} (q/k rows permuted; lm_head only when
    the classifier is unshared)."""
    t = {"model.embed_tokens.weight": weights["token_embedding"]}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = permute_rows_to_hf(weights["wq"][i], cfg.n_heads)
        t[p + "self_attn.k_proj.weight"] = permute_rows_to_hf(weights["wk"][i], cfg.n_kv_heads)
        t[p + "self_attn.v_proj.weight"] = weights["wv"][i]
        t[p + "self_attn.o_proj.weight"] = weights["wo"][i]
        t[p + "mlp.gate_proj.weight"] = weights["w1"][i]
        t[p + "mlp.up_proj.weight"] = weights["w3"][i]
        t[p + "mlp.down_proj.weight"] = weights["w2"][i]
        t[p + "input_layernorm.weight"] = weights["rms_att"][i]
        t[p + "post_attention_layernorm.weight"] = weights["rms_ffn"][i]
    t["model.norm.weight"] = weights["rms_final"]
    if not cfg.shared:
        t["lm_head.weight"] = weights["wcls"]
    return {k: v.contiguous() for k, v in t.items()}


def hf_to_llama2c(cfg, tensors, unpermute=True):
    """{HF name: tensor} -> llama2.c weight dict. With unpermute=False the q/k rows stay in the HF
    (rotate_half) order, for forward(..., rope="rotate_half")."""
    L = cfg.n_layers
    fq = (lambda w: permute_rows_from_hf(w, cfg.n_heads)) if unpermute else (lambda w: w)
    fk = (lambda w: permute_rows_from_hf(w, cfg.n_kv_heads)) if unpermute else (lambda w: w)

    def stack(suffix, f=lambda w: w):
        return torch.stack([f(tensors[f"model.layers.{i}.{suffix}"]) for i in range(L)])

    w = {
        "token_embedding": tensors["model.embed_tokens.weight"],
        "rms_att": stack("input_layernorm.weight"),
        "wq": stack("self_attn.q_proj.weight", fq),
        "wk": stack("self_attn.k_proj.weight", fk),
        "wv": stack("self_attn.v_proj.weight"),
        "wo": stack("self_attn.o_proj.weight"),
        "rms_ffn": stack("post_attention_layernorm.weight"),
        "w1": stack("mlp.gate_proj.weight"),
        "w2": stack("mlp.down_proj.weight"),
        "w3": stack("mlp.up_proj.weight"),
        "rms_final": tensors["model.norm.weight"],
    }
    if not cfg.shared:
        w["wcls"] = tensors["lm_head.weight"]
    return w


def hf_config(cfg):
    """config.json contents (transformers LlamaConfig fields)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": NORM_EPS,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": cfg.shared,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def config_from_hf(c):
    return Config(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                  c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"],
                  c["max_position_embeddings"], shared=bool(c["tie_word_embeddings"]))


_ST_DTYPES = {"F32": ("<f4", F32), "F64": ("<f8", F64), "I32": ("<i4", torch.int32)}
_ST_NAMES = {F32: "F32", F64: "F64", torch.int32: "I32"}


def write_safetensors(path, tensors, metadata=None):
    """Writes a .safetensors file: u64 LE header length, JSON header (tensor name -> dtype, shape,
    data_offsets [begin, end) relative to the data section; optional __metadata__), padded with
    spaces to a multiple of 8, then the raw little-endian data. Tensors go in name order."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        np_dtype = _ST_DTYPES[_ST_NAMES[t.dtype]][0]
        b = t.numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads a .safetensors file. Returns ({name: tensor}, metadata or None). Checks that the data
    offsets tile the data section exactly."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = buf[8 + n:]
    meta = header.pop("__metadata__", None)
    out, spans = {}, []
    for name, info in header.items():
        np_dtype, _ = _ST_DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        spans.append((b, e))
        arr = np.frombuffer(data[b:e], dtype=np_dtype).reshape(info["shape"]).copy()
        assert arr.nbytes == e - b, name
        out[name] = torch.from_numpy(arr)
    spans.sort()
    pos = 0
    for b, e in spans:
        assert b == pos, f"{path}: gap or overlap at byte {b}"
        pos = e
    assert pos == len(data), f"{path}: {len(data) - pos} unclaimed data bytes"
    return out, meta


def write_hf(dirpath, cfg, weights):
    """Writes dirpath/config.json and dirpath/model.safetensors (F32, HF tensor names)."""
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2, sort_keys=True)
        f.write("\n")
    write_safetensors(os.path.join(dirpath, "model.safetensors"), llama2c_to_hf(cfg, weights),
                      metadata={"format": "pt"})


def read_hf(dirpath, unpermute=True):
    """Reads an HF directory written by write_hf. Returns (cfg, llama2.c weight dict)."""
    with open(os.path.join(dirpath, "config.json")) as f:
        cfg = config_from_hf(json.load(f))
    tensors, _ = read_safetensors(os.path.join(dirpath, "model.safetensors"))
    return cfg, hf_to_llama2c(cfg, tensors, unpermute=unpermute)


# ----------------------------------------------------------------------------
# llama2.c tokenizer
# ----------------------------------------------------------------------------

class Tokenizer:
    """llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length,
    bytes. Pieces store the SentencePiece '▁' as a plain space; byte tokens are '<0xNN>'."""

    BOS, EOS = 1, 2

    def __init__(self, path):
        with open(path, "rb") as f:
            buf = f.read()
        (self.max_token_length,) = struct.unpack_from("<i", buf, 0)
        off, self.pieces, self.scores = 4, [], []
        while off < len(buf):
            score, n = struct.unpack_from("<fi", buf, off)
            off += 8
            self.pieces.append(buf[off:off + n])
            self.scores.append(score)
            off += n
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)  # first id wins, like llama2.c's bsearch on unique pieces

    def encode(self, text, bos=True, eos=False):
        """llama2.c encode(): dummy-prefix space, one token per UTF-8 code point (byte fallback
        id = byte + 3), then repeatedly merge the adjacent pair whose merged piece has the highest
        score (leftmost on ties)."""
        ids = [self.BOS] if bos else []
        toks = []
        if text:
            toks.append(self.lookup[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                toks.append(self.lookup[b])
            else:
                toks.extend(x + 3 for x in b)
        while True:
            best, best_id, best_i = -1e10, -1, -1
            for i in range(len(toks) - 1):
                j = self.lookup.get(self.pieces[toks[i]] + self.pieces[toks[i + 1]], -1)
                if j != -1 and self.scores[j] > best:
                    best, best_id, best_i = self.scores[j], j, i
            if best_i == -1:
                break
            toks[best_i:best_i + 2] = [best_id]
        ids += toks
        if eos:
            ids.append(self.EOS)
        return ids

    def piece_bytes(self, prev, tok):
        """llama2.c decode(): strips the leading space after BOS; '<0xNN>' pieces give the byte."""
        p = self.pieces[tok]
        if prev == self.BOS and p.startswith(b" "):
            p = p[1:]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            p = bytes([int(p[3:5], 16)])
        return p.replace("▁".encode("utf-8"), b" ")

    def decode(self, ids, prev=None):
        """Concatenated text of ids (as llama2.c prints them); `prev` is the token before ids[0]."""
        out = b""
        for t in ids:
            out += self.piece_bytes(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")
