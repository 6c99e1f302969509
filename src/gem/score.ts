/**
 * Raw texts through a decoder: samples packed into one padding-free row under the causal table in
 * GEM roles ({@link RAW_CAUSAL}), and their summed next-token loss. Perplexity, the WikiText
 * window scoring and MMLU all go through here.
 */

import type { ForwardResult, Llama } from "../nn/llama.ts";
import * as T from "../tensor/ops.ts";
import { noGrad, scope } from "../tensor/tensor.ts";
import { disposePacked, pack, type PackedBatch } from "./batch.ts";
import { RAW_CAUSAL } from "./mask.ts";
import type { GemSample } from "./sample.ts";

/** The forward pass of a packed batch of raw samples (logits at every position, or none). */
export function rawForward(model: Llama, batch: PackedBatch, logits = true): ForwardResult {
  return model.forward(batch.tokens, {
    roles: batch.roles,
    table: RAW_CAUSAL,
    positions: batch.positions,
    segments: batch.segments,
    logits,
  });
}

/** Summed next-token NLL (nats) over the labelled tokens of raw samples, and their count. */
export async function nextTokenNll(
  model: Llama,
  samples: readonly GemSample[],
): Promise<{ nll: number; tokens: number }> {
  const batch = pack(samples, 0);
  try {
    const loss = noGrad(() =>
      scope(() => {
        // The classifier fused with the loss: no [tokens, vocab] logits for a large vocabulary.
        const out = rawForward(model, batch, false);
        const h = T.reshape(out.hidden, [-1, out.hidden.shape[2]]);
        return T.classifierCrossEntropy(h, model.classifier, batch.labels);
      })
    );
    const nll = batch.labelled ? (await loss.item()) * batch.labelled : 0;
    loss.dispose();
    return { nll, tokens: batch.labelled };
  } finally {
    disposePacked(batch);
  }
}
