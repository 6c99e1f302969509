/**
 * The epilogues the fused prefill splices into matmul v3 (src/gpu/kernels/matmul_tex.ts), each
 * saving the dispatches of the ops it absorbs. Each computes what the unfused ops compute with
 * the same expressions; with the row norm the rounding differs (the norm's weight multiplies B
 * instead of A):
 *   plain     C = A B (with the row norm: the final RMSNorm and the classifier).
 *   residual  C = R + A B (the residual add after the attention output and the MLP).
 *   swiglu    C = silu(A B1) * (A B3) with B3 the N rows after B1 in the same texture (the MLP's
 *             gate and up projections and the SwiGLU between them).
 *   qkv       A [Wq; Wk; Wv]: q with RoPE into C [T, dim], k with RoPE and v into rows
 *             start + t of the KV cache (the three projections, both RoPEs and the cache writes).
 * All four share one Params block (the qkv fields), so one writer serves them.
 */

import type { ParamWriter } from "../../gpu/kernel.ts";
import { SIGMOID_WGSL } from "../../gpu/kernels/elementwise.ts";
import type { MatmulEpilogue } from "../../gpu/kernels/matmul_tex.ts";

/** The Params fields every prefill epilogue declares (read by qkv, zero-cost for the others). */
const PARAMS = "dim: u32, kv: u32, half: u32, start: u32, maxPos: u32, _c: u32, _d: u32, _e: u32,";

/** The qkv epilogue's values: widths, RoPE half head dim, position of row 0, RoPE table rows. */
export interface QkvParams {
  /** Query width (heads x head dim); also C's row length. */
  dim: number;
  /** Key (and value) width. */
  kv: number;
  /** Half the head dim. */
  half: number;
  /** Cache position of A's row 0. */
  start: number;
  /** Rows of the RoPE table. */
  maxPos: number;
}

/** Writes {@link PARAMS}. */
export function writeQkvParams(p: ParamWriter, q: QkvParams): void {
  p.u32(q.dim).u32(q.kv).u32(q.half).u32(q.start).u32(q.maxPos).u32(0).u32(0).u32(0);
}

const X4 = "xyzw";

/** C = A B; the plain vec4 store. */
export const PLAIN: MatmulEpilogue = {
  name: "plain",
  params: PARAMS,
  bindings: [],
  dual: false,
  store: null,
  helpers: "",
};

/** C = R + A B. */
export const RESIDUAL: MatmulEpilogue = {
  name: "residual",
  params: PARAMS,
  bindings: [["R", "read", "array<vec4<f32>>"]],
  dual: false,
  store: (r, c, g) => `Cb[cr / 4u + ${g}] = R[cr / 4u + ${g}] + acc${r}_${c};`,
  helpers: "",
};

/** C = silu(A B1) * (A B3): the gate and up projections and the SwiGLU between them. */
export const SWIGLU: MatmulEpilogue = {
  name: "swiglu",
  params: PARAMS,
  bindings: [],
  dual: true,
  store: (r, c, g) =>
    `var h: vec4<f32>;${
      [...X4].map((q) =>
        ` { let a = acc${r}_${c}.${q}; let b = up${r}_${c}.${q}; h.${q} = a * sigmoid(a) * b; }`
      )
        .join("")
    } Cb[cr / 4u + ${g}] = h;`,
  helpers: SIGMOID_WGSL,
};

/**
 * q with RoPE into C, k with RoPE and v into the KV cache, for heads of `headDim`. Columns
 * [0, dim) are q (C's rows are dim long), then k, then v; a vec4 never straddles q, k and v or a
 * head (dim, kv and the head dim are multiples of 4). With `positions`, row i's RoPE position is
 * POS[i] (packed sequences, each from 0) and its k and v go to row i of KC and VC; without, both
 * are start + i. Each row loads its position once; when a lane's column groups all sit at the
 * same offset within their heads (4 * wc a multiple of the head dim), also its one RoPE vec4:
 * on llvmpipe the per-store loads made the q/k/v product ~20% slower.
 */
function qkvEpilogue(positions: boolean, headDim: number): MatmulEpilogue {
  const shared = (wc: number) => (4 * wc) % headDim === 0;
  const ropeAt = (r: number, k: string) =>
    `ROPE[(min(pos${r}, P.maxPos - 1u) * P.half + ${k}) / 2u]`;
  return {
    name: `${positions ? "qkv_pos" : "qkv"}_h${headDim}`,
    params: PARAMS,
    bindings: [
      ["KC", "rw", "array<vec4<f32>>"],
      ["VC", "rw", "array<vec4<f32>>"],
      ["ROPE", "read", "array<vec4<f32>>"],
      ...(positions ? [["POS", "read", "array<i32>"] as const] : []),
    ],
    dual: false,
    row: (r, wc) =>
      `let pos${r} = ${positions ? `u32(POS[i0 + ${r}u])` : `P.start + i0 + ${r}u`};${
        shared(wc) ? ` let cs${r} = ${ropeAt(r, `((g0 * 4u) % ${headDim}u) / 2u`)};` : ""
      }`,
    store: (r, c, g, wc) => {
      const acc = `acc${r}_${c}`;
      const cs = (
        col: string,
      ) => (shared(wc) ? `cs${r}` : ropeAt(r, `(${col} % ${headDim}u) / 2u`));
      return `let n0 = ${g} * 4u;
      let row = ${positions ? `i0 + ${r}u` : `pos${r}`};
      if (n0 < P.dim) { Cb[cr / 4u + ${g}] = rope2(${acc}, ${cs("n0")}); }
      else if (n0 < P.dim + P.kv) { KC[(row * P.kv + n0 - P.dim) / 4u] = rope2(${acc}, ${
        cs("(n0 - P.dim)")
      }); }
      else { VC[(row * P.kv + n0 - P.dim - P.kv) / 4u] = ${acc}; }`;
    },
    // RoPE of two interleaved pairs (pair index k even; cs holds cos, sin of k and k + 1):
    // rope v2's arithmetic.
    helpers: `fn rope2(x: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(
    x.x * cs.x - x.y * cs.y,
    x.x * cs.y + x.y * cs.x,
    x.z * cs.z - x.w * cs.w,
    x.z * cs.w + x.w * cs.z,
  );
}`,
  };
}

const qkvMade = new Map<string, MatmulEpilogue>();

/**
 * The q/k/v epilogue for heads of `headDim`: rows at cache positions start + i, or with
 * `positions` packed rows at their own positions (POS), k and v into rows i of KC, VC.
 */
export function qkvEpilogueFor(headDim: number, positions: boolean): MatmulEpilogue {
  const key = `${positions}:${headDim}`;
  let e = qkvMade.get(key);
  if (!e) qkvMade.set(key, e = qkvEpilogue(positions, headDim));
  return e;
}
