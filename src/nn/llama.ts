/**
 * A Llama-architecture decoder on the engine's ops: pre-norm RMSNorm, RoPE on interleaved pairs,
 * grouped-query attention under a role table (causal by default), SwiGLU MLP, tied or separate
 * classifier. One forward serves training (batched, padded), embedding (hidden states, no logits)
 * and generation (a KV cache).
 *
 * Parameters use Hugging Face's LlamaForCausalLM names and [out, in] layout; q/k rows are in
 * llama2.c's interleaved-RoPE order (the HF loader un-permutes them).
 */

import { ShapeError } from "../gpu/errors.ts";
import type { GpuBuffer } from "../gpu/pool.ts";
import type { RopeScaling } from "../gpu/kernels/rope.ts";
import * as T from "../tensor/ops.ts";
import type { ActDType, RoleTable } from "../tensor/ops.ts";
import { Rng } from "../tensor/random.ts";
import { keep, noGrad, scope, type Tensor, tensor } from "../tensor/tensor.ts";
import { initLora, type LoraOptions, loraSlots, mergedWeight } from "./lora.ts";

/** Architecture of a Llama model. */
export interface LlamaConfig {
  /** Model width. */
  dim: number;
  /** Number of transformer blocks. */
  nLayers: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads: nHeads for MHA, fewer for GQA, 1 for MQA. */
  nKvHeads: number;
  /** Width of the SwiGLU MLP. */
  hiddenDim: number;
  /** Vocabulary size (embedding and classifier rows). */
  vocabSize: number;
  /** Longest sequence (RoPE table size). */
  maxSeqLen: number;
  /** RoPE base. */
  ropeTheta: number;
  /** RMSNorm epsilon. */
  normEps: number;
  /** Classifier shares the token embedding. */
  tiedEmbeddings: boolean;
  /** Llama 3 RoPE frequency scaling, when the checkpoint uses it. */
  ropeScaling?: RopeScaling;
}

export type { RopeScaling };

/** Throws an error naming `source` and the field when a config value is unusable. */
export function validateConfig(c: LlamaConfig, source: string): void {
  const bad = (field: string, why: string): never => {
    throw new ShapeError(`${source}: config field '${field}' ${why}`);
  };
  for (
    const f of [
      "dim",
      "nLayers",
      "nHeads",
      "nKvHeads",
      "hiddenDim",
      "vocabSize",
      "maxSeqLen",
    ] as const
  ) {
    if (!Number.isInteger(c[f]) || c[f] <= 0) bad(f, `must be a positive integer, got ${c[f]}`);
  }
  if (c.dim % c.nHeads !== 0) bad("nHeads", `(${c.nHeads}) must divide dim ${c.dim}`);
  if (c.nHeads % c.nKvHeads !== 0) {
    bad("nKvHeads", `(${c.nKvHeads}) must divide nHeads ${c.nHeads}`);
  }
  if ((c.dim / c.nHeads) % 2 !== 0) bad("nHeads", `gives an odd head dim ${c.dim / c.nHeads}`);
  if (!(c.ropeTheta > 0)) bad("ropeTheta", `must be > 0, got ${c.ropeTheta}`);
  if (!(c.normEps > 0)) bad("normEps", `must be > 0, got ${c.normEps}`);
}

/** How a model's matrices are stored. */
export type WeightDType = "f32" | "f16";

/** Whether a parameter is a matrix (f16 storage applies), not a norm weight. */
export function isMatrix(name: string): boolean {
  return !name.endsWith("norm.weight");
}

/** Head dim. */
export const headDim = (c: LlamaConfig): number => c.dim / c.nHeads;

/** Names and shapes of every parameter, in a stable order (the checkpoint order). */
export function parameterShapes(c: LlamaConfig): [string, number[]][] {
  const kv = headDim(c) * c.nKvHeads;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [c.vocabSize, c.dim]]];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [c.dim]],
      [`${p}self_attn.q_proj.weight`, [c.dim, c.dim]],
      [`${p}self_attn.k_proj.weight`, [kv, c.dim]],
      [`${p}self_attn.v_proj.weight`, [kv, c.dim]],
      [`${p}self_attn.o_proj.weight`, [c.dim, c.dim]],
      [`${p}post_attention_layernorm.weight`, [c.dim]],
      [`${p}mlp.gate_proj.weight`, [c.hiddenDim, c.dim]],
      [`${p}mlp.up_proj.weight`, [c.hiddenDim, c.dim]],
      [`${p}mlp.down_proj.weight`, [c.dim, c.hiddenDim]],
    );
  }
  out.push(["model.norm.weight", [c.dim]]);
  if (!c.tiedEmbeddings) out.push(["lm_head.weight", [c.vocabSize, c.dim]]);
  return out;
}

/** The plain causal role table: one role, causal. */
export const CAUSAL: RoleTable = [[1]];
/** Causal with a padding role (1) that nobody sees and that sees nothing. */
export const CAUSAL_PADDED: RoleTable = [[1, 0], [0, 0]];

/** Per-layer key/value cache for generation, [B, capacity, Hkv, D] each. */
export class KVCache {
  /** Keys per layer. */
  readonly k: Tensor[];
  /** Values per layer. */
  readonly v: Tensor[];
  /** Role of each cached position (all 0 for plain generation). */
  readonly roles: Tensor;
  /** Positions filled so far. */
  length = 0;

  /** Zeroed cache for `batch` sequences of up to `capacity` tokens. */
  constructor(c: LlamaConfig, readonly batch: number, readonly capacity: number) {
    const shape = [batch, capacity, c.nKvHeads, headDim(c)];
    this.k = Array.from({ length: c.nLayers }, () => keep(T.zeros(shape)));
    this.v = Array.from({ length: c.nLayers }, () => keep(T.zeros(shape)));
    this.roles = keep(T.zeros([batch, capacity], "i32"));
  }

  /** Releases the cache's buffers. */
  dispose(): void {
    for (const t of [...this.k, ...this.v, this.roles]) t.dispose();
  }
}

/** Options of {@link Llama.forward}. */
export interface ForwardOptions {
  /** Role of each token [B, T] (i32); default all 0. */
  roles?: Tensor;
  /** Who may attend to whom, by role; default causal. */
  table?: RoleTable;
  /** Position of each token [B, T] (i32) for RoPE; default 0..T-1 (after the cache's length). */
  positions?: Tensor;
  /** Packed sequences: each token's key range [B, T, 2] (i32); see ops.attention. */
  segments?: Tensor;
  /** Compute logits (default true); embedding needs only hidden states. */
  logits?: boolean;
  /** Also return the residual stream after the embedding and after every layer. */
  layers?: boolean;
  /** Decode with this cache: keys/values of the new tokens are appended to it. */
  cache?: KVCache;
  /**
   * Activation checkpointing per layer: each block keeps only its input for backward and is
   * recomputed there (less memory, one more forward; the same gradients bit for bit).
   */
  checkpoint?: boolean;
}

/** What {@link Llama.forward} returns; the caller owns (and disposes) every tensor. */
export interface ForwardResult {
  /** [B, T, vocab], when requested. */
  logits?: Tensor;
  /** Final-normed last-layer states [B, T, dim]. */
  hidden: Tensor;
  /** Residual stream [B, T, dim]: index 0 is the embedding output, i the output of layer i. */
  layers?: Tensor[];
}

/** The decoder: parameters, RoPE table, forward pass. */
export class Llama {
  /** Parameters by Hugging Face name, in checkpoint order. */
  readonly params: Map<string, Tensor> = new Map();
  /** LoRA adapters by the base weight they adapt: A [r, in], B [out, r] (see nn/lora.ts). */
  readonly lora: Map<string, { a: Tensor; b: Tensor }> = new Map();
  /** LoRA settings while adapters are attached. */
  loraOptions: LoraOptions | null = null;
  #rope: Tensor;

  /** Use {@link Llama.fromWeights} or {@link Llama.random}. */
  constructor(readonly config: LlamaConfig, weights: Map<string, Tensor>, source: string) {
    validateConfig(config, source);
    for (const [name, shape] of parameterShapes(config)) {
      const w = weights.get(name);
      if (!w) throw new ShapeError(`${source}: missing parameter '${name}'`);
      if (w.shape.join() !== shape.join()) {
        throw new ShapeError(
          `${source}: parameter '${name}' has shape [${w.shape}], config wants [${shape}]`,
        );
      }
      this.params.set(name, keep(T.parameter(w, name)));
    }
    for (const name of weights.keys()) {
      if (!this.params.has(name)) throw new ShapeError(`${source}: unexpected parameter '${name}'`);
    }
    this.#rope = keep(
      T.ropeTable(headDim(config), config.maxSeqLen, config.ropeTheta, config.ropeScaling),
    );
  }

  /**
   * A model from host arrays keyed by Hugging Face names; with `dtype` f16 the matrices are
   * uploaded as f16 (see {@link Llama.storeAs}), never held on the device in f32.
   */
  static fromWeights(
    config: LlamaConfig,
    weights: Map<string, Float32Array>,
    source: string,
    dtype: WeightDType = "f32",
    keepF32: readonly string[] = [],
  ): Llama {
    const shapes = new Map(parameterShapes(config));
    const ts = new Map<string, Tensor>();
    try {
      for (const [name, data] of weights) {
        const shape = shapes.get(name);
        if (!shape) throw new ShapeError(`${source}: unexpected parameter '${name}'`);
        if (data.length !== shape.reduce((a, b) => a * b, 1)) {
          throw new ShapeError(
            `${source}: parameter '${name}' has ${data.length} values, config wants [${shape}]`,
          );
        }
        const half = dtype === "f16" && isMatrix(name) && !keepF32.includes(name);
        ts.set(name, tensor(data, shape, half ? "f16" : "f32"));
      }
      const model = new Llama(config, ts, source);
      if (dtype === "f16") model.storeAs("f16", keepF32);
      return model;
    } catch (e) {
      for (const t of ts.values()) t.dispose();
      throw e;
    }
  }

  /** Random weights (normal * std, norms 1), for tests and experiments. */
  static random(config: LlamaConfig, seed = 0, std = 0.02): Llama {
    const rng = new Rng(seed);
    const w = new Map<string, Float32Array>();
    for (const [name, shape] of parameterShapes(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      const isNorm = name.endsWith("norm.weight");
      for (let i = 0; i < n; i++) data[i] = isNorm ? 1 : rng.normal() * std;
      w.set(name, data);
    }
    return Llama.fromWeights(config, w, "random");
  }

  /**
   * How the forward stores its activations: f32 (the default), or f16 for mixed precision.
   * With f16, every projection reads its weight in f16 (an f32 weight, a trainable master copy,
   * is rounded once per forward; its gradient still reaches it in f32) and writes f16; the
   * norms, RoPE, attention and SwiGLU compute in f32 from f16 and store f16. The residual
   * stream, the final norm's hidden states, the logits and every gradient stay f32, so the loss
   * and the embeddings are reduced in f32. Half the memory of the saved activations.
   */
  activations: ActDType = "f32";

  /** How the matrices are stored: f32, or f16 (frozen; see {@link Llama.storeAs}). */
  get dtype(): WeightDType {
    return this.#p(`model.layers.0.self_attn.q_proj.weight`).dtype === "f16" ? "f16" : "f32";
  }

  /**
   * Stores every matrix (embedding, projections, classifier) as `dtype`; norm weights stay f32.
   * f16 halves the weights' memory; kernels widen each value to f32 as they read it and
   * accumulate in f32, so only the weights' rounding differs from f32. f16 matrices are frozen:
   * use them for inference, or as the base of LoRA, with `keepF32` naming matrices that train
   * (the token embedding, whose special rows do). Back to f32 is exact but does not undo the
   * rounding.
   */
  storeAs(dtype: WeightDType, keepF32: readonly string[] = []): void {
    for (const [name, p] of this.params) {
      const want = dtype === "f16" && isMatrix(name) && !keepF32.includes(name) ? "f16" : "f32";
      if (p.dtype === want) {
        if (want === "f16") p.requiresGrad = false;
        continue;
      }
      const next = keep(noGrad(() => T.cast(p, want)));
      next.label = name;
      next.requiresGrad = want === "f32";
      this.params.set(name, next);
      p.dispose();
    }
  }

  /** Parameters in checkpoint order, for the optimiser. */
  parameters(): Tensor[] {
    return [...this.params.values()];
  }

  /**
   * Attaches LoRA adapters (fresh, or `weights` by base weight name) and freezes every base
   * weight except the token embedding, whose rows the caller may train. Returns A and B of each
   * adapter in layer order.
   */
  attachLora(
    opts: LoraOptions,
    weights?: Map<string, { a: Float32Array; b: Float32Array }>,
  ): Tensor[] {
    if (this.loraOptions) throw new ShapeError("Llama.attachLora: adapters are already attached");
    if (!Number.isInteger(opts.rank) || opts.rank < 1) {
      throw new RangeError(`lora.rank must be a positive integer, got ${opts.rank}`);
    }
    const slots = loraSlots(this.config, opts.targets);
    const init = weights ?? initLora(slots, opts.rank, opts.seed);
    for (const s of slots) {
      const w = init.get(s.weight);
      if (!w || w.a.length !== opts.rank * s.inDim || w.b.length !== s.outDim * opts.rank) {
        throw new ShapeError(
          `Llama.attachLora: adapter of '${s.weight}' missing or not [${opts.rank}, ${s.inDim}] ` +
            `and [${s.outDim}, ${opts.rank}]`,
        );
      }
      this.lora.set(s.weight, {
        a: keep(T.parameter(tensor(w.a, [opts.rank, s.inDim]), `${s.module}.lora_A.weight`)),
        b: keep(T.parameter(tensor(w.b, [s.outDim, opts.rank]), `${s.module}.lora_B.weight`)),
      });
    }
    for (const [name, p] of this.params) p.requiresGrad = name === "model.embed_tokens.weight";
    this.loraOptions = { ...opts, targets: [...opts.targets] };
    return this.loraParameters();
  }

  /** A and B of every adapter, in layer order. */
  loraParameters(): Tensor[] {
    return [...this.lora.values()].flatMap(({ a, b }) => [a, b]);
  }

  /**
   * Folds each adapter into its weight (W + scale * B A), drops the adapters and makes every
   * weight trainable again: a plain model that computes what the adapted one did.
   */
  async mergeLora(): Promise<void> {
    const opts = this.loraOptions;
    if (!opts) return;
    for (const [name, { a, b }] of this.lora) {
      const w = this.params.get(name)!;
      const merged = mergedWeight(
        (await w.toArray()) as Float32Array,
        (await a.toArray()) as Float32Array,
        (await b.toArray()) as Float32Array,
        opts.rank,
        opts.scale,
      );
      this.params.set(name, keep(T.parameter(tensor(merged, w.shape), name)));
      for (const t of [w, a, b]) t.dispose();
    }
    this.lora.clear();
    this.loraOptions = null;
    for (const p of this.params.values()) p.requiresGrad = true;
  }

  /** x W^T, plus scale * (x A^T) B^T when W has an adapter, stored as the activations are. */
  #linear(x: Tensor, name: string): Tensor {
    const dtype = this.activations;
    const mm = (x: Tensor, w: Tensor) => T.matmul(x, this.#half(w), { transB: true, dtype });
    const y = mm(x, this.#p(name));
    const ad = this.lora.get(name);
    if (!ad) return y;
    return T.add(y, T.mulScalar(mm(mm(x, ad.a), ad.b), this.loraOptions!.scale));
  }

  /** `w` as the projections read it: rounded to f16 per forward under f16 activations. */
  #half(w: Tensor): Tensor {
    return this.activations === "f16" && w.dtype === "f32" ? T.cast(w, "f16") : w;
  }

  #p(name: string): Tensor {
    return this.params.get(name)!;
  }

  /** The RoPE (cos, sin) table's buffer, for fused kernels. */
  get ropeBuffer(): GpuBuffer {
    return this.#rope.buf;
  }

  /** The classifier weight [vocab, dim] (the embedding when tied). */
  get classifier(): Tensor {
    return this.#p(this.config.tiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  }

  /**
   * Runs the decoder on token ids [B, T] (i32). With a cache, the tokens continue the cached
   * sequence and their keys/values are appended.
   */
  forward(tokens: Tensor, opts: ForwardOptions = {}): ForwardResult {
    const c = this.config;
    if (tokens.rank !== 2 || tokens.dtype !== "i32") {
      throw new ShapeError(`Llama.forward: tokens must be i32 [B, T], got ${tokens.describe()}`);
    }
    const [b, t] = tokens.shape;
    const cache = opts.cache;
    if (cache && opts.checkpoint) {
      throw new ShapeError("Llama.forward: checkpointing is for training; a cache is for decoding");
    }
    const start = cache?.length ?? 0;
    // Packed batches carry explicit positions (checked by rope against the table); otherwise the
    // row itself must fit the context.
    if (!opts.positions && start + t > c.maxSeqLen) {
      throw new ShapeError(`Llama.forward: ${start + t} positions exceed maxSeqLen ${c.maxSeqLen}`);
    }
    if (cache && (cache.batch !== b || start + t > cache.capacity)) {
      throw new ShapeError(
        `Llama.forward: cache [${cache.batch}, ${cache.capacity}] cannot take ${b} x ${start + t}`,
      );
    }
    const hd = headDim(c);
    const table = opts.table ?? CAUSAL;
    return scope(() => {
      const roles = opts.roles ?? T.zeros([b, t], "i32");
      let positions = opts.positions ?? null;
      if (!positions && start > 0) {
        positions = tensor(
          Int32Array.from({ length: b * t }, (_, i) => start + (i % t)),
          [b, t],
          "i32",
        );
      }
      if (cache) T.copyInto(T.slice(cache.roles, 1, start, start + t), roles);
      let x = T.embedding(this.#p("model.embed_tokens.weight"), tokens);
      const layers: Tensor[] = opts.layers ? [x] : [];
      // One block; `kept` = [roles, positions, packed token records] (the last two when given),
      // passed in rather than captured so a checkpoint can hold them until its backward.
      const block = (l: number, x: Tensor, kept: readonly Tensor[]): Tensor => {
        const p = (n: string) => this.#p(`model.layers.${l}.${n}`);
        const [roles, pos, seg] = [kept[0], positions ? kept[1] : null, kept.at(-1)];
        const packed = opts.segments ? seg : undefined;
        const act = this.activations;
        const a = T.rmsnorm(x, p("input_layernorm.weight"), c.normEps, act);
        const lin = (y: Tensor, n: string) => this.#linear(y, `model.layers.${l}.${n}`);
        const proj = (n: string, heads: number) => T.reshape(lin(a, n), [b, t, heads, hd]);
        const q = T.rope(proj("self_attn.q_proj.weight", c.nHeads), this.#rope, pos);
        let k = T.rope(proj("self_attn.k_proj.weight", c.nKvHeads), this.#rope, pos);
        let v = proj("self_attn.v_proj.weight", c.nKvHeads);
        let attRoles = roles;
        let keys: number | undefined;
        if (cache) {
          T.copyInto(T.slice(cache.k[l], 1, start, start + t), k);
          T.copyInto(T.slice(cache.v[l], 1, start, start + t), v);
          [k, v, attRoles, keys] = [cache.k[l], cache.v[l], cache.roles, start + t];
        }
        const o = T.attention(q, k, v, attRoles, table, { keys, packed });
        x = T.add(
          x,
          lin(T.reshape(o, [b, t, c.dim]), "self_attn.o_proj.weight"),
        );
        const m = T.rmsnorm(x, p("post_attention_layernorm.weight"), c.normEps, act);
        const gate = lin(m, "mlp.gate_proj.weight");
        const up = lin(m, "mlp.up_proj.weight");
        return T.add(x, lin(T.swiglu(gate, up), "mlp.down_proj.weight"));
      };
      // Packed sequences: every layer's attention reads the token records built here once.
      const kept = [
        roles,
        ...(positions ? [positions] : []),
        ...(opts.segments ? [T.packedTokens(roles, opts.segments)] : []),
      ];
      for (let l = 0; l < c.nLayers; l++) {
        if (opts.checkpoint) {
          const names = parameterShapes(c).map(([n]) => n).filter((n) =>
            n.startsWith(`model.layers.${l}.`)
          );
          const params = names.flatMap((n) => {
            const ad = this.lora.get(n);
            return ad ? [this.#p(n), ad.a, ad.b] : [this.#p(n)];
          });
          x = T.checkpoint((x, k) => block(l, x, k), x, params, kept);
        } else x = block(l, x, kept);
        if (opts.layers) layers.push(x);
      }
      if (cache) cache.length = start + t;
      const hidden = T.rmsnorm(x, this.#p("model.norm.weight"), c.normEps);
      const logits = opts.logits === false
        ? undefined
        : T.matmul(hidden, this.classifier, { transB: true });
      return { hidden, logits, layers: opts.layers ? layers : undefined };
    });
  }

  /** An empty KV cache for `batch` sequences of up to `capacity` tokens. */
  newCache(batch: number, capacity = this.config.maxSeqLen): KVCache {
    return new KVCache(this.config, batch, capacity);
  }

  /** Releases every parameter. */
  dispose(): void {
    this.disposeExcept([]);
  }

  /** Releases this model, but not the given tensors (handed on to a model built from them). */
  disposeExcept(kept: Iterable<Tensor>): void {
    const keepSet = new Set(kept);
    for (const t of this.params.values()) if (!keepSet.has(t)) t.dispose();
    for (const t of this.loraParameters()) if (!keepSet.has(t)) t.dispose();
    this.#rope.dispose();
  }
}

/** A right-padded batch: tokens and roles [B, T] (role 1 = padding, for {@link CAUSAL_PADDED}). */
export interface PaddedBatch {
  /** Token ids [B, T]. */
  tokens: Tensor;
  /** Roles [B, T]: 0 text, 1 padding. */
  roles: Tensor;
  /** Real length of each sequence. */
  lengths: number[];
}

/** Pads sequences of ids to the longest (or `length`) with `padId`, marking pads with role 1. */
export function padBatch(
  seqs: readonly (readonly number[])[],
  padId = 0,
  length?: number,
): PaddedBatch {
  const t = length ?? Math.max(1, ...seqs.map((s) => s.length));
  const ids = new Int32Array(seqs.length * t).fill(padId);
  const roles = new Int32Array(seqs.length * t).fill(1);
  seqs.forEach((s, b) => {
    if (s.length > t) throw new ShapeError(`padBatch: sequence ${b} has ${s.length} tokens > ${t}`);
    ids.set(s, b * t);
    roles.fill(0, b * t, b * t + s.length);
  });
  return {
    tokens: tensor(ids, [seqs.length, t], "i32"),
    roles: tensor(roles, [seqs.length, t], "i32"),
    lengths: seqs.map((s) => s.length),
  };
}
