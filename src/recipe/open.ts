/**
 * `openModel(spec)`: the one place that decides what a model spec is. A path in any checkpoint
 * format, a run directory (its latest checkpoint), a GEM checkpoint (a directory with gem.json),
 * a Hugging Face directory, a hub id, or `@data/...`. Every CLI opens models through it, and the
 * opened model is the common case's API:
 *
 * ```ts
 * const m = await openModel("results/checkpoints/default-s0");
 * const [a, b] = await m.encode(["A cat sat.", "A dog ran."]);
 * console.log(await m.similarity("A cat sat.", "The cat was sitting."));
 * console.log((await m.generate("Once upon a time", { maxTokens: 40, temperature: 0 })).text);
 * m.dispose();
 * ```
 */

import { embedIds, type GemModel, type Pooling } from "../gem/gem.ts";
import { isGemDir, loadGem } from "../gem/io.ts";
import {
  dataPath,
  loadModel,
  type LoadModelOptions,
  locateModel,
  resolveRunDir,
} from "../io/model.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import { type GenerateOptions, type GenerateResult, generateText } from "../nn/generate.ts";
import type { Llama } from "../nn/llama.ts";

/** Options of {@link OpenedModel.encode}. */
export interface EncodeTextOptions {
  /** gem (a GEM model's special tokens; its default), mean or last (a plain model's default: mean). */
  pooling?: Pooling;
  /** Most texts per forward pass (default: as many as `batchTokens` allows). */
  batchSize?: number;
  /** Most tokens per forward pass (default 8,192; see `EmbedOptions.batchTokens` in src/gem/gem.ts). */
  batchTokens?: number;
  /** L2-normalise each vector (default true). */
  normalize?: boolean;
  /** Called after each batch with the texts done and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** An opened model: the decoder, its tokenizer, and the GEM model when the spec is one. */
export interface OpenedModel {
  /** The decoder (for a GEM checkpoint, `gem.model`). */
  model: Llama;
  /** Its tokenizer (for a GEM checkpoint, with the special tokens). */
  tokenizer: Tokenizer;
  /** The GEM model, or null for a plain decoder. */
  gem: GemModel | null;
  /** The checkpoint's path. */
  path: string;
  /** "gem", or the plain checkpoint format ("hf", "llama2c"). */
  format: string;
  /** Embeddings of texts (BOS prepended, cut to the context), one vector per text in order. */
  encode(texts: readonly string[], opts?: EncodeTextOptions): Promise<Float32Array[]>;
  /** Cosine similarity of two texts' embeddings (same options as `encode`). */
  similarity(a: string, b: string, opts?: EncodeTextOptions): Promise<number>;
  /**
   * Continues a prompt (greedy with `temperature: 0`; default 256 new tokens at most, stopping at
   * BOS or EOS); the result carries the new text.
   */
  generate(
    prompt: string,
    opts?: Partial<GenerateOptions> & { onText?: (piece: string) => void },
  ): Promise<GenerateResult & { text: string }>;
  /** Releases the weights. */
  dispose(): void;
}

/** The methods of an opened model over its decoder, tokenizer and (maybe) GEM settings. */
function withMethods(
  m: Omit<OpenedModel, "encode" | "similarity" | "generate">,
): OpenedModel {
  const encode = async (texts: readonly string[], opts: EncodeTextOptions = {}) => {
    const pooling = opts.pooling ?? (m.gem ? "gem" : "mean");
    if (pooling === "gem" && !m.gem) {
      throw new Error(`${m.path}: gem pooling needs a GEM checkpoint (a directory with gem.json)`);
    }
    const ids = texts.map((t) => m.tokenizer.encode(t, { bos: true }));
    const r = await embedIds(m.model, ids, {
      pooling,
      batch: opts.batchSize,
      batchTokens: opts.batchTokens,
      normalize: opts.normalize,
      gem: m.gem?.info,
      table: m.gem?.table,
      onProgress: (done) => opts.onProgress?.(done, texts.length),
    });
    return r.vectors;
  };
  return {
    ...m,
    encode,
    similarity: async (a, b, opts = {}) => {
      const [x, y] = await encode([a, b], { ...opts, normalize: true });
      let dot = 0;
      for (let i = 0; i < x.length; i++) dot += x[i] * y[i];
      return dot;
    },
    generate: (prompt, opts = {}) =>
      generateText(m.model, m.tokenizer, prompt, {
        stopIds: [m.tokenizer.bosId, m.tokenizer.eosId].filter((i) => i >= 0),
        ...opts,
        maxTokens: opts.maxTokens ?? 256,
      }),
  };
}

/**
 * Opens any model spec. A GEM checkpoint comes back with `gem` set; a plain checkpoint needs
 * `opts.tokenizer` when its format carries none (llama2.c).
 */
export async function openModel(spec: string, opts: LoadModelOptions = {}): Promise<OpenedModel> {
  // Run directories resolve to their checkpoint and hub ids are fetched (or found in the cache)
  // first: either may be a GEM checkpoint.
  const located = await isGemDir(dataPath(spec)) ? null : await locateModel(spec);
  const local = located?.path ?? dataPath(spec);
  if (!located || await isGemDir(local)) {
    const path = await resolveRunDir(local);
    const gem = await loadGem(path, { dtype: opts.dtype });
    // dtype f16 stores the activations in f16 as well as the weights.
    gem.model.activations = opts.dtype ?? "f32";
    return withMethods({
      model: gem.model,
      tokenizer: gem.tokenizer,
      gem,
      path,
      format: "gem",
      dispose: () => gem.dispose(),
    });
  }
  const m = await loadModel(located, opts);
  m.model.activations = opts.dtype ?? "f32";
  return withMethods({ ...m, gem: null, dispose: () => m.model.dispose() });
}
