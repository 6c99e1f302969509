#!/usr/bin/python3
"""Times square fp32 n x n matmul in PyTorch on the CPU, for bench/competitors.ts.

Usage:
    /usr/bin/python3 bench/torch_matmul.py '{"sizes": [256, 512], "warmup": 2, "repeats": 5,
                                              "inner": 4, "threads": [1, 2]}'

`threads` may be an int or a list of ints. Prints one JSON object on the last line of stdout:

    {"ok": true, "torch_version": "...", "blas": "...",
     "results": [{"impl": "torch-cpu-1t", "n": 256, "threads": 1, "times_ms": [...],
                  "max_abs_err": 1e-6, "tol": 6e-3, "verified": true, "note": "..."}]}

or, when PyTorch cannot be imported, {"ok": false, "error": "..."} and exit status 3. Bad
arguments give {"ok": false, "error": "..."} and exit status 2.

What is timed, per sample: `inner` back-to-back `torch.mm(a, b, out=c)` calls on fixed random
inputs (uniform in [-1, 1), created once, outside the timed region), measured with
time.perf_counter around the whole batch; the recorded figure is batch time / inner, in ms.
PyTorch on the CPU is synchronous, so no extra sync is needed; with "device": "cuda" the batch
ends with torch.cuda.synchronize() inside the timed region (TF32 off: an fp32 comparison). Each of the `warmup` untimed runs
is one whole sample (inner matmuls) whose time is thrown away.

Thread count: torch.set_num_threads(t) sets ATen/OpenMP threads, but Debian's PyTorch does its
fp32 GEMM in OpenBLAS (pthread build), which keeps its own pool; so this script also calls
openblas_set_num_threads(t) through ctypes when an OpenBLAS library is loaded (the caller in
competitors.ts additionally sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for the process).
"""

import ctypes
import json
import math
import random
import sys
import time


def fail(status, msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(status)


def parse_args(argv):
    if len(argv) < 2:
        fail(2, "expected one JSON argument: {sizes, warmup, repeats, inner, threads}")
    try:
        args = json.loads(argv[1])
    except json.JSONDecodeError as e:
        fail(2, f"bad JSON argument: {e}")
    if not isinstance(args, dict):
        fail(2, "JSON argument must be an object")

    def nonneg_int(name, default, minimum=0):
        v = args.get(name, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            fail(2, f"'{name}' must be an integer >= {minimum}, got {v!r}")
        return v

    sizes = args.get("sizes")
    if isinstance(sizes, int):
        sizes = [sizes]
    if not isinstance(sizes, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes
    ):
        fail(2, f"'sizes' must be a list of positive integers, got {sizes!r}")
    threads = args.get("threads", [1, 2])
    if isinstance(threads, int):
        threads = [threads]
    if not isinstance(threads, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in threads
    ):
        fail(2, f"'threads' must be a positive integer or a list of them, got {threads!r}")
    device = args.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        fail(2, f"'device' must be \"cpu\" or \"cuda\", got {device!r}")
    return {
        "sizes": sizes,
        "warmup": nonneg_int("warmup", 1),
        "repeats": nonneg_int("repeats", 5),
        "inner": nonneg_int("inner", 1, minimum=1),
        "threads": threads,
        "seed": nonneg_int("seed", 1234),
        "device": device,
    }


def find_openblas():
    """Returns (path, ctypes lib) of a loaded OpenBLAS, or (None, None)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None, None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads  # noqa: B018 - raises AttributeError when absent
            return path, lib
        except (OSError, AttributeError):
            continue
    return None, None


def set_threads(torch, openblas, t):
    torch.set_num_threads(t)
    blas_threads = None
    if openblas is not None:
        openblas.openblas_set_num_threads(ctypes.c_int(t))
        try:
            openblas.openblas_get_num_threads.restype = ctypes.c_int
            blas_threads = int(openblas.openblas_get_num_threads())
        except AttributeError:
            pass
    return blas_threads


def verify(torch, a, b, c, n, rng):
    """Compares 8 entries of c against an fp64 dot product; returns (max_abs_err, tol, ok)."""
    idx = [(0, 0), (n - 1, n - 1), (0, n - 1), (n - 1, 0)]
    idx += [(rng.randrange(n), rng.randrange(n)) for _ in range(4)]
    a64 = a.double()
    b64 = b.double()
    max_err = 0.0
    tol = 0.0
    for i, j in idx:
        prods = a64[i, :] * b64[:, j]
        ref = float(prods.sum())
        abs_sum = float(prods.abs().sum())
        err = abs(float(c[i, j]) - ref)
        # fp32 accumulation error is far below this; a wrong result (transposed operand, stale
        # buffer, partial tile) is off by O(sqrt(n)).
        t = 1e-4 * abs_sum + 1e-6
        if err > t:
            return err, t, False
        max_err = max(max_err, err)
        tol = max(tol, t)
    return max_err, tol, True


def main():
    args = parse_args(sys.argv)
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install raising something else
        fail(3, f"import torch failed: {type(e).__name__}: {e}")

    blas_path, openblas = find_openblas()
    rng = random.Random(args["seed"])
    gen = torch.Generator().manual_seed(args["seed"])
    cuda = args["device"] == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            fail(3, "'device' is \"cuda\" but torch.cuda.is_available() is False")
        # The comparison is fp32 against fp32: no TF32 tensor-core shortcut.
        torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = []
    for t in args["threads"][:1] if cuda else args["threads"]:
        blas_threads = set_threads(torch, openblas, t)
        for n in args["sizes"]:
            a = torch.rand((n, n), generator=gen, dtype=torch.float32) * 2 - 1
            b = torch.rand((n, n), generator=gen, dtype=torch.float32) * 2 - 1
            c = torch.empty((n, n), dtype=torch.float32)
            if cuda:
                a, b, c = a.cuda(), b.cuda(), c.cuda()
            torch.mm(a, b, out=c)
            max_err, tol, ok = verify(torch, a.cpu(), b.cpu(), c.cpu(), n, rng)
            times = []
            if ok:
                inner = args["inner"]
                for r in range(args["warmup"] + args["repeats"]):
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        torch.mm(a, b, out=c)
                    sync()
                    dt = time.perf_counter() - t0
                    if r >= args["warmup"]:
                        times.append(dt * 1e3 / inner)
            where = (
                f"torch {torch.__version__} CUDA on {torch.cuda.get_device_name()}, TF32 off; "
                if cuda
                else f"torch {torch.__version__} CPU, torch.get_num_threads()="
                f"{torch.get_num_threads()}, "
                f"openblas threads={blas_threads if blas_threads is not None else 'n/a'}; "
            )
            note = (
                where
                + (
                    f"verified 8 entries vs fp64 dot (max abs err {max_err:.2e}, tol {tol:.2e}); "
                    if ok
                    else f"RESULT CHECK FAILED (abs err {max_err:.3g} > tol {tol:.3g}), not timed; "
                )
                + f"each sample = {args['inner']} x torch.mm(out=) / {args['inner']}"
            )
            results.append(
                {
                    "impl": "torch-cuda" if cuda else f"torch-cpu-{t}t",
                    "n": n,
                    "threads": t,
                    "times_ms": times,
                    "max_abs_err": max_err,
                    "tol": tol,
                    "verified": ok,
                    "note": note,
                }
            )
            del a, b, c
    out = {
        "ok": True,
        "torch_version": torch.__version__,
        "blas": blas_path or "unknown (no OpenBLAS mapped)",
        "python": sys.version.split()[0],
        "results": results,
    }
    if any(math.isnan(x) for r in results for x in r["times_ms"]):
        out["warning"] = "NaN timing"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
