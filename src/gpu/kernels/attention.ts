/**
 * Masked multi-head attention with grouped KV heads, where the mask is a rule, not a tensor:
 * every token has a role id, and a small role table says, for a query role and a key role,
 * whether the query may see the key: 0 none, 1 causal (key <= query), 2 self (key == query),
 * 3 all (anywhere in the sequence). The GEM mask and its ablations are such tables. No T x T mask
 * or score matrix is stored: the forward pass uses an online softmax and saves only the
 * log-sum-exp of each row; the backward pass recomputes scores.
 *
 * Sequences are rows of [B, T], or, with segments, several sequences packed into one row: each
 * token then carries (role, start, end) and sees only keys in [start, end) of its row. Packing
 * removes padding, which is most of the work for short texts.
 *
 * Layouts: q [B, T, Hq, D], k and v [B, T, Hkv, D], roles [B, T] i32 or meta [B, T, 4] i32
 * (role, start, end, 0), out like q, stats [2, B, Hq, T] (log-sum-exp, then delta = dO . O,
 * filled by the backward pass; one buffer so no kernel binds more than 8 storage buffers).
 * A row with no visible key outputs 0 and passes no gradient.
 *
 * Versions (one generator; each checked against the CPU reference and the PyTorch goldens):
 *   v1 one query (forward, dq) or key (dk, dv) per invocation, scalar loads;
 *   v2 a block of `qb` queries or keys per invocation and vec4 loads (head dim % 4 == 0): on
 *      llvmpipe every storage load costs about the same per lane whatever its width, so this
 *      cuts loads by up to 4 * qb.
 *   v3 v2 with the block unrolled by the generator into named variables (q0_0, a0_0, ...) and
 *      masked keys handled with selects instead of `continue`. v2 keeps its block in private
 *      arrays indexed by a loop counter; where the compiler does not unroll that loop (llvmpipe
 *      does not, with a `continue` in it), every access is a per-lane gather from scratch
 *      memory. On llvmpipe v3 runs forward + backward of stories260K's attention 2.5x faster
 *      than v2, and wider blocks (8 instead of 4) now pay off.
 * Adjacent invocations take the same block of queries (keys) in successive heads: a SIMD group's
 * lanes then share one key (query) range, where blocks of one head along the sequence would each
 * run the loop to the group's longest causal range (1.3-1.5x on stories260K's training step).
 */

import type { Gpu } from "../device.ts";
import {
  type Binding,
  cachedKernel,
  defineKernel,
  grid,
  GRID_BUILTINS,
  type Kernel,
  LINEAR_GROUP_ID,
  ParamWriter,
  range,
  texelLoad,
  type TextureRead,
} from "../kernel.ts";
import type { GpuBuffer, GpuTexture } from "../pool.ts";

/**
 * Attention rule codes of a role table: the tensor layer's `RULE` (src/tensor/ops.ts), which the
 * role tables the kernels receive are written in.
 */
const RULE = { none: 0, causal: 1, self: 2, all: 3 } as const;

/** Largest role table (roles x roles) the kernels accept. */
export const MAX_ROLES = 8;

/**
 * Shapes of one attention call. Training uses t queries over the same t keys. Decoding with a KV
 * cache uses t new queries that are the last of `tk` keys held in a cache of `tcap` rows per
 * sequence (k, v and roles are laid out [B, tcap, ...]); the backward pass needs tk = tcap = t.
 */
export interface AttentionDims {
  b: number;
  t: number;
  hq: number;
  hkv: number;
  d: number;
  scale: number;
  /** Valid keys (default t). */
  tk?: number;
  /** Key rows per sequence in the k/v/roles buffers (default tk). */
  tcap?: number;
}

/** Compile-time choices of one attention kernel. */
export interface AttentionVariant {
  d: number;
  wg: number;
  /** The causal table [[1]]: no role checks. */
  plain: boolean;
  /** Tokens carry segments (packed sequences): a meta buffer instead of roles. */
  seg: boolean;
  /** Queries or keys per invocation (1 = v1). */
  qb: number;
  /** Load width: 4 (vec4, needs d % 4 == 0) or 1. */
  w: 1 | 4;
  /** v3: the block is unrolled into named variables instead of private arrays. */
  unroll: boolean;
  /**
   * v3: K and V are read as texels of textures they are first copied into, bound as this says
   * (a texel fetch costs ~0.6x a storage load on llvmpipe; forward ~20% faster, bitwise the same
   * result); false: read from their storage buffers.
   */
  kvTex: false | TextureRead;
}

const PARAMS = `TQ: u32, TK: u32, TCAP: u32, QOFF: u32,
                HQ: u32, HKV: u32, R: u32, hasAll: u32,
                scale: f32, rows: u32, _a: u32, _b: u32,
                rowBits: array<vec4<u32>, 2>,`;

/**
 * Shared declarations: element type, dims, role rules, token meta access (`scalarMeta`: packed
 * records bound as array<i32>, else as array<vec4<i32>>).
 */
function common(v: AttentionVariant, scalarMeta: boolean): string {
  const vt = v.w === 4 ? "vec4<f32>" : "f32";
  return `
alias VT = ${vt};
const DW = ${v.d / v.w}u;
const QB = ${v.qb}u;
const PLAIN = ${v.plain};
fn dotw(a: VT, b: VT) -> f32 { return ${v.w === 4 ? "dot(a, b)" : "a * b"}; }
// Each query role's row of the table, packed 2 bits per key role.
fn rowBitsOf(r: i32) -> u32 { return P.rowBits[u32(r) / 4u][u32(r) % 4u]; }
fn allowed(bits: u32, rk: i32, t: u32, s: u32) -> bool {
  if (PLAIN) { return s <= t; }
  let r = (bits >> (2u * u32(rk))) & 3u;
  return r == 3u || (r == 1u && s <= t) || (r == 2u && s == t);
}
// (role, first key, end key) of token i of sequence row b.
fn tokenMeta(b: u32, i: u32) -> vec3<u32> {
${
    !v.seg
      ? "  return vec3<u32>(select(u32(ROLES[b * P.TCAP + i]), 0u, PLAIN), 0u, P.TK);"
      : scalarMeta
      ? "  let m = (b * P.TCAP + i) * 4u;\n  return vec3<u32>(select(u32(META[m]), 0u, PLAIN), u32(META[m + 1u]), u32(META[m + 2u]));"
      : "  let m = META[b * P.TCAP + i];\n  return vec3<u32>(select(u32(m.x), 0u, PLAIN), u32(m.y), u32(m.z));"
  }
}
// Its role alone, what the loops over keys read per key: on llvmpipe a scalar storage load costs
// about a third of a vec4's.
fn tokenRole(b: u32, i: u32) -> i32 {
  return ${
    !v.seg
      ? "ROLES[b * P.TCAP + i]"
      : scalarMeta
      ? "META[(b * P.TCAP + i) * 4u]"
      : "META[b * P.TCAP + i].x"
  };
}`;
}

/** The kernels of one variant: forward, dq (with delta), dk and dv. */
type AttentionKind = "fwd" | "bwd_q" | "bwd_kv";

/** Each kind's own bindings after Q, K, V and roles (VT: the variant's element type). */
const OWN: Record<AttentionKind, readonly Binding[]> = {
  fwd: [["O", "rw", "array<VT>"], ["STATS", "rw", "array<f32>"]],
  bwd_q: [
    ["O", "read", "array<VT>"],
    ["DO", "read", "array<VT>"],
    ["STATS", "rw", "array<f32>"],
    ["DQ", "rw", "array<VT>"],
  ],
  bwd_kv: [
    ["DO", "read", "array<VT>"],
    ["STATS", "read", "array<f32>"],
    ["DK", "rw", "array<VT>"],
    ["DV", "rw", "array<VT>"],
  ],
};

/**
 * A kernel of any version: params, Q, K, V and the token roles (or meta) at bindings 1..4, the
 * kind's own bindings from 5, shared helpers, then `body` as the entry point.
 */
function attentionKernel(kind: AttentionKind, v: AttentionVariant, body: string): Kernel {
  // K and V are storage arrays, or textures read through ldK / ldV.
  const kvBinding = (n: string): Binding =>
    v.kvTex ? [`${n}Tex`, v.kvTex] : [n, "read", "array<VT>"];
  // Packed records are read as scalars where a loop over keys wants only each key's role, and
  // whole where the dk/dv loop over queries wants all of each query's.
  const scalarMeta = kind !== "bwd_kv";
  return defineKernel({
    name: `attention_${kind}_${variantName(v)}`,
    params: PARAMS,
    bindings: [
      ["Q", "read", "array<VT>"],
      kvBinding("K"),
      kvBinding("V"),
      v.seg ? ["META", "read", scalarMeta ? "array<i32>" : "array<vec4<i32>>"] : [
        "ROLES",
        "read",
        "array<i32>",
      ],
      ...OWN[kind],
    ],
    body: `${v.kvTex ? `${texLoad("K", v.kvTex)}\n${texLoad("V", v.kvTex)}` : ""}${
      common(v, scalarMeta)
    }
@compute @workgroup_size(${v.wg})
fn main(${GRID_BUILTINS}) {
${body}
}`,
  });
}

/** `ld{name}(texel)`: a texel of the K or V texture (binding `{name}Tex`). */
function texLoad(name: string, reads: TextureRead): string {
  return `fn ld${name}(t: u32) -> vec4<f32> {
  return ${texelLoad(`${name}Tex`, "t", reads)};
}`;
}

/** WGSL reading element `i` (a vec4) of K or V in a v3 kernel: a texel or a storage load. */
function kv(v: AttentionVariant, name: "K" | "V", i: string): string {
  return v.kvTex ? `ld${name}(${i})` : `${name}[${i}]`;
}

/** Which QB queries of which (sequence, head) this invocation owns (every query kernel). */
function blockOfQueries(wg: number): string {
  return `  let blk = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  let nb = (P.TQ + QB - 1u) / QB;
  if (blk >= P.rows / P.TQ * nb) { return; }
  let h = blk % P.HQ;
  let bt = blk / P.HQ;
  let t0 = (bt % nb) * QB;
  let b = bt / nb;
  let bh = b * P.HQ + h;
  let g = h / (P.HQ / P.HKV);
  let nq = min(QB, P.TQ - t0);`;
}

/** Which QB keys of which (sequence, KV head) this invocation owns; `first` names the first. */
function blockOfKeys(wg: number, first: string): string {
  return `  let blk = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  let nb = (P.TQ + QB - 1u) / QB;
  if (blk >= P.rows / P.TQ / P.HQ * P.HKV * nb) { return; }
  let g = blk % P.HKV;
  let bt = blk / P.HKV;
  let ${first} = (bt % nb) * QB;
  let b = bt / nb;
  let ns = min(QB, P.TQ - ${first});`;
}

/**
 * The dk/dv kernels' loop over the queries that may see the block's keys: every query head of
 * the group, every query in [lo, hi) whose role sees anything; `r` indexes its STATS row.
 */
const QUERIES_OF_GROUP = `  let group = P.HQ / P.HKV;
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var t = lo; t < hi; t++) {
      let mt = tokenMeta(b, t);
      let bits = select(rowBitsOf(i32(mt.x)), 0u, PLAIN);
      if (bits == 0u && !PLAIN) { continue; }
      let qBase = ((b * P.TQ + t) * P.HQ + h) * DW;
      let r = (b * P.HQ + h) * P.TQ + t;`;

/** Unpacks a block of QB queries (forward and dq kernels). */
function queryBlock(wg: number): string {
  return `
${blockOfQueries(wg)}
  // Key range of the block: the union of its queries' segments, cut after the last query
  // unless some rule is 'all'.
  var lo = P.TK;
  var hi = 0u;
  var bits: array<u32, ${"${QB}"}>;
  var ends: array<vec2<u32>, ${"${QB}"}>;
  for (var i = 0u; i < QB; i++) {
    let tq = min(t0 + i, P.TQ - 1u) + P.QOFF;
    let mt = tokenMeta(b, tq);
    bits[i] = select(rowBitsOf(i32(mt.x)), 0u, PLAIN);
    let e = select(min(tq + 1u, mt.z), mt.z, P.hasAll != 0u);
    ends[i] = vec2<u32>(mt.y, e);
    if (i < nq && (bits[i] != 0u || PLAIN)) { lo = min(lo, mt.y); hi = max(hi, e); }
  }`;
}

/**
 * v2 head of the loop over keys (forward and dq): the key's K and V rows in k, vv, then the loop
 * over the block's queries `i` that may see it.
 */
function keyLoopV2(v: AttentionVariant): string {
  return `  for (var s = lo; s < hi; s++) {
    let rk = tokenRole(b, s);
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * DW;
    var k: array<VT, ${v.d / v.w}>;
    var vv: array<VT, ${v.d / v.w}>;
    for (var j = 0u; j < DW; j++) { k[j] = K[kBase + j]; vv[j] = V[kBase + j]; }
    for (var i = 0u; i < QB; i++) {
      if (s < ends[i].x || s >= ends[i].y || !allowed(bits[i], rk, t0 + i + P.QOFF, s)) { continue; }`;
}

function fill(src: string, v: AttentionVariant): string {
  return src.replaceAll("${QB}", String(v.qb));
}

export function attentionForwardKernel(v: AttentionVariant): Kernel {
  return attentionKernel(
    "fwd",
    v,
    fill(
      `${queryBlock(v.wg)}
  var q: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var acc: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var m: array<f32, ${v.qb}>;
  var l: array<f32, ${v.qb}>;
  for (var i = 0u; i < QB; i++) {
    let qBase = ((b * P.TQ + min(t0 + i, P.TQ - 1u)) * P.HQ + h) * DW;
    for (var j = 0u; j < DW; j++) { q[i][j] = Q[qBase + j] * P.scale; }
    m[i] = -3.4028234e38;
  }
${keyLoopV2(v)}
      var sc = 0.0;
      for (var j = 0u; j < DW; j++) { sc += dotw(q[i][j], k[j]); }
      // One exp per key: either the new score or the old max is the larger.
      let diff = sc - m[i];
      let e = exp(-abs(diff));
      let up = diff > 0.0;
      let corr = select(1.0, e, up);
      let p = select(e, 1.0, up);
      m[i] = max(m[i], sc);
      l[i] = l[i] * corr + p;
      for (var j = 0u; j < DW; j++) { acc[i][j] = acc[i][j] * corr + p * vv[j]; }
    }
  }
  for (var i = 0u; i < nq; i++) {
    let t = t0 + i;
    let qBase = ((b * P.TQ + t) * P.HQ + h) * DW;
    let inv = select(0.0, 1.0 / l[i], l[i] > 0.0);
    for (var j = 0u; j < DW; j++) { O[qBase + j] = acc[i][j] * inv; }
    STATS[bh * P.TQ + t] = select(0.0, m[i] + log(l[i]), l[i] > 0.0);
  }`,
      v,
    ),
  );
}

/**
 * v3 prologue of a block of queries (forward and dq): per query i, its row `tr{i}` (clamped),
 * position `tq{i}` (after the cached keys), mask bits, visible key range [st{i}, en{i}) and
 * Q/O offset `qb{i}`; the union of the ranges in [lo, hi).
 */
function queryBlockV3(v: AttentionVariant): string[] {
  const L = [`${blockOfQueries(v.wg)}
  var lo = P.TK;
  var hi = 0u;`];
  for (const i of range(v.qb)) {
    L.push(`  let tr${i} = min(t0 + ${i}u, P.TQ - 1u);
  let tq${i} = tr${i} + P.QOFF;
  let mt${i} = tokenMeta(b, tq${i});
  let bits${i} = select(rowBitsOf(i32(mt${i}.x)), 0u, PLAIN);
  let st${i} = mt${i}.y;
  let en${i} = select(min(tq${i} + 1u, mt${i}.z), mt${i}.z, P.hasAll != 0u);
  if (${i}u < nq && (bits${i} != 0u || PLAIN)) { lo = min(lo, st${i}); hi = max(hi, en${i}); }
  let qb${i} = ((b * P.TQ + tr${i}) * P.HQ + h) * DW;`);
  }
  return L;
}

/** v3 head of the loop over keys: the key's role and its K and V rows in k{j}, v{j}. */
function keyLoopV3(v: AttentionVariant): string {
  return `  for (var s = lo; s < hi; s++) {
    let rk = tokenRole(b, s);
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * DW;
${
    range(v.d / v.w).map((j) =>
      `    let k${j} = ${kv(v, "K", `kBase + ${j}u`)};\n    let v${j} = ${
        kv(v, "V", `kBase + ${j}u`)
      };`
    ).join("\n")
  }`;
}

/** v3 forward: v2 with the block unrolled into named registers (see the header). */
export function attentionForwardKernelV3(v: AttentionVariant): Kernel {
  const QB = v.qb, DW = v.d / v.w;
  const L = queryBlockV3(v);
  const e = (x: string) => L.push(x);
  for (const i of range(QB)) {
    e(`  var m${i} = -3.4028234e38;
  var l${i} = 0.0;`);
    for (const j of range(DW)) {
      e(`  let q${i}_${j} = Q[qb${i} + ${j}u] * P.scale;\n  var a${i}_${j} = VT();`);
    }
  }
  e(keyLoopV3(v));
  for (const i of range(QB)) {
    e(`    {
      let ok = s >= st${i} && s < en${i} && allowed(bits${i}, rk, tq${i}, s);
      let sc = ${range(DW).map((j) => `dotw(q${i}_${j}, k${j})`).join(" + ")};
      let diff = sc - m${i};
      let ex = exp(-abs(diff));
      let up = ok && diff > 0.0;
      let corr = select(1.0, ex, up);
      let p = select(select(ex, 1.0, up), 0.0, !ok);
      m${i} = select(m${i}, max(m${i}, sc), ok);
      l${i} = l${i} * corr + p;`);
    for (const j of range(DW)) e(`      a${i}_${j} = a${i}_${j} * corr + p * v${j};`);
    e(`    }`);
  }
  e(`  }`);
  for (const i of range(QB)) {
    e(`  if (${i}u < nq) {
    let inv = select(0.0, 1.0 / l${i}, l${i} > 0.0);`);
    for (const j of range(DW)) e(`    O[qb${i} + ${j}u] = a${i}_${j} * inv;`);
    e(`    STATS[bh * P.TQ + t0 + ${i}u] = select(0.0, m${i} + log(l${i}), l${i} > 0.0);
  }`);
  }
  return attentionKernel("fwd", v, L.join("\n"));
}

/** v3 dq and delta, unrolled. */
export function attentionBackwardQueryKernelV3(v: AttentionVariant): Kernel {
  const QB = v.qb, DW = v.d / v.w;
  const L = queryBlockV3(v);
  const e = (x: string) => L.push(x);
  for (const i of range(QB)) {
    e(`  let lse${i} = STATS[bh * P.TQ + tr${i}];`);
    for (const j of range(DW)) {
      e(`  let q${i}_${j} = Q[qb${i} + ${j}u] * P.scale;
  let d${i}_${j} = DO[qb${i} + ${j}u];
  var g${i}_${j} = VT();`);
    }
    e(`  let delta${i} = ${
      range(DW).map((j) => `dotw(d${i}_${j}, O[qb${i} + ${j}u])`).join(" + ")
    };`);
  }
  e(keyLoopV3(v));
  for (const i of range(QB)) {
    e(`    {
      let ok = s >= st${i} && s < en${i} && allowed(bits${i}, rk, tq${i}, s);
      let sc = ${range(DW).map((j) => `dotw(q${i}_${j}, k${j})`).join(" + ")};
      let dp = ${range(DW).map((j) => `dotw(d${i}_${j}, v${j})`).join(" + ")};
      let ds = select(0.0, exp(sc - lse${i}) * (dp - delta${i}), ok);`);
    for (const j of range(DW)) e(`      g${i}_${j} += ds * k${j};`);
    e(`    }`);
  }
  e(`  }`);
  for (const i of range(QB)) {
    e(`  if (${i}u < nq) {`);
    for (const j of range(DW)) e(`    DQ[qb${i} + ${j}u] = g${i}_${j} * P.scale;`);
    e(`    STATS[P.rows + bh * P.TQ + tr${i}] = delta${i};
  }`);
  }
  return attentionKernel("bwd_q", v, L.join("\n"));
}

/** v3 dk and dv, unrolled: each invocation owns a block of keys. */
export function attentionBackwardKeyKernelV3(v: AttentionVariant): Kernel {
  const QB = v.qb, DW = v.d / v.w;
  const L: string[] = [];
  const e = (x: string) => L.push(x);
  e(`${blockOfKeys(v.wg, "sb")}
  var lo = P.TQ;
  var hi = 0u;`);
  for (const i of range(QB)) {
    e(`  let s${i} = min(sb + ${i}u, P.TQ - 1u);
  let kb${i} = ((b * P.TQ + s${i}) * P.HKV + g) * DW;
  let mk${i} = tokenMeta(b, s${i});
  let rk${i} = i32(mk${i}.x);
  if (${i}u < ns) { lo = min(lo, select(s${i}, mk${i}.y, P.hasAll != 0u)); hi = max(hi, mk${i}.z); }`);
    for (const j of range(DW)) {
      e(`  let k${i}_${j} = ${kv(v, "K", `kb${i} + ${j}u`)} * P.scale;
  let v${i}_${j} = ${kv(v, "V", `kb${i} + ${j}u`)};
  var dk${i}_${j} = VT();
  var dv${i}_${j} = VT();`);
    }
  }
  e(`${QUERIES_OF_GROUP}
      let lse = STATS[r];
      let delta = STATS[P.rows + r];`);
  for (const j of range(DW)) {
    e(`      let q${j} = Q[qBase + ${j}u];\n      let d${j} = DO[qBase + ${j}u];`);
  }
  for (const i of range(QB)) {
    e(`      {
        let ok = ${i}u < ns && s${i} >= mt.y && s${i} < mt.z && allowed(bits, rk${i}, t, s${i});
        let sc = ${range(DW).map((j) => `dotw(q${j}, k${i}_${j})`).join(" + ")};
        let dp = ${range(DW).map((j) => `dotw(d${j}, v${i}_${j})`).join(" + ")};
        let p = select(0.0, exp(sc - lse), ok);
        let ds = p * (dp - delta);`);
    for (const j of range(DW)) {
      e(`        dv${i}_${j} += p * d${j};\n        dk${i}_${j} += ds * q${j};`);
    }
    e(`      }`);
  }
  e(`    }
  }`);
  for (const i of range(QB)) {
    e(`  if (${i}u < ns) {`);
    for (const j of range(DW)) {
      e(`    DK[kb${i} + ${j}u] = dk${i}_${j} * P.scale;\n    DV[kb${i} + ${j}u] = dv${i}_${j};`);
    }
    e(`  }`);
  }
  return attentionKernel("bwd_kv", v, L.join("\n"));
}

/** dq for each query, and delta = dO . O which the dk/dv kernel needs. */
export function attentionBackwardQueryKernel(v: AttentionVariant): Kernel {
  return attentionKernel(
    "bwd_q",
    v,
    fill(
      `${queryBlock(v.wg)}
  var q: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var dout: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var dq: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var delta: array<f32, ${v.qb}>;
  var lse: array<f32, ${v.qb}>;
  for (var i = 0u; i < QB; i++) {
    let t = min(t0 + i, P.TQ - 1u);
    let qBase = ((b * P.TQ + t) * P.HQ + h) * DW;
    var dl = 0.0;
    for (var j = 0u; j < DW; j++) {
      q[i][j] = Q[qBase + j] * P.scale;
      dout[i][j] = DO[qBase + j];
      dl += dotw(dout[i][j], O[qBase + j]);
    }
    delta[i] = dl;
    lse[i] = STATS[bh * P.TQ + t];
  }
${keyLoopV2(v)}
      var sc = 0.0;
      var dp = 0.0;
      for (var j = 0u; j < DW; j++) { sc += dotw(q[i][j], k[j]); dp += dotw(dout[i][j], vv[j]); }
      let ds = exp(sc - lse[i]) * (dp - delta[i]);
      for (var j = 0u; j < DW; j++) { dq[i][j] += ds * k[j]; }
    }
  }
  for (var i = 0u; i < nq; i++) {
    let t = t0 + i;
    let qBase = ((b * P.TQ + t) * P.HQ + h) * DW;
    for (var j = 0u; j < DW; j++) { DQ[qBase + j] = dq[i][j] * P.scale; }
    STATS[P.rows + bh * P.TQ + t] = delta[i];
  }`,
      v,
    ),
  );
}

/** dk, dv for each key: sums over the query heads of its group and the queries that see it. */
export function attentionBackwardKeyKernel(v: AttentionVariant): Kernel {
  return attentionKernel(
    "bwd_kv",
    v,
    fill(
      `${blockOfKeys(v.wg, "s0")}
  var k: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var vv: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var dk: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var dv: array<array<VT, ${v.d / v.w}>, ${v.qb}>;
  var rk: array<i32, ${v.qb}>;
  // Queries that may see a key: its segment, from the key on unless some rule is 'all'.
  var lo = P.TQ;
  var hi = 0u;
  for (var i = 0u; i < QB; i++) {
    let s = min(s0 + i, P.TQ - 1u);
    let kBase = ((b * P.TQ + s) * P.HKV + g) * DW;
    for (var j = 0u; j < DW; j++) { k[i][j] = K[kBase + j] * P.scale; vv[i][j] = V[kBase + j]; }
    let mt = tokenMeta(b, s);
    rk[i] = i32(mt.x);
    if (i < ns) { lo = min(lo, select(s, mt.y, P.hasAll != 0u)); hi = max(hi, mt.z); }
  }
${QUERIES_OF_GROUP}
      var q: array<VT, ${v.d / v.w}>;
      var dout: array<VT, ${v.d / v.w}>;
      for (var j = 0u; j < DW; j++) { q[j] = Q[qBase + j]; dout[j] = DO[qBase + j]; }
      let lse = STATS[r];
      let delta = STATS[P.rows + r];
      for (var i = 0u; i < QB; i++) {
        // Same segment: the query's range contains the key.
        if (i >= ns || s0 + i < mt.y || s0 + i >= mt.z || !allowed(bits, rk[i], t, s0 + i)) { continue; }
        var sc = 0.0;
        var dp = 0.0;
        for (var j = 0u; j < DW; j++) { sc += dotw(q[j], k[i][j]); dp += dotw(dout[j], vv[i][j]); }
        let p = exp(sc - lse);
        let ds = p * (dp - delta);
        for (var j = 0u; j < DW; j++) { dv[i][j] += p * dout[j]; dk[i][j] += ds * q[j]; }
      }
    }
  }
  for (var i = 0u; i < ns; i++) {
    let kBase = ((b * P.TQ + s0 + i) * P.HKV + g) * DW;
    for (var j = 0u; j < DW; j++) { DK[kBase + j] = dk[i][j] * P.scale; DV[kBase + j] = dv[i][j]; }
  }`,
      v,
    ),
  );
}

function variantName(v: AttentionVariant): string {
  return `${v.unroll ? "v3" : v.qb > 1 || v.w > 1 ? "v2" : "v1"}_d${v.d}_qb${v.qb}_w${v.w}${
    v.plain ? "_causal" : ""
  }${v.seg ? "_seg" : ""}${v.kvTex ? (v.kvTex === "tex" ? "_kvtex" : "_kvst") : ""}`;
}

function params(dims: AttentionDims, table: readonly (readonly number[])[]): ParamWriter {
  const r = table.length;
  const hasAll = table.flat().includes(RULE.all) ? 1 : 0;
  const tk = dims.tk ?? dims.t, tcap = dims.tcap ?? tk;
  if (tk < dims.t || tcap < tk) throw new Error(`attention: bad dims ${JSON.stringify(dims)}`);
  const rowBits = table.map((row) => row.reduce((bits, rule, k) => bits | (rule << (2 * k)), 0));
  return new ParamWriter()
    .u32(dims.t).u32(tk).u32(tcap).u32(tk - dims.t)
    .u32(dims.hq).u32(dims.hkv).u32(r).u32(hasAll)
    .f32(dims.scale).u32(dims.b * dims.hq * dims.t).u32(0).u32(0)
    .vec4u(rowBits, 2);
}

/** The plain causal table [[1]] gets kernels without role checks. */
function isPlain(table: readonly (readonly number[])[]): boolean {
  return table.length === 1 && table[0][0] === RULE.causal;
}

/** Checks a role table: square, at most MAX_ROLES, entries in 0..3. Returns an error or null. */
export function checkRoleTable(table: readonly (readonly number[])[]): string | null {
  const r = table.length;
  if (r === 0 || r > MAX_ROLES) return `role table must have 1..${MAX_ROLES} rows, got ${r}`;
  for (let i = 0; i < r; i++) {
    if (table[i].length !== r) {
      return `role table row ${i} has ${table[i].length} entries, want ${r}`;
    }
    for (const v of table[i]) {
      if (!Number.isInteger(v) || v < 0 || v > 3) return `role table entry ${v} not in 0..3`;
    }
  }
  return null;
}

/** The kernel of `kind` for variant `v`, made once by `make`. */
function cached(
  kind: AttentionKind,
  v: AttentionVariant,
  make: (v: AttentionVariant) => Kernel,
): Kernel {
  return cachedKernel(`attention_${kind}:${JSON.stringify(v)}`, () => make(v));
}

/** The kernel variant for this call on this adapter and these dims. */
function variant(
  gpu: Gpu,
  dims: AttentionDims,
  table: readonly (readonly number[])[],
  seg: boolean,
): AttentionVariant {
  const { attentionBlock, attentionBlockPacked, attentionVersion: version } = gpu.tuning;
  // 0 (v1) holds for packed sequences too.
  const block = seg && attentionBlock > 0 ? attentionBlockPacked : attentionBlock;
  const d = dims.d;
  const w = d % 4 === 0 && block > 0 ? 4 : 1;
  const unroll = w === 4 && version >= 3;
  // v3 keeps a block's registers near 128 floats per operand whatever the head size, and never
  // blocks wider than there are queries (one new token when decoding).
  const qb = w === 4
    ? Math.max(1, unroll ? Math.min(block, Math.floor(128 / d), dims.t) : block)
    : 1;
  const kvTex = unroll && gpu.tuning.attentionKvTextures && gpu.textureReads;
  return { d, wg: gpu.tuning.attentionWorkgroup, plain: isPlain(table), seg, qb, w, unroll, kvTex };
}

/** Buffers of a forward call; `meta` replaces `roles` for packed sequences. */
export interface AttentionBuffers {
  q: GpuBuffer;
  k: GpuBuffer;
  v: GpuBuffer;
  roles: GpuBuffer;
  o: GpuBuffer;
  stats: GpuBuffer;
  /** Per-token (role, start, end, 0) when sequences are packed; roles is then ignored. */
  meta?: GpuBuffer | null;
}

export function runAttention(
  gpu: Gpu,
  bufs: AttentionBuffers,
  dims: AttentionDims,
  table: readonly (readonly number[])[],
): void {
  const v = variant(gpu, dims, table, !!bufs.meta);
  const units = dims.b * dims.hq * Math.ceil(dims.t / v.qb);
  const [k, vv] = stageKv(gpu, v, bufs, dims);
  gpu.dispatch(
    cached("fwd", v, v.unroll ? attentionForwardKernelV3 : attentionForwardKernel),
    [bufs.q, k, vv, bufs.meta ?? bufs.roles, bufs.o, bufs.stats],
    params(dims, table),
    grid(Math.ceil(units / v.wg)),
  );
  releaseKv(gpu, k, vv);
}

export function runAttentionBackward(
  gpu: Gpu,
  bufs: AttentionBuffers & { dout: GpuBuffer; dq: GpuBuffer; dk: GpuBuffer; dv: GpuBuffer },
  dims: AttentionDims,
  table: readonly (readonly number[])[],
): void {
  if ((dims.tk ?? dims.t) !== dims.t || (dims.tcap ?? dims.t) !== dims.t) {
    throw new Error("attention backward needs as many keys as queries (no KV cache)");
  }
  const v = variant(gpu, dims, table, !!bufs.meta);
  const p = params(dims, table);
  const blocks = Math.ceil(dims.t / v.qb);
  const roles = bufs.meta ?? bufs.roles;
  const [k, vv] = stageKv(gpu, v, bufs, dims);
  gpu.dispatch(
    cached("bwd_q", v, v.unroll ? attentionBackwardQueryKernelV3 : attentionBackwardQueryKernel),
    [bufs.q, k, vv, roles, bufs.o, bufs.dout, bufs.stats, bufs.dq],
    p,
    grid(Math.ceil((dims.b * dims.hq * blocks) / v.wg)),
  );
  gpu.dispatch(
    cached("bwd_kv", v, v.unroll ? attentionBackwardKeyKernelV3 : attentionBackwardKeyKernel),
    [bufs.q, k, vv, roles, bufs.dout, bufs.stats, bufs.dk, bufs.dv],
    p,
    grid(Math.ceil((dims.b * dims.hkv * blocks) / v.wg)),
  );
  releaseKv(gpu, k, vv);
}

/** K and V as the variant binds them: the buffers, or textures they are copied into. */
function stageKv(
  gpu: Gpu,
  v: AttentionVariant,
  bufs: AttentionBuffers,
  dims: AttentionDims,
): [GpuBuffer | GpuTexture, GpuBuffer | GpuTexture] {
  if (!v.kvTex) return [bufs.k, bufs.v];
  const texels = (dims.b * (dims.tcap ?? dims.tk ?? dims.t) * dims.hkv * dims.d) / 4;
  return [bufs.k, bufs.v].map((b) => {
    const t = gpu.textures.acquire(texels);
    gpu.copyToTexture(b, 0, t, texels);
    return t;
  }) as [GpuTexture, GpuTexture];
}

function releaseKv(gpu: Gpu, k: GpuBuffer | GpuTexture, v: GpuBuffer | GpuTexture): void {
  for (const t of [k, v]) if ("view" in t) gpu.textures.release(t);
}
