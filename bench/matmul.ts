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
 * sleeps 10 ms whatever the adapter): 8e9 flops, ~130 ms of llvmpipe's products, so the sync
 * adds under 10% (with 2e9, a single n = 1024 product per sample, it added ~25%). A real GPU
 * does that in well under the sync, so it gets 2e11, capped to keep the command stream short.
 */
function plan(n: number, quick: boolean) {
  const flops = 2 * n ** 3;
  const work = gpu().tuning.profile === "gpu" ? 2e11 : 8e9;
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

/** The matmul benchmark. */
export async function matmulBench(ctx: BenchContext): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  for (const n of SIZES) {
    const p = plan(n, ctx.quick);
    ctx.log(`matmul n=${n} (inner ${p.inner}, ${p.repeats} samples)`);
    out.push(toRecord(await gemkitMatmul(n, p)));
    out.push(toRecord(await jaxjsMatmul(n, p)));
    out.push(toRecord(await tfjsMatmul(n, p)));
  }
  const torch = torchSetup();
  for (const n of SIZES) {
    // PyTorch is ~10x faster here: ten times the work per sample keeps its samples as long.
    const p = plan(n, ctx.quick);
    const inner = ctx.quick ? 1 : Math.max(1, Math.round(2e10 / (2 * n ** 3)));
    for (const t of await torchMatmul([n], { ...p, inner, ...torch })) out.push(toRecord(t));
  }
  return out;
}
