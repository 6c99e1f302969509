/**
 * Autoregressive generation with a KV cache. The sampler kernel writes each chosen id straight
 * into the next step's input buffer, so steps chain on the GPU; the host reads the ids back only
 * every `readEvery` steps (each readback costs a full sync) to stream text and spot a stop id.
 */

import { gpu } from "../gpu/device.ts";
import { DECODE_HEAD_BINDINGS, fusedDecodeFits, runDecodeLayer } from "../gpu/kernels/decode.ts";
import { runSample } from "../gpu/kernels/sample.ts";
import * as T from "../tensor/ops.ts";
import { Rng } from "../tensor/random.ts";
import { empty, noGrad, type Tensor, tensor } from "../tensor/tensor.ts";
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
   * Decode with one fused kernel per layer (default: when the model is small enough, see
   * kernels/decode.ts); false forces the general per-op path.
   */
  fused?: boolean;
}

/**
 * One decode step through the fused layer kernels: the token in `next` at position
 * cache.length; appends to the cache and returns the logits [1, 1, vocab]. `fuseHead`: the last
 * layer's kernel also computes the logits (default: when the adapter has the bindings).
 */
export function fusedStep(
  model: Llama,
  cache: KVCache,
  next: Tensor,
  x: Tensor,
  fuseHead = gpu().device.limits.maxStorageBuffersPerShaderStage >= DECODE_HEAD_BINDINGS,
): Tensor {
  const c = model.config, g = gpu();
  const fits = { dim: c.dim, hidden: c.hiddenDim, heads: c.nHeads };
  if (!fusedDecodeFits(fits, g.device.limits.maxStorageBuffersPerShaderStage)) {
    throw new Error(`fusedStep: the fused decode kernel does not take ${JSON.stringify(fits)}`);
  }
  const p = (n: string) => model.params.get(n)!.buf;
  const shape = {
    dim: c.dim,
    hidden: c.hiddenDim,
    heads: c.nHeads,
    kvHeads: c.nKvHeads,
    eps: c.normEps,
    wg: 64,
    vocab: c.vocabSize,
  };
  const logits = fuseHead ? empty([1, 1, c.vocabSize], "f32", "generate.logits") : null;
  const pos = cache.length;
  for (let l = 0; l < c.nLayers; l++) {
    const L = (n: string) => p(`model.layers.${l}.${n}`);
    const last = l === c.nLayers - 1;
    runDecodeLayer(
      g,
      x.buf,
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
        rope: model.ropeBuffer,
        head: last && logits
          ? { norm: p("model.norm.weight"), classifier: model.classifier.buf, logits: logits.buf }
          : undefined,
      },
      shape,
      l === 0,
      pos,
      c.maxSeqLen,
    );
  }
  cache.length = pos + 1;
  if (logits) return logits;
  const h = T.rmsnorm(x, model.params.get("model.norm.weight")!, c.normEps);
  const out = T.matmul(h, model.classifier, { transB: true });
  h.dispose();
  return out;
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
      const x = fused ? own(empty([1, 1, c.dim], "f32", "generate.x")) : null;
      for (let step = 1; step <= maxNew && !done; step++) {
        if (step < maxNew) {
          if (x) {
            const logits = fusedStep(model, cache, next, x);
            sample(logits, step);
            logits.dispose();
          } else {
            const out = model.forward(next, { cache });
            sample(out.logits!, step);
            out.logits!.dispose();
            out.hidden.dispose();
          }
        }
        if (step % readEvery === 0 || step === maxNew) {
          const got = new Int32Array(await g.read(hist.buf, 0, 4 * step));
          for (let i = ids.length; i < got.length; i++) {
            if (stop.has(got[i])) {
              done = "stop-id";
              break;
            }
            ids.push(got[i]);
          }
          opts.onIds?.(ids);
        }
      }
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
