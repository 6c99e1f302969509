/**
 * In-place update kernels: AdamW with decoupled weight decay, gradient accumulation, and the two
 * halves of global-norm clipping. They write into buffers the caller owns (parameters, moments,
 * gradients), which is why they are not elementwise expressions: WebGPU forbids binding one buffer
 * as both a read and a read-write input.
 *
 * Versions: v1 one invocation per element; v2 AdamW reads the parameter and its gradient at
 * offsets (rows of a larger tensor: the rest of it stays frozen).
 */

import type { Gpu } from "../device.ts";
import { defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import { BufferWindow, type GpuBuffer } from "../pool.ts";
import { type Binding, bindRange, spans } from "../pages.ts";
import { rowReduceHelpers } from "./rowwise.ts";

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number, for bias correction. */
  step: number;
}

export function adamwKernel(wg: number): Kernel {
  const body = `  let g = G[P.offG + i];
  var w = W[P.offW + i] * (1.0 - P.lr * P.wd);
  let m = P.b1 * M[i] + (1.0 - P.b1) * g;
  let v = P.b2 * V[i] + (1.0 - P.b2) * g * g;
  M[i] = m;
  V[i] = v;
  W[P.offW + i] = w - P.lr * (m / P.c1) / (sqrt(v / P.c2) + P.eps);`;
  return defineKernel({
    name: "adamw",
    params: `n: u32, lr: f32, b1: f32, b2: f32,
             eps: f32, wd: f32, c1: f32, c2: f32,
             offW: u32, offG: u32, _a: u32, _b: u32,`,
    bindings: [
      ["W", "rw", "array<f32>"],
      ["G", "read", "array<f32>"],
      ["M", "rw", "array<f32>"],
      ["V", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "i", "i >= P.n", body),
  });
}

export function runAdamW(
  gpu: Gpu,
  w: GpuBuffer,
  g: GpuBuffer,
  m: GpuBuffer,
  v: GpuBuffer,
  n: number,
  s: AdamWStep,
  offW = 0,
  offG = 0,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  // Past one binding, in spans over windows (moments are read from element 0: aligned spans).
  for (const [at, count] of spans(gpu, n, [w, g, m, v])) {
    const rw = bindRange(gpu, w, offW + at, offW + at + count, "adamw");
    const rg = bindRange(gpu, g, offG + at, offG + at + count, "adamw");
    const rm = bindRange(gpu, m, at, at + count, "adamw"),
      rv = bindRange(gpu, v, at, at + count, "adamw");
    const p = new ParamWriter().u32(count).f32(s.lr).f32(s.beta1).f32(s.beta2)
      .f32(s.eps).f32(s.weightDecay).f32(1 - s.beta1 ** s.step).f32(1 - s.beta2 ** s.step)
      .u32(offW + at - rw.base).u32(offG + at - rg.base).u32(0).u32(0);
    if (rm.base !== at || rv.base !== at) throw new Error("adamw: moment windows off their span");
    gpu.dispatch(
      adamwKernel(wg),
      [rw.bind, rg.bind, rm.bind, rv.bind],
      p,
      grid(Math.ceil(count / wg)),
    );
  }
}

/** Y[offY + i] += X[offX + i] * c; accumulates gradients into a leaf's existing buffer. */
export function accumulateKernel(wg: number): Kernel {
  return defineKernel({
    name: "accumulate",
    params: "n: u32, offX: u32, offY: u32, c: f32",
    bindings: [["X", "read", "array<f32>"], ["Y", "rw", "array<f32>"]],
    body: gridMain(wg, "i", "i >= P.n", "  Y[P.offY + i] += X[P.offX + i] * P.c;"),
  });
}

/**
 * Records y[offY + i] += c * x[offX + i] for i < n, in spans that fit one binding. `y` may be a
 * window a caller already bound (a product's output), whose offsets are rebased to it.
 */
export function runAccumulate(
  gpu: Gpu,
  x: GpuBuffer,
  offX: number,
  y: Binding,
  offY: number,
  n: number,
  c = 1,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  const window = y instanceof BufferWindow;
  for (const [at, count] of spans(gpu, n, window ? [x] : [x, y])) {
    const rx = bindRange(gpu, x, offX + at, offX + at + count, "accumulate");
    const ry = window
      ? { bind: y, base: 0 }
      : bindRange(gpu, y, offY + at, offY + at + count, "accumulate");
    const p = new ParamWriter().u32(count).u32(offX + at - rx.base).u32(offY + at - ry.base).f32(c);
    gpu.dispatch(accumulateKernel(wg), [rx.bind, ry.bind], p, grid(Math.ceil(count / wg)));
  }
}

/** From per-tensor sums of squares: out = [norm, coef] with coef = min(1, max / (norm + 1e-6)). */
export function clipCoefKernel(wg: number): Kernel {
  return defineKernel({
    name: "clip_coef",
    params: "n: u32, maxNorm: f32, _a: u32, _b: u32",
    bindings: [["S", "read", "array<f32>"], ["OUT", "rw", "array<f32>"]],
    body: `${rowReduceHelpers(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < P.n; i += ${wg}u) { s += S[i]; }
  s = wgSum(s, lid);
  if (lid == 0u) {
    let norm = sqrt(s);
    OUT[0] = norm;
    OUT[1] = min(1.0, P.maxNorm / (norm + 1e-6));
  }
}`,
  });
}

export function runClipCoef(
  gpu: Gpu,
  sumsq: GpuBuffer,
  n: number,
  maxNorm: number,
  out: GpuBuffer,
): void {
  const wg = gpu.tuning.rowWorkgroup;
  const p = new ParamWriter().u32(n).f32(maxNorm).u32(0).u32(0);
  gpu.dispatch(clipCoefKernel(wg), [sumsq, out], p, [1, 1, 1]);
}

/** Y[i] *= S[at]: scales a gradient in place by a scalar that lives on the GPU. */
export function scaleByKernel(wg: number): Kernel {
  return defineKernel({
    name: "scale_by",
    params: "n: u32, at: u32, _a: u32, _b: u32",
    bindings: [["S", "read", "array<f32>"], ["Y", "rw", "array<f32>"]],
    body: gridMain(wg, "i", "i >= P.n", "  Y[i] *= S[P.at];"),
  });
}

export function runScaleBy(
  gpu: Gpu,
  s: GpuBuffer,
  at: number,
  y: GpuBuffer,
  n: number,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  // Spans start at multiples of 64 elements from 0, so a window starts at the span's element.
  for (const [from, count] of spans(gpu, n, [y])) {
    const ry = bindRange(gpu, y, from, from + count, "scale_by");
    if (ry.base !== from) throw new Error("scale_by: an unaligned window");
    const p = new ParamWriter().u32(count).u32(at).u32(0).u32(0);
    gpu.dispatch(scaleByKernel(wg), [s, ry.bind], p, grid(Math.ceil(count / wg)));
  }
}
