/**
 * Decoding one new token of a small model. Generation of a small model is dominated by
 * per-dispatch overhead (on llvmpipe ~85-100 us each whatever it does, ~17 dispatches per layer
 * on the general path), so fusing is worth more than any kernel speed-up. Only for small widths:
 * one workgroup (one CPU core on llvmpipe) does all the arithmetic.
 *
 * Per layer: RMSNorm, q/k/v, RoPE, the KV-cache write, causal attention over the cache, the
 * output projection, RMSNorm, SwiGLU MLP and both residual adds. The KV cache is [capacity, Hkv,
 * D] per layer, read as vec4s; the new token's position is a parameter.
 *
 * Versions:
 *   v2 one dispatch per layer; each invocation owns output rows of every matrix-vector product,
 *      the attention head sits in vec4 registers, and optionally the final RMSNorm and the
 *      classifier run in the last layer's kernel: stories260K in 6 dispatches per token (5 layers
 *      + sampling).
 *   v3 every layer, the head and the choice of the next token in one dispatch (or one per run of
 *      layers when the KV-cache bindings would pass the adapter's limit). The residual stays in
 *      workgroup memory between layers; the weights are packed into one rgba32float texture
 *      (a texel fetch is ~2x cheaper than a storage load on llvmpipe, and one binding holds them
 *      all) with the RMSNorm weights folded into the matrices after them, and each
 *      matrix-vector product loads its input vector into registers once instead of once per
 *      output row. On llvmpipe stories260K decodes ~2.1x faster than with v2 (1,679 against 786
 *      tok/s in one process).
 * Both versions split each head's cached positions over wg / heads lanes (see attentionHead).
 * The lane count is per adapter (`decodeWorkgroup` of the inference tuning): llvmpipe runs a
 * workgroup as fibers of 16 lanes on one core, switching fibers at every barrier (~60 a token),
 * so 16 lanes (one fiber) decode stories260K 1.48x faster than 64.
 */

import type { Gpu } from "../../gpu/device.ts";
import { cachedKernel, type Kernel, ParamWriter, range, texelLoad } from "../../gpu/kernel.ts";
import type { GpuBuffer, GpuTexture } from "../../gpu/pool.ts";
import { SIGMOID_WGSL } from "../../gpu/kernels/elementwise.ts";
import { rowReduceHelpers } from "../../gpu/kernels/rowwise.ts";
import { chooseSource } from "../../gpu/kernels/sample.ts";

/** Shapes compiled into the kernel. */
export interface DecodeShape {
  dim: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  eps: number;
  /** Invocations of the workgroup. */
  wg: number;
  /** Vocabulary size: the last layer's kernel also computes the logits when `head` is set. */
  vocab: number;
}

/** Widest model the fused path takes (its workgroup memory and single-core arithmetic). */
export function fusedDecodeFits(
  s: { dim: number; hidden: number; heads: number },
  maxBindings: number,
): boolean {
  return s.dim <= 512 && s.hidden <= 2048 && s.dim % 4 === 0 && s.hidden % 4 === 0 &&
    (s.dim / s.heads) % 4 === 0 && s.heads <= 64 && maxBindings >= DECODE_BINDINGS;
}

/** The most lanes the decode kernels' one workgroup takes (its workgroup memory grows with them). */
export const DECODE_WG = 64;

/**
 * Lanes of the one-dispatch decode kernel for a model: `preferred` (a power of two), raised to
 * cover the model's heads (each head gets at least a lane) and, where loops are capped
 * (`loopLimit`), until one lane's share of the work ({@link decodeLoopBound}) stays under half
 * the cap; null when even {@link DECODE_WG} lanes do not.
 */
export function decodeWorkgroup(
  s: Parameters<typeof decodeLoopBound>[0] & { heads: number },
  preferred: number,
  loopLimit: number,
): number | null {
  for (let wg = preferred; wg <= DECODE_WG; wg *= 2) {
    if (wg >= s.heads && decodeLoopBound(s, wg) <= loopLimit / 2) return wg;
  }
  return null;
}

/**
 * About how many loop iterations one lane of the one-dispatch decode kernel runs per token: its
 * share (1 / wg) of every weight texel of the layers and the head, of every layer's cached keys
 * and values at `maxPos` positions, and of the sampler's ~36 passes over the vocabulary. On an
 * adapter whose loops are capped (llvmpipe stops every invocation at 65,535 iterations of all its
 * loops together, `Gpu.loopLimit`) the decoder is only used while this stays under half the cap:
 * past it the kernel silently stops early (a dim-288, 32,000-word model sampled id 0 every time).
 */
export function decodeLoopBound(
  s: {
    dim: number;
    hidden: number;
    layers: number;
    kvDim: number;
    vocab: number;
    maxPos: number;
  },
  wg: number,
): number {
  const texels = (s.layers * (2 * s.dim * s.dim + 2 * s.dim * s.kvDim + 3 * s.dim * s.hidden) +
    s.vocab * s.dim) / 4;
  const cache = (s.layers * s.maxPos * 2 * s.kvDim) / 4;
  return Math.ceil((texels + cache + 36 * s.vocab) / wg) + 64 * s.layers;
}

/** Storage buffers a layer kernel binds; the last layer also binds the output head. */
export const DECODE_BINDINGS = 15;
export const DECODE_HEAD_BINDINGS = 18;

/** WGSL: `rope(lid)`, RoPE on interleaved pairs of q (pairs 0..DIM/2) and k (the next KV/2). */
function ropeSource(wg: number): string {
  return `fn rope(lid: u32) {
  for (var p = lid; p < (DIM + KV) / 2u; p += ${wg}u) {
    let isQ = p < DIM / 2u;
    let pp = select(p - DIM / 2u, p, isQ);
    let at = (min(P.pos, P.maxPos - 1u) * (HD / 2u) + pp % (HD / 2u)) * 2u;
    let c = ROPE[at];
    let sn = ROPE[at + 1u];
    if (isQ) {
      let a = q[2u * pp];
      let b = q[2u * pp + 1u];
      q[2u * pp] = a * c - b * sn;
      q[2u * pp + 1u] = a * sn + b * c;
    } else {
      let a = k[2u * pp];
      let b = k[2u * pp + 1u];
      k[2u * pp] = a * c - b * sn;
      k[2u * pp + 1u] = a * sn + b * c;
    }
  }
  workgroupBarrier();
}`;
}

/** Lanes that split one head's positions in {@link attentionHead}. */
function splits(s: DecodeShape): number {
  return Math.floor(s.wg / s.heads);
}

/** Workgroup memory of {@link attentionHead}: each lane's partial softmax state. */
function attentionHeadDecls(s: DecodeShape): string {
  return `var<workgroup> pm: array<f32, ${s.wg}>;
var<workgroup> pl: array<f32, ${s.wg}>;
var<workgroup> pa: array<vec4<f32>, ${(s.wg * s.dim) / s.heads / 4}>;`;
}

/**
 * WGSL statements: causal attention of the new token, over the cached keys in `kc`/`vc` and then
 * the new one, which is read from workgroup memory (this dispatch's cache writes are not ordered
 * before its own reads). Writes `att`. Each head's positions are split over S = wg / heads lanes
 * (lane sp takes positions sp, sp + S, ...), each with its own online softmax, and one lane per
 * head merges the S partial states: with one lane per head, 8 of 64 lanes worked through every
 * position. The head is unrolled into vec4 registers: a private array indexed in a loop would be
 * gathered from scratch memory on every access.
 */
function attentionHead(s: DecodeShape, kc: string, vc: string): string {
  const hd = s.dim / s.heads, group = s.heads / s.kvHeads, S = splits(s), d4 = hd / 4;
  return `  if (lid < ${s.heads * S}u) {
    let hh = lid / ${S}u;
    let sp = lid % ${S}u;
    let kb = (hh / ${group}u) * HD;
    var m = -3.4028234e38;
    var l = 0.0;
${
    range(d4).map((j) =>
      `    let q${j} = vec4<f32>(q[hh * HD + ${4 * j}u], q[hh * HD + ${4 * j + 1}u], q[hh * HD + ${
        4 * j + 2
      }u], q[hh * HD + ${4 * j + 3}u]);
    var a${j} = vec4<f32>(0.0);
    let kNew${j} = vec4<f32>(k[kb + ${4 * j}u], k[kb + ${4 * j + 1}u], k[kb + ${
        4 * j + 2
      }u], k[kb + ${4 * j + 3}u]);
    let vNew${j} = vec4<f32>(v[kb + ${4 * j}u], v[kb + ${4 * j + 1}u], v[kb + ${
        4 * j + 2
      }u], v[kb + ${4 * j + 3}u]);`
    ).join("\n")
  }
    for (var sidx = sp; sidx <= P.pos; sidx += ${S}u) {
      let base = (sidx * KV + kb) / 4u;
${
    range(d4).map((j) =>
      `      var k${j} = ${kc}[base + ${j}u];
      var v${j} = ${vc}[base + ${j}u];`
    ).join("\n")
  }
      if (sidx == P.pos) {
${
    range(d4).map((j) =>
      `        k${j} = kNew${j};
        v${j} = vNew${j};`
    ).join("\n")
  }
      }
      let sc = (${range(d4).map((j) => `dot(q${j}, k${j})`).join(" + ")}) * P.scale;
      let mNew = max(m, sc);
      let corr = exp(m - mNew);
      let pr = exp(sc - mNew);
      l = l * corr + pr;
${range(d4).map((j) => `      a${j} = a${j} * corr + pr * v${j};`).join("\n")}
      m = mNew;
    }
    pm[lid] = m;
    pl[lid] = l;
${range(d4).map((j) => `    pa[lid * ${d4}u + ${j}u] = a${j};`).join("\n")}
  }
  workgroupBarrier();
  // Lane sp = 0 of each split always has position 0, so the merged maximum is finite and splits
  // without positions (m = -max, l = 0) weigh 0.
  if (lid < ${s.heads}u) {
    let h0 = lid * ${S}u;
    var mx = pm[h0];
    for (var i = 1u; i < ${S}u; i++) { mx = max(mx, pm[h0 + i]); }
    var lt = 0.0;
${range(d4).map((j) => `    var at${j} = vec4<f32>(0.0);`).join("\n")}
    for (var i = 0u; i < ${S}u; i++) {
      let f = exp(pm[h0 + i] - mx);
      lt += pl[h0 + i] * f;
${range(d4).map((j) => `      at${j} += pa[(h0 + i) * ${d4}u + ${j}u] * f;`).join("\n")}
    }
${range(d4).map((j) => `    att[(lid * HD) / 4u + ${j}u] = at${j} / lt;`).join("\n")}
  }`;
}

/**
 * WGSL shared by every decode kernel: the shape constants, the workgroup state of one layer
 * (residual, normed input, q/k/v, attention output, MLP hidden), the workgroup sum and sigmoid.
 */
function layerState(s: DecodeShape): string {
  const kv = (s.dim / s.heads) * s.kvHeads;
  return `const DIM = ${s.dim}u;
const HID = ${s.hidden}u;
const HD = ${s.dim / s.heads}u;
const KV = ${kv}u;
var<workgroup> x: array<f32, ${s.dim}>;
var<workgroup> xn: array<vec4<f32>, ${s.dim / 4}>;
var<workgroup> q: array<f32, ${s.dim}>;
var<workgroup> k: array<f32, ${kv}>;
var<workgroup> v: array<f32, ${kv}>;
var<workgroup> att: array<vec4<f32>, ${s.dim / 4}>;
${attentionHeadDecls(s)}
var<workgroup> h: array<vec4<f32>, ${s.hidden / 4}>;

${rowReduceHelpers(s.wg)}
${SIGMOID_WGSL}`;
}

/**
 * The kernel of one layer. `head`: this is the last layer, and it goes on with the final RMSNorm
 * and the classifier, writing the logits (two dispatches fewer per token).
 */
export function decodeLayerKernel(s: DecodeShape, first: boolean, head = false): Kernel {
  const wg = s.wg;
  const source = `
struct Params { pos: u32, maxPos: u32, scale: f32, _p: u32 };
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> TOK: array<i32>;
@group(0) @binding(3) var<storage, read> EMB: array<f32>;
@group(0) @binding(4) var<storage, read> NA: array<f32>;
@group(0) @binding(5) var<storage, read> WQ: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> WK: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> WV: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> WO: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> NF: array<f32>;
@group(0) @binding(10) var<storage, read> W1: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> W3: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> W2: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> KC: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> VC: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> ROPE: array<f32>;${
    head
      ? `
@group(0) @binding(16) var<storage, read> NH: array<f32>;
@group(0) @binding(17) var<storage, read> CLS: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> LOGITS: array<f32>;`
      : ""
  }
${layerState(s)}

// xn = rmsnorm(x) * w, as vec4s.
fn norm(w: u32, lid: u32) {
  var ss = 0.0;
  for (var i = lid; i < DIM; i += ${wg}u) { ss += x[i] * x[i]; }
  let rstd = inverseSqrt(wgSum(ss, lid) / f32(DIM) + ${s.eps});
  for (var i = lid; i < DIM / 4u; i += ${wg}u) {
    let b = 4u * i;
    var g: vec4<f32>;
    if (w == 0u) { g = vec4<f32>(NA[b], NA[b + 1u], NA[b + 2u], NA[b + 3u]); }
    else${
    head ? " if (w == 1u)" : ""
  } { g = vec4<f32>(NF[b], NF[b + 1u], NF[b + 2u], NF[b + 3u]); }${
    head ? "\n    else { g = vec4<f32>(NH[b], NH[b + 1u], NH[b + 2u], NH[b + 3u]); }" : ""
  }
    xn[i] = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]) * rstd * g;
  }
  workgroupBarrier();
}

${ropeSource(wg)}

@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32) {
  ${
    first
      ? "let tok = u32(TOK[0]);\n  for (var i = lid; i < DIM; i += " + wg +
        "u) { x[i] = EMB[tok * DIM + i]; }"
      : `for (var i = lid; i < DIM; i += ${wg}u) { x[i] = X[i]; }`
  }
  workgroupBarrier();
  norm(0u, lid);
  // q, k, v: invocation j computes rows j, j + wg, ...
  for (var r = lid; r < DIM + 2u * KV; r += ${wg}u) {
    var acc = vec4<f32>(0.0);
    if (r < DIM) {
      for (var c = 0u; c < DIM / 4u; c++) { acc += WQ[r * (DIM / 4u) + c] * xn[c]; }
      q[r] = acc.x + acc.y + acc.z + acc.w;
    } else if (r < DIM + KV) {
      let rr = r - DIM;
      for (var c = 0u; c < DIM / 4u; c++) { acc += WK[rr * (DIM / 4u) + c] * xn[c]; }
      k[rr] = acc.x + acc.y + acc.z + acc.w;
    } else {
      let rr = r - DIM - KV;
      for (var c = 0u; c < DIM / 4u; c++) { acc += WV[rr * (DIM / 4u) + c] * xn[c]; }
      v[rr] = acc.x + acc.y + acc.z + acc.w;
    }
  }
  workgroupBarrier();
  rope(lid);
  for (var i = lid; i < KV / 4u; i += ${wg}u) {
    KC[P.pos * KV / 4u + i] = vec4<f32>(k[4u * i], k[4u * i + 1u], k[4u * i + 2u], k[4u * i + 3u]);
    VC[P.pos * KV / 4u + i] = vec4<f32>(v[4u * i], v[4u * i + 1u], v[4u * i + 2u], v[4u * i + 3u]);
  }
${attentionHead(s, "KC", "VC")}
  workgroupBarrier();
  for (var r = lid; r < DIM; r += ${wg}u) {
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < DIM / 4u; c++) { acc += WO[r * (DIM / 4u) + c] * att[c]; }
    x[r] += acc.x + acc.y + acc.z + acc.w;
  }
  workgroupBarrier();
  norm(1u, lid);
  for (var r = lid; r < HID; r += ${wg}u) {
    var a1 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var c = 0u; c < DIM / 4u; c++) {
      a1 += W1[r * (DIM / 4u) + c] * xn[c];
      a3 += W3[r * (DIM / 4u) + c] * xn[c];
    }
    let g1 = a1.x + a1.y + a1.z + a1.w;
    let g3 = a3.x + a3.y + a3.z + a3.w;
    h[r / 4u][r % 4u] = g1 * sigmoid(g1) * g3;
  }
  workgroupBarrier();
  for (var r = lid; r < DIM; r += ${wg}u) {
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < HID / 4u; c++) { acc += W2[r * (HID / 4u) + c] * h[c]; }
    let nx = x[r] + acc.x + acc.y + acc.z + acc.w;
    X[r] = nx;${head ? "\n    x[r] = nx;" : ""}
  }${
    head
      ? `
  workgroupBarrier();
  norm(2u, lid);
  for (var r = lid; r < ${s.vocab}u; r += ${wg}u) {
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < DIM / 4u; c++) { acc += CLS[r * (DIM / 4u) + c] * xn[c]; }
    LOGITS[r] = acc.x + acc.y + acc.z + acc.w;
  }`
      : ""
  }
}`;
  return {
    name: `decode_layer_d${s.dim}_h${s.hidden}${first ? "_first" : ""}${head ? "_head" : ""}`,
    source,
    buffers: [
      "rw",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "read",
      "rw",
      "rw",
      "read",
      ...(head ? ["read", "read", "rw"] as const : []),
    ],
  };
}

/** The buffers of one layer, in binding order after X. */
export interface DecodeLayerBuffers {
  token: GpuBuffer;
  embedding: GpuBuffer;
  attnNorm: GpuBuffer;
  wq: GpuBuffer;
  wk: GpuBuffer;
  wv: GpuBuffer;
  wo: GpuBuffer;
  ffnNorm: GpuBuffer;
  w1: GpuBuffer;
  w3: GpuBuffer;
  w2: GpuBuffer;
  kCache: GpuBuffer;
  vCache: GpuBuffer;
  rope: GpuBuffer;
  /** Last layer only, with the head fused: final norm weight, classifier, logits out. */
  head?: { norm: GpuBuffer; classifier: GpuBuffer; logits: GpuBuffer };
}

/** Records one fused layer for the token at position `pos`. */
export function runDecodeLayer(
  gpu: Gpu,
  x: GpuBuffer,
  b: DecodeLayerBuffers,
  shape: DecodeShape,
  first: boolean,
  pos: number,
  maxPos: number,
): void {
  const head = b.head;
  const key = `${JSON.stringify(shape)}${first}${!!head}`;
  const k = cachedKernel(`decode_layer:${key}`, () => decodeLayerKernel(shape, first, !!head));
  const p = new ParamWriter().u32(pos).u32(maxPos).f32(1 / Math.sqrt(shape.dim / shape.heads)).u32(
    0,
  );
  gpu.dispatch(
    k,
    [
      x,
      b.token,
      b.embedding,
      b.attnNorm,
      b.wq,
      b.wk,
      b.wv,
      b.wo,
      b.ffnNorm,
      b.w1,
      b.w3,
      b.w2,
      b.kCache,
      b.vCache,
      b.rope,
      ...(head ? [head.norm, head.classifier, head.logits] : []),
    ],
    p,
    [1, 1, 1],
  );
}

// ---------------------------------------------------------------------------------------------
// v3: every layer of a token (or a run of layers, when the KV-cache bindings would exceed the
// adapter's limit) and the head in one dispatch, weights read as texels of one packed texture.

/**
 * Texel offsets of one layer's weights in the packed texture. The matrices that follow an RMSNorm
 * (q, k, v after the attention norm; gate and up after the MLP norm) hold W diag(g), the norm's
 * weight g folded into their columns, so kernels only scale by 1 / rms(x).
 */
export interface DecodeLayerOffsets {
  wq: number;
  wk: number;
  wv: number;
  wo: number;
  w1: number;
  w3: number;
  w2: number;
}

/** Where each weight sits in the packed texture (texels of 4 floats). */
export interface DecodeLayout {
  layers: DecodeLayerOffsets[];
  /** The embedding rows, as they are (token lookup). */
  embedding: number;
  /** The classifier with the final norm's weight folded in (its own copy even when tied). */
  classifier: number;
  /** Texels in all. */
  texels: number;
}

/** Packs the weights of `layers` layers back to back (dims are multiples of 4, so is every size). */
export function decodeLayout(s: DecodeShape, layers: number): DecodeLayout {
  const kv = (s.dim / s.heads) * s.kvHeads;
  let at = 0;
  const take = (floats: number) => ((at += floats / 4), at - floats / 4);
  const out: DecodeLayerOffsets[] = range(layers).map(() => ({
    wq: take(s.dim * s.dim),
    wk: take(kv * s.dim),
    wv: take(kv * s.dim),
    wo: take(s.dim * s.dim),
    w1: take(s.hidden * s.dim),
    w3: take(s.hidden * s.dim),
    w2: take(s.dim * s.hidden),
  }));
  const embedding = take(s.vocab * s.dim), classifier = take(s.vocab * s.dim);
  return { layers: out, embedding, classifier, texels: at };
}

/**
 * Layers per v3 dispatch under a storage-buffer limit: X, TOK, ROPE, the logits and, when it
 * samples, the uniforms and the history, then K and V per layer.
 */
export function decodeLayersPerStep(maxBindings: number): number {
  return Math.floor((maxBindings - 6) / 2);
}

/** Matrix-vector products whose input has at most this many vec4s keep it in registers. */
const UNROLL_MAX = 64;

/**
 * WGSL: the input vector `src` (workgroup memory, `n` vec4s) in registers `p0, p1, ...`, loaded
 * once per product: on llvmpipe every workgroup-memory load is a per-lane gather costing about
 * as much as a texel fetch, so reading it again for each output row doubles the loads.
 */
function operand(src: string, n: number, p: string): string {
  return n <= UNROLL_MAX ? range(n).map((c) => `let ${p}${c} = ${src}[${c}u];`).join(" ") : "";
}

/**
 * WGSL: `acc` (vec4 partial sums) = the row of vec4 texels at `base` times the input of
 * {@link operand}, in column order; unrolled over the registers, or a loop over `src`.
 */
function dot(acc: string, base: string, n: number, src: string, p: string): string {
  if (n > UNROLL_MAX) {
    return `var ${acc} = vec4<f32>(0.0);
    for (var c = 0u; c < ${n}u; c++) { ${acc} += w(${base} + c) * ${src}[c]; }`;
  }
  return `let ${acc}b = ${base};
    var ${acc} = w(${acc}b) * ${p}0;` +
    range(n - 1).map((c) => ` ${acc} += w(${acc}b + ${c + 1}u) * ${p}${c + 1};`).join("");
}

/**
 * The v3 kernel for layers [from, to) of `layout`. `from == 0`: gathers the token's embedding;
 * else reads the residual from X. `to == layers`: ends with the final RMSNorm and the logits;
 * else writes the residual to X.
 */
export function decodeStepKernel(
  s: DecodeShape,
  layout: DecodeLayout,
  from: number,
  to: number,
  sample = false,
): Kernel {
  const wg = s.wg, n = to - from, head = to === layout.layers.length;
  if (sample && !head) throw new Error("decodeStepKernel: sampling needs the last layer's run");
  const d4 = s.dim / 4, h4 = s.hidden / 4;
  const layer = (l: number) => {
    const o = layout.layers[l], i = l - from;
    return `  // Layer ${l}.
  norm(lid);
  qkv(${o.wq}u, ${o.wk}u, ${o.wv}u, lid);
  rope(lid);
  for (var i = lid; i < KV / 4u; i += ${wg}u) {
    KC${i}[P.pos * KV / 4u + i] = vec4<f32>(k[4u * i], k[4u * i + 1u], k[4u * i + 2u], k[4u * i + 3u]);
    VC${i}[P.pos * KV / 4u + i] = vec4<f32>(v[4u * i], v[4u * i + 1u], v[4u * i + 2u], v[4u * i + 3u]);
  }
${attentionHead(s, `KC${i}`, `VC${i}`)}
  workgroupBarrier();
  addMatvec(${o.wo}u, lid);
  norm(lid);
  mlp(${o.w1}u, ${o.w3}u, ${o.w2}u, lid);`;
  };
  const source = `
struct Params {
  pos: u32, maxPos: u32, scale: f32, step: u32,
  temperature: f32, topP: f32, _p: u32, _q: u32,
};
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var W: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;
@group(0) @binding(3) var<storage, ${sample ? "read_write" : "read"}> TOK: array<i32>;
@group(0) @binding(4) var<storage, read> ROPE: array<f32>;
${
    range(n).map((i) =>
      `@group(0) @binding(${5 + 2 * i}) var<storage, read_write> KC${i}: array<vec4<f32>>;
@group(0) @binding(${6 + 2 * i}) var<storage, read_write> VC${i}: array<vec4<f32>>;`
    ).join("\n")
  }
@group(0) @binding(${5 + 2 * n}) var<storage, read_write> LOGITS: array<f32>;${
    sample
      ? `
@group(0) @binding(${6 + 2 * n}) var<storage, read> U: array<f32>;
@group(0) @binding(${7 + 2 * n}) var<storage, read_write> HIST: array<i32>;
${chooseSource(wg, "LOGITS")}`
      : ""
  }
${layerState(s)}

// Texel t of the packed weights. Sampled, not a storage texture as the products read theirs:
// llvmpipe inlines a storage texture's load at each of this kernel's many call sites, and its
// cold compile on Mesa 22.3.6 went from 4.4 to 6.6 s (a first 20-token generate from 6.7 to
// 9.0 s) for 28% faster decoding.
fn w(t: u32) -> vec4<f32> {
  return ${texelLoad("W", "t", "tex")};
}

// xn = x / rms(x); the norm's weight is folded into the next matrices.
fn norm(lid: u32) {
  var ss = 0.0;
  for (var i = lid; i < DIM; i += ${wg}u) { ss += x[i] * x[i]; }
  let rstd = inverseSqrt(wgSum(ss, lid) / f32(DIM) + ${s.eps});
  for (var i = lid; i < DIM / 4u; i += ${wg}u) {
    let b = 4u * i;
    xn[i] = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]) * rstd;
  }
  workgroupBarrier();
}

fn qkv(wq: u32, wk: u32, wv: u32, lid: u32) {
  ${operand("xn", d4, "o")}
  for (var r = lid; r < DIM + 2u * KV; r += ${wg}u) {
    var m = wq + r * ${d4}u;
    if (r >= DIM + KV) { m = wv + (r - DIM - KV) * ${d4}u; }
    else if (r >= DIM) { m = wk + (r - DIM) * ${d4}u; }
    ${dot("acc", "m", d4, "xn", "o")}
    let y = acc.x + acc.y + acc.z + acc.w;
    if (r < DIM) { q[r] = y; }
    else if (r < DIM + KV) { k[r - DIM] = y; }
    else { v[r - DIM - KV] = y; }
  }
  workgroupBarrier();
}

${ropeSource(wg)}

// x += WO att.
fn addMatvec(wo: u32, lid: u32) {
  ${operand("att", d4, "o")}
  for (var r = lid; r < DIM; r += ${wg}u) {
    ${dot("acc", `wo + r * ${d4}u`, d4, "att", "o")}
    x[r] += acc.x + acc.y + acc.z + acc.w;
  }
  workgroupBarrier();
}

// x += W2 (silu(W1 xn) * W3 xn).
fn mlp(w1: u32, w3: u32, w2: u32, lid: u32) {
  {
    ${operand("xn", d4, "o")}
    for (var r = lid; r < HID; r += ${wg}u) {
      ${dot("a1", `w1 + r * ${d4}u`, d4, "xn", "o")}
      ${dot("a3", `w3 + r * ${d4}u`, d4, "xn", "o")}
      let g1 = a1.x + a1.y + a1.z + a1.w;
      let g3 = a3.x + a3.y + a3.z + a3.w;
      h[r / 4u][r % 4u] = g1 * sigmoid(g1) * g3;
    }
  }
  workgroupBarrier();
  ${operand("h", h4, "o")}
  for (var r = lid; r < DIM; r += ${wg}u) {
    ${dot("acc", `w2 + r * ${h4}u`, h4, "h", "o")}
    x[r] += acc.x + acc.y + acc.z + acc.w;
  }
  workgroupBarrier();
}

@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32) {
  ${
    from === 0
      ? `let tok = u32(TOK[0]);
  for (var i = lid; i < DIM / 4u; i += ${wg}u) {
    let e = w(${layout.embedding}u + tok * (DIM / 4u) + i);
    x[4u * i] = e.x;
    x[4u * i + 1u] = e.y;
    x[4u * i + 2u] = e.z;
    x[4u * i + 3u] = e.w;
  }`
      : `for (var i = lid; i < DIM; i += ${wg}u) { x[i] = X[i]; }`
  }
  workgroupBarrier();
${range(n).map((i) => layer(from + i)).join("\n")}
${
    head
      ? `  norm(lid);
  ${operand("xn", d4, "o")}
  for (var r = lid; r < ${s.vocab}u; r += ${wg}u) {
    ${dot("acc", `${layout.classifier}u + r * ${d4}u`, d4, "xn", "o")}
    LOGITS[r] = acc.x + acc.y + acc.z + acc.w;
  }${
        sample
          ? `
  // The logits were written by other invocations: a storage barrier makes them visible.
  storageBarrier();
  let choice = choose(0u, ${s.vocab}u, U[P.step], P.temperature, P.topP, lid);
  if (lid == 0u) {
    TOK[0] = i32(choice);
    HIST[P.step] = i32(choice);
  }`
          : ""
      }`
      : `  for (var i = lid; i < DIM; i += ${wg}u) { X[i] = x[i]; }`
  }
}`;
  return {
    name: `decode_step_d${s.dim}_h${s.hidden}_l${from}-${to}${sample ? "_sample" : ""}`,
    source,
    buffers: [
      "tex",
      "rw",
      sample ? "rw" : "read",
      "read",
      ...range(2 * n).map(() => "rw" as const),
      "rw",
      ...(sample ? ["read", "rw"] as const : []),
    ],
  };
}

/** What one v3 dispatch binds besides the packed weights. */
export interface DecodeStepBuffers {
  x: GpuBuffer;
  token: GpuBuffer;
  rope: GpuBuffer;
  /** K and V caches of layers [from, to). */
  caches: { k: GpuBuffer; v: GpuBuffer }[];
  /** Written by the last run of layers; bound (unused) by the others. */
  logits: GpuBuffer;
}

/**
 * The next token, chosen in the last run's dispatch: written to `token` (the next step's input)
 * and to `history[step]`; `uniforms[step]` drives sampling.
 */
export interface DecodeChoice {
  /** One uniform in [0, 1) per step (f32). */
  uniforms: GpuBuffer;
  /** Chosen ids by step (i32). */
  history: GpuBuffer;
  /** This step's index into `uniforms` and `history`. */
  step: number;
  /** 0 = greedy. */
  temperature: number;
  /** Nucleus mass kept when sampling. */
  topP: number;
}

/** Records layers [from, to) for the token at position `pos`, and the choice of the next one. */
export function runDecodeStep(
  gpu: Gpu,
  weights: GpuTexture,
  layout: DecodeLayout,
  b: DecodeStepBuffers,
  shape: DecodeShape,
  from: number,
  to: number,
  pos: number,
  maxPos: number,
  choice?: DecodeChoice,
): void {
  const key = `v3${JSON.stringify(shape)}${JSON.stringify(layout)}${from},${to},${!!choice}`;
  const k = cachedKernel(
    `decode_step:${key}`,
    () => decodeStepKernel(shape, layout, from, to, !!choice),
  );
  const p = new ParamWriter().u32(pos).u32(maxPos).f32(1 / Math.sqrt(shape.dim / shape.heads))
    .u32(choice?.step ?? 0).f32(choice?.temperature ?? 0).f32(choice?.topP ?? 1).u32(0).u32(0);
  gpu.dispatch(
    k,
    [
      weights,
      b.x,
      b.token,
      b.rope,
      ...b.caches.flatMap((c) => [c.k, c.v]),
      b.logits,
      ...(choice ? [choice.uniforms, choice.history] : []),
    ],
    p,
    [1, 1, 1],
  );
}
