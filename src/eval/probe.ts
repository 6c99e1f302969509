/**
 * The bottleneck probe: how much of a text's prefix the special tokens pass on to the suffix.
 * Held-out stories are cut into a prefix and a suffix; the suffix's next-token loss is measured
 * under the model's own mask when the specials follow the story's **own** prefix, **another**
 * story's prefix, or **no** prefix (BOS only). The gap other - own is what the specials carry
 * about this story. Losses are nats per token, over the first 8 suffix tokens and over all.
 */

import { disposePacked, pack } from "../gem/batch.ts";
import type { GemModel } from "../gem/gem.ts";
import { splitSample } from "../gem/sample.ts";
import { tinyStories } from "../io/corpus.ts";
import { noGrad, scope } from "../tensor/tensor.ts";

/** Mean suffix loss of one condition: first 8 suffix tokens, and all of them. */
export interface ProbeLoss {
  /** Mean over stories of the mean loss on the first 8 suffix tokens. */
  first8: number;
  /** Mean over stories of the mean loss on every suffix token. */
  all: number;
}

/** The probe's three conditions. */
export interface ProbeResult {
  /** The story's own prefix before the specials. */
  own: ProbeLoss;
  /** The next story's prefix (the specials carry the wrong story). */
  other: ProbeLoss;
  /** BOS only before the specials. */
  none: ProbeLoss;
  /** Stories measured. */
  stories: number;
}

/** Options of {@link bottleneckProbe}. */
export interface ProbeOptions {
  /** Stories (default 48, the first held-out paragraphs long enough). */
  stories?: number;
  /** Prefix tokens after BOS (default 24). */
  prefix?: number;
  /** Suffix tokens (default 24). */
  suffix?: number;
  /** Texts to cut (default TinyStories' held-out paragraphs). */
  texts?: readonly string[];
}

/** Runs the probe on `gem` under its own mask design. */
export async function bottleneckProbe(
  gem: GemModel,
  opts: ProbeOptions = {},
): Promise<ProbeResult> {
  const n = opts.stories ?? 48, P = opts.prefix ?? 24, S = opts.suffix ?? 24;
  const tok = gem.tokenizer;
  const stories = (opts.texts ?? tinyStories().heldOut)
    .map((t) => tok.encode(t, { bos: true }))
    .filter((ids) => ids.length >= 1 + P + S)
    .slice(0, n)
    .map((ids) => ({ prefix: ids.slice(0, 1 + P), suffix: ids.slice(1 + P, 1 + P + S) }));
  if (stories.length < 2) {
    throw new Error(`bottleneck probe: fewer than 2 texts of ${1 + P + S} tokens`);
  }
  const conditions = ["own", "other", "none"] as const;
  const cases = stories.flatMap((s, i) =>
    conditions.map((c) => ({
      c,
      prefix: c === "own"
        ? s.prefix
        : c === "other"
        ? stories[(i + 1) % stories.length].prefix
        : [tok.bosId],
      suffix: s.suffix,
    }))
  );
  const sums = Object.fromEntries(conditions.map((c) => [c, { first8: 0, all: 0 }])) as Record<
    typeof conditions[number],
    ProbeLoss
  >;
  const group = 24;
  for (let at = 0; at < cases.length; at += group) {
    const part = cases.slice(at, at + group);
    const samples = part.map((x) => splitSample(x.prefix, x.suffix, gem.info.specialIds));
    const batch = pack(samples, 0);
    const logits = noGrad(() =>
      scope(() =>
        gem.model.forward(batch.tokens, {
          roles: batch.roles,
          table: gem.table,
          positions: batch.positions,
          segments: batch.segments,
        }).logits!
      )
    );
    const flat = (await logits.toArray()) as Float32Array;
    const v = logits.shape[2];
    logits.dispose();
    part.forEach((x, i) => {
      // The last special predicts the first suffix token; suffix token j predicts j + 1.
      const first = batch.offsets[i] + samples[i].specialPos.at(-1)!;
      const losses = x.suffix.map((target, j) => {
        const row = flat.subarray((first + j) * v, (first + j + 1) * v);
        let max = -Infinity;
        for (const z of row) max = Math.max(max, z);
        let sum = 0;
        for (const z of row) sum += Math.exp(z - max);
        return Math.log(sum) + max - row[target];
      });
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      sums[x.c].first8 += mean(losses.slice(0, 8)) / stories.length;
      sums[x.c].all += mean(losses) / stories.length;
    });
    disposePacked(batch);
  }
  return { ...sums, stories: stories.length };
}
