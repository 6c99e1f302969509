/**
 * Reductions over one axis of a contiguous tensor seen as [outer, R, inner]:
 * out[o, i] = scale * reduce_r f(x[o, r, i]), optionally with the arg index of the max.
 *
 * Versions:
 *   v1 one invocation per output, serial over R (short reductions, many outputs);
 *   v2 one workgroup per output, invocations stride over R, tree reduction in workgroup memory
 *      (long reductions, few outputs).
 * `runReduce` picks one by shape.
 */

import type { Gpu } from "../device.ts";
import { defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";
import { type Binding, bindRange } from "../pages.ts";

export type ReduceFn = "sum" | "max" | "sumsq";

const INIT: Record<ReduceFn, string> = { sum: "0.0", sumsq: "0.0", max: "-3.4028234e38" };
const MAP: Record<ReduceFn, string> = { sum: "v", sumsq: "v * v", max: "v" };

/** A reduction kernel: Params, X read, Y (results) and I (arg-max indices) written. */
function reduceKernel(name: string, body: string): Kernel {
  return defineKernel({
    name,
    params: "outer: u32, r: u32, inner: u32, off: u32, scale: f32, offOut: u32",
    bindings: [["X", "read", "array<f32>"], ["Y", "rw", "array<f32>"], ["I", "rw", "array<i32>"]],
    body,
  });
}

/**
 * WGSL folding f over the reduced axis of output `t` into `acc` (and `arg` for max), with `r`
 * running over `loop` (e.g. "var r = 0u; r < P.r; r++").
 */
function fold(fn: ReduceFn, loop: string): string {
  const update = fn === "max" ? "if (v > acc) { acc = v; arg = i32(r); }" : `acc += ${MAP[fn]};`;
  return `  let o = t / P.inner;
  let i = t % P.inner;
  var acc = ${INIT[fn]};
  var arg = 0;
  let base = P.off + o * P.r * P.inner + i;
  for (${loop}) {
    let v = X[base + r * P.inner];
    ${update}
  }`;
}

export function reduceKernelV1(fn: ReduceFn, wg: number): Kernel {
  const body = `${fold(fn, "var r = 0u; r < P.r; r++")}
  Y[P.offOut + t] = acc * P.scale;
  ${fn === "max" ? "I[t] = arg;" : ""}`;
  return reduceKernel(`reduce_v1_${fn}`, gridMain(wg, "t", "t >= P.outer * P.inner", body));
}

export function reduceKernelV2(fn: ReduceFn, wg: number): Kernel {
  const combine = fn === "max"
    ? `let ov = sv[lid + s]; let oa = sa[lid + s];
       if (ov > sv[lid] || (ov == sv[lid] && oa < sa[lid])) { sv[lid] = ov; sa[lid] = oa; }`
    : "sv[lid] += sv[lid + s];";
  const body = `${fold(fn, `var r = lid; r < P.r; r += ${wg}u`)}
  sv[lid] = acc;
  sa[lid] = arg;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { ${combine} }
    workgroupBarrier();
  }
  if (lid == 0u) {
    Y[P.offOut + t] = sv[0] * P.scale;
    ${fn === "max" ? "I[t] = sa[0];" : ""}
  }`;
  return reduceKernel(
    `reduce_v2_${fn}`,
    `var<workgroup> sv: array<f32, ${wg}>;
var<workgroup> sa: array<i32, ${wg}>;
${gridMain(wg, "t", "t >= P.outer * P.inner", body, true)}`,
  );
}

/**
 * Records the reduction of X (contiguous from `off`) into Y[offOut..]; `arg` receives the arg-max
 * indices of `max` and is null for the others (an unused buffer is bound in its place).
 */
export function runReduce(
  gpu: Gpu,
  fn: ReduceFn,
  x: GpuBuffer,
  off: number,
  dims: { outer: number; r: number; inner: number },
  y: Binding,
  offOut: number,
  arg: GpuBuffer | null,
  scale = 1,
): void {
  if (fn === "max" && !arg) throw new Error("reduce max: no buffer for the arg-max indices");
  const outputs = dims.outer * dims.inner;
  if (outputs === 0) return;
  // A tensor past one binding is reduced through a window over the range it reads.
  const rx = bindRange(gpu, x, off, off + outputs * dims.r, `reduce ${fn}`);
  const p = new ParamWriter().u32(dims.outer).u32(dims.r).u32(dims.inner).u32(off - rx.base)
    .f32(scale).u32(offOut);
  // Long reductions parallelise over R. The choice depends on R alone, so an output's
  // summation order does not change with the batch size.
  const serial = dims.r <= gpu.tuning.serialReduceMax;
  const idx = fn === "max" ? arg! : gpu.unusedBuffer();
  if (serial) {
    const wg = gpu.tuning.elementwiseWorkgroup;
    gpu.dispatch(reduceKernelV1(fn, wg), [rx.bind, y, idx], p, grid(Math.ceil(outputs / wg)));
  } else {
    const wg = gpu.tuning.rowWorkgroup;
    gpu.dispatch(reduceKernelV2(fn, wg), [rx.bind, y, idx], p, grid(outputs));
  }
}

/** Backward of max: dx[o, r, i] = g[o, i] where r is the saved arg-max, else 0. */
export function argmaxScatterKernel(wg: number): Kernel {
  const body = `  let i = t % P.inner;
  let r = (t / P.inner) % P.r;
  let o = t / (P.inner * P.r);
  let j = o * P.inner + i;
  DX[t] = select(0.0, G[j], ARG[j] == i32(r));`;
  return defineKernel({
    name: "argmax_scatter",
    params: "outer: u32, r: u32, inner: u32, _p: u32",
    bindings: [
      ["G", "read", "array<f32>"],
      ["ARG", "read", "array<i32>"],
      ["DX", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "t", "t >= P.outer * P.r * P.inner", body),
  });
}

export function runArgmaxScatter(
  gpu: Gpu,
  g: GpuBuffer,
  arg: GpuBuffer,
  dx: GpuBuffer,
  dims: { outer: number; r: number; inner: number },
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  const n = dims.outer * dims.r * dims.inner;
  const p = new ParamWriter().u32(dims.outer).u32(dims.r).u32(dims.inner).u32(0);
  gpu.dispatch(argmaxScatterKernel(wg), [g, arg, dx], p, grid(Math.ceil(n / wg)));
}
