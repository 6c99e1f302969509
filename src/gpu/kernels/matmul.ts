/**
 * Batched matmul: out[b] = A[b] @ B[b], A [M, K] and B [K, N] given through strides, so either
 * operand may be a transposed view and a batch stride of 0 broadcasts a 2-D weight.
 *
 * Versions (bench/matmul_versions.ts times each against the CPU reference):
 *   v1 register-blocked, TM x TN outputs per invocation, general strides, no workgroup memory.
 */

import type { Gpu } from "../device.ts";
import { grid, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";

/** A matrix operand: buffer, element offset, and strides for (batch, row, col). */
export interface MatOperand {
  buf: GpuBuffer;
  offset: number;
  batchStride: number;
  rowStride: number;
  colStride: number;
}

export interface MatmulShape {
  batch: number;
  m: number;
  n: number;
  k: number;
}

export function matmulKernelV1(tm: number, tn: number, wg: number): Kernel {
  const source = `
struct Params {
  M: u32, N: u32, K: u32, tilesN: u32,
  tilesPerBatch: u32, batch: u32, offA: u32, offB: u32,
  sAb: u32, sAm: u32, sAk: u32, sBb: u32,
  sBk: u32, sBn: u32, offC: u32, _pad: u32,
};
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let t = (wid.x + wid.y * nwg.x) * ${wg}u + lid;
  if (t >= P.tilesPerBatch * P.batch) { return; }
  let b = t / P.tilesPerBatch;
  let r = t % P.tilesPerBatch;
  let m0 = (r / P.tilesN) * ${tm}u;
  let n0 = (r % P.tilesN) * ${tn}u;
  var acc: array<array<f32, ${tn}>, ${tm}>;
  let aBase = P.offA + b * P.sAb;
  let bBase = P.offB + b * P.sBb;
  // Clamp rows/cols so edge tiles read valid memory; their results are dropped on store.
  var aRow: array<u32, ${tm}>;
  for (var i = 0u; i < ${tm}u; i++) { aRow[i] = aBase + min(m0 + i, P.M - 1u) * P.sAm; }
  var bCol: array<u32, ${tn}>;
  for (var j = 0u; j < ${tn}u; j++) { bCol[j] = bBase + min(n0 + j, P.N - 1u) * P.sBn; }
  for (var k = 0u; k < P.K; k++) {
    var bv: array<f32, ${tn}>;
    for (var j = 0u; j < ${tn}u; j++) { bv[j] = B[bCol[j] + k * P.sBk]; }
    for (var i = 0u; i < ${tm}u; i++) {
      let av = A[aRow[i] + k * P.sAk];
      for (var j = 0u; j < ${tn}u; j++) { acc[i][j] = fma(av, bv[j], acc[i][j]); }
    }
  }
  let cBase = P.offC + b * P.M * P.N;
  for (var i = 0u; i < ${tm}u; i++) {
    if (m0 + i >= P.M) { break; }
    for (var j = 0u; j < ${tn}u; j++) {
      if (n0 + j < P.N) { C[cBase + (m0 + i) * P.N + n0 + j] = acc[i][j]; }
    }
  }
}`;
  return { name: `matmul_v1_${tm}x${tn}`, source, buffers: ["read", "read", "rw"] };
}

/** Records C (contiguous [batch, M, N] at `offC`) = A @ B. */
export function runMatmul(
  gpu: Gpu,
  a: MatOperand,
  b: MatOperand,
  c: GpuBuffer,
  offC: number,
  s: MatmulShape,
): void {
  if (s.batch * s.m * s.n === 0) return;
  const { tileM, tileN, workgroup } = gpu.tuning.matmul;
  const tilesN = Math.ceil(s.n / tileN);
  const tilesPerBatch = Math.ceil(s.m / tileM) * tilesN;
  const p = new ParamWriter()
    .u32(s.m).u32(s.n).u32(s.k).u32(tilesN)
    .u32(tilesPerBatch).u32(s.batch).u32(a.offset).u32(b.offset)
    .u32(a.batchStride).u32(a.rowStride).u32(a.colStride).u32(b.batchStride)
    .u32(b.rowStride).u32(b.colStride).u32(offC).u32(0);
  if (s.k === 0) throw new Error("matmul with K = 0 is not supported");
  gpu.dispatch(
    matmulKernelV1(tileM, tileN, workgroup),
    [a.buf, b.buf, c],
    p,
    grid(Math.ceil((tilesPerBatch * s.batch) / workgroup)),
  );
}
