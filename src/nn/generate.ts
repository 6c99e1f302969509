/**
 * Autoregressive generation with a KV cache. The sampler kernel writes each chosen id straight
 * into the next step's input buffer, so steps chain on the GPU; the host reads the ids back only
 * every `readEvery` steps (each readback costs a full sync) to stream text and spot a stop id.
 */

import { gpu } from "../gpu/device.ts";
import {
  DECODE_HEAD_BINDINGS,
  type DecodeChoice,
  decodeLayersPerStep,
  type DecodeLayout,
  decodeLayout,
  type DecodeShape,
  fusedDecodeFits,
  runDecodeLayer,
  runDecodeStep,
} from "../gpu/kernels/decode.ts";
import { range } from "../gpu/kernel.ts";
import type { GpuTexture } from "../gpu/pool.ts";
import { runSample } from "../gpu/kernels/sample.ts";
import * as T from "../tensor/ops.ts";
import { Rng } from "../tensor/random.ts";
import { empty, keep, noGrad, type Tensor, tensor } from "../tensor/tensor.ts";
import type { KVCache, Llama } from "./llama.ts";

/** Settings of {@link generate}. */
export interface GenerateOptions {
  /** New tokens to produce at most. */
  maxTokens: number;
  /** 0 = greedy; otherwise logits are divided by it (default 1). */
  temperature?: number;
  /** Nucleus mass kept when sampling (default 0.9; 1 = no cut). */
  topP?: number;
  /** Seed of the sampling uniforms (default 0). */
  seed?: number;
  /** Ids that end generation; not included in the output (default [1, 2]: BOS, EOS). */
  stopIds?: readonly number[];
  /** Steps between readbacks (default 16). */
  readEvery?: number;
  /** Called with the ids confirmed so far (all of them, growing) after each readback. */
  onIds?: (ids: readonly number[]) => void;
  /**
   * Decode through the fused kernels (default: when the model is small enough, see
   * kernels/decode.ts), with these settings when an object; false forces the general per-op path.
   */
  fused?: boolean | FusedDecoderOptions;
}

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
 * Decodes one token per {@link FusedDecoder.step} through the fused kernels of
 * kernels/decode.ts. v3 copies the weights into a texture when constructed: build a new decoder
 * after the weights change.
 */
export class FusedDecoder {
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
    this.version = opts.version ?? g.tuning.decodeVersion;
    this.#model = model;
    this.#fuseHead = opts.fuseHead ?? limit >= DECODE_HEAD_BINDINGS;
    this.#shape = {
      dim: c.dim,
      hidden: c.hiddenDim,
      heads: c.nHeads,
      kvHeads: c.nKvHeads,
      eps: c.normEps,
      wg: 64,
      vocab: c.vocabSize,
    };
    this.#x = keep(empty([1, 1, c.dim], "f32", "generate.x"));
    if (this.version === 3) {
      const per = Math.min(opts.layersPerStep ?? Infinity, decodeLayersPerStep(limit));
      if (!(per >= 1)) throw new Error(`FusedDecoder: layersPerStep ${opts.layersPerStep}`);
      for (let l = 0; l < c.nLayers; l += per) this.#runs.push([l, Math.min(l + per, c.nLayers)]);
      this.#packed = packWeights(model, this.#shape);
    }
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
    if (this.#packed) {
      const logits = empty([1, 1, c.vocabSize], "f32", "generate.logits");
      for (const [from, to] of this.#runs) {
        runDecodeStep(
          g,
          this.#packed.texture,
          this.#packed.layout,
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

  /** Releases the residual buffer and the packed weights. */
  dispose(): void {
    this.#x.dispose();
    if (this.#packed) gpu().textures.release(this.#packed.texture);
    this.#packed = null;
  }
}

/** The model's weights in one texture, in the order of `decodeLayout`. */
function packWeights(
  model: Llama,
  shape: DecodeShape,
): { texture: GpuTexture; layout: DecodeLayout } {
  const c = model.config, g = gpu();
  const layout = decodeLayout(shape, c.nLayers, c.tiedEmbeddings);
  const staging = empty([layout.texels * 4], "f32", "generate.packed");
  const put = (name: string, texel: number) => {
    const t = model.params.get(name)!;
    g.copy(t.buf, 0, staging.buf, texel * 16, t.size * 4);
  };
  layout.layers.forEach((o, l) => {
    const L = `model.layers.${l}.`;
    put(L + "input_layernorm.weight", o.attnNorm);
    put(L + "self_attn.q_proj.weight", o.wq);
    put(L + "self_attn.k_proj.weight", o.wk);
    put(L + "self_attn.v_proj.weight", o.wv);
    put(L + "self_attn.o_proj.weight", o.wo);
    put(L + "post_attention_layernorm.weight", o.ffnNorm);
    put(L + "mlp.gate_proj.weight", o.w1);
    put(L + "mlp.up_proj.weight", o.w3);
    put(L + "mlp.down_proj.weight", o.w2);
  });
  put("model.norm.weight", layout.norm);
  put("model.embed_tokens.weight", layout.embedding);
  if (!c.tiedEmbeddings) put("lm_head.weight", layout.classifier);
  const texture = g.textures.acquire(layout.texels);
  g.copyToTexture(staging.buf, 0, texture, layout.texels);
  staging.dispose();
  return { texture, layout };
}

/** What {@link generate} produced, with timings. */
export interface GenerateResult {
  /** New token ids, without the stop id. */
  ids: number[];
  /** Why it ended. */
  stop: "stop-id" | "max-tokens" | "context";
  /** Prompt tokens processed. */
  promptTokens: number;
  /** Milliseconds of prefill (prompt) and of decoding (including readbacks). */
  prefillMs: number;
  /** Milliseconds of decoding. */
  decodeMs: number;
}

/** Generates up to `maxTokens` ids after `prompt` (ids; BOS included by the caller). */
export async function generate(
  model: Llama,
  prompt: readonly number[],
  opts: GenerateOptions,
): Promise<GenerateResult> {
  const c = model.config;
  if (prompt.length === 0) throw new Error("generate: empty prompt (pass at least BOS)");
  if (prompt.length >= c.maxSeqLen) {
    throw new Error(
      `generate: prompt of ${prompt.length} tokens fills the context of ${c.maxSeqLen}`,
    );
  }
  const room = c.maxSeqLen - prompt.length;
  const maxNew = Math.min(opts.maxTokens, room);
  const temperature = opts.temperature ?? 1;
  const topP = opts.topP ?? 0.9;
  const stop = new Set(opts.stopIds ?? [1, 2]);
  const readEvery = Math.max(1, opts.readEvery ?? 16);
  if (maxNew <= 0) {
    return { ids: [], stop: "max-tokens", promptTokens: prompt.length, prefillMs: 0, decodeMs: 0 };
  }
  const g = gpu();
  const rng = new Rng(opts.seed ?? 0);
  const cache = model.newCache(1, prompt.length + maxNew);
  const owned: Tensor[] = [];
  const own = <T extends Tensor>(t: T) => (owned.push(t), t);
  let decoder = null as FusedDecoder | null;
  try {
    return await noGrad(async () => {
      const uniforms = own(
        tensor(Float32Array.from({ length: maxNew }, () => rng.uniform()), [maxNew]),
      );
      const next = own(empty([1, 1], "i32", "generate.next"));
      const hist = own(empty([1, maxNew], "i32", "generate.history"));
      const sample = (logits: Tensor, step: number) => {
        const [, t, v] = logits.shape;
        runSample(g, logits.buf, uniforms.buf, next.buf, hist.buf, {
          vocab: v,
          rowStride: t * v,
          rowOffset: (t - 1) * v,
          batch: 1,
          step,
          maxNew,
          temperature,
          topP,
        });
      };
      const t0 = performance.now();
      const promptT = own(tensor(Int32Array.from(prompt), [1, prompt.length], "i32"));
      const first = model.forward(promptT, { cache });
      sample(first.logits!, 0);
      first.logits!.dispose();
      first.hidden.dispose();
      await g.read(next.buf, 0, 4);
      const t1 = performance.now();
      const ids: number[] = [];
      let done: GenerateResult["stop"] | null = null;
      const fused = opts.fused ??
        fusedDecodeFits(
          { dim: c.dim, hidden: c.hiddenDim, heads: c.nHeads },
          g.device.limits.maxStorageBuffersPerShaderStage,
        );
      decoder = fused ? new FusedDecoder(model, typeof fused === "object" ? fused : {}) : null;
      // Reads of the history overlap the next steps' work: a read is awaited only after the
      // following batch of steps is recorded, so the GPU never idles through a sync. On a stop
      // id, up to `readEvery` steps past it were computed and are dropped.
      const take = (got: Int32Array) => {
        if (done) return;
        for (let i = ids.length; i < got.length; i++) {
          if (stop.has(got[i])) {
            done = "stop-id";
            break;
          }
          ids.push(got[i]);
        }
        opts.onIds?.(ids);
      };
      let pending: Promise<ArrayBuffer> | null = null;
      for (let step = 1; step <= maxNew && !done; step++) {
        if (step < maxNew) {
          if (decoder) {
            const choice = { uniforms: uniforms.buf, history: hist.buf, step, temperature, topP };
            decoder.step(cache, next, choice).dispose();
          } else {
            const out = model.forward(next, { cache });
            sample(out.logits!, step);
            out.logits!.dispose();
            out.hidden.dispose();
          }
        }
        if (step % readEvery === 0 || step === maxNew) {
          const read = g.read(hist.buf, 0, 4 * step);
          if (pending) take(new Int32Array(await pending));
          pending = read;
        }
      }
      if (pending) take(new Int32Array(await pending));
      const stopReason = done ?? (maxNew < opts.maxTokens ? "context" : "max-tokens");
      return {
        ids,
        stop: stopReason,
        promptTokens: prompt.length,
        prefillMs: t1 - t0,
        decodeMs: performance.now() - t1,
      };
    });
  } finally {
    decoder?.dispose();
    for (const t of owned) t.dispose();
    cache.dispose();
  }
}

/** The text side of a tokenizer that {@link generateText} needs. */
export interface TextCodec {
  /** Text to ids. */
  encode(text: string, opts?: { bos?: boolean; eos?: boolean }): number[];
  /** Text of one id after another. */
  decodePiece(prev: number, id: number): string;
}

/**
 * Generates text after `prompt` (BOS prepended). `onText` receives each new piece of text as
 * it is read back.
 */
export async function generateText(
  model: Llama,
  codec: TextCodec,
  prompt: string,
  opts: GenerateOptions & { onText?: (piece: string) => void },
): Promise<GenerateResult & { text: string }> {
  const promptIds = codec.encode(prompt, { bos: true });
  let text = "";
  let shown = 0;
  const emit = (ids: readonly number[]) => {
    for (; shown < ids.length; shown++) {
      const prev = shown === 0 ? promptIds[promptIds.length - 1] : ids[shown - 1];
      const piece = codec.decodePiece(prev, ids[shown]);
      text += piece;
      opts.onText?.(piece);
    }
  };
  const r = await generate(model, promptIds, {
    ...opts,
    onIds: (ids) => {
      emit(ids);
      opts.onIds?.(ids);
    },
  });
  emit(r.ids);
  return { ...r, text };
}
