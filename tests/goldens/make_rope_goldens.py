"""Reference inverse frequencies of Llama 3 RoPE scaling, as Hugging Face transformers computes
them (modeling_rope_utils._compute_llama3_parameters, re-implemented here in float64 because
transformers is not installable on this machine). Writes tests/goldens/rope_llama3.json.

Run from the repo root: /usr/bin/python3 tests/goldens/make_rope_goldens.py
"""
import json
import math

import torch


def llama3_inv_freq(head_dim, theta, factor, low, high, old_ctx):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


# Llama 3.2-1B's settings, plus a small head dim that exercises all three bands.
cases = []
for head_dim, theta in [(64, 500000.0), (128, 500000.0), (16, 10000.0)]:
    args = dict(factor=32.0, low=1.0, high=4.0, old_ctx=8192 if theta > 1e5 else 64)
    f = llama3_inv_freq(head_dim, theta, **args)
    cases.append({"head_dim": head_dim, "theta": theta, **args, "inv_freq": [float(x) for x in f]})
with open("tests/goldens/rope_llama3.json", "w") as fh:
    json.dump({"version": 1, "generator": "make_rope_goldens.py", "cases": cases}, fh)
    fh.write("\n")
