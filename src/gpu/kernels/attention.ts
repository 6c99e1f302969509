/**
 * Masked multi-head attention with grouped KV heads, where the mask is a rule, not a tensor:
 * every token has a role id, and a small role table says, for a query role and a key role,
 * whether the query may see the key: 0 none, 1 causal (key <= query), 2 self (key == query),
 * 3 all (anywhere in the sequence). The GEM mask and its ablations are such tables. No T x T mask
 * or score matrix is stored: the forward pass uses an online softmax and saves only the
 * log-sum-exp of each row; the backward pass recomputes scores.
 *
 * Layouts: q [B, T, Hq, D], k and v [B, T, Hkv, D], roles [B, T] i32, out like q,
 * stats [2, B, Hq, T] (log-sum-exp, then delta = dO . O, filled by the backward pass; one
 * buffer so no kernel binds more than 8 storage buffers). A row with no visible key outputs 0 and passes no gradient.
 *
 * Versions: v1 one invocation per query row (forward, dq) or key row (dk, dv); D is compiled in.
 *           v2 vec4 loads and a block of queries/keys per invocation (head dim % 4 == 0).
 */

import type { Gpu } from "../device.ts";
import { grid, GRID_BUILTINS, type Kernel, LINEAR_GROUP_ID, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";

/** Attention rule codes of a role table. */
export const RULE = { none: 0, causal: 1, self: 2, all: 3 } as const;

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

const PARAMS = `struct Params {
  TQ: u32, TK: u32, TCAP: u32, QOFF: u32,
  HQ: u32, HKV: u32, R: u32, hasAll: u32,
  scale: f32, rows: u32, _a: u32, _b: u32,
  rowBits: array<vec4<u32>, 2>,
};
@group(0) @binding(0) var<uniform> P: Params;`;

/**
 * Each query role's row of the table is packed 2 bits per key role into one u32, read once per
 * query; `plain` kernels (the causal table [[1]]) skip role checks altogether.
 */
function helpers(plain: boolean): string {
  return `
const PLAIN = ${plain};
fn rowBitsOf(r: i32) -> u32 {
  return P.rowBits[u32(r) / 4u][u32(r) % 4u];
}
fn allowed(bits: u32, rk: i32, t: u32, s: u32) -> bool {
  if (PLAIN) { return s <= t; }
  let r = (bits >> (2u * u32(rk))) & 3u;
  return r == 3u || (r == 1u && s <= t) || (r == 2u && s == t);
}`;
}

/** Query row decode shared by the forward and dq kernels. */
function queryRow(wg: number): string {
  return `
  let row = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  if (row >= P.rows) { return; }
  let t = row % P.TQ;
  let bh = row / P.TQ;
  let h = bh % P.HQ;
  let b = bh / P.HQ;
  let g = h / (P.HQ / P.HKV);
  // Position of this query among the keys (queries are the last TQ of TK when decoding).
  let tq = t + P.QOFF;
  let bits = select(rowBitsOf(ROLES[b * P.TCAP + tq]), 0u, PLAIN);
  let qBase = ((b * P.TQ + t) * P.HQ + h) * D;
  // Keys after the query are visible only through an 'all' rule.
  let end = select(min(tq + 1u, P.TK), P.TK, P.hasAll != 0u);`;
}

export function attentionForwardKernel(d: number, wg: number, plain: boolean): Kernel {
  const source = `${PARAMS}
const D = ${d}u;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
@group(0) @binding(6) var<storage, read_write> STATS: array<f32>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
${queryRow(wg)}
  var q: array<f32, ${d}>;
  for (var j = 0u; j < D; j++) { q[j] = Q[qBase + j] * P.scale; }
  var acc: array<f32, ${d}>;
  var m = -3.4028234e38;
  var l = 0.0;
  for (var s = 0u; s < end; s++) {
    if (!allowed(bits, ROLES[b * P.TCAP + s], tq, s)) { continue; }
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * D;
    var sc = 0.0;
    for (var j = 0u; j < D; j++) { sc = fma(q[j], K[kBase + j], sc); }
    // One exp per key: either the new score or the old max is the larger.
    let diff = sc - m;
    let e = exp(-abs(diff));
    let up = diff > 0.0;
    let corr = select(1.0, e, up);
    let p = select(e, 1.0, up);
    m = max(m, sc);
    l = l * corr + p;
    for (var j = 0u; j < D; j++) { acc[j] = fma(acc[j], corr, p * V[kBase + j]); }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var j = 0u; j < D; j++) { O[qBase + j] = acc[j] * inv; }
  STATS[row] = select(0.0, m + log(l), l > 0.0);
}`;
  return {
    name: `attention_fwd_d${d}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "rw", "rw"],
  };
}

/** dq for each query row, and delta = dO . O which the dk/dv kernel needs. */
export function attentionBackwardQueryKernel(d: number, wg: number, plain: boolean): Kernel {
  const source = `${PARAMS}
const D = ${d}u;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read> O: array<f32>;
@group(0) @binding(6) var<storage, read> DO: array<f32>;
@group(0) @binding(7) var<storage, read_write> STATS: array<f32>;
@group(0) @binding(8) var<storage, read_write> DQ: array<f32>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
${queryRow(wg)}
  var q: array<f32, ${d}>;
  var dout: array<f32, ${d}>;
  var delta = 0.0;
  for (var j = 0u; j < D; j++) {
    q[j] = Q[qBase + j] * P.scale;
    dout[j] = DO[qBase + j];
    delta = fma(dout[j], O[qBase + j], delta);
  }
  let lse = STATS[row];
  var dq: array<f32, ${d}>;
  for (var s = 0u; s < end; s++) {
    if (!allowed(bits, ROLES[b * P.TCAP + s], tq, s)) { continue; }
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * D;
    var sc = 0.0;
    var dp = 0.0;
    for (var j = 0u; j < D; j++) {
      sc = fma(q[j], K[kBase + j], sc);
      dp = fma(dout[j], V[kBase + j], dp);
    }
    let ds = exp(sc - lse) * (dp - delta);
    for (var j = 0u; j < D; j++) { dq[j] = fma(ds, K[kBase + j], dq[j]); }
  }
  for (var j = 0u; j < D; j++) { DQ[qBase + j] = dq[j] * P.scale; }
  STATS[P.rows + row] = delta;
}`;
  return {
    name: `attention_bwd_q_d${d}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "read", "read", "rw", "rw"],
  };
}

/** dk, dv for each key row: sums over the query heads of its group and the queries that see it. */
export function attentionBackwardKeyKernel(d: number, wg: number, plain: boolean): Kernel {
  const source = `${PARAMS}
const D = ${d}u;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read> DO: array<f32>;
@group(0) @binding(6) var<storage, read> STATS: array<f32>;
@group(0) @binding(7) var<storage, read_write> DK: array<f32>;
@group(0) @binding(8) var<storage, read_write> DV: array<f32>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let row = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  let keyRows = P.rows / P.HQ * P.HKV;
  if (row >= keyRows) { return; }
  let s = row % P.TQ;
  let bg = row / P.TQ;
  let g = bg % P.HKV;
  let b = bg / P.HKV;
  let rk = ROLES[b * P.TQ + s];
  let kBase = ((b * P.TQ + s) * P.HKV + g) * D;
  var k: array<f32, ${d}>;
  var v: array<f32, ${d}>;
  for (var j = 0u; j < D; j++) { k[j] = K[kBase + j] * P.scale; v[j] = V[kBase + j]; }
  var dk: array<f32, ${d}>;
  var dv: array<f32, ${d}>;
  let group = P.HQ / P.HKV;
  // Queries before s see it only through an 'all' rule.
  let start = select(s, 0u, P.hasAll != 0u);
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var t = start; t < P.TQ; t++) {
      if (!allowed(select(rowBitsOf(ROLES[b * P.TQ + t]), 0u, PLAIN), rk, t, s)) { continue; }
      let qBase = ((b * P.TQ + t) * P.HQ + h) * D;
      let r = (b * P.HQ + h) * P.TQ + t;
      var sc = 0.0;
      var dp = 0.0;
      for (var j = 0u; j < D; j++) {
        sc = fma(Q[qBase + j], k[j], sc);
        dp = fma(DO[qBase + j], v[j], dp);
      }
      let p = exp(sc - STATS[r]);
      let ds = p * (dp - STATS[P.rows + r]);
      for (var j = 0u; j < D; j++) {
        dv[j] = fma(p, DO[qBase + j], dv[j]);
        dk[j] = fma(ds, Q[qBase + j], dk[j]);
      }
    }
  }
  for (var j = 0u; j < D; j++) { DK[kBase + j] = dk[j] * P.scale; DV[kBase + j] = dv[j]; }
}`;
  return {
    name: `attention_bwd_kv_d${d}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "read", "read", "rw", "rw"],
  };
}

/**
 * Version 2 (head dim a multiple of 4): vec4 loads and `qb` queries (forward, dq) or keys (dk,
 * dv) per invocation, so each key or query row loaded is used `qb` times. On llvmpipe every
 * storage load costs the same per lane whatever its width, so this cuts loads by up to 4 * qb.
 */
function blockHead(qb: number, d4: number): string {
  return `
const D4 = ${d4}u;
const QB = ${qb}u;`;
}

/** Block of queries decode shared by the v2 forward and dq kernels. */
function queryBlock(wg: number): string {
  return `
  let blk = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  let nb = (P.TQ + QB - 1u) / QB;
  let bhCount = P.rows / P.TQ;
  if (blk >= bhCount * nb) { return; }
  let t0 = (blk % nb) * QB;
  let bh = blk / nb;
  let h = bh % P.HQ;
  let b = bh / P.HQ;
  let g = h / (P.HQ / P.HKV);
  let nq = min(QB, P.TQ - t0);
  // Keys after the last query of the block are visible only through an 'all' rule.
  let end = select(min(t0 + nq + P.QOFF, P.TK), P.TK, P.hasAll != 0u);`;
}

export function attentionForwardKernelV2(
  d: number,
  wg: number,
  plain: boolean,
  qb: number,
): Kernel {
  const d4 = d / 4;
  const source = `${PARAMS}
${blockHead(qb, d4)}
@group(0) @binding(1) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read_write> O: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> STATS: array<f32>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
${queryBlock(wg)}
  var q: array<array<vec4<f32>, ${d4}>, ${qb}>;
  var acc: array<array<vec4<f32>, ${d4}>, ${qb}>;
  var m: array<f32, ${qb}>;
  var l: array<f32, ${qb}>;
  var bits: array<u32, ${qb}>;
  for (var i = 0u; i < QB; i++) {
    let t = min(t0 + i, P.TQ - 1u);
    let qBase = ((b * P.TQ + t) * P.HQ + h) * D4;
    for (var j = 0u; j < D4; j++) { q[i][j] = Q[qBase + j] * P.scale; }
    bits[i] = select(rowBitsOf(ROLES[b * P.TCAP + t + P.QOFF]), 0u, PLAIN);
    m[i] = -3.4028234e38;
  }
  for (var s = 0u; s < end; s++) {
    let rk = select(ROLES[b * P.TCAP + s], 0, PLAIN);
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * D4;
    var k: array<vec4<f32>, ${d4}>;
    var v: array<vec4<f32>, ${d4}>;
    for (var j = 0u; j < D4; j++) { k[j] = K[kBase + j]; v[j] = V[kBase + j]; }
    for (var i = 0u; i < QB; i++) {
      if (!allowed(bits[i], rk, t0 + i + P.QOFF, s)) { continue; }
      var sc = 0.0;
      for (var j = 0u; j < D4; j++) { sc += dot(q[i][j], k[j]); }
      // One exp per key: either the new score or the old max is the larger.
      let diff = sc - m[i];
      let e = exp(-abs(diff));
      let up = diff > 0.0;
      let corr = select(1.0, e, up);
      let p = select(e, 1.0, up);
      m[i] = max(m[i], sc);
      l[i] = l[i] * corr + p;
      for (var j = 0u; j < D4; j++) { acc[i][j] = acc[i][j] * corr + p * v[j]; }
    }
  }
  for (var i = 0u; i < nq; i++) {
    let t = t0 + i;
    let qBase = ((b * P.TQ + t) * P.HQ + h) * D4;
    let inv = select(0.0, 1.0 / l[i], l[i] > 0.0);
    for (var j = 0u; j < D4; j++) { O[qBase + j] = acc[i][j] * inv; }
    STATS[bh * P.TQ + t] = select(0.0, m[i] + log(l[i]), l[i] > 0.0);
  }
}`;
  return {
    name: `attention_fwd_v2_d${d}_qb${qb}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "rw", "rw"],
  };
}

export function attentionBackwardQueryKernelV2(
  d: number,
  wg: number,
  plain: boolean,
  qb: number,
): Kernel {
  const d4 = d / 4;
  const source = `${PARAMS}
${blockHead(qb, d4)}
@group(0) @binding(1) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read> O: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> DO: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> STATS: array<f32>;
@group(0) @binding(8) var<storage, read_write> DQ: array<vec4<f32>>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
${queryBlock(wg)}
  var q: array<array<vec4<f32>, ${d4}>, ${qb}>;
  var dout: array<array<vec4<f32>, ${d4}>, ${qb}>;
  var dq: array<array<vec4<f32>, ${d4}>, ${qb}>;
  var delta: array<f32, ${qb}>;
  var lse: array<f32, ${qb}>;
  var bits: array<u32, ${qb}>;
  for (var i = 0u; i < QB; i++) {
    let t = min(t0 + i, P.TQ - 1u);
    let qBase = ((b * P.TQ + t) * P.HQ + h) * D4;
    var dl = 0.0;
    for (var j = 0u; j < D4; j++) {
      q[i][j] = Q[qBase + j] * P.scale;
      dout[i][j] = DO[qBase + j];
      dl += dot(dout[i][j], O[qBase + j]);
    }
    delta[i] = dl;
    lse[i] = STATS[bh * P.TQ + t];
    bits[i] = select(rowBitsOf(ROLES[b * P.TCAP + t + P.QOFF]), 0u, PLAIN);
  }
  for (var s = 0u; s < end; s++) {
    let rk = select(ROLES[b * P.TCAP + s], 0, PLAIN);
    let kBase = ((b * P.TCAP + s) * P.HKV + g) * D4;
    var k: array<vec4<f32>, ${d4}>;
    var v: array<vec4<f32>, ${d4}>;
    for (var j = 0u; j < D4; j++) { k[j] = K[kBase + j]; v[j] = V[kBase + j]; }
    for (var i = 0u; i < QB; i++) {
      if (!allowed(bits[i], rk, t0 + i + P.QOFF, s)) { continue; }
      var sc = 0.0;
      var dp = 0.0;
      for (var j = 0u; j < D4; j++) { sc += dot(q[i][j], k[j]); dp += dot(dout[i][j], v[j]); }
      let ds = exp(sc - lse[i]) * (dp - delta[i]);
      for (var j = 0u; j < D4; j++) { dq[i][j] += ds * k[j]; }
    }
  }
  for (var i = 0u; i < nq; i++) {
    let t = t0 + i;
    let qBase = ((b * P.TQ + t) * P.HQ + h) * D4;
    for (var j = 0u; j < D4; j++) { DQ[qBase + j] = dq[i][j] * P.scale; }
    STATS[P.rows + bh * P.TQ + t] = delta[i];
  }
}`;
  return {
    name: `attention_bwd_q_v2_d${d}_qb${qb}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "read", "read", "rw", "rw"],
  };
}

export function attentionBackwardKeyKernelV2(
  d: number,
  wg: number,
  plain: boolean,
  kb: number,
): Kernel {
  const d4 = d / 4;
  const source = `${PARAMS}
${blockHead(kb, d4)}
@group(0) @binding(1) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> ROLES: array<i32>;
@group(0) @binding(5) var<storage, read> DO: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> STATS: array<f32>;
@group(0) @binding(7) var<storage, read_write> DK: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> DV: array<vec4<f32>>;
${helpers(plain)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let blk = ${LINEAR_GROUP_ID} * ${wg}u + lid;
  let nb = (P.TQ + QB - 1u) / QB;
  let bgCount = P.rows / P.TQ / P.HQ * P.HKV;
  if (blk >= bgCount * nb) { return; }
  let s0 = (blk % nb) * QB;
  let bg = blk / nb;
  let g = bg % P.HKV;
  let b = bg / P.HKV;
  let ns = min(QB, P.TQ - s0);
  var k: array<array<vec4<f32>, ${d4}>, ${kb}>;
  var v: array<array<vec4<f32>, ${d4}>, ${kb}>;
  var dk: array<array<vec4<f32>, ${d4}>, ${kb}>;
  var dv: array<array<vec4<f32>, ${d4}>, ${kb}>;
  var rk: array<i32, ${kb}>;
  for (var i = 0u; i < QB; i++) {
    let s = min(s0 + i, P.TQ - 1u);
    let kBase = ((b * P.TQ + s) * P.HKV + g) * D4;
    for (var j = 0u; j < D4; j++) { k[i][j] = K[kBase + j] * P.scale; v[i][j] = V[kBase + j]; }
    rk[i] = select(ROLES[b * P.TQ + s], 0, PLAIN);
  }
  let group = P.HQ / P.HKV;
  // Queries before the block see it only through an 'all' rule.
  let start = select(s0, 0u, P.hasAll != 0u);
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var t = start; t < P.TQ; t++) {
      let bits = select(rowBitsOf(ROLES[b * P.TQ + t]), 0u, PLAIN);
      let qBase = ((b * P.TQ + t) * P.HQ + h) * D4;
      let r = (b * P.HQ + h) * P.TQ + t;
      var q: array<vec4<f32>, ${d4}>;
      var dout: array<vec4<f32>, ${d4}>;
      for (var j = 0u; j < D4; j++) { q[j] = Q[qBase + j]; dout[j] = DO[qBase + j]; }
      let lse = STATS[r];
      let delta = STATS[P.rows + r];
      for (var i = 0u; i < QB; i++) {
        if (i >= ns || !allowed(bits, rk[i], t, s0 + i)) { continue; }
        var sc = 0.0;
        var dp = 0.0;
        for (var j = 0u; j < D4; j++) { sc += dot(q[j], k[i][j]); dp += dot(dout[j], v[i][j]); }
        let p = exp(sc - lse);
        let ds = p * (dp - delta);
        for (var j = 0u; j < D4; j++) { dv[i][j] += p * dout[j]; dk[i][j] += ds * q[j]; }
      }
    }
  }
  for (var i = 0u; i < ns; i++) {
    let kBase = ((b * P.TQ + s0 + i) * P.HKV + g) * D4;
    for (var j = 0u; j < D4; j++) { DK[kBase + j] = dk[i][j] * P.scale; DV[kBase + j] = dv[i][j]; }
  }
}`;
  return {
    name: `attention_bwd_kv_v2_d${d}_kb${kb}${plain ? "_causal" : ""}`,
    source,
    buffers: ["read", "read", "read", "read", "read", "read", "rw", "rw"],
  };
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

const memo = new Map<string, Kernel>();
function cached(key: string, make: () => Kernel): Kernel {
  let k = memo.get(key);
  if (!k) memo.set(key, k = make());
  return k;
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

/** Kernel version and block size for a head dim on this adapter (v2 needs d % 4 == 0). */
function version(gpu: Gpu, d: number): { v2: boolean; qb: number } {
  const qb = gpu.tuning.attentionBlock;
  return { v2: d % 4 === 0 && qb > 0, qb: Math.max(qb, 1) };
}

export function runAttention(
  gpu: Gpu,
  bufs: {
    q: GpuBuffer;
    k: GpuBuffer;
    v: GpuBuffer;
    roles: GpuBuffer;
    o: GpuBuffer;
    stats: GpuBuffer;
  },
  dims: AttentionDims,
  table: readonly (readonly number[])[],
): void {
  const wg = gpu.tuning.attentionWorkgroup;
  const plain = isPlain(table);
  const { v2, qb } = version(gpu, dims.d);
  const units = dims.b * dims.hq * (v2 ? Math.ceil(dims.t / qb) : dims.t);
  const kernel = v2
    ? cached(
      `f2${dims.d},${wg},${plain},${qb}`,
      () => attentionForwardKernelV2(dims.d, wg, plain, qb),
    )
    : cached(`f${dims.d},${wg},${plain}`, () => attentionForwardKernel(dims.d, wg, plain));
  gpu.dispatch(
    kernel,
    [bufs.q, bufs.k, bufs.v, bufs.roles, bufs.o, bufs.stats],
    params(dims, table),
    grid(Math.ceil(units / wg)),
  );
}

export function runAttentionBackward(
  gpu: Gpu,
  bufs: {
    q: GpuBuffer;
    k: GpuBuffer;
    v: GpuBuffer;
    roles: GpuBuffer;
    o: GpuBuffer;
    dout: GpuBuffer;
    stats: GpuBuffer;
    dq: GpuBuffer;
    dk: GpuBuffer;
    dv: GpuBuffer;
  },
  dims: AttentionDims,
  table: readonly (readonly number[])[],
): void {
  const wg = gpu.tuning.attentionWorkgroup;
  if ((dims.tk ?? dims.t) !== dims.t || (dims.tcap ?? dims.t) !== dims.t) {
    throw new Error("attention backward needs as many keys as queries (no KV cache)");
  }
  const p = params(dims, table);
  const plain = isPlain(table);
  const { v2, qb } = version(gpu, dims.d);
  const blocks = v2 ? Math.ceil(dims.t / qb) : dims.t;
  const qk = v2
    ? cached(
      `q2${dims.d},${wg},${plain},${qb}`,
      () => attentionBackwardQueryKernelV2(dims.d, wg, plain, qb),
    )
    : cached(`q${dims.d},${wg},${plain}`, () => attentionBackwardQueryKernel(dims.d, wg, plain));
  gpu.dispatch(
    qk,
    [bufs.q, bufs.k, bufs.v, bufs.roles, bufs.o, bufs.dout, bufs.stats, bufs.dq],
    p,
    grid(Math.ceil((dims.b * dims.hq * blocks) / wg)),
  );
  const kk = v2
    ? cached(
      `k2${dims.d},${wg},${plain},${qb}`,
      () => attentionBackwardKeyKernelV2(dims.d, wg, plain, qb),
    )
    : cached(`k${dims.d},${wg},${plain}`, () => attentionBackwardKeyKernel(dims.d, wg, plain));
  gpu.dispatch(
    kk,
    [bufs.q, bufs.k, bufs.v, bufs.roles, bufs.dout, bufs.stats, bufs.dk, bufs.dv],
    p,
    grid(Math.ceil((dims.b * dims.hkv * blocks) / wg)),
  );
}
