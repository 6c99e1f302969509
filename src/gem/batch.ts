/**
 * Collation of GEM samples into padded tensors, and the poolings that turn hidden states into
 * embeddings (GEM's special tokens, and the mean / last-token baselines).
 */

import * as T from "../tensor/ops.ts";
import { type Tensor, tensor } from "../tensor/tensor.ts";
import { ROLE } from "./mask.ts";
import { type GemSample, IGNORE } from "./sample.ts";

/** A padded batch on the GPU. */
export interface Batch {
  /** Token ids [B, T]. */
  tokens: Tensor;
  /** Roles [B, T] (padding = ROLE.pad). */
  roles: Tensor;
  /** Next-token labels [B * T] (-1 = no loss). */
  labels: Tensor;
  /** Rows B, length T. */
  b: number;
  t: number;
  /** Non-ignored labels, for token counts. */
  labelled: number;
}

/** Pads samples to the longest (or `padTo`); pads get role pad, label -1 and token `padId`. */
export function collate(samples: readonly GemSample[], padId: number, padTo?: number): Batch {
  const t = padTo ?? Math.max(1, ...samples.map((s) => s.ids.length));
  const b = samples.length;
  const ids = new Int32Array(b * t).fill(padId);
  const roles = new Int32Array(b * t).fill(ROLE.pad);
  const labels = new Int32Array(b * t).fill(IGNORE);
  let labelled = 0;
  samples.forEach((s, i) => {
    if (s.ids.length > t) throw new Error(`collate: sample ${i} has ${s.ids.length} tokens > ${t}`);
    ids.set(s.ids, i * t);
    roles.set(s.roles, i * t);
    labels.set(s.labels, i * t);
    labelled += s.labels.filter((l) => l !== IGNORE).length;
  });
  return {
    tokens: tensor(ids, [b, t], "i32"),
    roles: tensor(roles, [b, t], "i32"),
    labels: tensor(labels, [b * t], "i32"),
    b,
    t,
    labelled,
  };
}

/** Releases a batch's tensors. */
export function disposeBatch(batch: Batch): void {
  for (const x of [batch.tokens, batch.roles, batch.labels]) x.dispose();
}

/** How the k special tokens' states become one vector. */
export type SpecialPooling = "mean" | "concat" | "last";

/** x / ||x|| along the last axis. */
export function l2normalize(x: Tensor, eps = 1e-12): Tensor {
  const norm = T.sqrt(T.addScalar(T.sum(T.square(x), -1, true), eps));
  return T.div(x, norm);
}

/**
 * Rows `rows` (flat indices into [B * T]) of hidden [B, T, D] for `n` sequences with `k` rows
 * each, pooled over k: [n, D] (mean, last) or [n, k * D] (concat). Differentiable.
 */
export function poolRows(
  hidden: Tensor,
  rows: readonly number[],
  k: number,
  pooling: SpecialPooling,
): Tensor {
  const d = hidden.shape[hidden.rank - 1];
  const flat = T.reshape(hidden, [-1, d]);
  const idx = tensor(Int32Array.from(rows), [rows.length / k, k], "i32");
  const picked = T.embedding(flat, idx); // [n, k, D]
  idx.dispose();
  if (pooling === "mean") return T.mean(picked, 1);
  if (pooling === "last") return T.reshape(T.slice(picked, 1, k - 1, k), [rows.length / k, d]);
  return T.reshape(picked, [rows.length / k, k * d]);
}

/**
 * Weighted sum over T of hidden [B, T, D] with host weights [B * T] (e.g. 1/n on the tokens to
 * average): [B, D].
 */
export function weightedSum(hidden: Tensor, weights: Float32Array): Tensor {
  const [b, t] = hidden.shape;
  const w = tensor(weights, [b, t, 1]);
  const out = T.sum(T.mul(hidden, w), 1);
  w.dispose();
  return out;
}

/** Flat row indices of every sample's special tokens, in sample order ([] if one has none). */
export function specialRows(samples: readonly GemSample[], t: number): number[] {
  return samples.flatMap((s, i) => s.specialPos.map((p) => i * t + p));
}
