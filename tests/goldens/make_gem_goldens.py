#!/usr/bin/env python3
"""PyTorch golden for one GEM training step of gemkit: gem_batch.json.

What it is
----------
One forward + backward pass of a tiny Llama (vocab 20 with ids 16..19 the k = 4 GEM special
tokens, dim 16, 2 layers, 4 heads, 2 kv heads, head dim 4, hidden 24, RMSNorm eps 1e-5, RoPE theta
10000 on interleaved pairs, SwiGLU, tied classifier) over one padded batch of B = 7 rows, T = 12:

  rows 0..2  NTP rows: row 0 raw (BOS + 11 text tokens), row 1 raw (BOS + 8 text tokens + 3 pads),
             row 2 a GEM sample `BOS t t t | s1 s2 s3 s4 | t t t | pad`
             (roles 0,0,0,0,1,1,1,1,2,2,2,3);
  rows 3..4  anchors   `BOS + text + s1..s4`, right-padded (texts of 5 and 7 tokens incl. BOS);
  rows 5..6  positives `BOS + text + s1..s4`, right-padded (texts of 6 and 4 tokens incl. BOS).

Pad id 0 (role 3), BOS 1, text ids in 2..15. Roles: 0 prefix, 1 special, 2 suffix, 3 pad; the GEM
role table [[1,0,0,0],[1,2,0,0],[0,1,1,0],[0,0,0,0]] (table[query role][key role]: 0 none,
1 causal, 2 self, 3 all). A query with no visible key (pad rows) outputs exactly 0. RoPE position
= index in the row (0..T-1) for every token, pads included. Query head h reads kv head h // 2.

Losses:
  labels[t] = ids[t+1] if t+1 < T and role[t+1] is neither special nor pad, else -1 (rows 0..2);
  -1 everywhere in rows 3..6.
  ntp         = mean cross-entropy over the labelled positions of rows 0..2, with
                logits = model.norm(h) @ embed^T.
  embeddings  = model.norm(h) of the last layer at the 4 special positions of a row, mean-pooled,
                then x / sqrt(sum x^2 + 1e-12); embeddings_a (anchors), embeddings_b (positives).
  contrastive = 0.5 * (CE(S, [0,1]) + CE(S^T, [0,1])), S = (a @ b^T) * exp(clamp(logit_scale,
                0, log 100)).
  total       = (1 - alpha) * ntp + alpha * contrastive, alpha = 0.5.

Parameters use HF names and HF's [out, in] layout (y = x @ W^T; gate_proj = w1, up_proj = w3,
down_proj = w2), plus the scalar "logit_scale" (float32(log 20)). NOTE: q_proj / k_proj are used
as they are with *interleaved* RoPE (llama2.c convention, pair i = (x[2i], x[2i+1]) of each head,
freq theta^(-2i/hd)); they are not HF-permuted for rotate_half. Weights: 0.3 * randn, RMSNorm gains
1 + 0.1 * randn, drawn as float32 in name order after torch.manual_seed(SEED).

Output format
-------------
The ops.json / composite.json layout (see README.md): {"version", "generator", "torch",
"cases": [one case]} with the case {"name": "gem_batch/tiny_llama_k4", "op": "gem_batch", "attrs"
(config), "inputs" (ids [7,12] i32, roles [7,12] i32, labels [84] i32, special_rows_a [8] i32,
special_rows_b [8] i32 (flat row*T+pos indices of the anchors' / positives' special tokens, in
row order), every parameter, logit_scale), "outputs" (ntp, contrastive, total scalars,
embeddings_a [2,16], embeddings_b [2,16], and ntp_logits [3,12,20], the logits of the NTP rows),
"dout" {"total": 1}, "grads" (d total / d param for every parameter and logit_scale)}.
Tensors are {"shape", "dtype": "f32"|"i32", "data"}; everything is computed in float64 from the
float32 inputs, then rounded to float32 and written with 9 significant digits.

Regenerating
------------
From the repository root, with the system Python that has torch 1.13 (CPU):

    /usr/bin/python3 tests/goldens/make_gem_goldens.py

It takes a few seconds, is deterministic (two runs give byte-identical files) and stops with an
assertion error if a self-check fails: a second, loop-based forward written from the roles' plain
meaning (not the table) and a hand-written InfoNCE agree; gradcheck on a few coordinates and finite
differences on every parameter; no NaN/Inf; changing pad token ids changes no output or gradient
(except ntp_logits at the pad positions themselves, which carry no loss);
changing an anchor prefix token changes embeddings_a (and not embeddings_b); changing a suffix
token of row 2 leaves row 2's logits at its prefix and special positions unchanged.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gem_batch.json")
F32, I32, F64 = torch.float32, torch.int32, torch.float64
SEED = 20250604

GEM_TABLE = [[1, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
PREFIX, SPECIAL, SUFFIX, PAD = 0, 1, 2, 3
CFG = {"vocab": 20, "dim": 16, "nLayers": 2, "nHeads": 4, "nKvHeads": 2, "hidden": 24,
       "eps": 1e-5, "theta": 10000.0, "k": 4, "alpha": 0.5, "table": GEM_TABLE,
       "seqLen": 12, "padId": 0, "bos": 1, "specialIds": [16, 17, 18, 19], "ignoreIndex": -1,
       "nNtpRows": 3, "nPairs": 2, "logitScaleMax": math.log(100), "l2Eps": 1e-12}
B, T_LEN = 7, 12


# ----------------------------------------------------------------------------
# serialisation (same as make_goldens.py)
# ----------------------------------------------------------------------------

def T(x):
    x = x.detach()
    if x.is_floating_point():
        flat = x.to(F32).reshape(-1)
        assert torch.isfinite(flat).all(), "non-finite value in golden tensor"
        data = [float(f"{v:.9g}") for v in flat.tolist()]
        dtype = "f32"
    else:
        flat = x.reshape(-1)
        data = [int(v) for v in flat.tolist()]
        dtype = "i32"
    return {"shape": list(x.shape), "dtype": dtype, "data": data}


# ----------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------

def text(n, gen):
    return torch.randint(2, 16, (n,), generator=gen).tolist()


def build_batch(gen):
    c = CFG
    bos, sp = c["bos"], c["specialIds"]
    rows = []  # (ids, roles) unpadded
    rows.append(([bos] + text(11, gen), [PREFIX] * 12))
    rows.append(([bos] + text(8, gen), [PREFIX] * 9))
    pre, suf = [bos] + text(3, gen), text(3, gen)
    rows.append((pre + sp + suf, [PREFIX] * 4 + [SPECIAL] * 4 + [SUFFIX] * 3))
    for n in (5, 7, 6, 4):  # anchors, then positives (lengths incl. BOS)
        rows.append(([bos] + text(n - 1, gen) + sp, [PREFIX] * n + [SPECIAL] * 4))
    ids = torch.full((B, T_LEN), c["padId"], dtype=torch.int64)
    roles = torch.full((B, T_LEN), PAD, dtype=torch.int64)
    for r, (i, ro) in enumerate(rows):
        assert len(i) == len(ro) <= T_LEN
        ids[r, :len(i)] = torch.tensor(i)
        roles[r, :len(ro)] = torch.tensor(ro)
    labels = torch.full((B, T_LEN), -1, dtype=torch.int64)
    for r in range(c["nNtpRows"]):
        for t in range(T_LEN - 1):
            if roles[r, t + 1] not in (SPECIAL, PAD):
                labels[r, t] = ids[r, t + 1]
    special = [[r * T_LEN + t for t in range(T_LEN) if roles[r, t] == SPECIAL] for r in range(B)]
    rows_a = special[3] + special[4]
    rows_b = special[5] + special[6]
    assert len(rows_a) == len(rows_b) == 8
    # the anchors' and positives' texts differ
    assert rows[3][0] != rows[5][0] and rows[4][0] != rows[6][0]
    return ids, roles, labels.reshape(-1), torch.tensor(rows_a), torch.tensor(rows_b)


def param_shapes(c):
    dim, hd = c["dim"], c["dim"] // c["nHeads"]
    kv = c["nKvHeads"] * hd
    s = {"model.embed_tokens.weight": (c["vocab"], dim)}
    for l in range(c["nLayers"]):
        p = f"model.layers.{l}."
        s.update({p + "input_layernorm.weight": (dim,),
                  p + "self_attn.q_proj.weight": (dim, dim),
                  p + "self_attn.k_proj.weight": (kv, dim),
                  p + "self_attn.v_proj.weight": (kv, dim),
                  p + "self_attn.o_proj.weight": (dim, dim),
                  p + "post_attention_layernorm.weight": (dim,),
                  p + "mlp.gate_proj.weight": (c["hidden"], dim),
                  p + "mlp.up_proj.weight": (c["hidden"], dim),
                  p + "mlp.down_proj.weight": (dim, c["hidden"])})
    s["model.norm.weight"] = (dim,)
    return s


def init_params():
    params = {}
    for name, shape in param_shapes(CFG).items():
        if "norm" in name:
            params[name] = (1.0 + 0.1 * torch.randn(shape, dtype=F32)).to(F32)
        else:
            params[name] = (0.3 * torch.randn(shape, dtype=F32)).to(F32)
    params["logit_scale"] = torch.tensor(math.log(20), dtype=F32)
    return params


# ----------------------------------------------------------------------------
# reference (float64, batched)
# ----------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """Interleaved pairs; x [B,T,H,D], position = t."""
    Bn, Tn, _, D = x.shape
    i = torch.arange(D // 2, dtype=F64)
    freq = theta ** (-2.0 * i / D)
    ang = torch.arange(Tn, dtype=F64)[None, :, None, None] * freq
    c, s = torch.cos(ang), torch.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(x.shape)


def allowed_mask(roles, table):
    """bool [B, T(query), S(key)] from the role table."""
    tab = torch.tensor(table, dtype=torch.int64)
    rule = tab[roles[:, :, None], roles[:, None, :]]
    n = roles.shape[1]
    t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (rule == 3) | ((rule == 1) & (s <= t)) | ((rule == 2) & (s == t))


def attention(q, k, v, mask, scale):
    group = q.shape[2] // k.shape[2]
    kk, vv = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    m = mask[:, None]  # [B,1,T,S]
    has_any = m.any(-1, keepdim=True)
    sc = torch.einsum("bthd,bshd->bhts", q, kk) * scale
    sc = torch.where(m, sc, torch.full_like(sc, -math.inf))
    sc = torch.where(has_any, sc, torch.zeros_like(sc))  # empty rows stay finite
    p = torch.softmax(sc, -1) * m  # empty rows -> exactly 0
    return torch.einsum("bhts,bshd->bthd", p, vv)


def final_hidden(P, ids, roles):
    c = CFG
    Bn, Tn = ids.shape
    H, Hkv, hd = c["nHeads"], c["nKvHeads"], c["dim"] // c["nHeads"]
    mask = allowed_mask(roles, c["table"])
    h = P["model.embed_tokens.weight"][ids]
    for l in range(c["nLayers"]):
        p = f"model.layers.{l}."
        x = rmsnorm(h, P[p + "input_layernorm.weight"], c["eps"])
        q = (x @ P[p + "self_attn.q_proj.weight"].T).reshape(Bn, Tn, H, hd)
        k = (x @ P[p + "self_attn.k_proj.weight"].T).reshape(Bn, Tn, Hkv, hd)
        v = (x @ P[p + "self_attn.v_proj.weight"].T).reshape(Bn, Tn, Hkv, hd)
        q, k = rope(q, c["theta"]), rope(k, c["theta"])
        a = attention(q, k, v, mask, 1.0 / math.sqrt(hd)).reshape(Bn, Tn, H * hd)
        h = h + a @ P[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, P[p + "post_attention_layernorm.weight"], c["eps"])
        g = x @ P[p + "mlp.gate_proj.weight"].T
        u = x @ P[p + "mlp.up_proj.weight"].T
        h = h + (g * torch.sigmoid(g) * u) @ P[p + "mlp.down_proj.weight"].T
    return rmsnorm(h, P["model.norm.weight"], c["eps"])  # [B,T,D]


def l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + CFG["l2Eps"])


def forward(P, ids, roles, labels, rows_a, rows_b):
    c = CFG
    k, n_ntp = c["k"], c["nNtpRows"]
    hid = final_hidden(P, ids, roles)
    flat = hid.reshape(-1, c["dim"])
    n = n_ntp * ids.shape[1]
    logits = flat[:n] @ P["model.embed_tokens.weight"].T
    ntp = F.cross_entropy(logits, labels[:n], ignore_index=-1, reduction="mean")
    a = l2norm(flat[rows_a].reshape(-1, k, c["dim"]).mean(1))
    b = l2norm(flat[rows_b].reshape(-1, k, c["dim"]).mean(1))
    scale = torch.exp(torch.clamp(P["logit_scale"], 0.0, c["logitScaleMax"]))
    S = (a @ b.T) * scale
    tgt = torch.arange(a.shape[0])
    cl = 0.5 * (F.cross_entropy(S, tgt) + F.cross_entropy(S.T, tgt))
    total = (1 - c["alpha"]) * ntp + c["alpha"] * cl
    return {"ntp": ntp, "contrastive": cl, "total": total, "embeddings_a": a,
            "embeddings_b": b, "ntp_logits": logits.reshape(n_ntp, ids.shape[1], c["vocab"])}


# ----------------------------------------------------------------------------
# independent check: per row, per head, per query loops; visibility from the roles' meaning
# ----------------------------------------------------------------------------

def visible(roles_row, t, s):
    """GEM in words: prefix causal; a special sees the prefix and itself; a suffix token sees the
    specials and the suffix causally; pads see nothing and nobody sees pads."""
    rt, rs = int(roles_row[t]), int(roles_row[s])
    if rt == PAD or rs == PAD:
        return False
    if rt == PREFIX:
        return rs == PREFIX and s <= t
    if rt == SPECIAL:
        return rs == PREFIX or s == t
    return rs in (SPECIAL, SUFFIX) and s <= t  # suffix


def naive_forward(P, ids, roles, labels, rows_a, rows_b):
    c = CFG
    D, H, Hkv = c["dim"], c["nHeads"], c["nKvHeads"]
    hd = D // H
    emb = P["model.embed_tokens.weight"]

    def norm(x, w):
        return x / math.sqrt(float((x * x).sum()) / D + c["eps"]) * w

    def rot(x, pos):  # one head [hd], via complex numbers
        z = torch.view_as_complex(x.reshape(hd // 2, 2).contiguous())
        f = torch.tensor([c["theta"] ** (-2.0 * i / hd) for i in range(hd // 2)], dtype=F64)
        return torch.view_as_real(z * torch.polar(torch.ones_like(f), pos * f)).reshape(hd)

    hid = torch.zeros(B, T_LEN, D, dtype=F64)
    for r in range(B):
        h = [emb[int(ids[r, t])].clone() for t in range(T_LEN)]
        for l in range(c["nLayers"]):
            p = f"model.layers.{l}."
            Wq, Wk, Wv, Wo = (P[p + f"self_attn.{n}_proj.weight"] for n in "qkvo")
            xs = [norm(h[t], P[p + "input_layernorm.weight"]) for t in range(T_LEN)]
            q = [torch.mv(Wq, x) for x in xs]
            kv_k = [torch.mv(Wk, x) for x in xs]
            kv_v = [torch.mv(Wv, x) for x in xs]
            new = []
            for t in range(T_LEN):
                out = torch.zeros(D, dtype=F64)
                keys = [s for s in range(T_LEN) if visible(roles[r], t, s)]
                for hh in range(H):
                    g = hh // (H // Hkv)
                    if not keys:
                        continue
                    qh = rot(q[t][hh * hd:(hh + 1) * hd], t)
                    sc = torch.stack([(qh * rot(kv_k[s][g * hd:(g + 1) * hd], s)).sum()
                                      for s in keys]) / math.sqrt(hd)
                    w = torch.exp(sc - sc.max())
                    w = w / w.sum()
                    out[hh * hd:(hh + 1) * hd] = sum(w[i] * kv_v[s][g * hd:(g + 1) * hd]
                                                     for i, s in enumerate(keys))
                new.append(h[t] + torch.mv(Wo, out))
            h = []
            for t in range(T_LEN):
                x = norm(new[t], P[p + "post_attention_layernorm.weight"])
                gt = torch.mv(P[p + "mlp.gate_proj.weight"], x)
                up = torch.mv(P[p + "mlp.up_proj.weight"], x)
                h.append(new[t] + torch.mv(P[p + "mlp.down_proj.weight"], gt / (1 + torch.exp(-gt)) * up))
        for t in range(T_LEN):
            hid[r, t] = norm(h[t], P["model.norm.weight"])
    # NTP: mean over labelled positions of logsumexp - target logit
    terms, logits = [], torch.zeros(c["nNtpRows"], T_LEN, c["vocab"], dtype=F64)
    for r in range(c["nNtpRows"]):
        for t in range(T_LEN):
            lg = torch.mv(emb, hid[r, t])
            logits[r, t] = lg
            y = int(labels[r * T_LEN + t])
            if y >= 0:
                terms.append(float(torch.logsumexp(lg, 0)) - float(lg[y]))
    ntp = sum(terms) / len(terms)

    def pooled(rowlist):
        vs = []
        for i in range(0, len(rowlist), c["k"]):
            m = sum(hid.reshape(-1, D)[int(j)] for j in rowlist[i:i + c["k"]]) / c["k"]
            vs.append(m / math.sqrt(float((m * m).sum()) + 1e-12))
        return torch.stack(vs)

    a, b = pooled(rows_a), pooled(rows_b)
    lam = min(max(float(P["logit_scale"]), 0.0), math.log(100))
    n = a.shape[0]
    S = [[math.exp(lam) * float((a[i] * b[j]).sum()) for j in range(n)] for i in range(n)]
    fwd = sum(math.log(sum(math.exp(S[i][j]) for j in range(n))) - S[i][i] for i in range(n)) / n
    bwd = sum(math.log(sum(math.exp(S[j][i]) for j in range(n))) - S[i][i] for i in range(n)) / n
    cl = 0.5 * (fwd + bwd)
    return {"ntp": ntp, "contrastive": cl, "total": 0.5 * ntp + 0.5 * cl,
            "embeddings_a": a, "embeddings_b": b, "ntp_logits": logits}


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------

def main():
    torch.manual_seed(SEED)
    params = init_params()
    ids, roles, labels, rows_a, rows_b = build_batch(torch.Generator().manual_seed(SEED + 1))
    names = list(params)
    P = {k: v.to(F64).requires_grad_(True) for k, v in params.items()}

    def run(P_, ids_=ids, roles_=roles, labels_=labels):
        return forward(P_, ids_, roles_, labels_, rows_a, rows_b)

    out = run(P)
    grads = dict(zip(names, torch.autograd.grad(out["total"], [P[k] for k in names])))
    for k, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite grad {k}"
    for k, v in out.items():
        assert torch.isfinite(v).all(), f"non-finite output {k}"

    # 1. independent loop-based forward
    with torch.no_grad():
        ref = naive_forward({k: v.detach() for k, v in P.items()}, ids, roles, labels,
                            rows_a, rows_b)
    for k in out:
        assert close(out[k], ref[k]), f"naive forward disagrees on {k}"
    # the table mask equals the roles' plain meaning
    m = allowed_mask(roles, GEM_TABLE)
    for r in range(B):
        for t in range(T_LEN):
            for s in range(T_LEN):
                assert bool(m[r, t, s]) == visible(roles[r], t, s)

    # 2. gradcheck on a few coordinates (float64), and finite differences on every parameter
    picks = [("model.embed_tokens.weight", 17 * 16 + 3), ("model.embed_tokens.weight", 5 * 16 + 9),
             ("model.layers.0.self_attn.q_proj.weight", 37), ("model.layers.1.self_attn.k_proj.weight", 70),
             ("model.layers.1.mlp.down_proj.weight", 100), ("model.norm.weight", 4), ("logit_scale", 0)]
    base = {k: v.detach().clone() for k, v in P.items()}

    def f_sel(x):
        Q = {}
        for k, v in base.items():
            Q[k] = v.clone()
        for i, (k, j) in enumerate(picks):
            flat = Q[k].reshape(-1)
            Q[k] = torch.cat([flat[:j], x[i:i + 1], flat[j + 1:]]).reshape(base[k].shape)
        o = run(Q)
        return torch.stack([o["total"], o["ntp"], o["contrastive"]])

    x0 = torch.stack([base[k].reshape(-1)[j] for k, j in picks]).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f_sel, (x0,), eps=1e-6, atol=1e-7, rtol=1e-5)

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        Pd = {k: v.detach().clone() for k, v in P.items()}
        for name in names:
            for _ in range(2):
                idx = int(torch.randint(0, Pd[name].numel(), (1,), generator=gen))
                flat = Pd[name].view(-1)
                old = flat[idx].item()
                flat[idx] = old + 1e-6
                lp = run(Pd)["total"].item()
                flat[idx] = old - 1e-6
                lm = run(Pd)["total"].item()
                flat[idx] = old
                fd = (lp - lm) / 2e-6
                an = grads[name].view(-1)[idx].item()
                assert abs(fd - an) <= 1e-7 + 1e-5 * abs(an), (name, idx, fd, an)

    def outputs_and_grads(ids_):
        Q = {k: v.detach().clone().requires_grad_(True) for k, v in P.items()}
        o = run(Q, ids_)
        g = torch.autograd.grad(o["total"], [Q[k] for k in names])
        return {k: v.detach() for k, v in o.items()}, dict(zip(names, g))

    # 3. pads contribute nothing: other pad ids give the same outputs and grads
    ids_pad = ids.clone()
    ids_pad[roles == PAD] = torch.arange(int((roles == PAD).sum())) % 14 + 2
    o2, g2 = outputs_and_grads(ids_pad)
    keep = roles[:CFG["nNtpRows"]] != PAD  # ntp_logits at pad positions are not an output of note
    for k in out:
        a_, b_ = (out[k], o2[k]) if k != "ntp_logits" else (out[k][keep], o2[k][keep])
        assert close(a_, b_, 1e-13), f"pad ids change {k}"
    for k in names:
        assert close(grads[k], g2[k], 1e-13), f"pad ids change grad {k}"
    # (not vacuous: the pad positions' own hidden states do change)
    with torch.no_grad():
        h1, h2 = final_hidden(base, ids, roles), final_hidden(base, ids_pad, roles)
    assert not close(h1[roles == PAD], h2[roles == PAD], 1e-6)

    # 4. the anchors' specials see their prefix
    ids_pre = ids.clone()
    for r in (3, 4):
        ids_pre[r, 2] = 2 + (int(ids[r, 2]) - 2 + 5) % 14
    o3, _ = outputs_and_grads(ids_pre)
    diff = (o3["embeddings_a"] - out["embeddings_a"].detach()).abs().amax(-1)
    assert (diff > 1e-4).all(), f"anchor prefix does not reach the embedding: {diff}"
    assert close(o3["embeddings_b"], out["embeddings_b"], 1e-13)

    # 5. row 2's prefix and special positions do not see its suffix
    ids_suf = ids.clone()
    suf = (roles[2] == SUFFIX).nonzero()[:, 0]
    ids_suf[2, suf[1]] = 2 + (int(ids[2, suf[1]]) - 2 + 7) % 14
    o4, _ = outputs_and_grads(ids_suf)
    before = (roles[2] == PREFIX) | (roles[2] == SPECIAL)
    assert int(before.sum()) == 8
    assert close(o4["ntp_logits"][2][before], out["ntp_logits"][2][before].detach(), 1e-13)
    assert not close(o4["ntp_logits"][2][suf[1]:], out["ntp_logits"][2][suf[1]:].detach(), 1e-4)
    assert close(o4["embeddings_a"], out["embeddings_a"], 1e-13)

    # write
    inputs = {"ids": ids.to(I32), "roles": roles.to(I32), "labels": labels.to(I32),
              "special_rows_a": rows_a.to(I32), "special_rows_b": rows_b.to(I32)}
    inputs.update(params)
    attrs = {k: CFG[k] for k in ("vocab", "dim", "nLayers", "nHeads", "nKvHeads", "hidden", "eps",
                                 "theta", "k", "alpha", "table", "seqLen", "padId", "bos",
                                 "specialIds", "ignoreIndex", "nNtpRows", "nPairs",
                                 "logitScaleMax", "l2Eps")}
    attrs["seed"] = SEED
    case = {"name": "gem_batch/tiny_llama_k4", "op": "gem_batch", "attrs": attrs,
            "inputs": {k: T(v) for k, v in inputs.items()},
            "outputs": {k: T(v) for k, v in out.items()},
            "dout": {"total": T(torch.tensor(1.0))},
            "grads": {k: T(g) for k, g in grads.items()}}
    header = json.dumps({"version": 1, "generator": "make_gem_goldens.py",
                         "torch": torch.__version__}, separators=(",", ":"))[:-1]
    body = json.dumps(case, separators=(",", ":"), allow_nan=False)
    with open(OUT_PATH, "w") as f:
        f.write(f'{header},"cases":[\n{body}\n]}}\n')
    json.load(open(OUT_PATH))
    print(f"wrote {os.path.relpath(OUT_PATH)}: {os.path.getsize(OUT_PATH)} bytes")
    for k in ("ntp", "contrastive", "total"):
        print(f"  {k} = {float(out[k]):.9g}")


if __name__ == "__main__":
    main()
