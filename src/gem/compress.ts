/**
 * The compression demo of the paper's appendix B: run a text followed by the k special tokens,
 * keep only the specials' keys and values, and decode from them alone. Under the GEM mask the
 * suffix sees nothing but the specials, so this compressed cache is exactly what training asked
 * the suffix to work from: what the model recovers shows how much of the text the k vectors
 * per layer hold.
 */

import type { KVCache } from "../nn/llama.ts";
import * as T from "../tensor/ops.ts";
import { noGrad, synchronize, tensor } from "../tensor/tensor.ts";
import type { GemModel } from "./gem.ts";
import { ROLE } from "./mask.ts";

/** What {@link reconstruct} recovered. */
export interface Reconstruction {
  /** The text's token ids (BOS excluded). */
  original: number[];
  /** The ids decoded from the specials. */
  decoded: number[];
  /** Decoded text. */
  text: string;
  /** Leading tokens decoded exactly. */
  exactPrefix: number;
}

/**
 * A cache holding only the specials' keys and values of `[BOS text] <specials>` (positions kept
 * as they were, roles special), and the logits at the last special (which predict the first
 * token after them). `maxNew` is the room left for decoding.
 */
export async function compressedCache(
  gem: GemModel,
  textIds: readonly number[],
  maxNew: number,
): Promise<{ cache: KVCache; firstLogits: Float32Array; nextPosition: number }> {
  const { model, info } = gem;
  const k = info.k;
  const ids = [...textIds, ...info.specialIds];
  const n = ids.length;
  if (n + maxNew > model.config.maxSeqLen) {
    throw new Error(
      `reconstruct: ${n} tokens + ${maxNew} new exceed the context ${model.config.maxSeqLen}`,
    );
  }
  const roles = ids.map((_, i) => (i < textIds.length ? ROLE.prefix : ROLE.special));
  const full = model.newCache(1, n);
  const small = model.newCache(1, k + maxNew);
  return await noGrad(async () => {
    const t = tensor(Int32Array.from(ids), [1, n], "i32");
    const r = tensor(Int32Array.from(roles), [1, n], "i32");
    const out = model.forward(t, { roles: r, table: gem.table, cache: full });
    const v = out.logits!.shape[2];
    const last = T.slice(out.logits!, 1, n - 1, n);
    const firstLogits = (await last.toArray()) as Float32Array;
    for (let l = 0; l < model.config.nLayers; l++) {
      for (const [src, dst] of [[full.k[l], small.k[l]], [full.v[l], small.v[l]]]) {
        const from = T.slice(src, 1, n - k, n), to = T.slice(dst, 1, 0, k);
        T.copyInto(to, from);
        from.dispose();
        to.dispose();
      }
    }
    const sr = T.slice(small.roles, 1, 0, k);
    const specials = T.full([1, k], ROLE.special, "i32");
    T.copyInto(sr, specials);
    small.length = k;
    for (const x of [t, r, out.logits!, out.hidden, last, sr, specials]) x.dispose();
    full.dispose();
    await synchronize();
    return { cache: small, firstLogits: firstLogits.subarray(0, v), nextPosition: n };
  });
}

function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Greedy decoding from the specials' cache alone, up to `maxTokens` (or the text's length). */
export async function reconstruct(
  gem: GemModel,
  text: string,
  maxTokens?: number,
): Promise<Reconstruction> {
  const { model, tokenizer } = gem;
  const withBos = tokenizer.encode(text, { bos: true });
  const original = withBos.slice(1);
  const maxNew = Math.min(
    maxTokens ?? original.length,
    model.config.maxSeqLen - withBos.length - gem.info.k,
  );
  const { cache, firstLogits, nextPosition } = await compressedCache(gem, withBos, maxNew);
  const decoded: number[] = [];
  try {
    let next = argmax(firstLogits);
    for (let i = 0; i < maxNew; i++) {
      if (next === tokenizer.eosId || next === tokenizer.bosId) break;
      decoded.push(next);
      if (i === maxNew - 1) break;
      const logits = await noGrad(async () => {
        const t = tensor(Int32Array.from([next]), [1, 1], "i32");
        const r = tensor(Int32Array.from([ROLE.suffix]), [1, 1], "i32");
        const p = tensor(Int32Array.from([nextPosition + i]), [1, 1], "i32");
        const out = model.forward(t, { roles: r, positions: p, table: gem.table, cache });
        const l = (await out.logits!.toArray()) as Float32Array;
        for (const x of [t, r, p, out.logits!, out.hidden]) x.dispose();
        return l;
      });
      next = argmax(logits);
    }
  } finally {
    cache.dispose();
  }
  let exactPrefix = 0;
  while (exactPrefix < decoded.length && decoded[exactPrefix] === original[exactPrefix]) {
    exactPrefix++;
  }
  return { original, decoded, text: tokenizer.decode(decoded), exactPrefix };
}
