/**
 * Fused cross-entropy over logits [N, V] with integer targets [N] and an ignore index.
 *
 *   forward 1: per row lse = logsumexp(row), loss_row = lse - row[target] (0 when ignored)
 *   forward 2: one workgroup sums loss_row and the count of kept rows -> out = [mean, count]
 *   backward : dlogits = g / count * (softmax(row) - onehot(target)), 0 on ignored rows
 * No [N, V] softmax is stored and nothing is read back to learn the count.
 *
 * Chunked over the vocabulary (logits [N, C] of columns c0..c0+C at a time, so no [N, V] buffer
 * exists): each chunk merges its row max and sum of exponentials into running ones and picks up
 * the target's logit when the target falls in it; a last pass turns them into lse and the row
 * losses, and the mean kernel above finishes. The backward kernel takes the chunk's first column,
 * so the same kernel serves whole rows (c0 = 0) and chunks.
 *
 * Versions: v1; v2 adds the chunk kernels and the column offset of the backward.
 */

import type { Gpu } from "../device.ts";
import { cachedKernel, defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";
import { rowKernel, rowMaxSumExp, type RowMode, rowMode, rowReduceHelpers } from "./rowwise.ts";

const PARAMS = "rows: u32, n: u32, ignore: i32, c0: u32";

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

/**
 * dlogits, one element per invocation, or (`vec4`, v a multiple of 4) four of one row: one read
 * of the row's target, lse and scale for four outputs, the same arithmetic per element.
 */
export function crossEntropyBackwardKernel(wg: number, vec4 = false): Kernel {
  const body = vec4
    ? `  let row = (i * 4u) / P.n;
  let j = (i * 4u) % P.n;
  let t = T[row];
  let count = OUT[1];
  let scale = select(G[0] / count, 0.0, count == 0.0 || t == P.ignore);
  let p = exp(X[i] - LSE[row]);
  let hit = vec4<i32>(i32(j + P.c0)) + vec4<i32>(0, 1, 2, 3) == vec4<i32>(t);
  DX[i] = scale * (p - select(vec4<f32>(0.0), vec4<f32>(1.0), hit));`
    : `  let row = i / P.n;
  let j = i % P.n;
  let t = T[row];
  let count = OUT[1];
  let scale = select(G[0] / count, 0.0, count == 0.0 || t == P.ignore);
  let p = exp(X[i] - LSE[row]);
  DX[i] = scale * (p - select(0.0, 1.0, i32(j + P.c0) == t));`;
  const e = vec4 ? "vec4<f32>" : "f32";
  return defineKernel({
    name: vec4 ? "cross_entropy_bwd_vec4" : "cross_entropy_bwd",
    params: PARAMS,
    bindings: [
      ["X", "read", `array<${e}>`],
      ["T", "read", "array<i32>"],
      ["LSE", "read", "array<f32>"],
      ["OUT", "read", "array<f32>"],
      ["G", "read", "array<f32>"],
      ["DX", "rw", `array<${e}>`],
    ],
    body: gridMain(wg, "i", vec4 ? "i * 4u >= P.rows * P.n" : "i >= P.rows * P.n", body),
  });
}

function params(rows: number, v: number, ignore: number, c0 = 0): ParamWriter {
  return new ParamWriter().u32(rows).u32(v).i32(ignore).u32(c0);
}

/**
 * Merges one chunk of logits [rows, n] (columns c0..c0+n) into the running row max M, sum of
 * exponentials S (relative to M), and target logit TL.
 */
export function crossEntropyChunkKernel(wg: number, mode: RowMode): Kernel {
  return rowKernel(
    "cross_entropy_chunk",
    wg,
    mode,
    [
      ["X", "read", "array<f32>"],
      ["T", "read", "array<i32>"],
      ["M", "rw", "array<f32>"],
      ["S", "rw", "array<f32>"],
      ["TL", "rw", "array<f32>"],
    ],
    (v) =>
      `${rowMaxSumExp(v)}
  if (${v.leader}) {
    let mo = M[row];
    let mn = max(mo, m);
    S[row] = S[row] * exp(mo - mn) + s * exp(m - mn);
    M[row] = mn;
    let t = T[row];
    if (t >= i32(P.c0) && t < i32(P.c0 + P.n)) { TL[row] = X[base + u32(t) - P.c0]; }
  }`,
    PARAMS,
  );
}

/** After the last chunk: LSE = M + log S, and each row's loss (0 when its target is ignored). */
export function crossEntropyFinishKernel(wg: number): Kernel {
  return defineKernel({
    name: "cross_entropy_finish",
    params: PARAMS,
    bindings: [
      ["M", "read", "array<f32>"],
      ["S", "read", "array<f32>"],
      ["TL", "read", "array<f32>"],
      ["T", "read", "array<i32>"],
      ["LSE", "rw", "array<f32>"],
      ["L", "rw", "array<f32>"],
    ],
    body: gridMain(
      wg,
      "row",
      "row >= P.rows",
      `  let lse = M[row] + log(S[row]);
  LSE[row] = lse;
  L[row] = select(lse - TL[row], 0.0, T[row] == P.ignore);`,
    ),
  });
}

/** Running state of a chunked cross-entropy: row max, sum of exponentials, target logit. */
export interface ChunkState {
  m: GpuBuffer;
  s: GpuBuffer;
  tl: GpuBuffer;
}

/** Records one chunk's merge into `state` (which starts as M = -3.4e38, S = 0, TL = 0). */
export function runCrossEntropyChunk(
  gpu: Gpu,
  logits: GpuBuffer,
  targets: GpuBuffer,
  state: ChunkState,
  rows: number,
  width: number,
  c0: number,
  ignore: number,
): void {
  const mode = rowMode(gpu, width);
  const rwg = mode === "group" ? gpu.tuning.rowWorkgroup : gpu.tuning.elementwiseWorkgroup;
  gpu.dispatch(
    crossEntropyChunkKernel(rwg, mode),
    [logits, targets, state.m, state.s, state.tl],
    params(rows, width, ignore, c0),
    grid(mode === "group" ? rows : Math.ceil(rows / rwg)),
  );
}

/** Records the end of a chunked forward: `lse`, `rowLoss`, and `out` = (mean loss, count). */
export function runCrossEntropyFinish(
  gpu: Gpu,
  state: ChunkState,
  targets: GpuBuffer,
  lse: GpuBuffer,
  rowLoss: GpuBuffer,
  out: GpuBuffer,
  rows: number,
  v: number,
  ignore: number,
): void {
  const ewg = gpu.tuning.elementwiseWorkgroup;
  gpu.dispatch(
    crossEntropyFinishKernel(ewg),
    [state.m, state.s, state.tl, targets, lse, rowLoss],
    params(rows, v, ignore),
    grid(Math.ceil(rows / ewg)),
  );
  const wg = gpu.tuning.rowWorkgroup;
  gpu.dispatch(crossEntropyMeanKernel(wg), [rowLoss, targets, out], params(rows, v, ignore), [
    1,
    1,
    1,
  ]);
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

/**
 * Records dlogits for logits [rows, v] (columns c0..c0+v of the vocabulary: a chunk, or all of it
 * with c0 = 0), given the forward's lse and (mean, count).
 */
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
  c0 = 0,
): void {
  const wg = gpu.tuning.elementwiseWorkgroup, vec4 = v % 4 === 0;
  gpu.dispatch(
    cachedKernel(`cross_entropy_bwd:${wg}:${vec4}`, () => crossEntropyBackwardKernel(wg, vec4)),
    [logits, targets, lse, out, g, dx],
    params(rows, v, ignore, c0),
    grid(Math.ceil((rows * v) / (vec4 ? 4 : 1) / wg)),
  );
}
