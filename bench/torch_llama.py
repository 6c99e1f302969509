#!/usr/bin/python3
"""PyTorch CPU (eager, float32) baseline for gemkit's model benchmarks on llama2.c's stories260K.

Usage:
    /usr/bin/python3 bench/torch_llama.py '<json>'
    /usr/bin/python3 bench/torch_llama.py --selfcheck ['<json>']

with json = {"benches": ["generate", "prefill", "train_step", "train_step_pair", "embed"],
             "threads": 1, "warmup": 1, "repeats": 5,
             "model": ".../models/llama2c/stories260K.bin",
             "tinystories": ".../corpus/tinystories_valid_head.txt",
             "stsb": ".../eval/stsb/sts-test.csv"}
Every key is optional (the defaults are above; paths default to ../shared/data seen from the
repository root). Optional extra keys: "tokenizer" (default tok512.bin beside the model), "seed"
(synthetic training batch, default 1234), "malloc" ("reuse", the default, or "default"; see
Memory below). "tinystories" is accepted for interface compatibility but not read: the prefill
bench uses deterministic ids instead of encoded text (see below).

Output: ONE JSON line on stdout,
    {"torch": "1.13.0a0", "threads": 1, "results": [
        {"bench": "generate", "impl": "torch-cpu-1t", "tokens_per_s": ..., "first_ids": [...],
         "median_s": ..., "samples": [...], "sample_unit": "s", "warmup": 1, "repeats": 5,
         "note": "..."}, ...]}
`samples` are the wall-clock seconds (time.perf_counter) of each timed sample; every figure
(tokens_per_s, ms_per_step, texts_per_s) is computed from the MEDIAN sample time. On failure:
{"error": "..."} and exit status 3 when torch cannot be imported, 1 otherwise. `--selfcheck`
runs the correctness checks listed at the end of this docstring, prints
{"selfcheck": "ok", "checks": {...}} and exits 0 (or prints an error and exits 1).

Threads: the JSON is parsed before torch is imported, so OMP_NUM_THREADS, OPENBLAS_NUM_THREADS
and MKL_NUM_THREADS are set to `threads` in this process's environment first; then
torch.set_num_threads(threads), and openblas_set_num_threads(threads) through ctypes when an
OpenBLAS library is mapped (Debian's torch does its fp32 GEMM in OpenBLAS, which keeps its own
thread pool). impl is "torch-cpu-<threads>t".

Device: "device": "cuda" runs the same benches on the GPU (PyTorch >= 2.0, through
torch.set_default_device); impl is then "torch-cuda", and every timed sample ends with
torch.cuda.synchronize() inside the timed region. generate still calls .item() per token, as an
eager greedy loop does. Debian's torch 1.13 has no CUDA; this is for a machine with a CUDA GPU.

Memory: by default the script calls glibc's mallopt (M_MMAP_MAX = 0, M_TRIM_THRESHOLD = INT_MAX)
before importing torch, so that freed tensor memory is reused instead of being unmapped and
page-faulted in again for the next large tensor. On the sandboxed VMs this project runs on a
page fault is very expensive, and with the stock allocator the numbers measure the VM, not
PyTorch (prefill about 10x and train_step about 10x slower). This is the standard CPU advice
(PyTorch's performance tuning guide: use jemalloc / TCMalloc, which reuse memory); "malloc":
"default" turns it off. The output's "malloc" field says which was used.

The model (float32 everywhere, plain eager nn.Module, no torch.compile / TorchScript / custom
ops): nn.Embedding, per layer RMSNorm -> nn.Linear wq/wk/wv (weights [out, in]) -> RoPE on
interleaved pairs (cos/sin tables computed in float64 from theta 10000, stored float32) ->
GQA by repeat_interleave of the 4 kv heads to 8 query heads -> scores = q @ k^T / sqrt(8),
masked_fill, torch.softmax, @ v -> nn.Linear wo; RMSNorm -> SwiGLU (F.silu(w1 x) * w3 x -> w2);
final RMSNorm; classifier nn.Linear tied to the embedding. RMSNorm eps 1e-5. Attention masks
come from per-token roles and a role table, as in gemkit (src/gem/mask.ts): table[q_role][k_role]
is 0 none, 1 causal (key position <= query position), 2 self only, 3 all. Masked scores are
set to the float32 minimum (not -inf) so that a query row that may see no key (padding) gets a
finite uniform softmax; its attention output is then multiplied by 0, so such rows give zeros,
never NaN, in the forward and the backward pass.

What each bench times (one sample = the region below, measured with time.perf_counter; `warmup`
untimed samples first, then `repeats` timed ones). Each bench builds a fresh model from the
.bin file and first runs once untimed to check its output (generate: the ids; prefill: shape and
finiteness of the logits; embed: unit norms); gc.collect() runs before every timed sample,
outside the timed region.

  generate    Greedy decoding from BOS (id 1) with a KV cache, under torch.inference_mode().
              Per sample: 256 single-token forward steps (the first one feeds BOS at position
              0; step j feeds the token chosen by step j-1 at position j), each followed by
              argmax over the logits and .item(). The KV cache is preallocated once
              ([1, 4 kv heads, 512, 8] per layer and for k and v) outside the timed region and
              overwritten in place (positions > pos are never read, so it is not cleared).
              tokens_per_s = 256 / median sample seconds, i.e. over all 256 decode steps
              INCLUDING the BOS step (no separate prompt phase: the prompt is only BOS).
              first_ids = the first 20 greedy ids; they are asserted to equal the float64
              reference (tests/goldens/llama_stories260k.json), which starts
              [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, ...] ("Once upon a time, ...").
  prefill     One full-sequence forward over 512 ids, [1] + [(i * 7919 + 13) % 509 + 3 for i in
              range(511)], batch 1, causal mask, under torch.inference_mode(), producing the
              logits of all 512 positions ([1, 512, 512]). No KV cache is written. The timed
              region includes building the [1, 512, 512] mask from the roles.
              tokens_per_s = 512 / median seconds.
  train_step  One GEM training step, batch 32 x 256 tokens, vocabulary grown to 516 (4 special
              tokens, tied embedding). Per sample: optimizer.zero_grad(set_to_none=True); build
              the [32, 256, 256] attention mask from the roles and the "gem" role table
              [[1,0,0,0],[1,2,0,0],[0,1,1,0],[0,0,0,0]] (roles 0 prefix, 1 special, 2 suffix,
              3 pad); forward; F.cross_entropy(ignore_index=-1) next-token loss (mean over the
              labelled positions); backward; torch.nn.utils.clip_grad_norm_(params, 1.0);
              torch.optim.AdamW(lr 1e-3, weight_decay 0.01, default betas/eps, one parameter
              group) .step(). The model keeps training across samples (the same batch every
              step). The batch tensors are built once, outside the timed region.
              ms_per_step = median * 1e3; tokens_per_s = 32 * 256 / median;
              loss = the loss of the very first step from the pretrained weights (the first
              warmup step when warmup > 0).
  train_step_pair
              As train_step plus the contrastive half: the anchor batch and its positive
              (below) go through ONE forward as a [64, 256] batch; the next-token loss is on the
              32 anchor rows only (the classifier runs on those rows only); pooled embedding
              per row = mean of the 4 special tokens' final-normed hidden states, or for rows
              without specials the mean over non-pad tokens excluding BOS (gemkit's mean
              pooling); cosine similarity matrix [32, 32] (anchors x positives) scaled by
              exp(clamp(logit_scale, 0, log 100)) with logit_scale a learnable scalar
              initialised to log 20 (trained by the same AdamW); symmetric InfoNCE
              (mean of both directions' cross-entropy against the diagonal);
              loss = 0.5 * ntp + 0.5 * cl. The pooling weights are built outside the timed
              region. tokens_per_s = 2 * 32 * 256 / median.
  embed       Sentence embeddings with the plain stories260K model (vocab 512, no specials,
              mean pooling) of the STS-B test file: 1,379 lines -> 2,758 texts
              (sentence1 = column 6, sentence2 = column 7, 1-based; extra columns ignored).
              Texts are encoded OUTSIDE the timed region with llama2.c's BPE (BOS + dummy
              prefix space + highest-score merges; tests/goldens/llama_ref.py Tokenizer, a port
              of run.c's encode) with tok512.bin, sorted by token count (as gemkit's embedIds and
              sentence-transformers do, to waste less padding), cut into batches of 64 (43 x 64
              + 1 x 6; PyTorch's fastest of 64, 128 and 256 texts per batch on the 2-core
              llvmpipe machine: 256 pads more and builds larger masks) and right-padded with id
              0 to the longest of each batch; the padded id
              tensors are built outside the timed region too. Per sample, under
              torch.inference_mode(), for every batch: build the mask (role table
              [[1,0],[0,0]]: tokens causal, padding sees nothing and is never seen), forward to
              the final-normed hidden states (no classifier), mean-pool over non-pad tokens
              excluding BOS, L2-normalise. texts_per_s = 2758 / median seconds; n_texts = 2758.
              Every output vector is checked to have unit norm (max |norm - 1| is reported).

The synthetic GEM batch (deterministic and portable: Rng is a port of gemkit's xoshiro128**
src/tensor/random.ts, so a TS bench can rebuild exactly the same batch with `new Rng(seed)`):
    rng = Rng(seed)                                     # seed 1234 unless "seed" is given
    for r in 0..31:
        n = 256 - (20 if r % 4 == 3 else 0)             # rows 3, 7, ..., 31 end in 20 pads
        special = r % 5 == 4                            # rows 4, 9, 14, 19, 24, 29 (6/32)
        m = n - 4 if special else n                     # text tokens
        text = [1] + [3 + rng.int(509) for _ in range(m - 1)]
        if special:
            split = 17 + rng.int(m - 16 - 17 + 1)       # >= 16 tokens after BOS, >= 16 after
            ids = text[:split] + [512, 513, 514, 515] + text[split:]   # roles 0.. 1 1 1 1 2..
        else:
            ids = text                                  # roles all 0
        pad with id 0, role 3 to 256
    labels[t] = ids[t+1], or -1 when t is the last position or ids[t+1] is special or padding
    positives (drawn after all anchors, from the same rng): a copy of the anchors in which
      every prefix-role position p >= 1, in row-major order, is replaced when rng.uniform() < 0.1
      by 3 + (ids[p] - 3 + 1 + rng.int(508)) % 509 (a uniformly random OTHER id in [3, 512)).
    Special-token rows 512..515 are initialised as gemkit's addSpecialTokens does by default:
      Rng(0); for each new row, for each dim j: mean_j + rng.normal() * std_j * 0.1, with the
      mean / population std over the 512 original rows (float64, then float32).

--selfcheck asserts: the 200 greedy ids from BOS equal the float64 reference golden; the
KV-cache logits of the first 16 greedy steps equal a full-sequence forward (< 1e-4); the
float32 prefill logits on 64 ids match llama_ref.forward in float64 (< 1e-3); a role-table mask
on a small hand-written example; pad rows give zero attention output and finite gradients;
train_step and train_step_pair losses are finite and fall over 3 steps; embed vectors have
unit norm and do not depend on the batch they are in.
"""

import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
GOLDENS = os.path.join(REPO, "tests", "goldens")

ALL_BENCHES = ["generate", "prefill", "train_step", "train_step_pair", "embed"]
DEFAULTS = {
    "benches": ALL_BENCHES,
    "threads": 1,
    "warmup": 1,
    "repeats": 5,
    "model": os.path.join(DATA, "models", "llama2c", "stories260K.bin"),
    "tinystories": os.path.join(DATA, "corpus", "tinystories_valid_head.txt"),
    "stsb": os.path.join(DATA, "eval", "stsb", "sts-test.csv"),
    "tokenizer": None,  # default: tok512.bin beside the model
    "seed": 1234,
    "malloc": "reuse",  # or "default"; see set_malloc
    "device": "cpu",  # or "cuda"; see Device below
}

# Benchmark shapes (fixed so that numbers are comparable with the TS side).
GEN_TOKENS = 256
PREFILL_IDS = [1] + [(i * 7919 + 13) % 509 + 3 for i in range(511)]
TRAIN_B, TRAIN_T, K_SPECIAL, PAD_ID = 32, 256, 4, 0
EMBED_BATCH = 64
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.01, 1.0
LOGIT_SCALE_INIT, LOGIT_SCALE_MAX = math.log(20.0), math.log(100.0)

# Role tables (src/gem/mask.ts): rule 0 none, 1 causal, 2 self, 3 all.
ROLE_PREFIX, ROLE_SPECIAL, ROLE_SUFFIX, ROLE_PAD = 0, 1, 2, 3
GEM_TABLE = [[1, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
CAUSAL_TABLE = [[1]]
CAUSAL_PADDED_TABLE = [[1, 0], [0, 0]]  # role 1 = padding

# Greedy ids from BOS of the float64 reference (tests/goldens/llama_stories260k.json, greedy.ids).
EXPECTED_FIRST_IDS = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                      315, 421, 395, 317, 426, 338, 401, 396, 267, 337]


class BenchError(Exception):
    pass


def emit(obj, status=0):
    print(json.dumps(obj), flush=True)
    sys.exit(status)


# ----------------------------------------------------------------------------
# arguments and threads (before torch is imported)
# ----------------------------------------------------------------------------

def parse_args(argv):
    args = list(argv[1:])
    selfcheck = "--selfcheck" in args
    args = [a for a in args if a != "--selfcheck"]
    if len(args) > 1:
        raise BenchError("expected at most one JSON argument (and optionally --selfcheck)")
    cfg = dict(DEFAULTS)
    if args:
        try:
            user = json.loads(args[0])
        except json.JSONDecodeError as e:
            raise BenchError(f"bad JSON argument: {e}")
        if not isinstance(user, dict):
            raise BenchError("the JSON argument must be an object")
        unknown = sorted(set(user) - set(DEFAULTS))
        if unknown:
            raise BenchError(f"unknown keys {unknown} (known: {sorted(DEFAULTS)})")
        cfg.update(user)
    benches = cfg["benches"]
    if isinstance(benches, str):
        benches = [benches]
    if not isinstance(benches, list) or not all(b in ALL_BENCHES for b in benches):
        raise BenchError(f"'benches' must be a list drawn from {ALL_BENCHES}, got {benches!r}")
    cfg["benches"] = benches
    for name, lo in (("threads", 1), ("warmup", 0), ("repeats", 1), ("seed", 0)):
        v = cfg[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise BenchError(f"'{name}' must be an integer >= {lo}, got {v!r}")
    if cfg["device"] not in ("cpu", "cuda"):
        raise BenchError(f"'device' must be \"cpu\" or \"cuda\", got {cfg['device']!r}")
    if cfg["malloc"] not in ("reuse", "default"):
        raise BenchError(f"'malloc' must be \"reuse\" or \"default\", got {cfg['malloc']!r}")
    if cfg["tokenizer"] is None:
        cfg["tokenizer"] = os.path.join(os.path.dirname(cfg["model"]), "tok512.bin")
    return cfg, selfcheck


def set_malloc(mode):
    """mode "reuse": tells glibc malloc to keep freed memory for reuse instead of handing it back
    to the kernel (mallopt M_MMAP_MAX = 0: no mmap'ed chunks, everything from the heap;
    M_TRIM_THRESHOLD = INT_MAX: never trim the heap top). Without it, every large tensor (an
    [8, 512, 512] score matrix, or [32, 8, 256, 256] in training) is a fresh mmap whose pages
    fault in on first touch, and on our VMs a page fault is so slow that it dominates: measured
    prefill ~0.5-0.7 s -> ~0.06 s and train_step ~10 s -> ~0.9 s. This is the effect PyTorch's
    CPU performance tuning guide addresses by switching to jemalloc / TCMalloc (neither is
    installed here). Memory is not given back until exit, which is fine for one bench process.
    (A tensor over 64 MiB allocated by a non-main thread could not be served without mmap; none
    is here: tensors are allocated on the calling thread.) Returns what was applied."""
    if mode == "default":
        return "glibc default"
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        raise BenchError("mallopt failed (malloc: \"reuse\"); pass \"malloc\": \"default\"")
    return "glibc, mallopt M_MMAP_MAX=0 M_TRIM_THRESHOLD=INT_MAX (freed memory reused)"


def find_openblas():
    """A ctypes handle on the OpenBLAS library mapped into this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads  # noqa: B018 - AttributeError when absent
            return lib
        except (OSError, AttributeError):
            continue
    return None


# ----------------------------------------------------------------------------
# gemkit's Rng (xoshiro128**, src/tensor/random.ts), bit for bit
# ----------------------------------------------------------------------------

M32 = 0xFFFFFFFF


def _rotl(x, k):
    return ((x << k) | (x >> (32 - k))) & M32


class Rng:
    def __init__(self, seed):
        x = seed & M32
        self.s = []
        for _ in range(4):  # splitmix32 seeding
            x = (x + 0x9E3779B9) & M32
            z = x
            z = ((z ^ (z >> 16)) * 0x85EBCA6B) & M32
            z = ((z ^ (z >> 13)) * 0xC2B2AE35) & M32
            self.s.append((z ^ (z >> 16)) & M32)

    def next_u32(self):
        s = self.s
        r = (_rotl((s[1] * 5) & M32, 7) * 9) & M32
        t = (s[1] << 9) & M32
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 11)
        return r

    def uniform(self):
        return self.next_u32() / 4294967296.0

    def int(self, n):
        return math.floor(self.uniform() * n)

    def normal(self):
        u = 1.0 - self.uniform()
        v = self.uniform()
        return math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * v)


# ----------------------------------------------------------------------------
# the model (defined once torch is imported; see main)
# ----------------------------------------------------------------------------

def define_model(torch):
    """Returns the model classes and helpers bound to the imported torch module."""
    nn = torch.nn
    F = torch.nn.functional
    NEG = torch.finfo(torch.float32).min

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def apply_rope(x, cos, sin):
        """x [B, T, heads, hd]; cos/sin [T, hd/2]. Rotates interleaved pairs (x[2i], x[2i+1])."""
        xr = x.view(*x.shape[:-1], -1, 2)
        x0, x1 = xr[..., 0], xr[..., 1]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    class Attention(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
            self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
            self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
            self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
            self.cache_k = self.cache_v = None  # [B, n_kv, seq_len, hd] once init_cache runs

        def forward(self, x, cos, sin, mask, row_ok, start_pos):
            B, T, _ = x.shape
            q = self.wq(x).view(B, T, self.n_heads, self.hd)
            k = self.wk(x).view(B, T, self.n_kv, self.hd)
            v = self.wv(x).view(B, T, self.n_kv, self.hd)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, hd]
            if start_pos is not None:  # KV-cache decoding: write, then read all positions so far
                end = start_pos + T
                self.cache_k[:B, :, start_pos:end] = k
                self.cache_v[:B, :, start_pos:end] = v
                k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
            group = self.n_heads // self.n_kv  # query head h reads kv head h // group
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.hd)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None], NEG)
            o = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, heads, T, hd]
            if row_ok is not None:  # rows that may see no key: zeros, not a uniform average
                o = o * row_ok[:, None, :, None]
            return self.wo(o.transpose(1, 2).reshape(B, T, -1))

    class FeedForward(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
            self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
            self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class Block(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.attention_norm = RMSNorm(cfg.dim)
            self.attention = Attention(cfg)
            self.ffn_norm = RMSNorm(cfg.dim)
            self.feed_forward = FeedForward(cfg)

        def forward(self, x, cos, sin, mask, row_ok, start_pos):
            x = x + self.attention(self.attention_norm(x), cos, sin, mask, row_ok, start_pos)
            return x + self.feed_forward(self.ffn_norm(x))

    class Llama(nn.Module):
        def __init__(self, cfg, vocab_size):
            super().__init__()
            self.cfg = cfg
            self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
            self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.dim)
            self.output = nn.Linear(cfg.dim, vocab_size, bias=False)
            self.output.weight = self.tok_embeddings.weight  # tied classifier
            hd = cfg.head_dim
            freqs = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            ang = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float64), freqs)
            self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
            self.register_buffer("rope_sin", ang.sin().float(), persistent=False)

        def init_cache(self, batch):
            c = self.cfg
            for layer in self.layers:
                shape = (batch, c.n_kv_heads, c.seq_len, c.head_dim)
                layer.attention.cache_k = torch.zeros(shape)
                layer.attention.cache_v = torch.zeros(shape)

        def forward(self, tokens, mask=None, row_ok=None, start_pos=None, logits=True):
            """tokens [B, T] int64. mask [B, T, S] bool (True = may attend) or None (no mask:
            only for KV-cache decoding of one token, which sees the whole cache). start_pos:
            None for a full-sequence forward, else the cache position of tokens[:, 0].
            Returns the logits [B, T, vocab], or the final-normed hidden states [B, T, dim]
            when logits=False."""
            T = tokens.shape[1]
            p0 = 0 if start_pos is None else start_pos
            cos, sin = self.rope_cos[p0:p0 + T], self.rope_sin[p0:p0 + T]
            x = self.tok_embeddings(tokens)
            for layer in self.layers:
                x = layer(x, cos, sin, mask, row_ok, start_pos)
            h = self.norm(x)
            return self.output(h) if logits else h

    def role_mask(roles, table):
        """roles [B, T] int64, table an [R, R] int64 tensor of rules. Returns (mask [B, T, T]
        bool, row_ok [B, T] bool or None when every query row may see some key)."""
        T = roles.shape[1]
        rule = table[roles[:, :, None], roles[:, None, :]]  # [B, T(query), T(key)]
        pos = torch.arange(T)
        causal = pos[None, :] <= pos[:, None]  # key <= query
        same = torch.eye(T, dtype=torch.bool)
        mask = ((rule == 1) & causal) | ((rule == 2) & same) | (rule == 3)
        row_ok = mask.any(-1)
        return mask, (None if bool(row_ok.all()) else row_ok)

    def load_model(cfg, w, extra_rows=None):
        """A Llama from a llama_ref weight dict; extra_rows [k, dim] grows the vocabulary."""
        emb = w["token_embedding"]
        if extra_rows is not None:
            emb = torch.cat([emb, extra_rows.to(emb.device)])
        m = Llama(cfg, emb.shape[0])
        with torch.no_grad():
            m.tok_embeddings.weight.copy_(emb)
            for l, layer in enumerate(m.layers):
                layer.attention_norm.weight.copy_(w["rms_att"][l])
                layer.attention.wq.weight.copy_(w["wq"][l])
                layer.attention.wk.weight.copy_(w["wk"][l])
                layer.attention.wv.weight.copy_(w["wv"][l])
                layer.attention.wo.weight.copy_(w["wo"][l])
                layer.ffn_norm.weight.copy_(w["rms_ffn"][l])
                layer.feed_forward.w1.weight.copy_(w["w1"][l])
                layer.feed_forward.w2.weight.copy_(w["w2"][l])
                layer.feed_forward.w3.weight.copy_(w["w3"][l])
            m.norm.weight.copy_(w["rms_final"])
        return m

    return Llama, role_mask, load_model


# ----------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------

def time_samples(fn, warmup, repeats, sync=lambda: None):
    """Runs fn() warmup times untimed, then repeats times timed. Returns the seconds. sync()
    waits for queued device work (CUDA is asynchronous), inside the timed region."""
    for _ in range(warmup):
        fn()
        sync()
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def impl_name(ctx):
    return "torch-cuda" if ctx["device"] == "cuda" else f"torch-cpu-{ctx['threads']}t"


def result(bench, ctx, samples, **fields):
    med = statistics.median(samples)
    r = {"bench": bench, "impl": impl_name(ctx), "threads": ctx["threads"]}
    r.update({k: (fn(med) if callable(fn) else fn) for k, fn in fields.items()})
    r.update({"median_s": med, "samples": samples, "sample_unit": "s",
              "warmup": ctx["warmup"], "repeats": ctx["repeats"]})
    return r


# ----------------------------------------------------------------------------
# the benches
# ----------------------------------------------------------------------------

class Bench:
    def __init__(self, torch, ref, cfg):
        self.torch, self.ref, self.args = torch, ref, cfg
        self.Llama, self.role_mask, self.load_model = define_model(torch)
        self.mcfg, self.weights, _ = ref.read_llama2c(cfg["model"])
        c = self.mcfg
        if (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size) != \
                (64, 172, 5, 8, 4, 512) or not c.shared:
            raise BenchError(f"{cfg['model']}: expected stories260K, got {c}")
        self.ctx = {"threads": cfg["threads"], "warmup": cfg["warmup"], "repeats": cfg["repeats"],
                    "device": cfg["device"]}
        self.sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
        self.tables = {}

    def table(self, rows):
        key = json.dumps(rows)
        if key not in self.tables:
            self.tables[key] = self.torch.tensor(rows, dtype=self.torch.int64)
        return self.tables[key]

    # --- generate -----------------------------------------------------------

    def greedy(self, model, n):
        """Greedy ids after BOS; n single-token KV-cache steps (the cache must exist)."""
        torch = self.torch
        ids, tok = [], 1
        with torch.inference_mode():
            for pos in range(n):
                logits = model(torch.tensor([[tok]]), start_pos=pos)
                tok = int(logits[0, -1].argmax())
                ids.append(tok)
        return ids

    def bench_generate(self):
        model = self.load_model(self.mcfg, self.weights).eval()
        model.init_cache(1)
        ids = self.greedy(model, GEN_TOKENS)
        if ids[:20] != EXPECTED_FIRST_IDS:
            raise BenchError(f"generate: first ids {ids[:20]} != reference {EXPECTED_FIRST_IDS}")
        samples = time_samples(lambda: self.greedy(model, GEN_TOKENS),
                               self.ctx["warmup"], self.ctx["repeats"], self.sync)
        tok = self.ref.Tokenizer(self.args["tokenizer"])
        return result("generate", self.ctx, samples,
                      tokens_per_s=lambda s: GEN_TOKENS / s, n_tokens=GEN_TOKENS,
                      first_ids=ids[:20], first_text=tok.decode(ids[:20], prev=1),
                      note="256 single-token KV-cache steps from BOS (the BOS step included), "
                           "argmax + .item() each; inference_mode; preallocated cache")

    # --- prefill ------------------------------------------------------------

    def prefill(self, model, ids):
        torch = self.torch
        with torch.inference_mode():
            mask, row_ok = self.role_mask(torch.zeros_like(ids), self.table(CAUSAL_TABLE))
            return model(ids, mask, row_ok)

    def bench_prefill(self):
        torch = self.torch
        model = self.load_model(self.mcfg, self.weights).eval()
        ids = torch.tensor([PREFILL_IDS])
        logits = self.prefill(model, ids)
        if tuple(logits.shape) != (1, 512, 512) or not bool(torch.isfinite(logits).all()):
            raise BenchError(f"prefill: bad logits {tuple(logits.shape)}")
        samples = time_samples(lambda: self.prefill(model, ids), self.ctx["warmup"],
                               self.ctx["repeats"], self.sync)
        return result("prefill", self.ctx, samples, tokens_per_s=lambda s: 512 / s,
                      n_tokens=512,
                      note="one causal forward, batch 1 x 512 ids, logits for all positions, "
                           "inference_mode, mask built inside")

    # --- train_step / train_step_pair ---------------------------------------

    def special_rows(self):
        """gemkit's addSpecialTokens default init: mean + N(0,1) * std * 0.1, Rng(0)."""
        e = self.weights["token_embedding"].double()
        mean, std = e.mean(0), e.std(0, unbiased=False)
        rng = Rng(0)
        rows = [[float(mean[j]) + rng.normal() * float(std[j]) * 0.1 for j in range(e.shape[1])]
                for _ in range(K_SPECIAL)]
        return self.torch.tensor(rows, dtype=self.torch.float64).float()

    def synthetic_batch(self):
        """Anchor and positive rows of the synthetic GEM batch (see the module docstring).
        Returns a dict of tensors: ids/roles/labels [B, T] for the anchors, ids_pos [B, T] for
        the positives (same roles; no next-token loss on them), and pool [2B, T] pooling
        weights."""
        torch = self.torch
        rng = Rng(self.args["seed"])
        B, T, V = TRAIN_B, TRAIN_T, self.mcfg.vocab_size
        specials = list(range(V, V + K_SPECIAL))
        ids, roles = [], []
        for r in range(B):
            n = T - (20 if r % 4 == 3 else 0)
            special = r % 5 == 4
            m = n - K_SPECIAL if special else n
            text = [1] + [3 + rng.int(509) for _ in range(m - 1)]
            if special:
                lo, hi = 17, m - 16
                split = lo + rng.int(hi - lo + 1)
                row = text[:split] + specials + text[split:]
                role = ([ROLE_PREFIX] * split + [ROLE_SPECIAL] * K_SPECIAL +
                        [ROLE_SUFFIX] * (m - split))
            else:
                row, role = text, [ROLE_PREFIX] * m
            ids.append(row + [PAD_ID] * (T - n))
            roles.append(role + [ROLE_PAD] * (T - n))
        pos_ids = [list(row) for row in ids]
        for r in range(B):
            for p in range(1, T):
                if roles[r][p] == ROLE_PREFIX and rng.uniform() < 0.1:
                    pos_ids[r][p] = 3 + (pos_ids[r][p] - 3 + 1 + rng.int(508)) % 509

        def labels(rows):
            return [[row[t + 1] if t + 1 < T and role[t + 1] not in (ROLE_SPECIAL, ROLE_PAD)
                     else -1 for t in range(T)] for row, role in zip(rows, roles)]

        # Pooling weights: 1/4 on the specials, else 1/n on the non-pad tokens after BOS.
        pool = torch.zeros(B, T)
        for r in range(B):
            sp = [p for p in range(T) if roles[r][p] == ROLE_SPECIAL]
            toks = sp or [p for p in range(1, T) if roles[r][p] != ROLE_PAD]
            pool[r, toks] = 1.0 / len(toks)
        L = torch.int64
        return {"ids": torch.tensor(ids, dtype=L), "roles": torch.tensor(roles, dtype=L),
                "labels": torch.tensor(labels(ids), dtype=L),
                "ids_pos": torch.tensor(pos_ids, dtype=L),
                "pool": torch.cat([pool, pool])}

    def make_trainer(self, pair):
        """(model, step) where step() runs one timed training step and returns the loss."""
        torch = self.torch
        F = torch.nn.functional
        model = self.load_model(self.mcfg, self.weights, extra_rows=self.special_rows()).train()
        logit_scale = torch.nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        params = list(model.parameters()) + ([logit_scale] if pair else [])
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
        b = self.synthetic_batch()
        table = self.table(GEM_TABLE)
        B, V = TRAIN_B, model.tok_embeddings.num_embeddings
        if pair:
            tokens = torch.cat([b["ids"], b["ids_pos"]])
            roles = torch.cat([b["roles"], b["roles"]])
        else:
            tokens, roles = b["ids"], b["roles"]
        labels, pool = b["labels"], b["pool"][:tokens.shape[0]]
        targets = torch.arange(B)

        def step():
            opt.zero_grad(set_to_none=True)
            mask, row_ok = self.role_mask(roles, table)
            h = model(tokens, mask, row_ok, logits=False)  # [B or 2B, T, dim]
            logits = model.output(h[:B])
            ntp = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-1)
            loss = ntp
            if pair:
                emb = torch.bmm(pool[:, None, :], h)[:, 0]  # [2B, dim]
                a, p = F.normalize(emb[:B], dim=-1), F.normalize(emb[B:], dim=-1)
                scale = logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp()
                sim = (a @ p.T) * scale
                cl = 0.5 * (F.cross_entropy(sim, targets) + F.cross_entropy(sim.T, targets))
                loss = 0.5 * ntp + 0.5 * cl
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            return float(loss.detach())

        return model, step

    def bench_train(self, pair):
        losses = []
        _, step = self.make_trainer(pair)
        samples = time_samples(lambda: losses.append(step()), self.ctx["warmup"],
                               self.ctx["repeats"], self.sync)
        if not all(math.isfinite(x) for x in losses):
            raise BenchError(f"train_step{'_pair' if pair else ''}: non-finite loss {losses}")
        n_tok = (2 if pair else 1) * TRAIN_B * TRAIN_T
        what = ("anchor+positive [64, 256] forward, 0.5 * ntp (anchors) + 0.5 * symmetric "
                "InfoNCE" if pair else "[32, 256] forward, ntp")
        return result("train_step_pair" if pair else "train_step", self.ctx, samples,
                      ms_per_step=lambda s: s * 1e3, tokens_per_s=lambda s: n_tok / s,
                      tokens_per_step=n_tok, loss=losses[0], losses=losses,
                      note=f"one step: zero_grad, gem role mask, {what}, backward, "
                           "clip_grad_norm_(1.0), AdamW(1e-3, wd 0.01); vocab 516 tied")

    # --- embed --------------------------------------------------------------

    def stsb_texts(self):
        texts = []
        with open(self.args["stsb"], encoding="utf-8") as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) < 7:
                    raise BenchError(f"{self.args['stsb']}: line with {len(cols)} columns")
                texts += [cols[5], cols[6]]
        return texts

    def embed_batches(self, texts):
        """Encodes (outside any timing), sorts by length, pads: [(order idx, ids, roles)]."""
        torch = self.torch
        tok = self.ref.Tokenizer(self.args["tokenizer"])
        enc = [tok.encode(t)[: self.mcfg.seq_len] for t in texts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        batches = []
        for at in range(0, len(order), EMBED_BATCH):
            idx = order[at:at + EMBED_BATCH]
            T = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), T), PAD_ID, dtype=torch.int64)
            roles = torch.ones((len(idx), T), dtype=torch.int64)  # 1 = padding
            pool = torch.zeros(len(idx), T)
            for j, i in enumerate(idx):
                n = len(enc[i])
                ids[j, :n] = torch.tensor(enc[i])
                roles[j, :n] = 0
                if n > 1:
                    pool[j, 1:n] = 1.0 / (n - 1)  # mean over tokens after BOS
                else:
                    pool[j, 0] = 1.0
            batches.append((torch.tensor(idx), ids, roles, pool))
        return batches

    def embed_all(self, model, batches, n):
        """Embeddings [n, dim] in input order."""
        torch = self.torch
        out = torch.empty(n, self.mcfg.dim)
        table = self.table(CAUSAL_PADDED_TABLE)
        with torch.inference_mode():
            for idx, ids, roles, pool in batches:
                mask, row_ok = self.role_mask(roles, table)
                h = model(ids, mask, row_ok, logits=False)
                v = torch.bmm(pool[:, None, :], h)[:, 0]
                out[idx] = torch.nn.functional.normalize(v, dim=-1)
        return out

    def bench_embed(self):
        model = self.load_model(self.mcfg, self.weights).eval()
        texts = self.stsb_texts()
        t0 = time.perf_counter()
        batches = self.embed_batches(texts)
        encode_s = time.perf_counter() - t0
        vecs = self.embed_all(model, batches, len(texts))
        norm_err = float((vecs.norm(dim=-1) - 1).abs().max())
        if not norm_err < 1e-4:
            raise BenchError(f"embed: vectors not unit norm (max |norm - 1| = {norm_err})")
        samples = time_samples(lambda: self.embed_all(model, batches, len(texts)),
                               self.ctx["warmup"], self.ctx["repeats"], self.sync)
        n = len(texts)
        return result("embed", self.ctx, samples, texts_per_s=lambda s: n / s, n_texts=n,
                      n_batches=len(batches), max_norm_err=norm_err,
                      encode_s_untimed=encode_s,
                      note="STS-B test, length-sorted batches of 64, right-padded; mask + "
                           "forward (hidden only) + mean pool (no BOS, no pads) + L2 norm; "
                           "inference_mode; BPE encoding not timed")

    def run(self, name):
        if name == "generate":
            return self.bench_generate()
        if name == "prefill":
            return self.bench_prefill()
        if name == "train_step":
            return self.bench_train(pair=False)
        if name == "train_step_pair":
            return self.bench_train(pair=True)
        return self.bench_embed()

    # --- self-check ---------------------------------------------------------

    def selfcheck(self):
        torch, ref = self.torch, self.ref
        checks = {}

        # 1. greedy ids (KV cache) vs the float64 golden, 200 of them.
        with open(os.path.join(GOLDENS, "llama_stories260k.json")) as f:
            golden = json.load(f)["greedy"]["ids"]
        model = self.load_model(self.mcfg, self.weights).eval()
        model.init_cache(1)
        ids = self.greedy(model, len(golden))
        if ids != golden:
            at = next(i for i, (a, b) in enumerate(zip(ids, golden)) if a != b)
            raise AssertionError(f"greedy ids differ from the golden from step {at}")
        checks["greedy_200_ids_match_golden"] = True

        # 2. KV-cache step logits == full-sequence logits on the greedy path.
        seq = [1] + ids[:15]
        with torch.inference_mode():
            full = self.prefill(model, torch.tensor([seq]))[0]
            steps = torch.cat([model(torch.tensor([[t]]), start_pos=p)[0] for p, t in
                               enumerate(seq)])
        d = float((full - steps).abs().max())
        assert d < 1e-4, f"KV-cache vs full forward: {d}"
        checks["kv_cache_vs_full_max_abs"] = d

        # 3. float32 module vs the float64 reference forward.
        x = PREFILL_IDS[:64]
        ours = self.prefill(model, torch.tensor([x]))[0].double()
        want = ref.forward(self.mcfg, self.weights, x)
        d = float((ours - want).abs().max())
        assert d < 1e-3, f"fp32 prefill vs float64 reference: {d}"
        checks["prefill_vs_f64_ref_max_abs"] = d

        # 4. the role-table mask on a hand-written example (P P S S X X pad).
        roles = torch.tensor([[0, 0, 1, 1, 2, 2, 3]])
        mask, row_ok = self.role_mask(roles, self.table(GEM_TABLE))
        want = torch.tensor([
            [1, 0, 0, 0, 0, 0, 0],  # prefix: causal over prefix
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],  # special: prefix (causal) + itself
            [1, 1, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0],  # suffix: specials + suffix (causal), not the prefix
            [0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0],  # pad: nothing
        ], dtype=torch.bool)
        assert torch.equal(mask[0], want), f"gem mask:\n{mask[0].int()}"
        assert row_ok is not None and row_ok.tolist() == [[True] * 6 + [False]]
        checks["gem_mask_example"] = True

        # 5. pad rows: zero attention output and finite gradients.
        m2 = self.load_model(self.mcfg, self.weights)
        toks = torch.tensor([[1, 50, 60, 70, 0, 0]])
        roles = torch.tensor([[0, 0, 0, 0, 3, 3]])
        mask, row_ok = self.role_mask(roles, self.table(GEM_TABLE))
        att = m2.layers[0].attention
        xin = m2.tok_embeddings(toks)
        o = att(xin, m2.rope_cos[:6], m2.rope_sin[:6], mask, row_ok, None)
        assert float(o[0, 4:].abs().max()) == 0.0, "pad rows must give zero attention output"
        m2(toks, mask, row_ok).sum().backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in m2.parameters())
        checks["pad_rows_zero_and_finite_grads"] = True

        # 6. training: finite losses that fall over 3 steps, both variants.
        b = self.synthetic_batch()
        checks["batch_labelled_tokens"] = int((b["labels"] != -1).sum())
        checks["batch_positive_replaced"] = int((b["ids"] != b["ids_pos"]).sum())
        for pair in (False, True):
            _, step = self.make_trainer(pair)
            losses = [step() for _ in range(3)]
            assert all(math.isfinite(v) for v in losses), losses
            assert losses[2] < losses[1] < losses[0], f"loss does not fall: {losses}"
            checks["train_step_pair_losses" if pair else "train_step_losses"] = losses

        # 7. embeddings: unit norm, and independent of the batch (first 100 texts alone).
        texts = self.stsb_texts()
        assert len(texts) == 2758, len(texts)
        vecs = self.embed_all(model, self.embed_batches(texts), len(texts))
        norm_err = float((vecs.norm(dim=-1) - 1).abs().max())
        assert norm_err < 1e-4, norm_err
        few = self.embed_all(model, self.embed_batches(texts[:100]), 100)
        d = float((few - vecs[:100]).abs().max())
        assert d < 1e-4, f"embedding depends on the batch: {d}"
        checks["embed_max_norm_err"] = norm_err
        checks["embed_batch_independence_max_abs"] = d
        return checks


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------

def main():
    try:
        cfg, selfcheck = parse_args(sys.argv)
    except BenchError as e:
        emit({"error": str(e)}, 1)
    try:
        malloc = set_malloc(cfg["malloc"])
    except (OSError, AttributeError, BenchError) as e:
        emit({"error": f"malloc setting: {e}"}, 1)
    n = str(cfg["threads"])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n  # before torch (and its OpenMP / BLAS runtimes) load
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install raising something else
        emit({"error": f"import torch failed: {type(e).__name__}: {e}"}, 3)
    try:
        sys.path.insert(0, GOLDENS)
        import llama_ref as ref

        torch.set_num_threads(cfg["threads"])
        blas = find_openblas()
        if blas is not None:
            blas.openblas_set_num_threads(ctypes.c_int(cfg["threads"]))
        torch.manual_seed(0)
        if cfg["device"] == "cuda":
            if not torch.cuda.is_available():
                raise BenchError("'device' is \"cuda\" but torch.cuda.is_available() is False")
            # Every tensor and module the benches create lands on the GPU; the checkpoint is
            # read on the CPU and copied into the parameters.
            torch.set_default_device("cuda")
        for key in ("model", "tokenizer") + (("stsb",) if selfcheck or "embed" in
                                              cfg["benches"] else ()):
            if not os.path.isfile(cfg[key]):
                raise BenchError(f"'{key}': no such file {cfg[key]}")
        bench = Bench(torch, ref, cfg)
        if selfcheck:
            emit({"selfcheck": "ok", "torch": torch.__version__, "malloc": malloc,
                  "checks": bench.selfcheck()})
        results = [bench.run(name) for name in cfg["benches"]]
        emit({"torch": torch.__version__, "threads": cfg["threads"], "device": cfg["device"],
              "gpu": torch.cuda.get_device_name() if cfg["device"] == "cuda" else None,
              "torch_num_threads": torch.get_num_threads(),
              "openblas": blas is not None, "malloc": malloc, "results": results})
    except SystemExit:
        raise
    except BenchError as e:
        emit({"error": str(e)}, 1)
    except BaseException as e:  # noqa: BLE001 - every failure becomes one JSON line
        emit({"error": f"{type(e).__name__}: {e}",
              "traceback": traceback.format_exc(limit=4)}, 1)


if __name__ == "__main__":
    main()
