/**
 * Rotary position embedding on interleaved pairs (llama2.c's layout: (x0,x1), (x2,x3), ...) of
 * x [B, T, H, D]. Angles come from a host-computed table [maxPos, D/2, 2] of (cos, sin) in float64
 * rounded once, because WGSL only promises cos/sin to ~2^-11 absolute error.
 * The backward pass is the same rotation by the negative angle (`sign` = -1).
 *
 * Versions: v1 one invocation per pair; v2 two pairs per invocation through vec4s (below).
 */

import type { Gpu } from "../device.ts";
import { type Binding, defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";

const PARAMS = "pairs: u32, t: u32, h: u32, half: u32, maxPos: u32, sign: f32";

/** X, the table TAB and the positions POS read, Y written; X, TAB and Y hold `elem`s. */
function ropeBindings(elem: string): Binding[] {
  return [
    ["X", "read", `array<${elem}>`],
    ["TAB", "read", `array<${elem}>`],
    ["POS", "read", "array<i32>"],
    ["Y", "rw", `array<${elem}>`],
  ];
}

export function ropeKernel(wg: number, explicitPos: boolean): Kernel {
  const body = `  let k = i % P.half;
  let token = i / (P.half * P.h);
  ${explicitPos ? "let pos = u32(POS[token]);" : "let pos = token % P.t;"}
  let at = (min(pos, P.maxPos - 1u) * P.half + k) * 2u;
  let c = TAB[at];
  let s = TAB[at + 1u] * P.sign;
  let x0 = X[2u * i];
  let x1 = X[2u * i + 1u];
  Y[2u * i] = x0 * c - x1 * s;
  Y[2u * i + 1u] = x0 * s + x1 * c;`;
  return defineKernel({
    name: `rope${explicitPos ? "_pos" : ""}`,
    params: PARAMS,
    bindings: ropeBindings("f32"),
    body: gridMain(wg, "i", "i >= P.pairs", body),
  });
}

/**
 * v2: two pairs per invocation through vec4 loads of x, of the table and of y (head dim % 4 ==
 * 0): 3 memory operations per 2 pairs instead of 12, each a per-lane gather on llvmpipe. The
 * arithmetic of each element is v1's.
 */
export function ropeKernelVec4(wg: number, explicitPos: boolean): Kernel {
  const body = `  let k = (2u * i) % P.half;
  let token = (2u * i) / (P.half * P.h);
  ${explicitPos ? "let pos = u32(POS[token]);" : "let pos = token % P.t;"}
  let cs = TAB[(min(pos, P.maxPos - 1u) * P.half + k) / 2u];
  let s0 = cs.y * P.sign;
  let s1 = cs.w * P.sign;
  let x = X[i];
  Y[i] = vec4<f32>(
    x.x * cs.x - x.y * s0,
    x.x * s0 + x.y * cs.x,
    x.z * cs.z - x.w * s1,
    x.z * s1 + x.w * cs.z,
  );`;
  return defineKernel({
    name: `rope_vec4${explicitPos ? "_pos" : ""}`,
    params: PARAMS,
    bindings: ropeBindings("vec4<f32>"),
    body: gridMain(wg, "i", "2u * i >= P.pairs", body),
  });
}

/** Llama 3's RoPE frequency scaling (Hugging Face `rope_type: "llama3"`). */
export interface RopeScaling {
  /** Scaling kind (only Llama 3's). */
  type: "llama3";
  /** Stretch of low frequencies. */
  factor: number;
  /** Wavelength bound (in units of the original context) below which frequencies are stretched. */
  lowFreqFactor: number;
  /** Wavelength bound above which frequencies are kept. */
  highFreqFactor: number;
  /** Context length the model was pretrained with. */
  originalMaxPositionEmbeddings: number;
}

/** Frequency of pair k: theta^(-2k/D), rescaled for Llama 3 when `scaling` is given. */
export function ropeFrequency(
  k: number,
  headDim: number,
  theta: number,
  scaling?: RopeScaling,
): number {
  const f = Math.pow(theta, (-2 * k) / headDim);
  if (!scaling) return f;
  const { factor, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositionEmbeddings: ctx } =
    scaling;
  const wavelen = (2 * Math.PI) / f;
  if (wavelen < ctx / hi) return f; // high frequencies unchanged
  if (wavelen > ctx / lo) return f / factor; // low frequencies stretched
  const smooth = (ctx / wavelen - lo) / (hi - lo);
  return (1 - smooth) * (f / factor) + smooth * f;
}

/** Host table of (cos, sin) for positions [0, maxPos) and pair k: angle = pos * frequency(k). */
export function ropeTable(
  headDim: number,
  maxPos: number,
  theta: number,
  scaling?: RopeScaling,
): Float32Array {
  const half = headDim / 2;
  const tab = new Float32Array(maxPos * half * 2);
  const freqs = Array.from({ length: half }, (_, k) => ropeFrequency(k, headDim, theta, scaling));
  for (let p = 0; p < maxPos; p++) {
    for (let k = 0; k < half; k++) {
      const a = p * freqs[k];
      tab[(p * half + k) * 2] = Math.cos(a);
      tab[(p * half + k) * 2 + 1] = Math.sin(a);
    }
  }
  return tab;
}

/** Records y = rope(x); `pos` holds one position per token, or null for pos = t. */
export function runRope(
  gpu: Gpu,
  x: GpuBuffer,
  table: GpuBuffer,
  pos: GpuBuffer | null,
  y: GpuBuffer,
  dims: { b: number; t: number; h: number; d: number; maxPos: number },
  sign: 1 | -1,
): void {
  const pairs = (dims.b * dims.t * dims.h * dims.d) / 2;
  const wg = gpu.tuning.elementwiseWorkgroup;
  const p = new ParamWriter().u32(pairs).u32(dims.t).u32(dims.h).u32(dims.d / 2).u32(dims.maxPos)
    .f32(sign);
  // Without explicit positions the POS binding is unused; bind the table in its place.
  const vec4 = dims.d % 4 === 0 && gpu.tuning.elementwiseVec4;
  gpu.dispatch(
    (vec4 ? ropeKernelVec4 : ropeKernel)(wg, pos !== null),
    [x, table, pos ?? table, y],
    p,
    grid(Math.ceil(pairs / (vec4 ? 2 : 1) / wg)),
  );
}
