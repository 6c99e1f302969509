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
 * q with RoPE into C, k with RoPE and v into the KV cache. Columns [0, dim) are q (C's rows are
 * dim long), then k, then v; a vec4 never straddles q, k and v or a head (dim, kv and the head
 * dim are multiples of 4). With `positions`, row i's RoPE position is POS[i] (packed sequences,
 * each from 0) and its k and v go to row i of KC and VC; without, both are start + i.
 */
function qkvEpilogue(positions: boolean): MatmulEpilogue {
  return {
    name: positions ? "qkv_pos" : "qkv",
    params: PARAMS,
    bindings: [
      ["KC", "rw", "array<vec4<f32>>"],
      ["VC", "rw", "array<vec4<f32>>"],
      ["ROPE", "read", "array<vec4<f32>>"],
      ...(positions ? [["POS", "read", "array<i32>"] as const] : []),
    ],
    dual: false,
    store: (r, c, g) => {
      const acc = `acc${r}_${c}`;
      return `let n0 = ${g} * 4u;
      let row = ${positions ? `i0 + ${r}u` : `P.start + i0 + ${r}u`};
      let pos = ${positions ? `u32(POS[i0 + ${r}u])` : "row"};
      if (n0 < P.dim) { Cb[cr / 4u + ${g}] = rope2(${acc}, pos, (n0 % (2u * P.half)) / 2u); }
      else if (n0 < P.dim + P.kv) { KC[(row * P.kv + n0 - P.dim) / 4u] = rope2(${acc}, pos, ((n0 - P.dim) % (2u * P.half)) / 2u); }
      else { VC[(row * P.kv + n0 - P.dim - P.kv) / 4u] = ${acc}; }`;
    },
    // RoPE of two interleaved pairs (pair index k even): rope v2's arithmetic.
    helpers: `fn rope2(x: vec4<f32>, pos: u32, k: u32) -> vec4<f32> {
  let cs = ROPE[(min(pos, P.maxPos - 1u) * P.half + k) / 2u];
  return vec4<f32>(
    x.x * cs.x - x.y * cs.y,
    x.x * cs.y + x.y * cs.x,
    x.z * cs.z - x.w * cs.w,
    x.z * cs.w + x.w * cs.z,
  );
}`,
  };
}

/** q, k and v of rows at cache positions start + i. */
export const QKV: MatmulEpilogue = qkvEpilogue(false);

/** q, k and v of packed rows at their own positions (POS), k and v into rows i of KC, VC. */
export const QKV_POS: MatmulEpilogue = qkvEpilogue(true);
