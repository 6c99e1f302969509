/**
 * Fused cross-entropy over logits [N, V] with integer targets [N] and an ignore index.
 *
 *   forward 1: per row lse = logsumexp(row), loss_row = lse - row[target] (0 when ignored)
 *   forward 2: one workgroup sums loss_row and the count of kept rows -> out = [mean, count]
 *   backward : dlogits = g / count * (softmax(row) - onehot(target)), 0 on ignored rows
 * No [N, V] softmax is stored and nothing is read back to learn the count.
 *
 * Versions: v1.
 */

import type { Gpu } from "../device.ts";
import { defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";
import { rowKernel, rowMaxSumExp, type RowMode, rowMode, rowReduceHelpers } from "./rowwise.ts";

const PARAMS = "rows: u32, n: u32, ignore: i32, _p: u32";

export function crossEntropyRowsKernel(wg: number, mode: RowMode): Kernel {
  return rowKernel(
    "cross_entropy_rows",
    wg,
    mode,
    [
      ["X", "read", "array<f32>"],
      ["T", "read", "array<i32>"],
      ["LSE", "rw", "array<f32>"],
      ["L", "rw", "array<f32>"],
    ],
    (v) =>
      `${rowMaxSumExp(v)}
  if (${v.leader}) {
    let lse = m + log(s);
    LSE[row] = lse;
    let t = T[row];
    // Out-of-range targets were rejected on the host; clamp keeps the read in bounds regardless.
    let tc = u32(clamp(t, 0, i32(P.n) - 1));
    L[row] = select(lse - X[base + tc], 0.0, t == P.ignore);
  }`,
    PARAMS,
  );
}

export function crossEntropyMeanKernel(wg: number): Kernel {
  return defineKernel({
    name: "cross_entropy_mean",
    params: PARAMS,
    bindings: [
      ["L", "read", "array<f32>"],
      ["T", "read", "array<i32>"],
      ["OUT", "rw", "array<f32>"],
    ],
    body: `${rowReduceHelpers(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  var c = 0.0;
  for (var r = lid; r < P.rows; r += ${wg}u) {
    s += L[r];
    c += select(1.0, 0.0, T[r] == P.ignore);
  }
  s = wgSum(s, lid);
  c = wgSum(c, lid);
  if (lid == 0u) {
    OUT[0] = select(s / c, 0.0, c == 0.0);
    OUT[1] = c;
  }
}`,
  });
}

export function crossEntropyBackwardKernel(wg: number): Kernel {
  const body = `  let row = i / P.n;
  let j = i % P.n;
  let t = T[row];
  let count = OUT[1];
  let scale = select(G[0] / count, 0.0, count == 0.0 || t == P.ignore);
  let p = exp(X[i] - LSE[row]);
  DX[i] = scale * (p - select(0.0, 1.0, i32(j) == t));`;
  return defineKernel({
    name: "cross_entropy_bwd",
    params: PARAMS,
    bindings: [
      ["X", "read", "array<f32>"],
      ["T", "read", "array<i32>"],
      ["LSE", "read", "array<f32>"],
      ["OUT", "read", "array<f32>"],
      ["G", "read", "array<f32>"],
      ["DX", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "i", "i >= P.rows * P.n", body),
  });
}

function params(rows: number, v: number, ignore: number): ParamWriter {
  return new ParamWriter().u32(rows).u32(v).i32(ignore).u32(0);
}

/** Records forward: `lse` [N], `rowLoss` [N], `out` [2] = (mean loss, kept-row count). */
export function runCrossEntropy(
  gpu: Gpu,
  logits: GpuBuffer,
  targets: GpuBuffer,
  lse: GpuBuffer,
  rowLoss: GpuBuffer,
  out: GpuBuffer,
  rows: number,
  v: number,
  ignore: number,
): void {
  const mode = rowMode(gpu, v);
  const rwg = mode === "group" ? gpu.tuning.rowWorkgroup : gpu.tuning.elementwiseWorkgroup;
  gpu.dispatch(
    crossEntropyRowsKernel(rwg, mode),
    [logits, targets, lse, rowLoss],
    params(rows, v, ignore),
    grid(mode === "group" ? rows : Math.ceil(rows / rwg)),
  );
  const wg = gpu.tuning.rowWorkgroup;
  gpu.dispatch(crossEntropyMeanKernel(wg), [rowLoss, targets, out], params(rows, v, ignore), [
    1,
    1,
    1,
  ]);
}

export function runCrossEntropyBackward(
  gpu: Gpu,
  logits: GpuBuffer,
  targets: GpuBuffer,
  lse: GpuBuffer,
  out: GpuBuffer,
  g: GpuBuffer,
  dx: GpuBuffer,
  rows: number,
  v: number,
  ignore: number,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup;
  gpu.dispatch(
    crossEntropyBackwardKernel(wg),
    [logits, targets, lse, out, g, dx],
    params(rows, v, ignore),
    grid(Math.ceil((rows * v) / wg)),
  );
}
