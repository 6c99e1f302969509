/**
 * Row kernels: one workgroup per row of a contiguous [rows, n] tensor, reductions in workgroup
 * memory. Softmax and log-softmax (forward and backward), RMSNorm (forward and backward) live
 * here because they share the same row reduction.
 *
 * Versions: v1 (one workgroup per row, invocations stride over the row).
 */

import type { Gpu } from "../device.ts";
import type { Binding, Kernel } from "../kernel.ts";
import { cachedKernel, defineKernel, grid, gridMain, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";

/** Workgroup sum/max over `red` (size wg); every invocation gets the result. */
export function rowReduceHelpers(wg: number): string {
  return `
var<workgroup> red: array<f32, ${wg}>;
fn wgSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn wgMax(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
}

const ROW_PARAMS = "rows: u32, n: u32, eps: f32, _p: u32";

/**
 * How a row kernel spreads over invocations: "group" gives each row a workgroup that reduces in
 * workgroup memory (long rows, few of them); "thread" gives each row one invocation and no
 * barriers (many short rows: on llvmpipe a barrier costs more than the row's arithmetic).
 */
export type RowMode = "group" | "thread";

/**
 * The row kernel mode for rows of length n on this adapter. It depends on n only, never on the
 * number of rows, so a row's result (its summation order) does not depend on the batch size.
 */
export function rowMode(gpu: Gpu, n: number): RowMode {
  return n <= gpu.tuning.threadRowMaxLen ? "thread" : "group";
}

/** Names a row body uses: its first element, stride, and whether this invocation writes scalars. */
export interface RowVars {
  start: string;
  stride: string;
  leader: string;
}

/**
 * A row kernel: `body` runs once per row with `base` (row offset), `row`, and the loop bounds
 * of `RowVars`; `wgSum`/`wgMax` reduce across the row's invocations (identity in thread mode).
 * `params` are the fields of Params, which start with `rows` and `n`.
 */
export function rowKernel(
  name: string,
  wg: number,
  mode: RowMode,
  bindings: readonly Binding[],
  body: (v: RowVars) => string,
  params = ROW_PARAMS,
): Kernel {
  const group = mode === "group";
  const helpers = group ? rowReduceHelpers(wg) : `
fn wgSum(v: f32, lid: u32) -> f32 { return v; }
fn wgMax(v: f32, lid: u32) -> f32 { return v; }`;
  const vars: RowVars = group
    ? { start: "lid", stride: `${wg}u`, leader: "lid == 0u" }
    : { start: "0u", stride: "1u", leader: "true" };
  return defineKernel({
    name: `${name}_${mode}`,
    params,
    bindings,
    body: `${helpers}
${gridMain(wg, "row", "row >= P.rows", `  let base = row * P.n;\n${body(vars)}`, group)}`,
  });
}

/**
 * WGSL of a row body: `m`, the largest of X[base..base + n], and `s`, the sum of exp(x - m)
 * over the row; with `lse = m + log(s)` the row's log-sum-exp.
 */
export function rowMaxSumExp({ start, stride }: RowVars): string {
  return `
  var m = -3.4028234e38;
  for (var j = ${start}; j < P.n; j += ${stride}) { m = max(m, X[base + j]); }
  m = wgMax(m, lid);
  var s = 0.0;
  for (var j = ${start}; j < P.n; j += ${stride}) { s += exp(X[base + j] - m); }
  s = wgSum(s, lid);`;
}

/** y = softmax(x) or log_softmax(x) along rows. */
export function softmaxKernel(log: boolean, wg: number, mode: RowMode = "group"): Kernel {
  return cachedKernel(`softmax:${log}:${wg}:${mode}`, () =>
    rowKernel(
      log ? "log_softmax_fwd" : "softmax_fwd",
      wg,
      mode,
      [["X", "read", "array<f32>"], ["Y", "rw", "array<f32>"]],
      (v) =>
        `${rowMaxSumExp(v)}
  let lse = m + log(s);
  for (var j = ${v.start}; j < P.n; j += ${v.stride}) {
    ${log ? "Y[base + j] = X[base + j] - lse;" : "Y[base + j] = exp(X[base + j] - lse);"}
  }`,
    ));
}

/** dx from y and dy: softmax dx = y (dy - sum(dy y)); log_softmax dx = dy - exp(y) sum(dy). */
export function softmaxBackwardKernel(log: boolean, wg: number, mode: RowMode = "group"): Kernel {
  return cachedKernel(`softmax_bwd:${log}:${wg}:${mode}`, () =>
    rowKernel(
      log ? "log_softmax_bwd" : "softmax_bwd",
      wg,
      mode,
      [["Y", "read", "array<f32>"], ["G", "read", "array<f32>"], ["DX", "rw", "array<f32>"]],
      ({ start, stride }) => `
  var s = 0.0;
  for (var j = ${start}; j < P.n; j += ${stride}) {
    ${log ? "s += G[base + j];" : "s += G[base + j] * Y[base + j];"}
  }
  s = wgSum(s, lid);
  for (var j = ${start}; j < P.n; j += ${stride}) {
    ${
        log
          ? "DX[base + j] = G[base + j] - exp(Y[base + j]) * s;"
          : "DX[base + j] = Y[base + j] * (G[base + j] - s);"
      }
  }`,
    ));
}

/**
 * WGSL declaring `name` = 1 / rms of the row of P.n floats at vec4 `at` of X, its squares summed
 * one component at a time in order: the vec4 thread RMSNorm and the pooling kernel share it, so
 * a row's scale is the same bits in both.
 */
function rowRstdVec4(at: string, name: string): string {
  return `  var ss_${name} = 0.0;
  for (var j = 0u; j < P.n / 4u; j++) {
    let v = X[${at} + j];
    ss_${name} += v.x * v.x;
    ss_${name} += v.y * v.y;
    ss_${name} += v.z * v.z;
    ss_${name} += v.w * v.w;
  }
  let ${name} = inverseSqrt(ss_${name} / f32(P.n) + P.eps);`;
}

/**
 * y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps); saves rstd per row. `vec4` (thread
 * mode, rows of a multiple of 4): the row is read and written as vec4s, 4x fewer per-lane
 * gathers on llvmpipe, with the same summation order (bitwise the same result).
 */
export function rmsnormKernel(wg: number, mode: RowMode = "group", vec4 = false): Kernel {
  if (vec4 && mode === "thread") {
    return cachedKernel(`rmsnorm_vec4:${wg}:${mode}`, () =>
      rowKernel(
        "rmsnorm_fwd_vec4",
        wg,
        mode,
        rmsnormBindings("vec4<f32>"),
        () => `
  let b4 = base / 4u;
${rowRstdVec4("b4", "rstd")}
  for (var j = 0u; j < P.n / 4u; j++) { Y[b4 + j] = X[b4 + j] * rstd * W[j]; }
  R[row] = rstd;`,
      ));
  }
  return cachedKernel(`rmsnorm:${wg}:${mode}`, () =>
    rowKernel(
      "rmsnorm_fwd",
      wg,
      mode,
      rmsnormBindings("f32"),
      ({ start, stride, leader }) => `
  var s = 0.0;
  for (var j = ${start}; j < P.n; j += ${stride}) { let v = X[base + j]; s += v * v; }
  s = wgSum(s, lid);
  let rstd = inverseSqrt(s / f32(P.n) + P.eps);
  for (var j = ${start}; j < P.n; j += ${stride}) { Y[base + j] = X[base + j] * rstd * W[j]; }
  if (${leader}) { R[row] = rstd; }`,
    ));
}

/** RMSNorm forward: X and the weight W (of `elem`s) read, Y (of `elem`s) and rstd R written. */
function rmsnormBindings(elem: string): Binding[] {
  return [
    ["X", "read", `array<${elem}>`],
    ["W", "read", `array<${elem}>`],
    ["Y", "rw", `array<${elem}>`],
    ["R", "rw", "array<f32>"],
  ];
}

/**
 * dx = rstd (w dy - xhat mean(xhat w dy)), xhat = x rstd. `vec4` as for the forward: vec4 loads
 * and stores in thread mode, the same summation order (bitwise the same result).
 */
export function rmsnormBackwardKernel(
  wg: number,
  mode: RowMode = "group",
  vec4 = false,
  accumulate = false,
): Kernel {
  // With `accumulate` dx is added to what DX holds (a gradient already summed there).
  const add = accumulate ? "_acc" : "";
  const set = (at: string) => `DX[${at}] = ${accumulate ? `DX[${at}] + ` : ""}`;
  if (vec4 && mode === "thread") {
    return cachedKernel(`rmsnorm_bwd_vec4${add}:${wg}`, () =>
      rowKernel(
        `rmsnorm_bwd_vec4${add}`,
        wg,
        mode,
        [
          ["X", "read", "array<vec4<f32>>"],
          ["W", "read", "array<vec4<f32>>"],
          ["R", "read", "array<f32>"],
          ["G", "read", "array<vec4<f32>>"],
          ["DX", "rw", "array<vec4<f32>>"],
        ],
        () => `
  let b4 = base / 4u;
  let rstd = R[row];
  var s = 0.0;
  for (var j = 0u; j < P.n / 4u; j++) {
    let t = X[b4 + j] * rstd * W[j] * G[b4 + j];
    s += t.x;
    s += t.y;
    s += t.z;
    s += t.w;
  }
  s = s / f32(P.n);
  for (var j = 0u; j < P.n / 4u; j++) {
    ${set("b4 + j")}rstd * (W[j] * G[b4 + j] - X[b4 + j] * rstd * s);
  }`,
      ));
  }
  return cachedKernel(`rmsnorm_bwd${add}:${wg}:${mode}`, () =>
    rowKernel(
      `rmsnorm_bwd${add}`,
      wg,
      mode,
      [
        ["X", "read", "array<f32>"],
        ["W", "read", "array<f32>"],
        ["R", "read", "array<f32>"],
        ["G", "read", "array<f32>"],
        ["DX", "rw", "array<f32>"],
      ],
      ({ start, stride }) => `
  let rstd = R[row];
  var s = 0.0;
  for (var j = ${start}; j < P.n; j += ${stride}) { s += X[base + j] * rstd * W[j] * G[base + j]; }
  s = wgSum(s, lid) / f32(P.n);
  for (var j = ${start}; j < P.n; j += ${stride}) {
    ${set("base + j")}rstd * (W[j] * G[base + j] - X[base + j] * rstd * s);
  }`,
    ));
}

/**
 * Column sums of dy * x * rstd over row chunks: partial[c, j] for chunk c. The caller sums the
 * chunks, which keeps both steps parallel when rows >> n.
 */
export function rmsnormWeightGradKernel(wg: number, chunk: number, vec4 = false): Kernel {
  // vec4: one invocation per 4 columns of a chunk (n % 4 == 0), each column summed in the same
  // order as the scalar kernel's (bitwise the same), with a quarter of the loads: on llvmpipe a
  // vec4 load costs about what a scalar one does.
  const [e, n] = vec4 ? ["vec4<f32>", "(P.n / 4u)"] : ["f32", "P.n"];
  const body = `  let c = t / ${n};
  let j = t % ${n};
  var s = ${e}(0.0);
  let end = min((c + 1u) * ${chunk}u, P.rows);
  for (var r = c * ${chunk}u; r < end; r++) { s += G[r * ${n} + j] * X[r * ${n} + j] * R[r]; }
  DW[t] = s;`;
  return cachedKernel(`rmsnorm_dw:${wg}:${chunk}:${vec4}`, () =>
    defineKernel({
      name: vec4 ? "rmsnorm_dw_partial_vec4" : "rmsnorm_dw_partial",
      params: "rows: u32, n: u32, chunks: u32, _p: u32",
      bindings: [
        ["X", "read", `array<${e}>`],
        ["R", "read", "array<f32>"],
        ["G", "read", `array<${e}>`],
        ["DW", "rw", `array<${e}>`],
      ],
      body: gridMain(wg, "t", `t >= ${n} * P.chunks`, body),
    }));
}

export const RMSNORM_DW_CHUNK = 256;

/** Dispatches a row kernel made for `mode` over `rows` rows of length n. */
export function runRowKernel(
  gpu: Gpu,
  kernel: (wg: number, mode: RowMode) => Kernel,
  buffers: GpuBuffer[],
  rows: number,
  n: number,
  eps = 0,
): void {
  const mode = rowMode(gpu, n);
  const wg = mode === "group" ? gpu.tuning.rowWorkgroup : gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(rows).u32(n).f32(eps).u32(0);
  gpu.dispatch(kernel(wg, mode), buffers, p, grid(mode === "group" ? rows : Math.ceil(rows / wg)));
}

export function runRmsnormWeightGrad(
  gpu: Gpu,
  x: GpuBuffer,
  rstd: GpuBuffer,
  g: GpuBuffer,
  partial: GpuBuffer,
  rows: number,
  n: number,
): number {
  const chunks = Math.ceil(rows / RMSNORM_DW_CHUNK);
  const wg = gpu.tuning.elementwiseWorkgroup, vec4 = n % 4 === 0 && gpu.tuning.elementwiseVec4;
  const p = new ParamWriter().u32(rows).u32(n).u32(chunks).u32(0);
  gpu.dispatch(
    rmsnormWeightGradKernel(wg, RMSNORM_DW_CHUNK, vec4),
    [x, rstd, g, partial],
    p,
    grid(Math.ceil(((vec4 ? n / 4 : n) * chunks) / wg)),
  );
  return chunks;
}

/**
 * Pooled embeddings in one pass: for each group g of rows [start, start + count) of X [rows, n]
 * (G holds start, count per group), Y[g] = the mean over the group of RMSNorm(row) * W, then
 * scaled to unit L2 norm (eps under the root) when `l2` is set. One invocation per group, vec4
 * loads (n % 4 == 0). Each row's sum of squares runs as in the vec4 thread RMSNorm, each group's
 * sums in row order, so a group's vector depends on its rows alone. It replaces the RMSNorm of
 * every row, a gather, a sum and the normalisation's five passes: on llvmpipe those took ~6% of
 * embedding a batch of short texts.
 */
export function rmsnormPoolKernel(wg: number): Kernel {
  return cachedKernel(`rmsnorm_pool:${wg}`, () =>
    defineKernel({
      name: "rmsnorm_pool_vec4",
      params: "groups: u32, n: u32, eps: f32, l2: u32, l2eps: f32, _a: u32, _b: u32, _c: u32",
      bindings: [
        ["X", "read", "array<vec4<f32>>"],
        ["W", "read", "array<vec4<f32>>"],
        ["G", "read", "array<i32>"],
        ["Y", "rw", "array<vec4<f32>>"],
        ["R", "rw", "array<f32>"],
      ],
      body: gridMain(
        wg,
        "g",
        "g >= P.groups",
        `  let first = u32(G[2u * g]);
  let count = u32(G[2u * g + 1u]);
  let n4 = P.n / 4u;
  // Each row's 1 / rms, kept in R (indexed by row) for the second pass.
  for (var r = first; r < first + count; r++) {
${rowRstdVec4("r * n4", "rstd")}
    R[r] = rstd;
  }
  let inv = 1.0 / f32(max(count, 1u));
  var ss = 0.0;
  for (var j = 0u; j < n4; j++) {
    var acc = vec4<f32>(0.0);
    for (var r = first; r < first + count; r++) { acc += X[r * n4 + j] * R[r] * W[j] * inv; }
    Y[g * n4 + j] = acc;
    ss += dot(acc, acc);
  }
  if (P.l2 != 0u) {
    let norm = sqrt(ss + P.l2eps);
    for (var j = 0u; j < n4; j++) { Y[g * n4 + j] = Y[g * n4 + j] / norm; }
  }`,
      ),
    }));
}

/**
 * Records {@link rmsnormPoolKernel}: `groups` (start, count) pairs as i32 in `g`, X [rows, n],
 * Y [groups, n]; `r` holds rows floats of scratch.
 */
export function runRmsnormPool(
  gpu: Gpu,
  bufs: { x: GpuBuffer; w: GpuBuffer; g: GpuBuffer; y: GpuBuffer; r: GpuBuffer },
  groups: number,
  n: number,
  eps: number,
  l2: number | null,
): void {
  if (n % 4) throw new Error(`rmsnorm pool: row length ${n} is not a multiple of 4`);
  const wg = gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(groups).u32(n).f32(eps).u32(l2 === null ? 0 : 1)
    .f32(l2 ?? 0).u32(0).u32(0).u32(0);
  gpu.dispatch(
    rmsnormPoolKernel(wg),
    [bufs.x, bufs.w, bufs.g, bufs.y, bufs.r],
    p,
    grid(Math.ceil(groups / wg)),
  );
}
