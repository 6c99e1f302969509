/**
 * GEM training samples. A text (token ids, BOS first) becomes either a raw sample (plain causal
 * LM, with probability p) or `prefix <s1..sk> suffix` with per-token roles and next-token labels.
 * Positions whose target is a special token carry no loss (label -1); s_k predicts the first
 * suffix token. Pair builders make the contrastive positives.
 */

import type { Rng } from "../tensor/random.ts";
import { ROLE } from "./mask.ts";

/** Label of positions that carry no loss. */
export const IGNORE: number = -1;

/** One sequence with its roles and labels (all the same length). */
export interface GemSample {
  /** Token ids. */
  ids: number[];
  /** Role of each token (ROLE). */
  roles: number[];
  /** Next-token target per position (-1 = no loss). */
  labels: number[];
  /** Positions of s1..sk (empty for a raw sample). */
  specialPos: number[];
}

/** How a text becomes a GEM sample. */
export interface SampleOptions {
  /** Ids of the k special tokens. */
  specialIds: readonly number[];
  /** Where the specials go: a random split point, after the whole text, or text reconstruction. */
  insertion: "random" | "end" | "reconstruct";
  /** Fewest text tokens (BOS excluded) before the specials at a random split. */
  minPrefix: number;
  /** Fewest tokens after the specials at a random split. */
  minSuffix: number;
  /** Longest sample in tokens (texts are cut from the end to fit). */
  maxLen: number;
}

/** Next-token labels for ids/roles: -1 where the next token is special or absent. */
export function nextTokenLabels(ids: readonly number[], roles: readonly number[]): number[] {
  return ids.map((_, t) =>
    t + 1 < ids.length && roles[t + 1] !== ROLE.special && roles[t + 1] !== ROLE.pad
      ? ids[t + 1]
      : IGNORE
  );
}

/** A plain causal LM sample. */
export function rawSample(text: readonly number[], maxLen: number): GemSample {
  const ids = text.slice(0, maxLen);
  const roles = ids.map(() => ROLE.prefix);
  return { ids, roles, labels: nextTokenLabels(ids, roles), specialPos: [] };
}

/** `prefix <specials> suffix` from a split of the (already cut) text at `split`. */
export function splitSample(
  prefix: readonly number[],
  suffix: readonly number[],
  specialIds: readonly number[],
): GemSample {
  const k = specialIds.length;
  const ids = [...prefix, ...specialIds, ...suffix];
  const roles = [
    ...prefix.map(() => ROLE.prefix),
    ...specialIds.map(() => ROLE.special),
    ...suffix.map(() => ROLE.suffix),
  ];
  const specialPos = Array.from({ length: k }, (_, i) => prefix.length + i);
  return { ids, roles, labels: nextTokenLabels(ids, roles), specialPos };
}

/** A GEM sample of `text` (BOS first) with the specials placed as `opts.insertion` says. */
export function gemSample(text: readonly number[], opts: SampleOptions, rng: Rng): GemSample {
  const k = opts.specialIds.length;
  if (opts.insertion === "reconstruct") {
    // [BOS text] <specials> [text]: the suffix must be rebuilt from the specials alone.
    const n = Math.max(1, Math.floor((opts.maxLen - k + 1) / 2));
    const pre = text.slice(0, n);
    return splitSample(pre, pre.slice(1), opts.specialIds);
  }
  const cut = text.slice(0, opts.maxLen - k);
  if (opts.insertion === "end") return splitSample(cut, [], opts.specialIds);
  // Split after BOS + at least minPrefix tokens, leaving at least minSuffix after the specials.
  const lo = 1 + opts.minPrefix, hi = cut.length - opts.minSuffix;
  if (hi < lo) return splitSample(cut, [], opts.specialIds);
  const split = lo + rng.int(hi - lo + 1);
  return splitSample(cut.slice(0, split), cut.slice(split), opts.specialIds);
}

/** Drops each prefix token after BOS with probability `rate`, keeping at least one. */
export function dropoutPositive(
  s: GemSample,
  specialIds: readonly number[],
  rate: number,
  rng: Rng,
): GemSample {
  const first = s.specialPos[0] ?? s.ids.length;
  const prefix = s.ids.slice(0, first);
  let kept = [prefix[0], ...prefix.slice(1).filter(() => rng.uniform() >= rate)];
  if (kept.length === 1 && prefix.length > 1) {
    kept = [prefix[0], prefix[1 + rng.int(prefix.length - 1)]];
  }
  const suffix = s.ids.slice(first + specialIds.length);
  return splitSample(kept, suffix, specialIds);
}

/** A random crop of `frac` of the text (BOS kept in front), with specials at the end. */
export function cropSample(
  text: readonly number[],
  frac: number,
  opts: SampleOptions,
  rng: Rng,
): GemSample {
  const body = text.slice(1);
  const len = Math.max(
    1,
    Math.min(body.length, Math.round(body.length * frac), opts.maxLen - 1 - opts.specialIds.length),
  );
  const start = rng.int(body.length - len + 1);
  return splitSample([text[0], ...body.slice(start, start + len)], [], opts.specialIds);
}

/** Texts as they go into the embedding at inference: `[BOS text] <specials>`. */
export function embedSample(
  text: readonly number[],
  specialIds: readonly number[],
  maxLen: number,
): GemSample {
  return splitSample(text.slice(0, maxLen - specialIds.length), [], specialIds);
}
