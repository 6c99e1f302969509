/**
 * Matmul version 3, for llvmpipe: operands are first copied into flat rgba32float textures and
 * the kernel reads them with textureLoad. On llvmpipe every storage-buffer load becomes a loop
 * over the SIMD lanes with a bounds branch per lane, while a texel load is a straight vector
 * gather, 2-3x cheaper; the copy (a memcpy when rows are 4-float aligned, a small pack kernel
 * otherwise) costs a few percent. Bound as read-only storage textures where the device takes
 * them, the loads are cheaper again: a sampled texture's load clamps its level and coordinates
 * to sizes llvmpipe works out per lane, ~300 instructions a 16-lane fetch; a storage texture's
 * has no level (a 16-lane load 22 ns against 49; the square n = 1024 product 18% faster).
 *
 * Each invocation owns a TM x TN block of C (32 x 32 at large sizes: FMAs are nearly free next
 * to loads, so big tiles win even though they spill), the workgroup is one SIMD group wide, and
 * the statement order in a k-step (A texels, then per group of 4 columns its B texels and all
 * its accumulators) is worth 1.3-1.6x. Measured on a 2-core AVX-512 VM: ~50 GFLOP/s at n = 1024
 * against ~17 for v2.
 *
 * Lanes take adjacent column groups, all of them (wide products) or a few, the others taking
 * further row blocks: a narrow product (the N = 64 projections of a small model) then still gets
 * wide tiles (32 x 16: 1.6-2x faster there than 32 x 4 tiles across 16 lanes). Each output is
 * summed in the same order whatever the split.
 *
 * Where the device has subgroup operations, lanes that share their rows share A too: each loads
 * one of every `subgroup` rows and `subgroupBroadcast` hands the texel to the others, a register
 * shuffle on llvmpipe in place of a gather per lane. A then costs next to nothing, so tiles grow
 * tall and thin (64 x 4 across 16 lanes covers an N = 64 product in one workgroup column): the
 * products of training and embedding at an inner dimension of 64 ran 20-45% faster, the square
 * n = 1024 one ~20%. The sums are the same, so the results are bitwise those of the plain kernel.
 *
 * Texture layout: texel t is at (t % 4096, t / 4096) and holds 4 consecutive elements of one row
 * of an operand stored row-major [rows, cols]: texel = base + row * ld + c4, ld = ceil(cols/4).
 * Either operand may be stored transposed ([K, M] for A, [N, K] for B); both are read natively.
 *
 * A plan (tile sizes, split-K slices) comes from a small cost model fitted on llvmpipe.
 */

import type { Gpu } from "../device.ts";
import {
  type Binding,
  cachedKernel,
  defineKernel,
  grid,
  gridMain,
  type Kernel,
  ParamWriter,
  texelLoad,
  type TextureRead,
} from "../kernel.ts";
import { type GpuBuffer, type GpuTexture, TEXTURE_WIDTH } from "../pool.ts";
import type { MatmulRun, MatmulShape, MatOperand } from "./matmul_shape.ts";
import { runAccumulate } from "./optim.ts";
import { runReduce } from "./reduce.ts";

const SHIFT = Math.log2(TEXTURE_WIDTH);

/** Compile-time shape of a v3 kernel. */
export interface TexMatmulOpts {
  tm: number;
  tn: number;
  /** Workgroup width: the adapter's SIMD width. */
  wx: number;
  /**
   * Lanes across columns (a divisor of wx, default wx); the other wx / wc lanes take row blocks.
   * A narrow product (N = 64) needs a wide tile per lane to amortise its loads, and only fits one
   * when fewer lanes share the columns.
   */
  wc?: number;
  transA: boolean;
  transB: boolean;
  /** C written as vec4 (N and the output offset are 4-aligned). */
  vecStore: boolean;
  /**
   * Subgroup size when A's texels are shared through subgroup broadcasts (0 or absent: each
   * lane loads its own), A stored either way. Needs every lane across columns (wc = wx), wx a
   * multiple of it and TM too.
   */
  shareA?: number;
  /** How the operands' textures are bound and read (default sampled; see the file's notes). */
  reads?: TextureRead;
  /** A fused epilogue instead of the plain store (no split-K); see {@link MatmulEpilogue}. */
  epilogue?: MatmulEpilogue;
  /** The plain store adds to what C holds (C += A B; no split-K, no epilogue). */
  accumulate?: boolean;
  /**
   * With an epilogue: C's row i is scaled by 1 / rms(A's row i) (an RMSNorm whose weight is
   * folded into B's columns), the sum of squares taken from the A texels the product loads.
   */
  rowNorm?: boolean;
}

/**
 * What a layer above splices into a v3 product instead of the plain store: its own Params
 * fields, bindings after C, WGSL helpers and the store of each vec4 of C. The gpu layer knows
 * nothing of what the epilogue computes; a model's inference module defines them (for Llama:
 * src/nn/infer/epilogues.ts). B must be [N, K] rows and there is no split-K.
 */
export interface MatmulEpilogue {
  /** Suffix of the kernel's name. */
  name: string;
  /** WGSL fields appended to `Params` after the 16 base words (a multiple of 4 words). */
  params: string;
  /** Bindings after C (binding 4 on). */
  bindings: readonly Binding[];
  /**
   * A second product with the same A and B's next N rows, accumulated beside the first in
   * `up{r}_{c}` (e.g. two projections of one input that the store then combines).
   */
  dual: boolean;
  /**
   * WGSL storing the vec4 of row `i0 + r`, column group `g` (`cr` is the row's offset in C and
   * `acc{r}_{c}` / `up{r}_{c}` the accumulators); null: the plain vec4 store. A lane's column
   * groups are `g0 + c * wc`.
   */
  store: ((r: number, c: number, g: string, wc: number) => string) | null;
  /**
   * WGSL run once per stored row `i0 + r` before its stores: values the row's column groups
   * share, named with `r` so the stores can use them (a lane's groups are `g0 + c * wc`).
   */
  row?: (r: number, wc: number) => string;
  /** WGSL functions appended after `main`. */
  helpers: string;
}

/** The v3 product kernel for one shape and epilogue. */
export function matmulKernelV3(o: TexMatmulOpts): Kernel {
  const { tm, tn, wx } = o, epi = o.epilogue;
  const wc = o.wc ?? wx, wr = wx / wc;
  if (tm % 4 || tn % 4) throw new Error(`matmul v3: tile ${tm}x${tn} must be multiples of 4`);
  if (!Number.isInteger(wr)) throw new Error(`matmul v3: ${wc} column lanes do not divide ${wx}`);
  const norm = !!(epi && o.rowNorm);
  const sg = o.shareA ?? 0;
  if (sg && (wc !== wx || wx % sg || tm % sg)) {
    throw new Error(
      `matmul v3: sharing A over subgroups of ${sg} needs all ${wx} lanes across columns ` +
        `(got ${wc}) and a tile height that is a multiple of it (got ${tm})`,
    );
  }
  if (epi && ((!o.vecStore && epi.store) || !o.transB || o.transA)) {
    throw new Error(`matmul v3: the ${epi.name} epilogue needs vec4 stores and B as [N, K] rows`);
  }
  const tn4 = tn / 4, tm4 = tm / 4, X = "xyzw";
  const L: string[] = [];
  const e = (s: string) => L.push(s);
  const reads = o.reads ?? "tex";
  e(`fn ldA(t: u32) -> vec4<f32> { return ${texelLoad("TA", "t", reads)}; }
fn ldB(t: u32) -> vec4<f32> { return ${texelLoad("TB", "t", reads)}; }
@compute @workgroup_size(${wx}, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>${
    sg ? ", @builtin(subgroup_invocation_id) sid: u32" : ""
  }) {
  let s = wg.z % P.S;
  let b = wg.z / P.S;
  let i0 = (wg.y * ${wr}u + lid.x / ${wc}u) * ${tm}u;
  let g0 = wg.x * ${wc * tn4}u + lid.x % ${wc}u;
  let aB = b * P.bsA;
  let bB = P.offB + b * P.bsB;`);
  // Row / column texel bases, clamped so reads stay inside the operand (results dropped on store).
  if (sg && !o.transA) {
    // Lane sid loads rows i0 + j * sg + sid; row r comes from lane r % sg's load j = r / sg.
    for (let j = 0; j < tm / sg; j++) {
      e(`  let ar${j} = aB + min(i0 + ${j * sg}u + sid, P.M - 1u) * P.ldA;`);
    }
  } else if (sg) {
    // A k-step needs tm texels: t = kk * tm/4 + r4 (row group r4 of k-row kk). Lane sid loads
    // t = j * sg + sid, and texel t comes from lane t % sg's load j = t / sg.
    for (let j = 0; j < tm / sg; j++) {
      e(`  let tk${j} = (${j * sg}u + sid) / ${tm4}u;`);
      e(
        `  let ac${j} = aB + min(i0 / 4u + (${
          j * sg
        }u + sid) % ${tm4}u, (P.M - 1u) / 4u) + tk${j} * P.ldA;`,
      );
    }
  } else if (!o.transA) {
    for (let r = 0; r < tm; r++) e(`  let ar${r} = aB + min(i0 + ${r}u, P.M - 1u) * P.ldA;`);
  } else {for (let r4 = 0; r4 < tm4; r4++) {
      e(`  let ac${r4} = aB + min(i0 / 4u + ${r4}u, (P.M - 1u) / 4u);`);
    }}
  if (!o.transB) {
    for (let c = 0; c < tn4; c++) e(`  let bc${c} = bB + min(g0 + ${c * wc}u, (P.N - 1u) / 4u);`);
  } else {
    for (let c = 0; c < tn4; c++) {
      for (let q = 0; q < 4; q++) {
        e(`  let br${c}_${q} = bB + min((g0 + ${c * wc}u) * 4u + ${q}u, P.N - 1u) * P.ldB;`);
      }
    }
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn4; c++) {
      e(`  var acc${r}_${c} = vec4<f32>(0.0);`);
      if (epi?.dual) e(`  var up${r}_${c} = vec4<f32>(0.0);`);
    }
    if (norm) e(`  var ss${r} = 0.0;`);
  }
  e(`  let k4b = s * P.kChunk;
  let k4e = min(P.K4, k4b + P.kChunk);`);
  // One k-step of 4; `mask` zeroes k >= K in the tail step.
  const step = (k4: string, mask: boolean): string[] => {
    const B: string[] = [];
    const kv = (kk: number) => `(${kk}u < rem)`;
    if (sg && o.transA) {
      B.push(`let ka = (${k4} * 4u) * P.ldA;`);
      for (let j = 0; j < tm / sg; j++) {
        const ld = `ldA(ac${j} + ka)`;
        B.push(`let tl${j} = ${mask ? `select(vec4<f32>(0.0), ${ld}, tk${j} < rem)` : ld};`);
      }
      for (let t = 0; t < tm; t++) {
        B.push(
          `let ta${Math.floor(t / tm4)}_${t % tm4} = subgroupBroadcast(tl${Math.floor(t / sg)}, ${
            t % sg
          }u);`,
        );
      }
    } else if (sg) {
      for (let j = 0; j < tm / sg; j++) {
        const ld = `ldA(ar${j} + ${k4})`;
        B.push(`let tl${j} = ${mask ? `select(vec4<f32>(0.0), ${ld}, km)` : ld};`);
      }
      for (let r = 0; r < tm; r++) {
        B.push(`let ta${r} = subgroupBroadcast(tl${Math.floor(r / sg)}, ${r % sg}u);`);
        if (norm) B.push(`ss${r} += dot(ta${r}, ta${r});`);
      }
    } else if (!o.transA) {
      for (let r = 0; r < tm; r++) {
        B.push(
          `let ta${r} = ${
            mask ? `select(vec4<f32>(0.0), ldA(ar${r} + ${k4}), km)` : `ldA(ar${r} + ${k4})`
          };`,
        );
        if (norm) B.push(`ss${r} += dot(ta${r}, ta${r});`);
      }
    } else {
      B.push(`let ka = (${k4} * 4u) * P.ldA;`);
      for (let kk = 0; kk < 4; kk++) {
        for (let r4 = 0; r4 < tm4; r4++) {
          const ld = `ldA(ac${r4} + ka + ${kk}u * P.ldA)`;
          B.push(`let ta${kk}_${r4} = ${mask ? `select(vec4<f32>(0.0), ${ld}, ${kv(kk)})` : ld};`);
        }
      }
    }
    if (!o.transB) B.push(`let kb = (${k4} * 4u) * P.ldB;`);
    const aval = (r: number, kk: number) =>
      !o.transA ? `ta${r}.${X[kk]}` : `ta${kk}_${r >> 2}.${X[r & 3]}`;
    for (let c = 0; c < tn4; c++) {
      B.push("{");
      if (!o.transB) {
        for (let kk = 0; kk < 4; kk++) {
          const ld = `ldB(bc${c} + kb + ${kk}u * P.ldB)`;
          B.push(`let tb${kk} = ${mask ? `select(vec4<f32>(0.0), ${ld}, ${kv(kk)})` : ld};`);
        }
      } else {
        for (let q = 0; q < 4; q++) {
          const ld = `ldB(br${c}_${q} + ${k4})`;
          B.push(`let tb${q} = ${mask ? `select(vec4<f32>(0.0), ${ld}, km)` : ld};`);
        }
      }
      const bvec = (kk: number, v = "tb") =>
        !o.transB
          ? `${v}${kk}`
          : `vec4<f32>(${v}0.${X[kk]}, ${v}1.${X[kk]}, ${v}2.${X[kk]}, ${v}3.${X[kk]})`;
      for (let r = 0; r < tm; r++) {
        for (let kk = 0; kk < 4; kk++) {
          B.push(`acc${r}_${c} = fma(vec4<f32>(${aval(r, kk)}), ${bvec(kk)}, acc${r}_${c});`);
        }
      }
      if (epi?.dual) {
        // The second product's rows follow the first's N rows.
        for (let q = 0; q < 4; q++) {
          const ld = `ldB(br${c}_${q} + P.N * P.ldB + ${k4})`;
          B.push(`let tu${q} = ${mask ? `select(vec4<f32>(0.0), ${ld}, km)` : ld};`);
        }
        for (let r = 0; r < tm; r++) {
          for (let kk = 0; kk < 4; kk++) {
            B.push(`up${r}_${c} = fma(vec4<f32>(${aval(r, kk)}), ${bvec(kk, "tu")}, up${r}_${c});`);
          }
        }
      }
      B.push("}");
    }
    return B;
  };
  e(`  for (var k4 = k4b; k4 < k4e; k4++) {`);
  for (const l of step("k4", false)) e("    " + l);
  e(`  }
  let rem = P.K - P.K4 * 4u;
  if (rem > 0u && s == P.S - 1u) {
    let km = vec4<bool>(0u < rem, 1u < rem, 2u < rem, 3u < rem);`);
  for (const l of step("P.K4", true)) e("    " + l);
  e(`  }
  let cB = P.offC + b * P.bsC + s * P.sC;`);
  if (norm) {
    for (let r = 0; r < tm; r++) {
      e(`  let rs${r} = inverseSqrt(ss${r} / f32(P.K) + P.eps);`);
      for (let c = 0; c < tn4; c++) {
        e(`  acc${r}_${c} *= rs${r};`);
        if (epi?.dual) e(`  up${r}_${c} *= rs${r};`);
      }
    }
  }
  for (let r = 0; r < tm; r++) {
    e(`  if (i0 + ${r}u < P.M) {
    let cr = cB + (i0 + ${r}u) * P.ldC;`);
    if (epi?.row) e(`    ${epi.row(r, wc)}`);
    for (let c = 0; c < tn4; c++) {
      const g = `(g0 + ${c * wc}u)`;
      if (epi?.store) {
        e(`    if (${g} * 4u < P.N) { ${epi.store(r, c, g, wc)} }`);
      } else if (o.vecStore) {
        const at = `Cb[cr / 4u + ${g}]`;
        e(`    if (${g} * 4u < P.N) { ${at} = ${o.accumulate ? `${at} + ` : ""}acc${r}_${c}; }`);
      } else {for (let q = 0; q < 4; q++) {
          const at = `Cb[cr + ${g} * 4u + ${q}u]`;
          e(`    if (${g} * 4u + ${q}u < P.N) { ${at} = ${
            o.accumulate ? `${at} + ` : ""
          }acc${r}_${c}.${X[q]}; }`);
        }}
    }
    e(`  }`);
  }
  e(`}`);
  if (epi) e(epi.helpers);
  return defineKernel({
    name: `matmul_v3_${tm}x${tn}_w${wx}${wc === wx ? "" : `c${wc}`}${sg ? `_sg${sg}` : ""}${
      o.transA ? "_tA" : ""
    }${o.transB ? "_tB" : ""}${o.vecStore ? "_v" : ""}${epi ? `_${epi.name}` : ""}${
      norm ? "_norm" : ""
    }${o.accumulate ? "_acc" : ""}${o.reads === "rtex" ? "_st" : ""}`,
    params: `M: u32, N: u32, K: u32, K4: u32,
             ldA: u32, bsA: u32, ldB: u32, bsB: u32,
             offC: u32, ldC: u32, bsC: u32, sC: u32,
             S: u32, kChunk: u32, offB: u32, eps: f32,${epi ? `\n${epi.params}` : ""}`,
    bindings: [
      ["TA", reads],
      ["TB", reads],
      ["Cb", "rw", o.vecStore ? "array<vec4<f32>>" : "array<f32>"],
      ...(epi?.bindings ?? []),
    ],
    body: L.join("\n"),
  });
}

/**
 * Copies a strided row-major operand [batch][rows, cols] into the flat texel layout, zero-padded;
 * an f16 operand is widened to f32 on the way.
 */
export function packKernel(wg: number, f16 = false): Kernel {
  const ld = (i: string) => (f16 ? `f32(X[${i}])` : `X[${i}]`);
  const body = `  let b = t / P.bsT;
  let rm = t - b * P.bsT;
  let row = rm / P.ld;
  let c0 = (rm - row * P.ld) * 4u;
  let base = P.off + b * P.bs + row * P.rowStride;
  var v = vec4<f32>(0.0);
  if (c0 < P.cols) { v.x = ${ld("base + c0")}; }
  if (c0 + 1u < P.cols) { v.y = ${ld("base + c0 + 1u")}; }
  if (c0 + 2u < P.cols) { v.z = ${ld("base + c0 + 2u")}; }
  if (c0 + 3u < P.cols) { v.w = ${ld("base + c0 + 3u")}; }
  textureStore(T, vec2<u32>(t & ${TEXTURE_WIDTH - 1}u, t >> ${SHIFT}u), v);`;
  return defineKernel({
    name: f16 ? "matmul_v3_pack_f16" : "matmul_v3_pack",
    params:
      "rows: u32, cols: u32, off: u32, bs: u32, ld: u32, bsT: u32, total: u32, rowStride: u32",
    bindings: [["X", "read", f16 ? "array<f16>" : "array<f32>"], ["T", "stex"]],
    body: gridMain(wg, "t", "t >= P.total", body),
  });
}

/**
 * Largest tile of a plan whose lanes share the columns. Such plans serve the narrow products of
 * training, a dozen kernels: at 32 x 32 their cold compile took a 3-step training run on Mesa
 * 22.3.6 from 19 to 64 s, for 5% faster products.
 */
const SPLIT_AREA = 512;

/** Tile sizes and split-K slices of one call. */
export interface TexPlan {
  tm: number;
  tn: number;
  /** Lanes across columns (see {@link TexMatmulOpts.wc}). */
  wc: number;
  slices: number;
  /** Subgroup size when A's rows are shared through broadcasts, else 0. */
  shareA: number;
}

/**
 * Tiles of the shared-A kernel: tall and thin (A costs a broadcast per row, B a texel per
 * column), and 32 x 32 for wide products with a long inner dimension.
 */
const SHARED_TILES = [[128, 4], [64, 4], [32, 4], [16, 4], [32, 16], [32, 32]] as const;

/**
 * Picks tiles and slices with a cost model fitted on llvmpipe (core-ns per workgroup):
 * per k4 step 1.6 * (8 (TM + TN) + TM TN) (a texel load costs ~8 FMAs), stores 22.6 TM TN,
 * fixed 5000; makespan = ceil(workgroups / threads) * cost, plus the split-K sum.
 *
 * With `subgroup` > 0 (subgroup builtins at hand) the tile is then chosen
 * among {@link SHARED_TILES} for the same slices, so the sums stay those of the plain plan, by
 * a second model fitted on llvmpipe (Mesa 22.3.6, 16 lanes, 6 training and square shapes): per
 * k4 step 12 (TM / 16 + TN) for the texels, 1.5 TM for the broadcasts, 3 TM TN for the
 * multiply-adds; stores 31 TM TN; fixed 1100. `maxSharedRows` caps those tiles' height.
 */
export function choosePlan(
  m: number,
  n: number,
  k: number,
  batch: number,
  threads: number,
  simd: number,
  maxSlices = 32,
  maxArea = 1024,
  subgroup = 0,
  maxSharedRows = 128,
): TexPlan {
  // Few tile sizes: each combination is a separate (slow to compile, fully unrolled) kernel.
  const sizes = [32, 24, 16, 8, 4];
  let best: TexPlan = { tm: 4, tn: 4, wc: simd, slices: 1, shareA: 0 }, bestT = Infinity;
  const k4 = Math.max(1, Math.ceil(k / 4));
  const lanes: number[] = [];
  for (let wc = simd; wc >= 1 && wc >= simd / 8; wc /= 2) lanes.push(wc);
  for (const wc of lanes) {
    for (const tm of sizes) {
      for (const tn of sizes) {
        if (tm * tn > (wc < simd ? Math.min(maxArea, SPLIT_AREA) : maxArea)) continue;
        const gx = Math.ceil(n / (tn * wc)), gy = Math.ceil(m / (tm * (simd / wc)));
        for (const slices of [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]) {
          if (slices > maxSlices || (slices > 1 && k4 / slices < 16)) break;
          if (batch * slices > 65535) break;
          const steps = Math.ceil(k4 / slices);
          const cost = (steps * 1.6 * (8 * (tm + tn) + tm * tn) + 22.6 * tm * tn) * (simd / 8) +
            5000;
          let t = Math.ceil((gx * gy * batch * slices) / threads) * cost;
          if (slices > 1) t += ((slices + 1) * batch * m * n * 2.5) / threads + 20000;
          if (t < bestT * 0.97 || (t < bestT && slices === 1)) {
            bestT = t;
            best = { tm, tn, wc, slices, shareA: 0 };
          }
        }
      }
    }
  }
  if (!subgroup || simd % subgroup) return best;
  let shared: TexPlan | null = null, sharedT = Infinity;
  const steps = Math.ceil(k4 / best.slices);
  for (const [tm, tn] of SHARED_TILES) {
    if (tm * tn > maxArea || tm % subgroup || tm > maxSharedRows) continue;
    const groups = Math.ceil(n / (tn * simd)) * Math.ceil(m / tm) * batch * best.slices;
    const cost = steps * (12 * (tm / subgroup + tn) + 1.5 * tm + 3 * tm * tn) + 31 * tm * tn +
      1100;
    const t = Math.ceil(groups / threads) * cost;
    if (t < sharedT) {
      [shared, sharedT] = [{ tm, tn, wc: simd, slices: best.slices, shareA: subgroup }, t];
    }
  }
  return shared ?? best;
}

/** Workgroups of `plan` over an M x N product: x along column groups, y along row blocks. */
function planGroups(plan: TexPlan, m: number, n: number, simd: number): [number, number] {
  return [Math.ceil(n / (plan.tn * plan.wc)), Math.ceil(m / (plan.tm * (simd / plan.wc)))];
}

/** How an operand is laid out for v3, or null: rows along `rowsAxis`, contiguous along the other. */
interface Layout {
  rows: number;
  cols: number;
  rowStride: number;
  transposed: boolean;
}

function layoutOf(op: MatOperand, isA: boolean, s: MatmulShape): Layout | null {
  // A is [M, K]: stored normally (K contiguous) or transposed ([K, M], M contiguous).
  const [outDim, outStride, kStride] = isA
    ? [s.m, op.rowStride, op.colStride]
    : [s.n, op.colStride, op.rowStride];
  if (kStride === 1 && (outStride >= s.k || outDim === 1)) {
    return isA
      ? { rows: s.m, cols: s.k, rowStride: Math.max(outStride, s.k), transposed: false }
      : { rows: s.n, cols: s.k, rowStride: Math.max(outStride, s.k), transposed: true };
  }
  if (outStride === 1 && (kStride >= outDim || s.k === 1)) {
    return isA
      ? { rows: s.k, cols: s.m, rowStride: Math.max(kStride, s.m), transposed: true }
      : { rows: s.k, cols: s.n, rowStride: Math.max(kStride, s.n), transposed: false };
  }
  return null;
}

/** Whether v3 can run this product (each operand row-contiguous one way or the other). */
export function texMatmulFits(a: MatOperand, b: MatOperand, s: MatmulShape): boolean {
  return layoutOf(a, true, s) !== null && layoutOf(b, false, s) !== null;
}

/** The subgroup size v3 may share A over on this device (0: none, or the tuning says no). */
function sharedA(gpu: Gpu): number {
  return gpu.tuning.matmulSubgroups ? gpu.subgroupSize : 0;
}

/** The v3 kernel of `o`, made once; an epilogue is known by its name. */
function v3Kernel(o: TexMatmulOpts): Kernel {
  return cachedKernel(
    `matmul_v3:${JSON.stringify({ ...o, epilogue: o.epilogue?.name })}`,
    () => matmulKernelV3(o),
  );
}

/** Stages an operand into a texture; returns it with its row length and batch stride in texels. */
function stage(
  gpu: Gpu,
  op: MatOperand,
  l: Layout,
  batch: number,
): { tex: GpuTexture; ld: number; bsT: number } {
  const staged = op.batchStride === 0 ? 1 : batch;
  const ld = Math.ceil(l.cols / 4);
  const dense = l.rowStride === l.cols && (staged === 1 || op.batchStride === l.rows * l.cols);
  if (dense && l.cols % 4 === 0 && op.offset % 4 === 0 && !op.f16) {
    // Rows of whole texels, back to back: a plain copy.
    const texels = (staged * l.rows * l.cols) / 4;
    const tex = gpu.textures.acquire(texels);
    gpu.copyToTexture(op.buf, op.offset * 4, tex, texels);
    return { tex, ld, bsT: op.batchStride === 0 ? 0 : (l.rows * l.cols) / 4 };
  }
  const bsT = l.rows * ld, total = bsT * staged;
  const tex = gpu.textures.acquire(total);
  const wg = gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(l.rows).u32(l.cols).u32(op.offset).u32(op.batchStride).u32(ld)
    .u32(bsT).u32(total)
    .u32(l.rowStride);
  gpu.dispatch(
    cachedKernel(`matmul_v3_pack:${wg}:${!!op.f16}`, () => packKernel(wg, op.f16)),
    [op.buf, tex],
    p,
    grid(Math.ceil(total / wg)),
  );
  return { tex, ld, bsT: op.batchStride === 0 ? 0 : bsT };
}

/**
 * Records C (contiguous [batch, M, N] at `offC`) = A @ B through textures, or C += A @ B with
 * `accumulate` (a split-K product adds its summed slices in one more pass).
 */
export const runMatmulTex: MatmulRun = (gpu, a, b, c, offC, s, accumulate = false) => {
  const la = layoutOf(a, true, s), lb = layoutOf(b, false, s);
  if (!la || !lb) throw new Error("matmul v3: operand layout not supported");
  const simd = gpu.simdWidth;
  const plan = choosePlan(
    s.m,
    s.n,
    s.k,
    s.batch,
    gpu.cores,
    simd,
    32,
    gpu.tuning.matmulTileArea,
    sharedA(gpu),
  );
  const k4 = Math.floor(s.k / 4);
  const kChunk = Math.max(1, Math.ceil(k4 / plan.slices));
  const slices = Math.max(1, Math.ceil(k4 / kChunk));
  const sa = stage(gpu, a, la, s.batch), sb = stage(gpu, b, lb, s.batch);
  const scratch = slices > 1
    ? gpu.pool.acquire(4 * slices * s.batch * s.m * s.n, "matmul.splitk")
    : null;
  // Split-K with accumulation: the slices' sum goes to a buffer of its own, then onto C.
  const sum = scratch && accumulate
    ? gpu.pool.acquire(4 * s.batch * s.m * s.n, "matmul.sum")
    : null;
  const outOff = scratch ? 0 : offC;
  const vecStore = s.n % 4 === 0 && outOff % 4 === 0;
  const o: TexMatmulOpts = {
    tm: plan.tm,
    tn: plan.tn,
    wx: simd,
    wc: plan.wc,
    ...(plan.shareA ? { shareA: plan.shareA } : {}),
    transA: la.transposed,
    transB: lb.transposed,
    vecStore,
    ...(accumulate && !scratch ? { accumulate: true } : {}),
    reads: gpu.textureReads,
  };
  const p = new ParamWriter()
    .u32(s.m).u32(s.n).u32(s.k).u32(k4)
    .u32(sa.ld).u32(sa.bsT).u32(sb.ld).u32(sb.bsT)
    .u32(outOff).u32(s.n).u32(s.m * s.n).u32(s.batch * s.m * s.n)
    .u32(slices).u32(kChunk).u32(0).u32(0);
  const groups: [number, number, number] = [...planGroups(plan, s.m, s.n, simd), s.batch * slices];
  if (groups.some((x) => x > 65535)) {
    throw new Error(`matmul v3: grid [${groups}] exceeds 65535 workgroups per dimension`);
  }
  gpu.dispatch(
    v3Kernel(o),
    [sa.tex, sb.tex, scratch ?? c],
    p,
    groups,
  );
  if (scratch) {
    // Slices in a fixed order: the sum is deterministic.
    runReduce(
      gpu,
      "sum",
      scratch,
      0,
      { outer: 1, r: slices, inner: s.batch * s.m * s.n },
      sum ?? c,
      sum ? 0 : offC,
      null,
    );
    gpu.pool.release(scratch);
    if (sum) {
      runAccumulate(gpu, sum, 0, c, offC, s.batch * s.m * s.n);
      gpu.pool.release(sum);
    }
  }
  gpu.textures.release(sa.tex);
  gpu.textures.release(sb.tex);
};

/**
 * A product with a fused epilogue: A [M, K] contiguous in `a`, B the rows [N, K] (a dual
 * epilogue: [2N, K]) from texel `offB` of a packed weight texture. K a multiple of 4, and N too
 * when the epilogue has its own store.
 */
export interface FusedMatmul {
  /** A, [M, K] row-major. */
  a: GpuBuffer;
  /** Rows of A and C. */
  m: number;
  /** Inner dimension. */
  k: number;
  /** The texture holding B. */
  weights: GpuTexture;
  /** B's first texel in it. */
  offB: number;
  /** Columns of the product. */
  n: number;
  /** Output C. */
  c: GpuBuffer;
  /** Row stride of C (default n). */
  ldC?: number;
  /** The epilogue. */
  epilogue: MatmulEpilogue;
  /** Its buffers, in the order of its bindings. */
  extra: GpuBuffer[];
  /** Writes the epilogue's Params fields (after the 16 base words). */
  params?: (p: ParamWriter) => void;
  /** Scale row i by 1 / rms(A's row i) with this epsilon (see `rowNorm`). */
  normEps?: number;
}

/** Records a {@link FusedMatmul}: A staged into a texture, one dispatch, no split-K. */
export function runMatmulFused(gpu: Gpu, f: FusedMatmul): void {
  const vecStore = f.n % 4 === 0;
  if (f.k % 4 || (!vecStore && f.epilogue.store)) {
    throw new Error(`matmul v3 ${f.epilogue.name}: K ${f.k} and N ${f.n} must be multiples of 4`);
  }
  const simd = gpu.simdWidth, k4 = f.k / 4;
  // One plan per product from 64 rows on, and small tiles for fewer (a short prompt): each plan
  // is a kernel of its own, seconds to compile with an epilogue, and packed batches vary in length.
  const mPlan = f.m >= 64 ? 1 << 16 : 2 ** Math.ceil(Math.log2(Math.max(1, f.m)));
  const plan = choosePlan(
    mPlan,
    f.n,
    f.k,
    1,
    gpu.cores,
    simd,
    1,
    gpu.tuning.matmulTileArea,
    sharedA(gpu),
    // An epilogue with a second product or a row norm carries more per row than the model
    // counts: in an embedding run over STS-B, 64-row tiles took such products 4-9% below the
    // plain kernel's time, 128-row ones 1-32% above it.
    f.epilogue.dual || f.normEps !== undefined ? 64 : 128,
  );
  const o: TexMatmulOpts = {
    tm: plan.tm,
    tn: plan.tn,
    wx: simd,
    wc: plan.wc,
    ...(plan.shareA ? { shareA: plan.shareA } : {}),
    transA: false,
    transB: true,
    vecStore,
    epilogue: f.epilogue,
    rowNorm: f.normEps !== undefined,
    reads: gpu.textureReads,
  };
  const tex = gpu.textures.acquire(f.m * k4);
  gpu.copyToTexture(f.a, 0, tex, f.m * k4);
  const p = new ParamWriter()
    .u32(f.m).u32(f.n).u32(f.k).u32(k4)
    .u32(k4).u32(0).u32(k4).u32(0)
    .u32(0).u32(f.ldC ?? f.n).u32(0).u32(0)
    .u32(1).u32(k4).u32(f.offB).f32(f.normEps ?? 0);
  f.params?.(p);
  gpu.dispatch(
    v3Kernel(o),
    [tex, f.weights, f.c, ...f.extra],
    p,
    [...planGroups(plan, f.m, f.n, simd), 1],
  );
  gpu.textures.release(tex);
}
