#!/usr/bin/env python3
"""PyTorch reference-value ("golden") generator for gemkit.

Writes two JSON files next to this script:

  ops.json        one case per op configuration (matmul, unary, binary, reduce,
                  softmax/log_softmax, rmsnorm, rope, swiglu, embedding,
                  cross_entropy, attention with role tables, adamw,
                  clip_grad_norm, and matmul, embedding and the classifier's
                  cross-entropy with an f16 operand), with forward outputs and, where the op is
                  differentiable, an upstream gradient `dout` and the input
                  gradients d(sum(out * dout))/d(input).
  composite.json  one forward+backward case of a two-layer tiny Llama under the
                  GEM role mask (loss, logits, and d loss / d param for every
                  parameter).

Rerun from the repository root with the system torch (1.13, CPU):

    /usr/bin/python3 tests/goldens/make_goldens.py

The output is deterministic: every op family reseeds with torch.manual_seed.
Inputs are drawn as float32; every reference is computed in float64 from those
exact float32 values (gradients via torch.autograd in float64), then rounded to
float32 and written with 9 significant digits so float32 round-trips exactly.
Tensor format: {"shape": [...], "dtype": "f32"|"f16"|"i32", "data": [flat row-major]}
(scalars have shape [] and a one-element data list). See README.md.

The script also checks itself: independent re-implementations (naive loops,
triu-masked softmax, complex-number RoPE, hand-written AdamW/clip, finite
differences, torch.autograd.gradcheck) must agree, and no written value may be
NaN or infinite.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
F32, I32, F64 = torch.float32, torch.int32, torch.float64

# GEM role table: 0 prefix, 1 special, 2 suffix, 3 pad.
# Rules: 0 none, 1 causal (s <= t), 2 self (s == t), 3 all.
GEM_TABLE = [[1, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
SPECIALS_SEE_EACH_OTHER_TABLE = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
CAUSAL_TABLE = [[1]]
BIDIRECTIONAL_TABLE = [[3]]


# ----------------------------------------------------------------------------
# serialisation helpers
# ----------------------------------------------------------------------------

def f32num(x):
    """Round a Python float to float32 and return the 9-significant-digit value."""
    return float(f"{float(np.float32(x)):.9g}")


def T(x):
    """Serialise a tensor (float -> rounded f32, int -> i32)."""
    x = x.detach()
    if x.is_floating_point():
        flat = x.to(F32).reshape(-1)
        assert torch.isfinite(flat).all(), "non-finite value in golden tensor"
        data = [float(f"{v:.9g}") for v in flat.tolist()]
        dtype = "f32"
    else:
        flat = x.reshape(-1)
        assert flat.abs().max().item() < 2**31 if flat.numel() else True
        data = [int(v) for v in flat.tolist()]
        dtype = "i32"
    return {"shape": list(x.shape), "dtype": dtype, "data": data}


def randn(*shape, scale=1.0):
    return (torch.randn(tuple(shape), dtype=F32) * scale).to(F32)


def uniform(shape, lo, hi):
    return (torch.rand(tuple(shape), dtype=F32) * (hi - lo) + lo).to(F32)


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


def make_case(name, op, attrs, inputs, fn, diff=(), doutput=True):
    """Build one golden case.

    inputs: name -> float32 or int32 tensor (written as given).
    fn(**inputs64) -> dict of outputs, where float inputs are float64 (those in
    `diff` require grad) and int inputs are int64.
    diff: names of the inputs to differentiate. If non-empty, a random float32
    upstream gradient `dout` is drawn for every output and
    grads[k] = d(sum_o sum(out_o * dout_o)) / d inputs[k].
    """
    x64 = {}
    for k, v in inputs.items():
        if v.is_floating_point():
            assert v.dtype == F32
            x64[k] = v.to(F64).requires_grad_(k in diff)
        else:
            assert v.dtype == I32
            x64[k] = v.to(torch.int64)
    outs = fn(**x64)
    case = {
        "name": name,
        "op": op,
        "attrs": attrs,
        "inputs": {k: T(v) for k, v in inputs.items()},
        "outputs": {k: T(v) for k, v in outs.items()},
    }
    if diff:
        douts = {k: randn(*v.shape) for k, v in outs.items()}
        total = sum((outs[k] * douts[k].to(F64)).sum() for k in outs)
        gs = torch.autograd.grad(total, [x64[k] for k in diff], allow_unused=True)
        grads = {}
        for k, g in zip(diff, gs):
            g = torch.zeros_like(x64[k]) if g is None else g
            assert not torch.isnan(g).any(), f"{name}: NaN gradient for {k}"
            grads[k] = T(g)
        case["dout"] = {k: T(v) for k, v in douts.items()}
        case["grads"] = grads
    return case


# ----------------------------------------------------------------------------
# reference implementations (float64)
# ----------------------------------------------------------------------------

def matmul_ref(a, b, transA, transB):
    if transA:
        a = a.transpose(-1, -2)
    if transB:
        b = b.transpose(-1, -2)
    return a @ b


def rmsnorm_ref(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope_ref(x, pos, theta):
    """Interleaved-pair RoPE (llama2.c). x [B,T,H,D], pos int [B,T]."""
    D = x.shape[-1]
    i = torch.arange(D // 2, dtype=F64)
    freq = theta ** (-2.0 * i / D)
    ang = pos.to(F64)[:, :, None, None] * freq  # [B,T,1,D/2]
    c, s = torch.cos(ang), torch.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(x.shape)


def allowed_mask(roles, table):
    """roles int [B,T], table RxR -> bool [B,T(query),S(key)]."""
    tab = torch.tensor(table, dtype=torch.int64)
    rule = tab[roles[:, :, None], roles[:, None, :]]
    T_ = roles.shape[1]
    t = torch.arange(T_)[:, None]
    s = torch.arange(T_)[None, :]
    return (rule == 3) | ((rule == 1) & (s <= t)) | ((rule == 2) & (s == t))


def attention_ref(q, k, v, roles, table, scale):
    """Role-table masked attention. Rows with no allowed key output exactly 0
    and pass back exactly zero gradient (no NaN)."""
    Hq, Hkv = q.shape[2], k.shape[2]
    assert Hq % Hkv == 0
    group = Hq // Hkv
    kk = k.repeat_interleave(group, dim=2)  # query head h -> kv head h // group
    vv = v.repeat_interleave(group, dim=2)
    mask = allowed_mask(roles, table)[:, None]  # [B,1,T,S]
    has_any = mask.any(-1, keepdim=True)  # [B,1,T,1]
    scores = torch.einsum("bthd,bshd->bhts", q, kk) * scale
    scores = torch.where(mask, scores, torch.full_like(scores, -math.inf))
    scores = torch.where(has_any, scores, torch.zeros_like(scores))  # empty rows: finite
    p = torch.softmax(scores, dim=-1) * mask  # empty rows -> all zeros
    return torch.einsum("bhts,bshd->bthd", p, vv)


def silu(x):
    return x * torch.sigmoid(x)


# ----------------------------------------------------------------------------
# op families
# ----------------------------------------------------------------------------

def matmul_cases():
    torch.manual_seed(1)
    cases = []

    def add(name, M, K, N, batch_a=(), batch_b=None, transA=False, transB=False):
        batch_b = batch_a if batch_b is None else batch_b
        a_shape = (*batch_a, K, M) if transA else (*batch_a, M, K)
        b_shape = (*batch_b, N, K) if transB else (*batch_b, K, N)
        a, b = randn(*a_shape), randn(*b_shape)
        attrs = {"transA": transA, "transB": transB}
        case = make_case(f"matmul/{name}", "matmul", attrs, {"a": a, "b": b},
                         lambda a, b: {"out": matmul_ref(a, b, transA, transB)},
                         diff=("a", "b"))
        # independent check with numpy einsum
        an, bn = a.double().numpy(), b.double().numpy()
        if transA:
            an = np.swapaxes(an, -1, -2)
        if transB:
            bn = np.swapaxes(bn, -1, -2)
        ref = np.einsum("...mk,kn->...mn", an, bn) if len(batch_b) == 0 else \
            np.einsum("...mk,...kn->...mn", an, bn)
        assert np.allclose(np.array(case["outputs"]["out"]["data"]),
                           ref.astype(np.float32).reshape(-1), rtol=1e-6, atol=1e-6)
        cases.append(case)

    add("1x1x1", 1, 1, 1)
    add("odd_33x17x65", 33, 17, 65)
    add("64x64x64", 64, 64, 64)
    add("7x130x3", 7, 130, 3)
    add("batched_2x3x5x9_2x3x9x4", 5, 9, 4, batch_a=(2, 3))
    add("batched_a4x6x10_b2d_10x7", 6, 10, 7, batch_a=(4,), batch_b=())
    for tA in (False, True):
        for tB in (False, True):
            add(f"trans_{'T' if tA else 'N'}{'T' if tB else 'N'}_11x13x5", 11, 13, 5,
                transA=tA, transB=tB)
    add("k1_6x1x9", 6, 1, 9)
    return cases


UNARY = {
    "neg": lambda x: -x,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "sigmoid": torch.sigmoid,
    "silu": silu,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "square": lambda x: x * x,
    "abs": torch.abs,
    "recip": lambda x: 1.0 / x,
}
POSITIVE_DOMAIN = {"log", "sqrt", "rsqrt", "recip"}


def unary_cases():
    torch.manual_seed(2)
    cases = []

    def add(name, fn, x):
        f = UNARY[fn]
        cases.append(make_case(f"unary/{name}", "unary", {"fn": fn}, {"x": x},
                               lambda x: {"out": f(x)}, diff=("x",)))

    for fn in UNARY:
        x = uniform((3, 7), 0.1, 3.0) if fn in POSITIVE_DOMAIN else uniform((3, 7), -3.0, 3.0)
        add(f"{fn}_3x7", fn, x)
    add("exp_130", "exp", uniform((130,), -5.0, 5.0))
    for fn, lim in (("exp", 80.0), ("sigmoid", 60.0), ("silu", 60.0), ("tanh", 30.0)):
        x = uniform((24,), -lim, lim)
        x[0], x[1], x[2] = -lim, lim, 0.0
        add(f"{fn}_extreme", fn, x)
    return cases


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "pow": torch.pow,
}


def binary_cases():
    torch.manual_seed(3)
    shapes = [("4x5", (4, 5), (4, 5)), ("3x1x5_4x5", (3, 1, 5), (4, 5)),
              ("2x3_scalar", (2, 3), ()), ("1_6", (1,), (6,)), ("5x1_1x6", (5, 1), (1, 6))]
    cases = []
    for fn, f in BINARY.items():
        for tag, sa, sb in shapes:
            if fn == "pow":
                a, b = uniform(sa, 0.5, 2.0), uniform(sb, -2.0, 2.0)
            elif fn == "div":
                a = uniform(sa, -3.0, 3.0)
                b = uniform(sb, 0.5, 2.0) * torch.where(torch.rand(sb) < 0.5, -1.0, 1.0).to(F32)
            else:
                a, b = uniform(sa, -3.0, 3.0), uniform(sb, -3.0, 3.0)
            if fn in ("maximum", "minimum"):  # no ties, not even near-ties
                assert ((a.double() - b.double()).abs() > 1e-3).all()
            cases.append(make_case(f"binary/{fn}_{tag}", "binary", {"fn": fn},
                                   {"a": a, "b": b}, lambda a, b, f=f: {"out": f(a, b)},
                                   diff=("a", "b")))
    return cases


def reduce_cases():
    torch.manual_seed(4)
    configs = [((4, 5, 6), 0, False), ((4, 5, 6), 1, False), ((4, 5, 6), 1, True),
               ((4, 5, 6), 2, False), ((4, 5, 6), -1, False), ((4, 5, 6), -1, True),
               ((1, 9), 1, False), ((300,), 0, False), ((3, 1000), 1, False)]
    fns = {"sum": lambda x, d, k: x.sum(d, keepdim=k),
           "mean": lambda x, d, k: x.mean(d, keepdim=k),
           "max": lambda x, d, k: torch.max(x, d, keepdim=k).values}
    cases = []
    for fn, f in fns.items():
        for shape, axis, keep in configs:
            if fn == "mean" and shape == (3, 1000):
                continue  # size budget: the long-axis path is covered by sum/max
            x = randn(*shape)
            if fn == "max":  # no ties along the reduced axis
                srt = x.double().sort(dim=axis).values
                assert shape[axis] == 1 or (srt.diff(dim=axis) > 0).all()
            name = f"reduce/{fn}_{'x'.join(map(str, shape))}_axis{axis}" + ("_keepdim" if keep else "")
            cases.append(make_case(name, "reduce", {"fn": fn, "axis": axis, "keepdim": keep},
                                   {"x": x}, lambda x, f=f, a=axis, k=keep: {"out": f(x, a, k)},
                                   diff=("x",)))
    return cases


def softmax_cases():
    torch.manual_seed(5)
    cases = []
    inputs = [("3x7", randn(3, 7, scale=2.0)), ("2x3x130", randn(2, 3, 130, scale=2.0)),
              ("1x1", randn(1, 1))]
    ext = uniform((4, 9), -1e4, 1e4)
    ext[2, :] = 1e4  # constant huge row
    ext[3, :] = -1e4  # constant huge negative row
    ext[1, 0] = 1e4
    ext[1, 1] = -1e4
    inputs.append(("extreme_4x9", ext))
    for op, f in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax)):
        for tag, x in inputs:
            cases.append(make_case(f"{op}/{tag}", op, {"axis": -1}, {"x": x},
                                   lambda x, f=f: {"out": f(x, -1)}, diff=("x",)))
    return cases


def rmsnorm_cases():
    torch.manual_seed(6)
    cases = []
    for shape in ((3, 8), (2, 5, 17), (1, 64)):
        D = shape[-1]
        x, w = randn(*shape), (1.0 + 0.1 * randn(D)).to(F32)
        cases.append(make_case(f"rmsnorm/{'x'.join(map(str, shape))}", "rmsnorm", {"eps": 1e-5},
                               {"x": x, "w": w},
                               lambda x, w: {"out": rmsnorm_ref(x, w, 1e-5)}, diff=("x", "w")))
    return cases


def rope_cases():
    torch.manual_seed(7)
    theta = 10000.0
    cases = []

    def add(name, shape, pos=None):
        B, T_ = shape[0], shape[1]
        x = randn(*shape)
        inputs = {"x": x}
        if pos is not None:
            inputs["pos"] = pos
        p_eff = pos if pos is not None else torch.arange(T_, dtype=I32)[None].expand(B, T_)

        def fn(x, pos=None):
            return {"out": rope_ref(x, p_eff.to(torch.int64) if pos is None else pos, theta)}

        case = make_case(f"rope/{name}", "rope", {"theta": theta}, inputs, fn, diff=("x",))
        # independent check: complex multiplication by exp(i * pos * freq)
        D = shape[-1]
        xc = torch.view_as_complex(x.double().reshape(*shape[:-1], D // 2, 2).contiguous())
        freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=F64) / D)
        rot = torch.polar(torch.ones(1, dtype=F64), p_eff.double()[:, :, None, None] * freq)
        ref = torch.view_as_real(xc * rot).reshape(shape)
        assert close(rope_ref(x.double(), p_eff.long(), theta), ref)
        cases.append(case)

    add("2x5x3x8", (2, 5, 3, 8))
    add("1x7x2x6_pos", (1, 7, 2, 6), torch.tensor([[3, 0, 5, 1, 9, 2, 4]], dtype=I32))
    add("1x1x1x2", (1, 1, 1, 2))
    return cases


def swiglu_cases():
    torch.manual_seed(8)
    cases = []
    for shape in ((3, 7), (2, 4, 43)):
        a, b = randn(*shape, scale=2.0), randn(*shape)
        cases.append(make_case(f"swiglu/{'x'.join(map(str, shape))}", "swiglu", {},
                               {"a": a, "b": b}, lambda a, b: {"out": silu(a) * b},
                               diff=("a", "b")))
    return cases


def embedding_cases():
    torch.manual_seed(9)
    cases = []
    for V, D, ids_shape in ((11, 5, (2, 6)), (3, 1, (7,)), (50, 16, (4, 9))):
        w = randn(V, D)
        ids = torch.randint(0, V, ids_shape, dtype=I32)
        assert ids.unique().numel() < ids.numel()  # repeated ids present
        case = make_case(f"embedding/v{V}_d{D}_ids{'x'.join(map(str, ids_shape))}", "embedding", {},
                         {"w": w, "ids": ids}, lambda w, ids: {"out": w[ids]}, diff=("w",))
        cases.append(case)
    return cases


def cross_entropy_cases():
    torch.manual_seed(10)
    cases = []

    def add(name, logits, targets):
        def fn(logits, targets):
            return {"out": F.cross_entropy(logits, targets, ignore_index=-1, reduction="mean")}

        # independent check: mean over kept rows of logsumexp - logit[target]
        l64, t = logits.double(), targets.long()
        keep = t != -1
        rows = torch.logsumexp(l64[keep], -1) - l64[keep].gather(1, t[keep][:, None])[:, 0]
        assert close(fn(l64, t)["out"], rows.mean())
        cases.append(make_case(f"cross_entropy/{name}", "cross_entropy", {"ignoreIndex": -1},
                               {"logits": logits, "targets": targets}, fn, diff=("logits",)))

    add("n6_v5_two_ignored", randn(6, 5, scale=2.0), torch.tensor([2, -1, 0, 4, -1, 1], dtype=I32))
    add("n1_v1000", randn(1, 1000, scale=2.0), torch.tensor([637], dtype=I32))
    add("n9_v37", randn(9, 37, scale=2.0), torch.randint(0, 37, (9,), dtype=I32))
    add("extreme_n5_v8", uniform((5, 8), -1e3, 1e3), torch.tensor([3, 0, -1, 7, 5], dtype=I32))
    return cases


def attention_naive(q, k, v, roles, table, scale):
    """Loop-by-loop reference, read straight off the table definition."""
    B, T_, Hq, D = q.shape
    group = Hq // k.shape[2]
    out = torch.zeros(B, T_, Hq, D, dtype=F64)
    for b in range(B):
        for h in range(Hq):
            for t in range(T_):
                keys = []
                for s in range(T_):
                    rule = table[int(roles[b, t])][int(roles[b, s])]
                    if rule == 3 or (rule == 1 and s <= t) or (rule == 2 and s == t):
                        keys.append(s)
                if not keys:
                    continue
                sc = torch.stack([(q[b, t, h] * k[b, s, h // group]).sum() * scale for s in keys])
                p = torch.softmax(sc, 0)
                out[b, t, h] = sum(p[i] * v[b, s, h // group] for i, s in enumerate(keys))
    return out


def attention_cases():
    torch.manual_seed(11)
    cases = []

    def add(name, B, T_, Hq, Hkv, D, table, roles):
        roles = torch.tensor(roles, dtype=I32).reshape(B, T_)
        scale = f32num(1.0 / math.sqrt(D))
        q, k, v = randn(B, T_, Hq, D), randn(B, T_, Hkv, D), randn(B, T_, Hkv, D)
        attrs = {"table": table, "scale": scale}

        def fn(q, k, v, roles):
            return {"out": attention_ref(q, k, v, roles, table, scale)}

        case = make_case(f"attention/{name}", "attention", attrs,
                         {"q": q, "k": k, "v": v, "roles": roles}, fn, diff=("q", "k", "v"))
        q64, k64, v64, r64 = q.double(), k.double(), v.double(), roles.long()
        out = attention_ref(q64, k64, v64, r64, table, scale)
        assert close(out, attention_naive(q64, k64, v64, r64, table, scale))
        if table == CAUSAL_TABLE:  # independent: plain triu-masked softmax, GQA by repeat
            g = Hq // Hkv
            kk, vv = k64.repeat_interleave(g, 2), v64.repeat_interleave(g, 2)
            sc = torch.einsum("bthd,bshd->bhts", q64, kk) * scale
            sc = sc.masked_fill(torch.triu(torch.ones(T_, T_, dtype=torch.bool), 1), -math.inf)
            assert close(out, torch.einsum("bhts,bshd->bthd", sc.softmax(-1), vv))
        cases.append(case)

    gem_rows = [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]]
    add("causal_b1_t5_h2_d4", 1, 5, 2, 2, 4, CAUSAL_TABLE, [0] * 5)
    add("gem_b2_t11_hq4_hkv2_d8", 2, 11, 4, 2, 8, GEM_TABLE, gem_rows)
    add("gem_gqa_b2_t9_hq6_hkv2_d6", 2, 9, 6, 2, 6, GEM_TABLE,
        [[0, 0, 1, 1, 2, 2, 2, 3, 3], [0, 0, 0, 0, 1, 2, 2, 2, 2]])
    add("causal_mqa_b2_t9_hq6_hkv1_d6", 2, 9, 6, 1, 6, CAUSAL_TABLE, [0] * 18)
    add("causal_t1_b2_h2_d4", 2, 1, 2, 2, 4, CAUSAL_TABLE, [0, 0])
    add("gem_t1_b2_h2_d4_one_pad", 2, 1, 2, 2, 4, GEM_TABLE, [0, 3])
    add("specials_see_each_other_b2_t11_hq4_hkv2_d8", 2, 11, 4, 2, 8,
        SPECIALS_SEE_EACH_OTHER_TABLE, gem_rows)
    add("bidirectional_b2_t6_h2_d4", 2, 6, 2, 2, 4, BIDIRECTIONAL_TABLE, [0] * 12)
    add("causal_b1_t70_h2_d16", 1, 70, 2, 2, 16, CAUSAL_TABLE, [0] * 70)

    # gradient check of the masked implementation (with fully masked pad rows)
    roles = torch.tensor(gem_rows, dtype=torch.int64)
    qkv = [torch.randn(2, 11, h, 3, dtype=F64, requires_grad=True) for h in (4, 2, 2)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention_ref(q, k, v, roles, GEM_TABLE, 0.5), qkv)
    return cases


def adamw_cases():
    torch.manual_seed(12)
    hp = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weightDecay": 0.1}
    cases = []
    for n in (7, 300):
        p0 = randn(n)
        gs = [randn(n, scale=s) for s in (1.0, 0.5, 2.0)]
        p = p0.to(F64).clone().requires_grad_(True)
        opt = torch.optim.AdamW([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                eps=hp["eps"], weight_decay=hp["weightDecay"])
        outs = {}
        for i, g in enumerate(gs, 1):
            p.grad = g.to(F64)
            opt.step()
            outs[f"p{i}"] = p.detach().clone()
        st = opt.state[p]
        outs["m3"], outs["v3"] = st["exp_avg"].clone(), st["exp_avg_sq"].clone()
        # independent hand-written AdamW
        q, m, v = p0.to(F64), torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64)
        b1, b2 = hp["beta1"], hp["beta2"]
        for t, g in enumerate(gs, 1):
            g = g.to(F64)
            q = q - hp["lr"] * hp["weightDecay"] * q
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            q = q - hp["lr"] * mhat / (torch.sqrt(vhat) + hp["eps"])
            assert close(q, outs[f"p{t}"], 1e-12)
        assert close(m, outs["m3"], 1e-12) and close(v, outs["v3"], 1e-12)
        inputs = {"p0": p0, "g1": gs[0], "g2": gs[1], "g3": gs[2]}
        cases.append({"name": f"adamw/n{n}", "op": "adamw", "attrs": hp,
                      "inputs": {k: T(x) for k, x in inputs.items()},
                      "outputs": {k: T(x) for k, x in outs.items()}})
    return cases


def clip_grad_norm_cases():
    torch.manual_seed(13)
    cases = []
    g = {"g_a": randn(5, 3), "g_b": randn(7), "g_c": randn(2, 2, 2)}
    for tag, max_norm in (("clips", 0.5), ("no_clip", 1e3)):
        params = {k: torch.zeros(v.shape, dtype=F64, requires_grad=True) for k, v in g.items()}
        for k, p in params.items():
            p.grad = g[k].to(F64).clone()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        outs = {"norm": norm.detach().clone()}
        outs.update({k: p.grad.clone() for k, p in params.items()})
        # independent check
        ref_norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
        coef = max_norm / (ref_norm + 1e-6)
        assert close(norm, ref_norm)
        assert (coef < 1) == (tag == "clips")
        for k, v in g.items():
            assert close(outs[k], v.double() * min(coef, 1.0))
        cases.append({"name": f"clip_grad_norm/{tag}", "op": "clip_grad_norm",
                      "attrs": {"maxNorm": max_norm},
                      "inputs": {k: T(v) for k, v in g.items()},
                      "outputs": {k: T(v) for k, v in outs.items()}})
    return cases


# ----------------------------------------------------------------------------
# composite: two-layer tiny Llama under the GEM mask
# ----------------------------------------------------------------------------

LLAMA_CFG = {"vocab": 13, "dim": 16, "nLayers": 2, "nHeads": 4, "nKvHeads": 2, "hidden": 24,
             "eps": 1e-5, "theta": 10000.0, "ignoreIndex": -1, "table": GEM_TABLE}


def llama_param_shapes(c):
    dim, hd = c["dim"], c["dim"] // c["nHeads"]
    kv = c["nKvHeads"] * hd
    shapes = {"embed": (c["vocab"], dim)}
    for l in range(c["nLayers"]):
        shapes.update({f"l{l}.attn_norm": (dim,), f"l{l}.wq": (dim, dim), f"l{l}.wk": (dim, kv),
                       f"l{l}.wv": (dim, kv), f"l{l}.wo": (dim, dim), f"l{l}.ffn_norm": (dim,),
                       f"l{l}.w1": (dim, c["hidden"]), f"l{l}.w3": (dim, c["hidden"]),
                       f"l{l}.w2": (c["hidden"], dim)})
    shapes["final_norm"] = (dim,)
    return shapes


def llama_forward(c, tokens, targets, roles, P):
    B, T_ = tokens.shape
    H, Hkv, hd = c["nHeads"], c["nKvHeads"], c["dim"] // c["nHeads"]
    pos = torch.arange(T_)[None].expand(B, T_)
    scale = 1.0 / math.sqrt(hd)
    h = P["embed"][tokens]
    for l in range(c["nLayers"]):
        x = rmsnorm_ref(h, P[f"l{l}.attn_norm"], c["eps"])
        q = (x @ P[f"l{l}.wq"]).reshape(B, T_, H, hd)
        k = (x @ P[f"l{l}.wk"]).reshape(B, T_, Hkv, hd)
        v = (x @ P[f"l{l}.wv"]).reshape(B, T_, Hkv, hd)
        q, k = rope_ref(q, pos, c["theta"]), rope_ref(k, pos, c["theta"])
        a = attention_ref(q, k, v, roles, c["table"], scale).reshape(B, T_, H * hd)
        h = h + a @ P[f"l{l}.wo"]
        x = rmsnorm_ref(h, P[f"l{l}.ffn_norm"], c["eps"])
        h = h + (silu(x @ P[f"l{l}.w1"]) * (x @ P[f"l{l}.w3"])) @ P[f"l{l}.w2"]
    x = rmsnorm_ref(h, P["final_norm"], c["eps"])
    logits = x @ P["embed"].T
    loss = F.cross_entropy(logits.reshape(-1, c["vocab"]), targets.reshape(-1),
                           ignore_index=c["ignoreIndex"], reduction="mean")
    return logits, loss


def composite_case():
    torch.manual_seed(14)
    c = LLAMA_CFG
    params = {}
    for name, shape in llama_param_shapes(c).items():
        if name.endswith("norm"):
            params[name] = (1.0 + 0.1 * randn(*shape)).to(F32)
        else:
            params[name] = randn(*shape, scale=0.2)
    tokens = torch.randint(0, c["vocab"], (2, 9), dtype=I32)
    roles = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 2, 2, 2, 3, 3]], dtype=I32)
    targets = torch.randint(0, c["vocab"], (2, 9), dtype=I32)
    targets[roles == 3] = -1  # pads are ignored
    targets[0, 0] = -1
    targets[1, 1] = -1

    P = {k: v.to(F64).requires_grad_(True) for k, v in params.items()}
    tk, tg, rl = tokens.long(), targets.long(), roles.long()
    logits, loss = llama_forward(c, tk, tg, rl, P)
    grads = torch.autograd.grad(loss, list(P.values()))
    grads = dict(zip(P.keys(), grads))

    # finite-difference spot check of d loss / d param
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in P:
            for _ in range(2):
                idx = int(torch.randint(0, P[name].numel(), (1,), generator=gen))
                eps = 1e-6
                flat = P[name].view(-1)
                old = flat[idx].item()
                flat[idx] = old + eps
                lp = llama_forward(c, tk, tg, rl, P)[1].item()
                flat[idx] = old - eps
                lm = llama_forward(c, tk, tg, rl, P)[1].item()
                flat[idx] = old
                fd = (lp - lm) / (2 * eps)
                an = grads[name].view(-1)[idx].item()
                assert abs(fd - an) <= 1e-6 + 1e-5 * abs(an), (name, idx, fd, an)

    inputs = {"tokens": tokens, "targets": targets, "roles": roles}
    inputs.update(params)
    return {"name": "tiny_llama/2layer_gem", "op": "tiny_llama", "attrs": c,
            "inputs": {k: T(v) for k, v in inputs.items()},
            "outputs": {"logits": T(logits), "loss": T(loss)},
            "dout": {"loss": T(torch.tensor(1.0))},
            "grads": {k: T(g) for k, g in grads.items()}}


# ----------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------

def f16_cases():
    """Ops with an f16 operand (frozen f16 weights). Torch 1.13 has no CPU half matmul, so the
    f16 inputs are drawn as float32 and rounded to half (`.half().float()`), written with dtype
    "f16" (their values are exact in f16), and the reference is float64 of those rounded values.
    Only the f32 inputs get gradients: f16 tensors are frozen in gemkit."""
    torch.manual_seed(14)
    cases = []

    def half(x):
        return x.half().to(F32)

    def mark(case, names):
        for n in names:
            case["inputs"][n]["dtype"] = "f16"
        return case

    for name, M, K, N, transB in (("7x33x5_tB", 7, 33, 5, True),
                                  ("16x64x172_tB", 16, 64, 172, True),
                                  ("5x12x9", 5, 12, 9, False),
                                  ("3x172x64_tB", 3, 172, 64, True)):
        a = randn(M, K)
        b = half(randn(N, K) * 0.5) if transB else half(randn(K, N) * 0.5)
        attrs = {"transA": False, "transB": transB}
        case = make_case(f"f16/matmul_{name}", "matmul", attrs, {"a": a, "b": b},
                         lambda a, b: {"out": matmul_ref(a, b, False, transB)}, diff=("a",))
        cases.append(mark(case, ["b"]))
    w = half(randn(50, 16))
    ids = torch.randint(0, 50, (4, 9), dtype=I32)
    cases.append(mark(make_case("f16/embedding_v50_d16", "embedding", {}, {"w": w, "ids": ids},
                                lambda w, ids: {"out": w[ids]}), ["w"]))
    for name, n, v, d in (("n6_v37_d8", 6, 37, 8), ("n9_v516_d64", 9, 516, 64)):
        h = randn(n, d)
        w = half(randn(v, d) * 0.3)
        targets = torch.randint(0, v, (n,), dtype=I32)
        targets[1] = -1

        def fn(h, w, targets):
            return {"out": F.cross_entropy(h @ w.T, targets, ignore_index=-1, reduction="mean")}

        cases.append(mark(make_case(f"f16/classifier_ce_{name}", "classifier_ce",
                                    {"ignoreIndex": -1}, {"h": h, "w": w, "targets": targets},
                                    fn, diff=("h",)), ["w"]))
    return cases


def attention_grads(q, k, v, roles, table, scale, dout, o_for_d):
    """Attention's gradients the way a flash backward forms them: dS = P * (dO V^T - D) with
    D = rowsum(dO * O), where O is `o_for_d` (the output as stored). All float64."""
    group = q.shape[2] // k.shape[2]
    kk, vv = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    mask = allowed_mask(roles, table)[:, None]
    sc = torch.einsum("bthd,bshd->bhts", q, kk) * scale
    sc = torch.where(mask, sc, torch.full_like(sc, -math.inf))
    sc = torch.where(mask.any(-1, keepdim=True), sc, torch.zeros_like(sc))
    p = torch.softmax(sc, -1) * mask
    dp = torch.einsum("bthd,bshd->bhts", dout, vv)
    d = (dout * o_for_d).sum(-1).permute(0, 2, 1)[..., None]  # [B,H,T,1]
    ds = p * (dp - d)
    dq = torch.einsum("bhts,bshd->bthd", ds, kk) * scale
    dk = torch.einsum("bhts,bthd->bshd", ds, q) * scale
    dv = torch.einsum("bhts,bthd->bshd", p, dout)
    fold = lambda x: x.reshape(*x.shape[:2], k.shape[2], group, x.shape[3]).sum(3)
    return dq, fold(dk), fold(dv)


def f16_activation_cases():
    """Ops that store their result in f16 (dtype f16 training: f16 activations). Inputs marked
    f16 are rounded to half first (exact in f16); the reference is float64 of those values,
    rounded once to half, as gemkit computes in f32 and rounds once on the way out. Gradients
    stay f32 and are those of the float64 function (the rounding's own derivative counted as
    1, like a cast's). Every float input gets a gradient: activations are not frozen."""
    torch.manual_seed(15)
    cases = []

    def half(x):
        return x.half().to(F32)

    def case(name, op, attrs, inputs, fn, f16_inputs, diff):
        def rounded(**kw):
            # Straight through: the value rounded to half, the gradient untouched float64.
            return {k: v + (v.half().to(F64) - v).detach() for k, v in fn(**kw).items()}
        for n in f16_inputs:
            inputs[n] = half(inputs[n])
        c = make_case(f"f16act/{name}", op, attrs, inputs, rounded, diff=diff)
        for n in f16_inputs:
            c["inputs"][n]["dtype"] = "f16"
        c["outputs"]["out"]["dtype"] = "f16"
        cases.append(c)

    for name, M, K, N in (("16x64x172_tB", 16, 64, 172), ("7x33x5_tB", 7, 33, 5)):
        a, b = randn(M, K), randn(N, K) * 0.5
        case(f"matmul_{name}_f16_a", "matmul", {"transA": False, "transB": True, "dtype": "f16"},
             {"a": a, "b": b}, lambda a, b: {"out": matmul_ref(a, b, False, True)},
             ["a", "b"], ("a", "b"))
        case(f"matmul_{name}_f32_a", "matmul", {"transA": False, "transB": True, "dtype": "f16"},
             {"a": a, "b": b}, lambda a, b: {"out": matmul_ref(a, b, False, True)}, ["b"],
             ("a", "b"))
    for shape in ((3, 8), (2, 5, 64)):
        x, w = randn(*shape), (1.0 + 0.1 * randn(shape[-1])).to(F32)
        case(f"rmsnorm_{'x'.join(map(str, shape))}", "rmsnorm", {"eps": 1e-5, "dtype": "f16"},
             {"x": x, "w": w}, lambda x, w: {"out": rmsnorm_ref(x, w, 1e-5)}, [], ("x", "w"))
    x = randn(2, 5, 3, 8)
    pos = torch.arange(5, dtype=torch.int64)[None].expand(2, 5)
    case("rope_2x5x3x8", "rope", {"theta": 10000.0}, {"x": x},
         lambda x: {"out": rope_ref(x, pos, 10000.0)}, ["x"], ("x",))
    a, b = randn(2, 4, 43, scale=2.0), randn(2, 4, 43)
    case("swiglu_2x4x43", "swiglu", {}, {"a": a, "b": b}, lambda a, b: {"out": silu(a) * b},
         ["a", "b"], ("a", "b"))
    gem_rows = [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]]
    for name, B, T_, Hq, Hkv, D, table, rows in (
            ("causal_b1_t70_h2_d16", 1, 70, 2, 2, 16, CAUSAL_TABLE, [0] * 70),
            ("gem_b2_t11_hq4_hkv2_d8", 2, 11, 4, 2, 8, GEM_TABLE, gem_rows)):
        roles = torch.tensor(rows, dtype=I32).reshape(B, T_)
        scale = f32num(1.0 / math.sqrt(D))
        q, k, v = randn(B, T_, Hq, D), randn(B, T_, Hkv, D), randn(B, T_, Hkv, D)

        def fn(q, k, v, roles, table=table, scale=scale):
            return {"out": attention_ref(q, k, v, roles, table, scale)}

        case(f"attention_{name}", "attention", {"table": table, "scale": scale},
             {"q": q, "k": k, "v": v, "roles": roles}, fn, ["q", "k", "v"], ("q", "k", "v"))
        # The backward reads the output as stored (f16) to form D: so does the reference. The
        # same formula with the exact output must give autograd's gradients.
        c = cases[-1]
        x64 = {n: torch.tensor(c["inputs"][n]["data"], dtype=F64).reshape(c["inputs"][n]["shape"])
               for n in ("q", "k", "v")}
        dout = torch.tensor(c["dout"]["out"]["data"], dtype=F64).reshape(q.shape)
        r64 = roles.long()
        exact = attention_ref(x64["q"], x64["k"], x64["v"], r64, table, scale)
        auto = attention_grads(x64["q"], x64["k"], x64["v"], r64, table, scale, dout, exact)
        for n, g in zip(("q", "k", "v"), auto):
            want = torch.tensor(c["grads"][n]["data"], dtype=F64).reshape(g.shape)
            assert close(g, want, 1e-6), f"attention_grads disagrees with autograd on d{n}"
        stored = exact.half().to(F64)
        grads = attention_grads(x64["q"], x64["k"], x64["v"], r64, table, scale, dout, stored)
        c["grads"] = {n: T(g) for n, g in zip(("q", "k", "v"), grads)}
    # The residual add: f32 stream plus an f16 branch gives f32.
    x, y = randn(4, 24), randn(4, 24)
    y = half(y)
    c = make_case("f16act/add_f32_f16", "binary", {"fn": "add"}, {"a": x, "b": y},
                  lambda a, b: {"out": a + b}, diff=("a", "b"))
    c["inputs"]["b"]["dtype"] = "f16"
    cases.append(c)
    return cases


def write(path, cases):
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    header = {"version": 1, "generator": "make_goldens.py", "torch": torch.__version__}
    head = json.dumps(header, separators=(",", ":"))[:-1]
    body = ",\n".join(json.dumps(c, separators=(",", ":"), allow_nan=False) for c in cases)
    with open(path, "w") as f:
        f.write(f'{head},"cases":[\n{body}\n]}}\n')
    json.load(open(path))  # must parse back
    print(f"wrote {os.path.relpath(path)}: {len(cases)} cases, {os.path.getsize(path)} bytes")


def main():
    torch.set_default_dtype(F32)
    families = [matmul_cases, unary_cases, binary_cases, reduce_cases, softmax_cases,
                rmsnorm_cases, rope_cases, swiglu_cases, embedding_cases, cross_entropy_cases,
                attention_cases, adamw_cases, clip_grad_norm_cases, f16_cases,
                f16_activation_cases]
    cases = [c for fam in families for c in fam()]
    write(os.path.join(OUT_DIR, "ops.json"), cases)
    write(os.path.join(OUT_DIR, "composite.json"), [composite_case()])


if __name__ == "__main__":
    main()
