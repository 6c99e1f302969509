/**
 * Square fp32 matmul, n = 256..2048: gemkit beside jax-js and TensorFlow.js on the same WebGPU
 * adapter and PyTorch CPU (1 and 2 threads), all in this run.
 *
 * gemkit's figure is timed exactly like the WebGPU competitors' (bench/competitors.ts): inputs
 * uploaded once; each sample records `inner` back-to-back products into the command stream and
 * then reads back one element of the last one (the only sync); ms per matmul = sample / inner.
 */

import { gpu } from "../src/gpu/device.ts";
import * as T from "../src/tensor/ops.ts";
import { tensor } from "../src/tensor/tensor.ts";
import type { BenchContext, BenchRecord } from "./common.ts";
import { stats } from "./common.ts";
import {
  jaxjsMatmul,
  randomMatrix,
  tfjsMatmul,
  type Timing,
  torchMatmul,
  torchSetup,
} from "./competitors.ts";

const SIZES = [256, 512, 1024, 2048];

/**
 * Samples per figure: enough work per sample to amortise the ~11.5 ms sync (Deno's mapAsync
 * sleeps 10 ms whatever the adapter): 2e10 flops, the work PyTorch gets per sample below, ~230 ms
 * of llvmpipe's products at n = 1024, so the sync adds ~5% (with 8e9 flops, four products, it
 * added ~10%; with 2e9, a single one, ~25%). A real GPU does that in well under the sync, so it
 * gets 2e11, capped to keep the command stream short.
 */
function plan(n: number, quick: boolean) {
  const flops = 2 * n ** 3;
  const work = gpu().tuning.profile === "gpu" ? 2e11 : 2e10;
  const inner = Math.min(2000, Math.max(1, Math.round(work / flops)));
  return {
    warmup: 1,
    repeats: quick ? 2 : n >= 2048 ? 3 : 5,
    inner: quick ? Math.min(inner, 2) : inner,
  };
}

async function gemkitMatmul(n: number, opts: ReturnType<typeof plan>): Promise<Timing> {
  const g = gpu();
  const a = tensor(randomMatrix(n, 1), [n, n]), b = tensor(randomMatrix(n, 2), [n, n]);
  const times: number[] = [];
  for (let s = 0; s < opts.warmup + opts.repeats; s++) {
    const t0 = performance.now();
    let c = T.matmul(a, b);
    for (let i = 1; i < opts.inner; i++) {
      c.dispose();
      c = T.matmul(a, b);
    }
    await g.read(c.buf, 0, 4);
    const t1 = performance.now();
    c.dispose();
    if (s >= opts.warmup) times.push((t1 - t0) / opts.inner);
  }
  a.dispose();
  b.dispose();
  return { impl: "gemkit", n, times_ms: times, verified: true, backend: g.description };
}

function toRecord(t: Timing): BenchRecord {
  const flops = 2 * t.n ** 3;
  if (!t.times_ms.length) {
    return { bench: "matmul", impl: t.impl, n: t.n, gflops: "n/a", note: t.note ?? "did not run" };
  }
  const s = stats(t.times_ms);
  return {
    bench: "matmul",
    impl: t.impl,
    n: t.n,
    gflops: flops / s.median / 1e6,
    gflops_min: flops / s.max / 1e6,
    gflops_max: flops / s.min / 1e6,
    ms_median: s.median,
    samples: t.times_ms,
    ...(t.note ? { note: t.note } : {}),
  };
}

/** gemkit's GFLOP/s over PyTorch's 2 threads at `n` in `recs`, or null where either is missing. */
function ratioAt(recs: BenchRecord[], n: number): number | null {
  const at = (impl: string) => recs.find((r) => r.impl === impl && r.n === n)?.gflops;
  const [g, t] = [at("gemkit"), at("torch-cpu-2t")];
  return typeof g === "number" && typeof t === "number" ? g / t : null;
}

/**
 * The matmul benchmark: `ctx.runs` runs one after another (records carry `run` when more than
 * one). Each size times gemkit, then PyTorch's 1 and 2 threads right after it, so a ratio's two
 * sides are minutes apart at most; jax-js and TensorFlow.js, 15-30x slower than gemkit, run in
 * the first run only.
 */
export async function matmulBench(ctx: BenchContext): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  const runs = Math.max(1, ctx.runs ?? 1);
  const torch = torchSetup();
  for (let run = 1; run <= runs; run++) {
    if (runs > 1) ctx.log(`run ${run} of ${runs}`);
    const recs: BenchRecord[] = [];
    for (const n of SIZES) {
      const p = plan(n, ctx.quick);
      ctx.log(`matmul n=${n} (inner ${p.inner}, ${p.repeats} samples)`);
      recs.push(toRecord(await gemkitMatmul(n, p)));
      if (run === 1) {
        recs.push(toRecord(await jaxjsMatmul(n, p)));
        recs.push(toRecord(await tfjsMatmul(n, p)));
      }
      // PyTorch is ~10x faster here: ten times the work per sample keeps its samples as long.
      const inner = ctx.quick ? 1 : Math.max(1, Math.round(2e10 / (2 * n ** 3)));
      for (const t of await torchMatmul([n], { ...p, inner, ...torch })) recs.push(toRecord(t));
    }
    const r = ratioAt(recs, 1024);
    if (r !== null) ctx.log(`run ${run}: gemkit / PyTorch 2 threads at n = 1024: ${r.toFixed(3)}`);
    out.push(...(runs > 1 ? recs.map((x) => ({ ...x, run })) : recs));
  }
  return out;
}
