/**
 * A GEM model: a decoder whose vocabulary has k extra special tokens, the mask design they were
 * trained under, and the learnable contrastive temperature. `embed` appends the specials after a
 * text and pools their last-layer states; `generate` still runs the plain causal path.
 */

import type { Tokenizer } from "../io/tokenizer.ts";
import { CAUSAL, Llama, type LlamaConfig } from "../nn/llama.ts";
import * as T from "../tensor/ops.ts";
import type { RoleTable } from "../tensor/ops.ts";
import { Rng } from "../tensor/random.ts";
import { keep, noGrad, scope, type Tensor, tensor } from "../tensor/tensor.ts";
import {
  disposePacked,
  l2normalize,
  meanRows,
  pack,
  poolRows,
  type SpecialPooling,
} from "./batch.ts";
import { MASK_DESIGNS, parseRoleTable, ROLE } from "./mask.ts";
import { embedSample, type GemSample, rawSample } from "./sample.ts";
import { fusedEncodeFits, FusedEncoder } from "../nn/infer/fused.ts";
import { inferTuning } from "../nn/infer/tuning.ts";

/** What makes a model a GEM model; saved as gem.json beside the checkpoint. */
export interface GemInfo {
  /** Number of special tokens. */
  k: number;
  /** Their ids (the last k rows of the vocabulary). */
  specialIds: number[];
  /** Their names in the tokenizer. */
  specialNames: string[];
  /** Mask design name, or a role table. */
  mask: string | number[][];
  /** How the specials' states are pooled into an embedding. */
  pooling: SpecialPooling;
  /** Contrastive scale lambda (the similarity is multiplied by e^lambda). */
  logitScale: number;
}

/** Options of {@link addSpecialTokens}, named as the training config's `gem` fields. */
export interface SpecialTokenOptions {
  /** Number of special tokens. */
  k: number;
  /** New rows: the mean of existing embeddings plus noise (default), or normal noise only. */
  init?: "mean" | "random";
  /** Noise std as a fraction of the embeddings' per-dim std (default 0.1). */
  initNoise?: number;
  /** Seed of the noise (default 0). */
  seed?: number;
  /** Mask design name or role table (default "gem"). */
  mask?: string | number[][];
  /** `mask` already parsed, when the caller has it. */
  table?: RoleTable;
  /** Pooling of the specials' states (default mean). */
  pooling?: SpecialPooling;
  /** Token names (default `<gem_0>`..). */
  names?: string[];
}

/** Baseline poolings of a plain decoder, and GEM's. */
export type Pooling = "gem" | "mean" | "last";

/** The model, tokenizer and GEM settings together. */
export class GemModel {
  /** e^lambda scales cosine similarities in the contrastive loss; clamped to [0, log 100]. */
  readonly logitScale: Tensor;
  /** The mask design's role table, parsed once from `info.mask`. */
  readonly table: RoleTable;

  /**
   * Wraps an already grown model; see {@link addSpecialTokens}. `table` is `info.mask` already
   * parsed (by the training config); without it the mask is parsed here.
   */
  constructor(
    readonly model: Llama,
    readonly tokenizer: Tokenizer,
    readonly info: GemInfo,
    table?: RoleTable,
  ) {
    this.table = table ?? parseRoleTable(info.mask, "gem.mask");
    this.logitScale = keep(T.parameter(tensor([info.logitScale], []), "logit_scale"));
  }

  /** Parameters to train: the decoder's and the contrastive scale. */
  parameters(): Tensor[] {
    return [...this.model.parameters(), this.logitScale];
  }

  /** The current lambda, read back (for gem.json). */
  async currentLogitScale(): Promise<number> {
    return await this.logitScale.item();
  }

  /**
   * Embeddings of `texts` ([n] vectors, L2-normalised), in input order. `gem` appends the
   * special tokens; `mean` averages the text's final-normed states (BOS excluded); `last` takes
   * the last text token. Batches are padded; each text's vector does not depend on the others.
   */
  async embed(texts: readonly string[], opts: EmbedOptions = {}): Promise<EmbedResult> {
    const ids = texts.map((t) => this.tokenizer.encode(t, { bos: true }));
    return await embedIds(this.model, ids, {
      ...opts,
      pooling: opts.pooling ?? "gem",
      gem: this.info,
      table: this.table,
    });
  }

  /** Releases the model and lambda. */
  dispose(): void {
    this.model.dispose();
    this.logitScale.dispose();
  }
}

/** Options of {@link GemModel.embed} and {@link embedIds}. */
export interface EmbedOptions {
  /** gem (the special tokens), mean or last (default gem for GEM models). */
  pooling?: Pooling;
  /** Most texts per forward pass (default: as many as `batchTokens` allows). */
  batch?: number;
  /**
   * Most tokens per forward pass (default 8,192). Texts are packed without padding, in order of
   * length, and a batch closes before the text that would take it past this or past `batch`
   * texts (a longer text goes alone). A text's vector does not depend on its batch.
   */
  batchTokens?: number;
  /** Called after each batch with the number of texts done. */
  onProgress?: (done: number) => void;
  /** L2-normalise each vector (default true; cosine similarity is then a dot product). */
  normalize?: boolean;
  /**
   * The forward pass: "fused" (the fused inference products, 5 dispatches per layer; small f32
   * models without LoRA) or "forward" (the general forward, as in training). Default: fused
   * where the adapter's inference tuning prefers it (`fusedPrefill`) and the model fits.
   */
  path?: "fused" | "forward";
}

/** Embeddings and how many texts had to be cut to fit the context. */
export interface EmbedResult {
  /** One vector per text, in input order (L2-normalised unless `normalize` is false). */
  vectors: Float32Array[];
  /** Texts cut to fit the context. */
  truncated: number;
  /** Length of each vector. */
  dim: number;
}

/** Epsilon under the root of the embeddings' L2 norm. */
const L2_EPS = 1e-12;

/**
 * Each text's pooled rows as one (start, count) span of the packed batch, or null where the
 * pooling is not a mean over contiguous rows (the specials concatenated).
 */
function poolSpans(
  group: readonly GemSample[],
  offsets: readonly number[],
  pooling: Pooling,
  gem?: GemInfo,
): [number, number][] | null {
  if (pooling === "gem") {
    const k = gem!.k, how = gem!.pooling;
    if (how === "concat") return null;
    // The specials sit together after the text.
    return group.map((
      s,
      i,
    ) => [offsets[i] + s.specialPos[how === "mean" ? 0 : k - 1], how === "mean" ? k : 1]);
  }
  if (pooling === "last") return group.map((s, i) => [offsets[i] + s.ids.length - 1, 1]);
  // The text's tokens after BOS (BOS alone for an empty text).
  return group.map((s, i) =>
    s.ids.length > 1 ? [offsets[i] + 1, s.ids.length - 1] : [offsets[i], 1]
  );
}

/** Batches of embeddings queued on the device between readbacks. */
const EMBED_READ_EVERY = 16;

/**
 * Default most tokens per embedding batch: fewer, larger batches keep llvmpipe's threads (2 cores
 * here) busier and pay the per-batch copies and dispatches less often (the 2,758 STS-B test texts on
 * stories260K, llvmpipe, medians of 5 alternating runs: 64 texts, ~2,100 tokens, per batch 2.26 s;
 * 4,096 tokens 2.05 s; 8,192 tokens 1.82 s; 16,384 tokens 1.85 s).
 */
export const EMBED_BATCH_TOKENS = 8192;

/**
 * The first batch limit of `opts` that is set and not a positive integer, with its value, or null:
 * what {@link embedBatches} refuses, for a caller that checks before any work (the CLI).
 */
export function badEmbedLimit(
  opts: Pick<EmbedOptions, "batch" | "batchTokens">,
): ["batch" | "batchTokens", number] | null {
  for (const name of ["batch", "batchTokens"] as const) {
    const v = opts[name];
    // Infinity is no limit at all.
    if (v !== undefined && !(v >= 1 && (v === Infinity || Number.isInteger(v)))) return [name, v];
  }
  return null;
}

/**
 * [start, end) ranges of texts with these token counts (in order) under the batch limits of
 * `opts`. Throws on a limit that is not a positive integer.
 */
export function embedBatches(
  lengths: readonly number[],
  opts: Pick<EmbedOptions, "batch" | "batchTokens">,
): [number, number][] {
  const bad = badEmbedLimit(opts);
  if (bad) throw new Error(`embed: ${bad[0]} must be a positive integer, got ${bad[1]}`);
  const texts = opts.batch ?? Infinity, tokens = opts.batchTokens ?? EMBED_BATCH_TOKENS;
  const out: [number, number][] = [];
  let start = 0, sum = 0;
  lengths.forEach((n, i) => {
    if (i > start && (i - start >= texts || sum + n > tokens)) {
      out.push([start, i]);
      start = i;
      sum = 0;
    }
    sum += n;
  });
  if (lengths.length > start) out.push([start, lengths.length]);
  return out;
}

/** Embeds token-id sequences (BOS first) with any pooling; `gem` needs `gem` and `table`. */
export async function embedIds(
  model: Llama,
  ids: readonly (readonly number[])[],
  opts: EmbedOptions & { gem?: GemInfo; table?: RoleTable },
): Promise<EmbedResult> {
  const pooling = opts.pooling ?? "mean";
  if (pooling === "gem" && (!opts.gem || !opts.table)) {
    throw new Error("embed: gem pooling needs a GEM model");
  }
  const k = opts.gem?.k ?? 0;
  const maxLen = model.config.maxSeqLen;
  let truncated = 0;
  const samples: GemSample[] = ids.map((t) => {
    const room = pooling === "gem" ? maxLen - k : maxLen;
    if (t.length > room) truncated++;
    return pooling === "gem" ? embedSample(t, opts.gem!.specialIds, maxLen) : rawSample(t, maxLen);
  });
  // Similar lengths together waste less padding; results go back to input order.
  const order = samples.map((_, i) => i).sort((a, b) =>
    samples[a].ids.length - samples[b].ids.length
  );
  const vectors = new Array<Float32Array>(samples.length);
  const batches = embedBatches(order.map((i) => samples[i].ids.length), opts);
  const fused = (opts.path ?? (inferTuning().fusedPrefill ? "fused" : "forward")) === "fused" &&
      fusedEncodeFits(model)
    ? new FusedEncoder(model)
    : null;
  if (opts.path === "fused" && !fused) {
    throw new Error("embed: path 'fused' takes small f32 models without LoRA");
  }
  let dim = 0;
  // Batches queue on the device and are read back together, a few at a time: each readback
  // costs a fixed ~10 ms wait in Deno, more than a small batch's forward pass.
  let pending: { pooled: Tensor; idx: number[]; done: number }[] = [];
  const drain = async () => {
    if (!pending.length) return;
    const all = pending.length === 1
      ? pending[0].pooled
      : noGrad(() => T.concat(pending.map((p) => p.pooled), 0));
    const host = (await all.toArray()) as Float32Array;
    if (all !== pending[0].pooled) all.dispose();
    let row = 0;
    for (const p of pending) {
      dim = p.pooled.shape[1];
      p.idx.forEach((i) => (vectors[i] = host.slice(row * dim, ++row * dim)));
      p.pooled.dispose();
      opts.onProgress?.(p.done);
    }
    pending = [];
  };
  // Raw texts are all prefix tokens, and the plain causal table treats them as RAW_CAUSAL does;
  // its attention kernels skip the per-key role checks (~15% of attention's time in embedding).
  // The pads after the last text then get the prefix role too: they see only themselves either
  // way and are never pooled.
  const raw = pooling !== "gem";
  const table = raw ? CAUSAL : opts.table!;
  try {
    for (const [at, end] of batches) {
      const idx = order.slice(at, end);
      const group = idx.map((i) => samples[i]);
      const batch = pack(group, 0, raw ? ROLE.prefix : ROLE.pad);
      const pooled = noGrad(() =>
        scope(() => {
          const inputs = {
            positions: batch.positions,
            segments: batch.segments,
            roles: batch.roles,
            table,
          };
          // Contiguous rows per text: the fused encoder pools them in one kernel.
          const spans = poolSpans(group, batch.offsets, pooling, opts.gem);
          if (fused && spans) {
            return fused.pool(
              batch.tokens,
              inputs,
              spans,
              opts.normalize === false ? null : L2_EPS,
            );
          }
          const hidden = fused
            ? fused.encode(batch.tokens, inputs)
            : model.forward(batch.tokens, { ...inputs, logits: false }).hidden;
          let v: Tensor;
          if (pooling === "gem") {
            const flat = group.flatMap((s, i) => s.specialPos.map((p) => batch.offsets[i] + p));
            v = poolRows(hidden, flat, k, opts.gem!.pooling);
          } else if (pooling === "last") {
            v = poolRows(hidden, spans!.map(([start]) => start), 1, "mean");
          } else {
            v = meanRows(
              hidden,
              spans!.map(([start, count]) => Array.from({ length: count }, (_, j) => start + j)),
            );
          }
          return opts.normalize === false ? v : l2normalize(v, L2_EPS);
        })
      );
      disposePacked(batch);
      pending.push({ pooled, idx, done: end });
      if (pending.length >= EMBED_READ_EVERY) await drain();
    }
    await drain();
  } finally {
    for (const p of pending) p.pooled.dispose();
    fused?.dispose();
  }
  return { vectors, truncated, dim };
}

/**
 * Grows a decoder's vocabulary (embedding, and classifier when separate) by k special tokens
 * and registers them in the tokenizer. Returns the GEM model; the input model is consumed.
 */
export async function addSpecialTokens(
  model: Llama,
  tokenizer: Tokenizer,
  opts: SpecialTokenOptions,
): Promise<GemModel> {
  const k = opts.k;
  if (!Number.isInteger(k) || k < 1) throw new Error(`gem.k must be a positive integer, got ${k}`);
  const c = model.config;
  if (tokenizer.vocabSize !== c.vocabSize) {
    throw new Error(
      `tokenizer has ${tokenizer.vocabSize} tokens, model ${c.vocabSize}: they must agree before adding specials`,
    );
  }
  const names = opts.names ?? Array.from({ length: k }, (_, i) => `<gem_${i}>`);
  const kind = opts.init ?? "mean", noise = opts.initNoise ?? 0.1;
  const rng = new Rng(opts.seed ?? 0);
  const grow = async (w: Tensor): Promise<Tensor> => {
    const host = (await w.toArray()) as Float32Array;
    const [v, d] = w.shape;
    const mean = new Float64Array(d), sq = new Float64Array(d);
    for (let r = 0; r < v; r++) {
      for (let j = 0; j < d; j++) {
        const x = host[r * d + j];
        mean[j] += x / v;
        sq[j] += (x * x) / v;
      }
    }
    const out = new Float32Array((v + k) * d);
    out.set(host);
    for (let r = 0; r < k; r++) {
      for (let j = 0; j < d; j++) {
        const std = Math.sqrt(Math.max(sq[j] - mean[j] ** 2, 0));
        const base = kind === "mean" ? mean[j] : 0;
        out[(v + r) * d + j] = base + rng.normal() * std * noise;
      }
    }
    return tensor(out, [v + k, d]);
  };
  const config: LlamaConfig = { ...c, vocabSize: c.vocabSize + k };
  const params = new Map(model.params);
  const replaced = ["model.embed_tokens.weight", ...(c.tiedEmbeddings ? [] : ["lm_head.weight"])];
  for (const name of replaced) params.set(name, await grow(model.params.get(name)!));
  const grown = new Llama(config, params, "gem");
  model.disposeExcept(grown.parameters());
  const specialIds = tokenizer.addSpecialTokens(names);
  if (specialIds[0] !== c.vocabSize) {
    throw new Error(`tokenizer gave special ids from ${specialIds[0]}, expected ${c.vocabSize}`);
  }
  return new GemModel(grown, tokenizer, {
    k,
    specialIds,
    specialNames: names,
    mask: opts.mask ?? "gem",
    pooling: opts.pooling ?? "mean",
    logitScale: Math.log(20),
  }, opts.table);
}

/** lambda's range: e^lambda in [1, 100], as CLIP clamps it. */
export const LOGIT_SCALE_MAX: number = Math.log(100);

/**
 * InfoNCE over a batch of pairs: a [n, D] and b [n, D] L2-normalised, row i of a matches row i
 * of b, other rows are negatives; similarities scaled by e^clamp(lambda). Symmetric (both
 * directions, averaged) as CLIP does unless `symmetric` is false.
 */
export function contrastiveLoss(
  a: Tensor,
  b: Tensor,
  logitScale: Tensor,
  symmetric = true,
): Tensor {
  const n = a.shape[0];
  const targets = tensor(Int32Array.from({ length: n }, (_, i) => i), [n], "i32");
  const lo = tensor([0], []), hi = tensor([LOGIT_SCALE_MAX], []);
  const scale = T.exp(T.maximum(T.minimum(logitScale, hi), lo));
  const logits = T.mul(T.matmul(a, b, { transB: true }), scale);
  let loss = T.crossEntropy(logits, targets);
  if (symmetric) {
    const back = T.crossEntropy(T.contiguous(T.transpose(logits)), targets);
    loss = T.mulScalar(T.add(loss, back), 0.5);
  }
  for (const t of [targets, lo, hi]) t.dispose();
  return loss;
}

/** Reads the design names, for CLI help. */
export const MASK_NAMES: string[] = Object.keys(MASK_DESIGNS);
