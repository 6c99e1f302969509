/**
 * Row gather out[i, :] = W[ids[i], :] and its backward, a deterministic scatter-add.
 *
 * WGSL has no float atomics, so the backward groups positions by id instead of adding into dW
 * concurrently. Versions:
 *   bwd v1 (scan): one invocation per (row v, column d) scans all ids; O(V * N * D), used when
 *          the ids live only on the GPU;
 *   bwd v2 (grouped): the host sorts positions by id (ids are usually uploaded from the host, so
 *          it has them), then one invocation per (distinct id, column) sums its positions in
 *          order; O(N * D) and bitwise deterministic.
 * A weight past one storage binding is handled in pages of rows, each bound as a window: the
 * gather writes the positions whose id falls in the page, the grouped scatter runs a plan of the
 * page's ids (rows per page are a multiple of 64, so every page starts on an aligned offset).
 */

import type { Gpu } from "../device.ts";
import { defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";
import { type Binding, bindRange, paged } from "../pages.ts";
import { BindingLimitError } from "../errors.ts";

const PARAMS = "n: u32, d: u32, v: u32, groups: u32";

/** W stored as f16 is widened to f32 rows. */
export function gatherKernel(wg: number, f16 = false): Kernel {
  const body = `  let row = u32(clamp(IDS[i / P.d], 0, i32(P.v) - 1));
  Y[i] = ${f16 ? "f32(W[row * P.d + i % P.d])" : "W[row * P.d + i % P.d]"};`;
  return defineKernel({
    name: f16 ? "gather_f16" : "gather",
    params: PARAMS,
    bindings: [
      ["W", "read", f16 ? "array<f16>" : "array<f32>"],
      ["IDS", "read", "array<i32>"],
      ["Y", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "i", "i >= P.n * P.d", body),
  });
}

/**
 * The gather four floats at a time (f32 W, D % 4 == 0): a quarter of the loads and stores of
 * {@link gatherKernel}, each a per-lane loop on llvmpipe. With `scaled`, gathered row r is
 * multiplied by S[r] (the weights of a mean: one product per element, as a separate multiply
 * would form it).
 */
export function gatherKernelVec4(wg: number, scaled: boolean): Kernel {
  const body = `  let d4 = P.d / 4u;
  let r = i / d4;
  let row = u32(clamp(IDS[r], 0, i32(P.v) - 1));
  Y[i] = W[row * d4 + i % d4]${scaled ? " * S[r]" : ""};`;
  return defineKernel({
    name: scaled ? "gather_vec4_scaled" : "gather_vec4",
    params: PARAMS,
    bindings: [
      ["W", "read", "array<vec4<f32>>"],
      ["IDS", "read", "array<i32>"],
      ["Y", "rw", "array<vec4<f32>>"],
      ...(scaled ? [["S", "read", "array<f32>"] as const] : []),
    ],
    body: gridMain(wg, "i", "i >= P.n * P.d / 4u", body),
  });
}

/** The gather of one page of rows [r0, r0 + rows) of W, read from element `off` of its window. */
export function gatherRowsKernel(wg: number, f16 = false): Kernel {
  const body = `  let id = clamp(IDS[i / P.d], 0, i32(P.vt) - 1) - i32(P.r0);
  let at = P.off + u32(id) * P.d + i % P.d;
  if (id >= 0 && u32(id) < P.rows) { Y[i] = ${f16 ? "f32(W[at])" : "W[at]"}; }`;
  return defineKernel({
    name: f16 ? "gather_rows_f16" : "gather_rows",
    params: "n: u32, d: u32, rows: u32, r0: u32, off: u32, vt: u32, _a: u32, _b: u32",
    bindings: [
      ["W", "read", f16 ? "array<f16>" : "array<f32>"],
      ["IDS", "read", "array<i32>"],
      ["Y", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "i", "i >= P.n * P.d", body),
  });
}

/** Rows per page of a [v, d] weight past one binding: a multiple of 64 that fits one. */
export function pageRows(gpu: Gpu, d: number, elemBytes = 4): number {
  return Math.max(64, Math.floor((gpu.bindingLimit - 256) / (elemBytes * d) / 64) * 64);
}

export function scatterScanKernel(wg: number): Kernel {
  const body = `  let v = i32(t / P.d);
  let j = t % P.d;
  var s = 0.0;
  for (var i = 0u; i < P.n; i++) {
    if (IDS[i] == v) { s += G[i * P.d + j]; }
  }
  DW[t] = s;`;
  return defineKernel({
    name: "scatter_scan",
    params: PARAMS,
    bindings: [
      ["G", "read", "array<f32>"],
      ["IDS", "read", "array<i32>"],
      ["DW", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "t", "t >= P.v * P.d", body),
  });
}

/** PLAN = [groups: (id, start)...][positions sorted by id]; DW must be zeroed by the caller. */
export function scatterGroupedKernel(wg: number): Kernel {
  const body = `  let g = t / P.d;
  let j = t % P.d;
  let id = u32(PLAN[2u * g]);
  let start = u32(PLAN[2u * g + 1u]);
  let end = select(P.n, u32(PLAN[2u * g + 3u]), g + 1u < P.groups);
  let pos0 = 2u * P.groups;
  var s = 0.0;
  // Four positions per iteration, in order (the same sums as one at a time): llvmpipe stops an
  // invocation's loops at 65,535 iterations, and a frequent id can have more positions.
  var k = start;
  for (; k + 4u <= end; k += 4u) {
    s += G[u32(PLAN[pos0 + k]) * P.d + j];
    s += G[u32(PLAN[pos0 + k + 1u]) * P.d + j];
    s += G[u32(PLAN[pos0 + k + 2u]) * P.d + j];
    s += G[u32(PLAN[pos0 + k + 3u]) * P.d + j];
  }
  for (; k < end; k++) { s += G[u32(PLAN[pos0 + k]) * P.d + j]; }
  DW[id * P.d + j] = s;`;
  return defineKernel({
    name: "scatter_grouped",
    params: PARAMS,
    bindings: [
      ["G", "read", "array<f32>"],
      ["PLAN", "read", "array<i32>"],
      ["DW", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "t", "t >= P.groups * P.d", body),
  });
}

/** Host plan for the grouped scatter: distinct ids with segment starts, then sorted positions. */
export function scatterPlan(ids: Int32Array): { plan: Int32Array; groups: number } {
  const order = Array.from(ids.keys()).sort((a, b) => ids[a] - ids[b] || a - b);
  const heads: number[] = [];
  for (let k = 0; k < order.length; k++) {
    if (k === 0 || ids[order[k]] !== ids[order[k - 1]]) heads.push(ids[order[k]], k);
  }
  const groups = heads.length / 2;
  const plan = new Int32Array(2 * groups + ids.length);
  plan.set(heads);
  plan.set(order, 2 * groups);
  return { plan, groups };
}

/**
 * Whether a gather from `w` (rows of `d` elements) runs four floats at a time, and so can scale
 * its rows: f32, D % 4 == 0, in one binding.
 */
export function gatherVec4Fits(gpu: Gpu, w: GpuBuffer, d: number, f16: boolean): boolean {
  return !paged(gpu, w) && !f16 && d % 4 === 0;
}

export function runGather(
  gpu: Gpu,
  w: GpuBuffer,
  ids: GpuBuffer,
  y: GpuBuffer,
  n: number,
  d: number,
  v: number,
  f16 = false,
  scale: GpuBuffer | null = null,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  if (gatherVec4Fits(gpu, w, d, f16)) {
    const p = new ParamWriter().u32(n).u32(d).u32(v).u32(0);
    gpu.dispatch(
      gatherKernelVec4(wg, scale !== null),
      scale ? [w, ids, y, scale] : [w, ids, y],
      p,
      grid(Math.ceil((n * d) / 4 / wg)),
    );
    return;
  }
  if (scale) {
    throw new Error("gather: scaled rows need an f32 weight of width % 4 == 0 in one binding");
  }
  if (!paged(gpu, w)) {
    const p = new ParamWriter().u32(n).u32(d).u32(v).u32(0);
    gpu.dispatch(gatherKernel(wg, f16), [w, ids, y], p, grid(Math.ceil((n * d) / wg)));
    return;
  }
  const rows = pageRows(gpu, d, f16 ? 2 : 4);
  for (let r0 = 0; r0 < v; r0 += rows) {
    const r1 = Math.min(v, r0 + rows);
    const rw = bindRange(gpu, w, r0 * d, r1 * d, "gather", f16 ? 2 : 4);
    const p = new ParamWriter().u32(n).u32(d).u32(r1 - r0).u32(r0).u32(r0 * d - rw.base).u32(v)
      .u32(0).u32(0);
    gpu.dispatch(
      gatherRowsKernel(wg, f16),
      [rw.bind, ids, y],
      p,
      grid(Math.ceil((n * d) / wg)),
    );
  }
}

/**
 * The grouped-scatter plan (see {@link scatterPlan}) of the positions whose id falls in rows
 * [r0, r1), ids rebased to r0: one page of a weight past one binding.
 */
export function scatterPlanRows(ids: Int32Array, r0: number, r1: number) {
  const pos = Array.from(ids.keys()).filter((i) => ids[i] >= r0 && ids[i] < r1)
    .sort((a, b) => ids[a] - ids[b] || a - b);
  const heads: number[] = [];
  for (let k = 0; k < pos.length; k++) {
    if (k === 0 || ids[pos[k]] !== ids[pos[k - 1]]) heads.push(ids[pos[k]] - r0, k);
  }
  const groups = heads.length / 2;
  const plan = new Int32Array(2 * groups + pos.length);
  plan.set(heads);
  plan.set(pos, 2 * groups);
  return { plan, groups, count: pos.length };
}

export function runScatterScan(
  gpu: Gpu,
  g: GpuBuffer,
  ids: GpuBuffer,
  dw: GpuBuffer,
  n: number,
  d: number,
  v: number,
): void {
  if (paged(gpu, dw)) {
    throw new BindingLimitError(
      `embedding backward: a weight of ${v} x ${d} past one binding needs its ids on the host`,
    );
  }
  if (n > gpu.loopLimit / 2) {
    // Each invocation loops over every position; llvmpipe stops its loops at 65,535 silently.
    throw new BindingLimitError(
      `embedding backward: ${n} positions with ids only on the GPU is past this adapter's ` +
        `${gpu.loopLimit} iterations per loop; upload the ids from the host (grouped scatter)`,
    );
  }
  const wg = gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(n).u32(d).u32(v).u32(0);
  gpu.dispatch(scatterScanKernel(wg), [g, ids, dw], p, grid(Math.ceil((v * d) / wg)));
}

export function runScatterGrouped(
  gpu: Gpu,
  g: GpuBuffer,
  plan: GpuBuffer,
  groups: number,
  dw: Binding,
  n: number,
  d: number,
  v: number,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(n).u32(d).u32(v).u32(groups);
  gpu.dispatch(scatterGroupedKernel(wg), [g, plan, dw], p, grid(Math.ceil((groups * d) / wg)));
}
