/**
 * Autoregressive generation with a KV cache. Small models (see `fusedDecodeFits`) go through
 * {@link FusedDecoder}: a fused prefill, then one dispatch per token that also picks the next id;
 * others through `Llama.forward` and the sample kernel. Either way the chosen id is written
 * straight into the next step's input buffer, so steps chain on the GPU; the host reads the ids
 * back every `readEvery` steps (each readback costs a ~11.5 ms sync), overlapped with the next
 * steps' work, to stream text and spot a stop id.
 */

import { gpu } from "../gpu/device.ts";
import { DECODE_WG, decodeLoopBound, fusedDecodeFits } from "./infer/decode.ts";
import { runSample } from "../gpu/kernels/sample.ts";
import { Rng } from "../tensor/random.ts";
import { empty, noGrad, type Tensor, tensor } from "../tensor/tensor.ts";
import { decodeLanes, decodeWork, FusedDecoder, type FusedDecoderOptions } from "./infer/fused.ts";
import { inferTuning } from "./infer/tuning.ts";
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
   * Decode through the fused kernels (default: when the adapter's inference tuning says
   * `fusedDecode` and the model is small enough, see infer/decode.ts), with these settings when
   * an object; false forces the general per-op path.
   */
  fused?: boolean | FusedDecoderOptions;
  /**
   * With the fused decoder, how the prompt runs: the fused prefill kernels or the general
   * forward (default: the adapter's inference tuning, `fusedPrefill`). Either writes the same cache.
   */
  prefill?: "fused" | "forward";
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

const noticed = new Set<string>();
/** Prints a notice once per process. */
function notice(line: string): void {
  if (noticed.has(line)) return;
  noticed.add(line);
  console.error(line);
}

/** Which prefill path {@link prefillPrompt} takes with a decoder: "fused" or "forward". */
export function prefillPath(path?: "fused" | "forward"): "fused" | "forward" {
  return path ?? (inferTuning().fusedPrefill ? "fused" : "forward");
}

/**
 * Runs `tokens` [1, T] through the model, appending their keys and values to `cache`, and returns
 * the logits, the last token's in the last row: through the decoder's fused prefill when there is
 * a decoder and {@link prefillPath} says "fused" (every row, or the last only with `lastOnly`),
 * else through the general forward (every row). Call under noGrad.
 */
export function prefillPrompt(
  model: Llama,
  decoder: FusedDecoder | null,
  tokens: Tensor,
  cache: KVCache,
  opts: { path?: "fused" | "forward"; lastOnly?: boolean } = {},
): Tensor {
  if (decoder && prefillPath(opts.path) === "fused") {
    return decoder.prefill(tokens, cache, opts.lastOnly ?? false);
  }
  const out = model.forward(tokens, { cache });
  out.hidden.dispose();
  return out.logits!;
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
      // The fused kernels read the base weights alone: a model with adapters decodes per op.
      const fits = fusedDecodeFits(
        { dim: c.dim, hidden: c.hiddenDim, heads: c.nHeads },
        g.device.limits.maxStorageBuffersPerShaderStage,
      );
      const half = model.dtype === "f16" || model.activations === "f16";
      const capped = decodeLanes(model) === null;
      const fused = model.lora.size || half || capped
        ? false
        : opts.fused ?? (inferTuning().fusedDecode && fits);
      if ((opts.fused === undefined && inferTuning().fusedDecode || opts.fused) && !fused) {
        notice(
          model.lora.size
            ? "gemkit: generating op by op: the model has LoRA adapters (deno task convert --merge folds them in)"
            : half
            ? "gemkit: generating op by op: the fused decoder reads f32 weights and writes f32 activations (this model runs in f16)"
            : capped
            ? `gemkit: generating op by op: the fused decoder would run ~${
              decodeLoopBound(decodeWork(c), DECODE_WG)
            } loop iterations per token in one invocation, past this adapter's cap of ${g.loopLimit} (llvmpipe)`
            : `gemkit: generating op by op: the fused decoder covers dim <= 512 and MLP width <= 2048 (this model: ${c.dim} and ${c.hiddenDim})`,
        );
      }
      decoder = fused ? new FusedDecoder(model, typeof fused === "object" ? fused : {}) : null;
      const promptT = own(tensor(Int32Array.from(prompt), [1, prompt.length], "i32"));
      const logits = prefillPrompt(model, decoder, promptT, cache, {
        path: opts.prefill,
        lastOnly: true,
      });
      sample(logits, 0);
      logits.dispose();
      // The prefill's time ends when the GPU has run it. Where read() itself waits for that
      // (Deno), its promise's fixed ~10 ms resolution is awaited later, under the first steps.
      let prefillRead: Promise<ArrayBuffer> | null = g.read(next.buf, 0, 4);
      // Awaited below; if a step throws first, its error is the one reported, not this read's.
      prefillRead.catch(() => {});
      if (!g.readWaitsForQueue) {
        await prefillRead;
        prefillRead = null;
      }
      const t1 = performance.now();
      const ids: number[] = [];
      let done: GenerateResult["stop"] | null = null;
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
          if (prefillRead) await prefillRead;
          prefillRead = null;
          if (pending) take(new Int32Array(await pending));
          pending = read;
        }
      }
      if (prefillRead) await prefillRead;
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
