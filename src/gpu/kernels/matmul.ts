/**
 * Batched matmul: out[b] = A[b] @ B[b], A [M, K] and B [K, N] given through strides, so either
 * operand may be a transposed view and a batch stride of 0 broadcasts a 2-D weight.
 *
 * Versions (bench/matmul.ts times the default against jax-js, tfjs and PyTorch; the kernel tests
 * check each against the CPU reference):
 *   v1 register-blocked, TM x TN outputs per invocation, general strides, no workgroup memory.
 *   v2 the same blocking with vec4 loads: each operand is read 4 elements at a time along
 *      whichever of its axes is contiguous (the reduction axis or the output axis), fully
 *      unrolled. On llvmpipe a storage load costs about the same per lane whatever its width, so
 *      loads per FMA fall 4x. Needs 4-aligned strides/offsets and K % 4 == 0; else v1.
 *   v3 (matmul_tex.ts) operands copied into textures, 32x32 tiles; the llvmpipe default.
 */

import { cachedKernel, defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { MatmulRun, MatOperand } from "./matmul_shape.ts";
import { runMatmulTex, texMatmulFits } from "./matmul_tex.ts";
import { runAccumulate } from "./optim.ts";
import { runReduce } from "./reduce.ts";

export type { MatmulShape, MatOperand } from "./matmul_shape.ts";

/** WGSL of one operand's storage type, and a load widened to f32, for f16 or f32 storage. */
function operandType(f16: boolean, vec: boolean): { type: string; load: (x: string) => string } {
  const el = f16 ? "f16" : "f32";
  const type = `array<${vec ? `vec4<${el}>` : el}>`;
  if (!f16) return { type, load: (x) => x };
  return { type, load: (x) => (vec ? `vec4<f32>(${x})` : `f32(${x})`) };
}

export function matmulKernelV1(
  tm: number,
  tn: number,
  wg: number,
  aF16 = false,
  bF16 = false,
): Kernel {
  const A = operandType(aF16, false), B = operandType(bF16, false);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  // The tile's loops are unrolled: llvmpipe stops an invocation's loops, all of them counted
  // together, at 65,535 iterations, so loops over the tile inside the K loop stopped early once
  // K x tile passed that (K = 8,192 with an 8 x 8 tile came out wrong). Only the K loop remains,
  // and the caller keeps each dispatch's K range under half the cap.
  const body = `  let b = t / P.tilesPerBatch;
  let r = t % P.tilesPerBatch;
  let m0 = (r / P.tilesN) * ${tm}u;
  let n0 = (r % P.tilesN) * ${tn}u;
  let aBase = P.offA + b * P.sAb;
  let bBase = P.offB + b * P.sBb;
  // Clamp rows/cols so edge tiles read valid memory; their results are dropped on store.
${range(tm).map((i) => `  let aRow${i} = aBase + min(m0 + ${i}u, P.M - 1u) * P.sAm;`).join("\n")}
${range(tn).map((j) => `  let bCol${j} = bBase + min(n0 + ${j}u, P.N - 1u) * P.sBn;`).join("\n")}
${range(tm).map((i) => range(tn).map((j) => `  var acc${i}_${j} = 0.0;`).join("\n")).join("\n")}
  for (var k = P.k0; k < P.k1; k++) {
${range(tn).map((j) => `    let bv${j} = ${B.load(`B[bCol${j} + k * P.sBk]`)};`).join("\n")}
${
    range(tm).map((i) =>
      [
        `    let av${i} = ${A.load(`A[aRow${i} + k * P.sAk]`)};`,
        ...range(tn).map((j) => `    acc${i}_${j} = fma(av${i}, bv${j}, acc${i}_${j});`),
      ].join("\n")
    ).join("\n")
  }
  }
  // A dispatch after the first of a split K range adds to what the earlier ones stored.
  let cBase = P.offC + b * P.M * P.N;
${
    range(tm).map((i) =>
      range(tn).map((j) =>
        `  if (m0 + ${i}u < P.M && n0 + ${j}u < P.N) {
    let at = cBase + (m0 + ${i}u) * P.N + n0 + ${j}u;
    if (P.accumulate == 1u) { C[at] = C[at] + acc${i}_${j}; } else { C[at] = acc${i}_${j}; }
  }`
      ).join("\n")
    ).join("\n")
  }`;
  return defineKernel({
    name: `matmul_v1_${tm}x${tn}${aF16 ? "_ah" : ""}${bF16 ? "_bh" : ""}`,
    params: `M: u32, N: u32, K: u32, tilesN: u32,
             tilesPerBatch: u32, batch: u32, offA: u32, offB: u32,
             sAb: u32, sAm: u32, sAk: u32, sBb: u32,
             sBk: u32, sBn: u32, offC: u32, k0: u32,
             k1: u32, accumulate: u32, _p0: u32, _p1: u32,`,
    bindings: [["A", "read", A.type], ["B", "read", B.type], ["C", "rw", "array<f32>"]],
    body: gridMain(wg, "t", "t >= P.tilesPerBatch * P.batch", body),
  });
}

/** Which axis of an operand its vec4 loads run along. */
export type VecAxis = "k" | "out";

/** The layout an operand needs for v2, or null when it cannot be read 4-wide. */
export function vecAxis(op: MatOperand, isA: boolean, k: number): VecAxis | null {
  const [outStride, kStride] = isA ? [op.rowStride, op.colStride] : [op.colStride, op.rowStride];
  const aligned = (...xs: number[]) => xs.every((x) => x % 4 === 0);
  if (k % 4 !== 0 || !aligned(op.offset, op.batchStride)) return null;
  if (kStride === 1 && aligned(outStride)) return "k";
  if (outStride === 1 && aligned(kStride)) return "out";
  return null;
}

export function matmulKernelV2(
  tm: number,
  tn: number,
  wg: number,
  aAxis: VecAxis,
  bAxis: VecAxis,
  vecStore: boolean,
  aF16 = false,
  bF16 = false,
): Kernel {
  if (tm % 4 || tn % 4) throw new Error(`matmul v2: tile ${tm}x${tn} must be multiples of 4`);
  const A = operandType(aF16, true), B = operandType(bF16, true);
  const tm4 = tm / 4, tn4 = tn / 4;
  const L: string[] = [];
  const e = (x: string) => L.push(x);
  // Loads for one step of 4 along k. aK[i]: vec4 over kk (A along k); aO[kk][i4]: vec4 over rows.
  if (aAxis === "k") {
    for (let i = 0; i < tm; i++) {
      e(`    let a${i} = ${A.load(`A[aBase + min(m0 + ${i}u, P.M - 1u) * P.aOut + k4]`)};`);
    }
  } else {
    for (let kk = 0; kk < 4; kk++) {
      for (let i4 = 0; i4 < tm4; i4++) {
        e(`    let a${kk}_${i4} = ${
          A.load(`A[aBase + (4u * k4 + ${kk}u) * P.aK + min(m0 / 4u + ${i4}u, P.M4 - 1u)]`)
        };`);
      }
    }
  }
  if (bAxis === "out") {
    for (let kk = 0; kk < 4; kk++) {
      for (let j4 = 0; j4 < tn4; j4++) {
        e(`    let b${kk}_${j4} = ${
          B.load(`B[bBase + (4u * k4 + ${kk}u) * P.bK + min(n0 / 4u + ${j4}u, P.N4 - 1u)]`)
        };`);
      }
    }
  } else {
    for (let j = 0; j < tn; j++) {
      e(`    let bk${j} = ${B.load(`B[bBase + min(n0 + ${j}u, P.N - 1u) * P.bOut + k4]`)};`);
    }
    for (let kk = 0; kk < 4; kk++) {
      for (let j4 = 0; j4 < tn4; j4++) {
        const c = "xyzw"[kk];
        e(`    let b${kk}_${j4} = vec4<f32>(bk${4 * j4}.${c}, bk${4 * j4 + 1}.${c}, bk${
          4 * j4 + 2
        }.${c}, bk${4 * j4 + 3}.${c});`);
      }
    }
  }
  for (let kk = 0; kk < 4; kk++) {
    for (let i = 0; i < tm; i++) {
      const a = aAxis === "k" ? `a${i}.${"xyzw"[kk]}` : `a${kk}_${i >> 2}.${"xyzw"[i & 3]}`;
      for (let j4 = 0; j4 < tn4; j4++) {
        e(`    c${i}_${j4} = fma(vec4<f32>(${a}), b${kk}_${j4}, c${i}_${j4});`);
      }
    }
  }
  const decls: string[] = [];
  for (let i = 0; i < tm; i++) {
    for (let j4 = 0; j4 < tn4; j4++) decls.push(`  var c${i}_${j4} = vec4<f32>(0.0);`);
  }
  // With vecStore (N and the output offset 4-aligned) whole vec4s go out at once.
  const one = (idx: string, v: string) =>
    vecStore ? `C4[(${idx}) / 4u][(${idx}) % 4u] = ${v};` : `C[${idx}] = ${v};`;
  const stores: string[] = [];
  for (let i = 0; i < tm; i++) {
    stores.push(`  if (m0 + ${i}u < P.M) {`);
    stores.push(`    let row = cBase + (m0 + ${i}u) * P.N;`);
    for (let j4 = 0; j4 < tn4; j4++) {
      const col = `n0 + ${4 * j4}u`;
      stores.push(
        vecStore
          ? `    if (${col} + 3u < P.N) { C4[(row + ${col}) / 4u] = c${i}_${j4}; } else {`
          : `    {`,
      );
      for (let q = 0; q < 4; q++) {
        stores.push(
          `      if (${col} + ${q}u < P.N) { ${
            one(`row + ${col} + ${q}u`, `c${i}_${j4}.${"xyzw"[q]}`)
          } }`,
        );
      }
      stores.push(`    }`);
    }
    stores.push(`  }`);
  }
  const body =
    `  // Split-K: slice sl of S covers k4 in [sl * kChunk4, (sl + 1) * kChunk4) and writes its
  // partial product to its own [M, N] block; the caller sums the S blocks.
  let bs = t / P.tilesPerBatch;
  let b = bs / P.S;
  let sl = bs % P.S;
  let r = t % P.tilesPerBatch;
  let m0 = (r / P.tilesN) * ${tm}u;
  let n0 = (r % P.tilesN) * ${tn}u;
  // Offsets and strides in vec4 units.
  let aBase = P.aOff + b * P.aBatch;
  let bBase = P.bOff + b * P.bBatch;
  let cBase = P.cOff + bs * P.M * P.N;
${decls.join("\n")}
  let kEnd = min(P.K / 4u, (sl + 1u) * P.kChunk4);
  for (var k4 = sl * P.kChunk4; k4 < kEnd; k4++) {
${L.join("\n")}
  }
${stores.join("\n")}`;
  return defineKernel({
    name: `matmul_v2_${tm}x${tn}_a${aAxis}_b${bAxis}${vecStore ? "_v" : ""}${aF16 ? "_ah" : ""}${
      bF16 ? "_bh" : ""
    }`,
    params: `M: u32, N: u32, K: u32, tilesN: u32,
             tilesPerBatch: u32, batch: u32, M4: u32, N4: u32,
             aOff: u32, aBatch: u32, aOut: u32, aK: u32,
             bOff: u32, bBatch: u32, bOut: u32, bK: u32,
             cOff: u32, S: u32, kChunk4: u32, _c: u32,`,
    bindings: [
      ["A", "read", A.type],
      ["B", "read", B.type],
      vecStore ? ["C4", "rw", "array<vec4<f32>>"] : ["C", "rw", "array<f32>"],
    ],
    body: gridMain(wg, "t", "t >= P.tilesPerBatch * P.batch * P.S", body),
  });
}

/**
 * Records C (contiguous [batch, M, N] at `offC`) = A @ B with the fastest version that fits, or
 * C += A @ B with `accumulate` (v3 adds as it stores; the others write a buffer of their own,
 * then add it).
 */
export const runMatmul: MatmulRun = (gpu, a, b, c, offC, s, accumulate = false) => {
  if (s.batch * s.m * s.n === 0) return;
  if (s.k === 0) throw new Error("matmul with K = 0 is not supported");
  // An f16 operand goes through v3 only when it has rows to share the cost of staging it
  // (widened into a texture on every call): a few rows (decoding) read it directly in v2.
  const halfFew = (a.f16 || b.f16) && s.batch * s.m <= 16;
  if (gpu.tuning.matmulVersion >= 3 && !halfFew && texMatmulFits(a, b, s)) {
    return runMatmulTex(gpu, a, b, c, offC, s, accumulate);
  }
  if (accumulate) {
    const n = s.batch * s.m * s.n;
    const sum = gpu.pool.acquire(4 * n, "matmul.sum");
    runMatmul(gpu, a, b, sum, 0, s);
    runAccumulate(gpu, sum, 0, c, offC, n);
    gpu.pool.release(sum);
    return;
  }
  const { tileM, tileN, workgroup } = gpu.tuning.matmul;
  const aAxis = vecAxis(a, true, s.k), bAxis = vecAxis(b, false, s.k);
  if (gpu.tuning.matmulVersion >= 2 && aAxis && bAxis && tileM % 4 === 0 && tileN % 4 === 0) {
    const tilesN = Math.ceil(s.n / tileN);
    const tilesPerBatch = Math.ceil(s.m / tileM) * tilesN;
    // Split-K when the output has too few tiles to occupy the device (weight gradients: a long
    // reduction over tokens into a small matrix).
    const k4 = s.k / 4;
    const want = Math.ceil(gpu.tuning.matmulMinInvocations / (tilesPerBatch * s.batch));
    const slices = Math.max(1, Math.min(want, Math.floor(k4 / 16)));
    const kChunk4 = Math.ceil(k4 / slices);
    const S = Math.ceil(k4 / kChunk4);
    const scratch = S > 1 ? gpu.pool.acquire(4 * s.batch * S * s.m * s.n, "matmul.splitk") : null;
    const vecStore = s.n % 4 === 0 && (scratch ? true : offC % 4 === 0);
    const p = new ParamWriter()
      .u32(s.m).u32(s.n).u32(s.k).u32(tilesN)
      .u32(tilesPerBatch).u32(s.batch).u32(Math.ceil(s.m / 4)).u32(Math.ceil(s.n / 4))
      .u32(a.offset / 4).u32(a.batchStride / 4).u32(a.rowStride / 4 | 0).u32(a.colStride / 4 | 0)
      .u32(b.offset / 4).u32(b.batchStride / 4).u32(b.colStride / 4 | 0).u32(b.rowStride / 4 | 0)
      .u32(scratch ? 0 : offC).u32(S).u32(kChunk4).u32(0);
    const [aH, bH] = [!!a.f16, !!b.f16];
    const key =
      `matmul_v2:${tileM},${tileN},${workgroup},${aAxis},${bAxis},${vecStore},${aH},${bH}`;
    gpu.dispatch(
      cachedKernel(
        key,
        () => matmulKernelV2(tileM, tileN, workgroup, aAxis, bAxis, vecStore, aH, bH),
      ),
      [a.buf, b.buf, scratch ?? c],
      p,
      grid(Math.ceil((tilesPerBatch * s.batch * S) / workgroup)),
    );
    if (scratch) {
      // Fixed slice count and order: the sum is deterministic.
      runReduce(gpu, "sum", scratch, 0, { outer: s.batch, r: S, inner: s.m * s.n }, c, offC, null);
      gpu.pool.release(scratch);
    }
    return;
  }
  const tilesN = Math.ceil(s.n / tileN);
  const tilesPerBatch = Math.ceil(s.m / tileM) * tilesN;
  const kernel = cachedKernel(
    `matmul_v1:${tileM},${tileN},${workgroup},${!!a.f16},${!!b.f16}`,
    () => matmulKernelV1(tileM, tileN, workgroup, a.f16, b.f16),
  );
  // K in ranges under half the adapter's loop cap (one range but on llvmpipe past 32,767), in
  // order: the later ones add to the stored sum, so the result stays deterministic.
  const kStep = Math.min(s.k, Math.floor(gpu.loopLimit / 2));
  for (let k0 = 0; k0 < s.k; k0 += kStep) {
    const p = new ParamWriter()
      .u32(s.m).u32(s.n).u32(s.k).u32(tilesN)
      .u32(tilesPerBatch).u32(s.batch).u32(a.offset).u32(b.offset)
      .u32(a.batchStride).u32(a.rowStride).u32(a.colStride).u32(b.batchStride)
      .u32(b.rowStride).u32(b.colStride).u32(offC).u32(k0)
      .u32(Math.min(s.k, k0 + kStep)).u32(k0 > 0 ? 1 : 0).u32(0).u32(0);
    gpu.dispatch(
      kernel,
      [a.buf, b.buf, c],
      p,
      grid(Math.ceil((tilesPerBatch * s.batch) / workgroup)),
    );
  }
};
