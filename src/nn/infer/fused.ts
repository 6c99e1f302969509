/**
 * The fused inference path of a small Llama (decode.ts, and the matmul v3 epilogues of
 * epilogues.ts):
 * decoding one token per dispatch, and a prefill of the prompt in 5 dispatches per layer instead
 * of the general forward's 15 (17 with a KV cache). Plain causal generation only (token roles are
 * not read), batch 1. Every weight is packed once into one texture; build a new FusedDecoder after
 * the weights change.
 */

import { gpu } from "../../gpu/device.ts";
import {
  DECODE_HEAD_BINDINGS,
  DECODE_WG,
  type DecodeChoice,
  type DecodeLayerOffsets,
  decodeLayersPerStep,
  type DecodeLayout,
  decodeLayout,
  type DecodeShape,
  decodeWorkgroup,
  fusedDecodeFits,
  runDecodeLayer,
  runDecodeStep,
} from "./decode.ts";
import { range } from "../../gpu/kernel.ts";
import { type MatmulEpilogue, runMatmulFused } from "../../gpu/kernels/matmul_tex.ts";
import type { GpuBuffer, GpuTexture } from "../../gpu/pool.ts";
import { runRmsnormPool } from "../../gpu/kernels/rowwise.ts";
import { runSample } from "../../gpu/kernels/sample.ts";
import * as T from "../../tensor/ops.ts";
import { empty, keep, noGrad, scope, type Tensor, tensor } from "../../tensor/tensor.ts";
import { CAUSAL, headDim, type KVCache, type Llama, type LlamaConfig } from "../llama.ts";
import type { RoleTable } from "../../tensor/ops.ts";
import { PLAIN, qkvEpilogueFor, RESIDUAL, SWIGLU, writeQkvParams } from "./epilogues.ts";
import { inferTuning } from "./tuning.ts";

/** Settings of {@link FusedDecoder}. */
export interface FusedDecoderOptions {
  /**
   * Kernel version (default: the adapter's tuning). 2: one dispatch per layer, weights in storage
   * buffers. 3: every layer and the head in one dispatch, weights packed into one texture.
   */
  version?: 2 | 3;
  /** v2: the last layer's kernel also computes the logits (default: when the adapter can bind it). */
  fuseHead?: boolean;
  /** v3: layers per dispatch (default: as many as the storage-buffer limit allows). */
  layersPerStep?: number;
}

/**
 * Prefills a prompt ({@link FusedDecoder.prefill}) and decodes one token per
 * {@link FusedDecoder.step} through the fused kernels. The weights are copied into a texture when
 * it is constructed: build a new decoder after the weights change.
 */
export class FusedDecoder {
  /** The decode kernel version in use. */
  readonly version: 2 | 3;
  readonly #model: Llama;
  readonly #x: Tensor;
  readonly #shape: DecodeShape;
  readonly #fuseHead: boolean;
  readonly #runs: [number, number][] = [];
  #packed: { texture: GpuTexture; layout: DecodeLayout } | null = null;

  /** Checks that the model fits the fused path (see `fusedDecodeFits`) and packs its weights. */
  constructor(model: Llama, opts: FusedDecoderOptions = {}) {
    const c = model.config, g = gpu();
    const limit = g.device.limits.maxStorageBuffersPerShaderStage;
    const fits = { dim: c.dim, hidden: c.hiddenDim, heads: c.nHeads };
    if (!fusedDecodeFits(fits, limit)) {
      throw new Error(`FusedDecoder: the fused decode kernels do not take ${JSON.stringify(fits)}`);
    }
    if (model.dtype !== "f32" || model.activations !== "f32") {
      throw new Error(
        `FusedDecoder: the fused decode kernels read f32 weights and write f32 activations, not ${model.dtype} and ${model.activations}`,
      );
    }
    this.version = opts.version ?? inferTuning().decodeVersion;
    this.#model = model;
    this.#fuseHead = opts.fuseHead ?? limit >= DECODE_HEAD_BINDINGS;
    // Past the loop cap generate() decodes op by op; built anyway, the decoder takes the most
    // lanes it has.
    this.#shape = decodeShapeOf(model, decodeLanes(model) ?? DECODE_WG);
    this.#x = keep(empty([1, 1, c.dim], "f32", "generate.x"));
    const per = Math.min(opts.layersPerStep ?? Infinity, decodeLayersPerStep(limit));
    if (!(per >= 1)) throw new Error(`FusedDecoder: layersPerStep ${opts.layersPerStep}`);
    for (let l = 0; l < c.nLayers; l += per) this.#runs.push([l, Math.min(l + per, c.nLayers)]);
    this.#packed = packWeights(model, this.#shape);
  }

  /**
   * The prompt `tokens` ([1, T] i32) after the cache's positions: appends their keys and values
   * to the cache and returns the logits [1, T, vocab], or [1, 1, vocab] of the last token with
   * `lastOnly` (all generation needs). Per layer, 5 dispatches: RMSNorm, q/k/v with both RoPEs
   * and the cache writes (one matmul); attention; the output projection with the residual add;
   * RMSNorm, the gate and up projections and SwiGLU; the down projection with the residual add.
   */
  prefill(tokens: Tensor, cache: KVCache, lastOnly = false): Tensor {
    const c = this.#model.config, m = this.#model, packed = this.#weights();
    const [b, t] = tokens.shape;
    const start = cache.length;
    if (tokens.rank !== 2 || tokens.dtype !== "i32" || b !== 1 || cache.batch !== 1) {
      throw new Error(`FusedDecoder.prefill: tokens must be i32 [1, T], got ${tokens.describe()}`);
    }
    if (start + t > Math.min(cache.capacity, c.maxSeqLen)) {
      throw new Error(
        `FusedDecoder.prefill: ${start} cached + ${t} new tokens exceed the cache (${cache.capacity}) or the context (${c.maxSeqLen})`,
      );
    }
    const mm = fusedProduct(m, packed, start), epilogue = qkvEpilogueFor(headDim(c), false);
    return noGrad(() =>
      scope(() => {
        let x = T.embedding(m.params.get("model.embed_tokens.weight")!, tokens);
        packed.layout.layers.forEach((o, l) => {
          const qkv = { epilogue, extra: [cache.k[l].buf, cache.v[l].buf, m.ropeBuffer] };
          x = fusedLayer(mm, c, o, x, t, qkv, (q) =>
            T.attention(q, cache.k[l], cache.v[l], cache.roles, CAUSAL, { keys: start + t }));
        });
        cache.length = start + t;
        const rows = lastOnly ? 1 : t;
        const last = lastOnly ? T.contiguous(T.slice(x, 1, t - 1, t)) : x;
        const logits = empty([1, rows, c.vocabSize], "f32", "prefill.logits");
        mm(last, rows, c.dim, packed.layout.classifier, c.vocabSize, logits, PLAIN, [], true);
        return logits;
      })
    );
  }

  /**
   * The token in `next` ([1, 1] i32) at position cache.length: appends its keys and values to
   * the cache and returns its logits [1, 1, vocab]. With `choice`, also picks the next token
   * into `next` and `choice.history` (v3: in the same dispatch).
   */
  step(cache: KVCache, next: Tensor, choice?: DecodeChoice): Tensor {
    const c = this.#model.config, g = gpu(), m = this.#model;
    const p = (n: string) => m.params.get(n)!.buf;
    const pos = cache.length;
    if (cache.batch !== 1 || pos >= Math.min(cache.capacity, c.maxSeqLen)) {
      throw new Error(
        `FusedDecoder.step: position ${pos} does not fit the cache [${cache.batch}, ${cache.capacity}] (batch 1) or the context (${c.maxSeqLen})`,
      );
    }
    if (this.version === 3) {
      const packed = this.#weights();
      const logits = empty([1, 1, c.vocabSize], "f32", "generate.logits");
      for (const [from, to] of this.#runs) {
        runDecodeStep(
          g,
          packed.texture,
          packed.layout,
          {
            x: this.#x.buf,
            token: next.buf,
            rope: m.ropeBuffer,
            caches: range(to - from).map((i) => ({
              k: cache.k[from + i].buf,
              v: cache.v[from + i].buf,
            })),
            logits: logits.buf,
          },
          this.#shape,
          from,
          to,
          pos,
          c.maxSeqLen,
          to === c.nLayers ? choice : undefined,
        );
      }
      cache.length = pos + 1;
      return logits;
    }
    const logits = this.#fuseHead ? empty([1, 1, c.vocabSize], "f32", "generate.logits") : null;
    for (let l = 0; l < c.nLayers; l++) {
      const L = (n: string) => p(`model.layers.${l}.${n}`);
      const last = l === c.nLayers - 1;
      runDecodeLayer(
        g,
        this.#x.buf,
        {
          token: next.buf,
          embedding: p("model.embed_tokens.weight"),
          attnNorm: L("input_layernorm.weight"),
          wq: L("self_attn.q_proj.weight"),
          wk: L("self_attn.k_proj.weight"),
          wv: L("self_attn.v_proj.weight"),
          wo: L("self_attn.o_proj.weight"),
          ffnNorm: L("post_attention_layernorm.weight"),
          w1: L("mlp.gate_proj.weight"),
          w3: L("mlp.up_proj.weight"),
          w2: L("mlp.down_proj.weight"),
          kCache: cache.k[l].buf,
          vCache: cache.v[l].buf,
          rope: m.ropeBuffer,
          head: last && logits
            ? { norm: p("model.norm.weight"), classifier: m.classifier.buf, logits: logits.buf }
            : undefined,
        },
        this.#shape,
        l === 0,
        pos,
        c.maxSeqLen,
      );
    }
    cache.length = pos + 1;
    let out = logits;
    if (!out) {
      const h = T.rmsnorm(this.#x, m.params.get("model.norm.weight")!, c.normEps);
      out = T.matmul(h, m.classifier, { transB: true });
      h.dispose();
    }
    if (choice) {
      runSample(g, out.buf, choice.uniforms, next.buf, choice.history, {
        vocab: c.vocabSize,
        rowStride: c.vocabSize,
        rowOffset: 0,
        batch: 1,
        step: choice.step,
        maxNew: 0, // one sequence: its history row starts at 0
        temperature: choice.temperature,
        topP: choice.topP,
      });
    }
    return out;
  }

  #weights(): { texture: GpuTexture; layout: DecodeLayout } {
    if (!this.#packed) throw new Error("FusedDecoder: used after dispose()");
    return this.#packed;
  }

  /** Releases the residual buffer and the packed weights. */
  dispose(): void {
    this.#x.dispose();
    if (this.#packed) gpu().textures.release(this.#packed.texture);
    this.#packed = null;
  }
}

/**
 * Whether {@link FusedEncoder} takes this model: f32 weights and activations, no LoRA, a small
 * model's shape.
 */
export function fusedEncodeFits(model: Llama): boolean {
  const c = model.config;
  return model.dtype === "f32" && model.activations === "f32" && model.lora.size === 0 &&
    fusedDecodeFits({ dim: c.dim, hidden: c.hiddenDim, heads: c.nHeads }, Infinity);
}

/** What {@link FusedEncoder} reads besides the tokens: packed positions, segments, roles, table. */
export interface EncodeInputs {
  /** Each token's position in its sequence [1, N] (i32). */
  positions: Tensor;
  /** Each token's key range (start, end) [1, N, 2] (i32). */
  segments: Tensor;
  /** Each token's role [1, N] (i32). */
  roles: Tensor;
  /** The role table. */
  table: RoleTable;
}

/**
 * Hidden states of packed sequences (the embedding path) through the fused prefill's products:
 * per layer the q/k/v product with RoPE at each token's own position, attention under any role
 * table over the packed segments, the output projection with the residual add, the gate and up
 * projections with SwiGLU, the down projection with the residual add; 5 dispatches instead of
 * the general forward's 15. The RMSNorms are folded into the weights, so results differ from
 * the general forward in the last bits. The weights are packed when it is built: build a new
 * one after they change.
 */
export class FusedEncoder {
  readonly #model: Llama;
  #packed: { texture: GpuTexture; layout: DecodeLayout } | null;

  constructor(model: Llama) {
    if (!fusedEncodeFits(model)) {
      const c = model.config;
      throw new Error(
        `FusedEncoder: takes small f32 models without LoRA (dim ${c.dim}, hidden ${c.hiddenDim}, ${model.dtype} weights, ${model.activations} activations, ${model.lora.size} adapters)`,
      );
    }
    this.#model = model;
    this.#packed = packWeights(model, decodeShapeOf(model));
  }

  /**
   * The final hidden states [1, N, dim] (after the last RMSNorm, as the general forward's
   * `hidden`) of the packed `tokens` [1, N] with their `positions` and `segments` ([1, N, 2]),
   * `roles` ([1, N]) under `table`. Call under noGrad.
   */
  encode(tokens: Tensor, opts: EncodeInputs): Tensor {
    const m = this.#model;
    return scope(() =>
      T.rmsnorm(this.#layers(tokens, opts), m.params.get("model.norm.weight")!, m.config.normEps)
    );
  }

  /**
   * Pooled vectors [groups, dim]: for each (start, count) of `groups`, the mean of the final
   * hidden states (as {@link encode} gives them) of rows [start, start + count), divided by its
   * L2 norm (with `l2eps` under the root) unless `l2eps` is null. One kernel does the last
   * RMSNorm, the means and the norms. Call under noGrad.
   */
  pool(
    tokens: Tensor,
    opts: EncodeInputs,
    groups: readonly (readonly [number, number])[],
    l2eps: number | null,
  ): Tensor {
    const c = this.#model.config, t = tokens.shape[1];
    for (const [start, count] of groups) {
      if (!(start >= 0 && count >= 1 && start + count <= t)) {
        throw new Error(`FusedEncoder.pool: group (${start}, ${count}) is not within ${t} rows`);
      }
    }
    return scope(() => {
      const x = this.#layers(tokens, opts);
      const g = tensor(Int32Array.from(groups.flat()), [groups.length, 2], "i32");
      const r = empty([t], "f32", "pool.rstd");
      const y = empty([groups.length, c.dim], "f32", "pool.y");
      runRmsnormPool(
        gpu(),
        {
          x: x.buf,
          w: this.#model.params.get("model.norm.weight")!.buf,
          g: g.buf,
          y: y.buf,
          r: r.buf,
        },
        groups.length,
        c.dim,
        c.normEps,
        l2eps,
      );
      return y;
    });
  }

  /** The residual stream [1, N, dim] after the last layer, before the final RMSNorm. */
  #layers(tokens: Tensor, opts: EncodeInputs): Tensor {
    if (!this.#packed) throw new Error("FusedEncoder: used after dispose()");
    const c = this.#model.config, m = this.#model, packed = this.#packed;
    const [b, t] = tokens.shape;
    if (tokens.rank !== 2 || tokens.dtype !== "i32" || b !== 1) {
      throw new Error(`FusedEncoder.encode: tokens must be i32 [1, N], got ${tokens.describe()}`);
    }
    const hd = headDim(c), mm = fusedProduct(m, packed, 0), epilogue = qkvEpilogueFor(hd, true);
    let x = T.embedding(m.params.get("model.embed_tokens.weight")!, tokens);
    const records = T.packedTokens(opts.roles, opts.segments);
    packed.layout.layers.forEach((o) => {
      const k = empty([1, t, c.nKvHeads, hd], "f32", "encode.k");
      const v = empty([1, t, c.nKvHeads, hd], "f32", "encode.v");
      const qkv = { epilogue, extra: [k.buf, v.buf, m.ropeBuffer, opts.positions.buf] };
      x = fusedLayer(
        mm,
        c,
        o,
        x,
        t,
        qkv,
        (q) => T.attention(q, k, v, opts.roles, opts.table, { packed: records }),
      );
    });
    return x;
  }

  /** Releases the packed weights. */
  dispose(): void {
    if (this.#packed) gpu().textures.release(this.#packed.texture);
    this.#packed = null;
  }
}

/**
 * Lanes of the fused decoder's workgroup for `model` on this adapter (see `decodeWorkgroup`), or
 * null when one lane's share of a token would pass the adapter's loop cap.
 */
export function decodeLanes(model: Llama): number | null {
  return decodeWorkgroup(decodeWork(model.config), inferTuning().decodeWorkgroup, gpu().loopLimit);
}

/** A model's sizes as `decodeLoopBound` and `decodeWorkgroup` take them. */
export function decodeWork(c: LlamaConfig) {
  return {
    dim: c.dim,
    hidden: c.hiddenDim,
    layers: c.nLayers,
    kvDim: headDim(c) * c.nKvHeads,
    vocab: c.vocabSize,
    maxPos: c.maxSeqLen,
    heads: c.nHeads,
  };
}

/** The decode kernels' view of a model's shape, with `wg` lanes. */
function decodeShapeOf(model: Llama, wg = DECODE_WG): DecodeShape {
  const c = model.config;
  return {
    dim: c.dim,
    hidden: c.hiddenDim,
    heads: c.nHeads,
    kvHeads: c.nKvHeads,
    eps: c.normEps,
    wg,
    vocab: c.vocabSize,
  };
}

/**
 * One fused product: rows `a` [rows, k] times the `n` packed rows at texel `offB` into `out`
 * through `epilogue` (with its `extra` buffers); `norm`: the rows are RMS-normalised on the fly
 * (the norm's weight is folded into those packed rows); C's rows are `ldC` apart (default n).
 * q/k/v products put row 0 at `start`.
 */
type FusedProduct = (
  a: Tensor,
  rows: number,
  k: number,
  offB: number,
  n: number,
  out: Tensor,
  epilogue: MatmulEpilogue,
  extra: GpuBuffer[],
  norm: boolean,
  ldC?: number,
) => void;

function fusedProduct(
  model: Llama,
  packed: { texture: GpuTexture },
  start: number,
): FusedProduct {
  const c = model.config, g = gpu(), hd = headDim(c), kv = hd * c.nKvHeads;
  return (a, rows, k, offB, n, out, epilogue, extra, norm, ldC = n) =>
    runMatmulFused(g, {
      a: a.buf,
      m: rows,
      k,
      weights: packed.texture,
      offB,
      n,
      c: out.buf,
      ldC,
      epilogue,
      extra,
      params: (p) =>
        writeQkvParams(p, { dim: c.dim, kv, half: hd / 2, start, maxPos: c.maxSeqLen }),
      normEps: norm ? c.normEps : undefined,
    });
}

/**
 * One layer of fused products over x [1, t, dim], 5 dispatches: q, k and v by `qkv` (k and v go
 * where its extra buffers say), attention of q by `attend`, the output projection with the
 * residual add, the gate and up projections with SwiGLU, the down projection with the residual
 * add; both RMSNorms inside the products.
 */
function fusedLayer(
  mm: FusedProduct,
  c: LlamaConfig,
  o: DecodeLayerOffsets,
  x: Tensor,
  t: number,
  qkv: { epilogue: MatmulEpilogue; extra: GpuBuffer[] },
  attend: (q: Tensor) => Tensor,
): Tensor {
  const hd = headDim(c), kv = hd * c.nKvHeads;
  const q = empty([1, t, c.nHeads, hd], "f32", "fused.q");
  // The q/k/v product writes q alone into C: its rows are dim long.
  mm(x, t, c.dim, o.wq, c.dim + 2 * kv, q, qkv.epilogue, qkv.extra, true, c.dim);
  const att = attend(q);
  const x1 = empty([1, t, c.dim], "f32", "fused.x");
  mm(att, t, c.dim, o.wo, c.dim, x1, RESIDUAL, [x.buf], false);
  const h = empty([1, t, c.hiddenDim], "f32", "fused.h");
  mm(x1, t, c.dim, o.w1, c.hiddenDim, h, SWIGLU, [], true);
  const x2 = empty([1, t, c.dim], "f32", "fused.x");
  mm(h, t, c.hiddenDim, o.w2, c.dim, x2, RESIDUAL, [x1.buf], false);
  return x2;
}

/**
 * The model's weights in one texture, in the order of `decodeLayout`, with each RMSNorm's weight
 * folded into the columns of the matrices it feeds.
 */
function packWeights(
  model: Llama,
  shape: DecodeShape,
): { texture: GpuTexture; layout: DecodeLayout } {
  const c = model.config, g = gpu();
  const layout = decodeLayout(shape, c.nLayers);
  const staging = empty([layout.texels * 4], "f32", "generate.packed");
  const w = (name: string) => model.params.get(name)!;
  const put = (t: Tensor, texel: number) =>
    g.copy(t.buf, t.offset * 4, staging.buf, texel * 16, t.size * 4);
  noGrad(() =>
    scope(() => {
      const folded = (name: string, norm: string) => T.mul(w(name), w(norm));
      layout.layers.forEach((o, l) => {
        const L = `model.layers.${l}.`;
        const an = L + "input_layernorm.weight", fn = L + "post_attention_layernorm.weight";
        put(folded(L + "self_attn.q_proj.weight", an), o.wq);
        put(folded(L + "self_attn.k_proj.weight", an), o.wk);
        put(folded(L + "self_attn.v_proj.weight", an), o.wv);
        put(w(L + "self_attn.o_proj.weight"), o.wo);
        put(folded(L + "mlp.gate_proj.weight", fn), o.w1);
        put(folded(L + "mlp.up_proj.weight", fn), o.w3);
        put(w(L + "mlp.down_proj.weight"), o.w2);
      });
      put(w("model.embed_tokens.weight"), layout.embedding);
      put(T.mul(model.classifier, w("model.norm.weight")), layout.classifier);
    })
  );
  const texture = g.textures.acquire(layout.texels);
  g.copyToTexture(staging.buf, 0, texture, layout.texels);
  staging.dispose();
  return { texture, layout };
}
