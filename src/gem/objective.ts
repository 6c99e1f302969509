/**
 * GEM's training objective for one (micro-)batch: mixed next-token prediction on `batchSize`
 * texts (each raw with probability p, else with special tokens inserted), plus, when alpha > 0,
 * a contrastive loss over `pairs` (anchor, positive) built by the chosen pair builder. All rows
 * go through one forward pass: [NTP rows | anchors | positives].
 */

import * as T from "../tensor/ops.ts";
import type { Rng } from "../tensor/random.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { disposePacked, l2normalize, pack, poolRows } from "./batch.ts";
import { contrastiveLoss, type GemModel } from "./gem.ts";
import {
  cropSample,
  dropoutPositive,
  type GemSample,
  gemSample,
  IGNORE,
  rawSample,
  type SampleOptions,
} from "./sample.ts";

/** How contrastive pairs are built and scored (the training config's `contrastive` fields). */
export interface PairOptions {
  /** How positives are made. */
  pairs: "crop" | "dropout" | "mix" | "supervised";
  /** Pairs per step. */
  batchSize: number;
  /** Prefix token dropout rate of dropout positives. */
  dropout: number;
  /** Crop length as a fraction of the text. */
  cropFrac: number;
  /** Average both directions of InfoNCE. */
  symmetric: boolean;
}

/** Settings of the objective, named as in the training config. */
export interface ObjectiveOptions {
  /** How texts become GEM samples. */
  sample: SampleOptions;
  /** Probability a text stays raw (plain causal LM). */
  rawProb: number;
  /** Texts per step for the next-token loss. */
  batchSize: number;
  /** The contrastive half. */
  contrastive: PairOptions;
  /** Activation checkpointing per layer (recomputed in backward; the same gradients). */
  checkpointing?: boolean;
}

/** Source of texts (token ids, BOS first) and of supervised pairs. */
export interface TextSource {
  /** The next text (token ids, BOS first). */
  next(): readonly number[];
  /** The next supervised (query, positive) pair. */
  nextPair?(): [readonly number[], readonly number[]];
}

/** The samples of one micro-batch. */
export interface StepSamples {
  /** Next-token samples (or loss). */
  ntp: GemSample[];
  /** Contrastive anchors. */
  anchors: GemSample[];
  /** Their positives, row for row. */
  positives: GemSample[];
}

/** Draws the samples of one micro-batch; `alpha` decides which parts are needed. */
export function drawSamples(
  src: TextSource,
  rng: Rng,
  o: ObjectiveOptions,
  alpha: number,
): StepSamples {
  const ntp: GemSample[] = [];
  if (alpha < 1) {
    for (let i = 0; i < o.batchSize; i++) {
      const text = src.next();
      ntp.push(
        rng.uniform() < o.rawProb
          ? rawSample(text, o.sample.maxLen)
          : gemSample(text, o.sample, rng),
      );
    }
  }
  const anchors: GemSample[] = [], positives: GemSample[] = [];
  const c = o.contrastive;
  if (alpha > 0) {
    for (let i = 0; i < c.batchSize; i++) {
      if (c.pairs === "supervised") {
        if (!src.nextPair) throw new Error("supervised pairs need a pairs file");
        const [a, b] = src.nextPair();
        const end = { ...o.sample, insertion: "end" as const };
        anchors.push(gemSample(a, end, rng));
        positives.push(gemSample(b, end, rng));
      } else if (c.pairs === "crop" || (c.pairs === "mix" && i % 2 === 0)) {
        const text = src.next();
        anchors.push(cropSample(text, c.cropFrac, o.sample, rng));
        positives.push(cropSample(text, c.cropFrac, o.sample, rng));
      } else {
        const s = gemSample(src.next(), {
          ...o.sample,
          insertion: o.sample.insertion === "reconstruct" ? "random" : o.sample.insertion,
        }, rng);
        anchors.push(s);
        positives.push(dropoutPositive(s, o.sample.specialIds, c.dropout, rng));
      }
    }
  }
  return { ntp, anchors, positives };
}

/** Losses of a micro-batch (scalar tensors; undefined when a part is off) and token counts. */
export interface StepLoss {
  /** The loss to differentiate. */
  total: Tensor;
  /** Next-token samples (or loss). */
  ntp?: Tensor;
  /** Contrastive loss, when alpha > 0. */
  contrastive?: Tensor;
  /** Tokens in the forward pass, and tokens carrying next-token loss. */
  tokens: number;
  /** Tokens carrying next-token loss. */
  labelled: number;
}

/** The pair rows carry no next-token loss: their labels are dropped. */
function unlabelled(s: GemSample): GemSample {
  return { ...s, labels: s.labels.map(() => IGNORE) };
}

/**
 * Forward pass and losses: total = (1 - alpha) * NTP + alpha * contrastive, scaled by `scale`
 * (1 / micro-batches); InfoNCE is symmetric unless `o.contrastive.symmetric` is false. Returns
 * graph-carrying tensors; call backward on `total`.
 */
export function stepLoss(
  gem: GemModel,
  s: StepSamples,
  alpha: number,
  scale: number,
  o?: { contrastive: Pick<PairOptions, "symmetric">; checkpointing?: boolean },
): StepLoss {
  const symmetric = o?.contrastive.symmetric ?? true;
  const rows = [...s.ntp, ...s.anchors.map(unlabelled), ...s.positives.map(unlabelled)];
  // All rows packed into one sequence of tokens: no padding, attention kept within each row.
  const batch = pack(rows, 0);
  try {
    const out = gem.model.forward(batch.tokens, {
      roles: batch.roles,
      table: gem.table,
      positions: batch.positions,
      segments: batch.segments,
      logits: false,
      checkpoint: o?.checkpointing ?? false,
    });
    let ntp: Tensor | undefined, contrastive: Tensor | undefined;
    const parts: Tensor[] = [];
    if (s.ntp.length) {
      // Logits only for the NTP rows (they come first): the pair rows carry no next-token loss.
      // The classifier and the loss are one op, chunked over the vocabulary when it is large.
      const n = s.ntp.reduce((a, x) => a + x.ids.length, 0);
      const h = T.slice(T.reshape(out.hidden, [-1, out.hidden.shape[2]]), 0, 0, n);
      ntp = T.classifierCrossEntropy(h, gem.model.classifier, T.slice(batch.labels, 0, 0, n));
      parts.push(T.mulScalar(ntp, (1 - alpha) * scale));
    }
    if (s.anchors.length) {
      const k = gem.info.k;
      const rowsOf = (group: GemSample[], first: number) =>
        group.flatMap((x, i) => x.specialPos.map((p) => batch.offsets[first + i] + p));
      const a = l2normalize(
        poolRows(out.hidden, rowsOf(s.anchors, s.ntp.length), k, gem.info.pooling),
      );
      const b = l2normalize(
        poolRows(
          out.hidden,
          rowsOf(s.positives, s.ntp.length + s.anchors.length),
          k,
          gem.info.pooling,
        ),
      );
      contrastive = contrastiveLoss(a, b, gem.logitScale, symmetric);
      parts.push(T.mulScalar(contrastive, alpha * scale));
    }
    const total = parts.length === 1 ? parts[0] : T.add(parts[0], parts[1]);
    return { total, ntp, contrastive, tokens: batch.t, labelled: batch.labelled };
  } finally {
    disposePacked(batch);
  }
}
