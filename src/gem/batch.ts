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
  /** Row length. */
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

/**
 * Packs samples into one row of N tokens (no padding between them): tokens, roles, positions
 * (restarting at 0 in each sample) and segments [1, N, 2] (each token's sample range), so
 * attention stays within a sample. N is rounded up to a multiple of 4 with padding tokens (role
 * pad, a segment of their own), which keeps matmuls over tokens on the 4-wide kernels.
 */
export interface PackedBatch extends Batch {
  /** Position of each token within its sample [1, N]. */
  positions: Tensor;
  /** Key range (start, end) of each token [1, N, 2]. */
  segments: Tensor;
  /** Token offset of each sample in the row. */
  offsets: number[];
}

/**
 * Packs samples into one padding-free row; see {@link PackedBatch}. The padding tokens get
 * `padRole` (a table without the pad role, such as plain causal, wants 0).
 */
export function pack(
  samples: readonly GemSample[],
  padId = 0,
  padRole: number = ROLE.pad,
): PackedBatch {
  const total = samples.reduce((n, s) => n + s.ids.length, 0);
  const n = Math.max(4, Math.ceil(total / 4) * 4);
  const ids = new Int32Array(n).fill(padId);
  const roles = new Int32Array(n).fill(padRole);
  const labels = new Int32Array(n).fill(IGNORE);
  const pos = new Int32Array(n);
  const seg = new Int32Array(2 * n);
  const offsets: number[] = [];
  let at = 0, labelled = 0;
  for (const s of samples) {
    offsets.push(at);
    ids.set(s.ids, at);
    roles.set(s.roles, at);
    labels.set(s.labels, at);
    for (let p = 0; p < s.ids.length; p++) {
      pos[at + p] = p;
      seg[2 * (at + p)] = at;
      seg[2 * (at + p) + 1] = at + s.ids.length;
    }
    labelled += s.labels.filter((l) => l !== IGNORE).length;
    at += s.ids.length;
  }
  for (let i = at; i < n; i++) {
    seg[2 * i] = i;
    seg[2 * i + 1] = i + 1;
  }
  return {
    tokens: tensor(ids, [1, n], "i32"),
    roles: tensor(roles, [1, n], "i32"),
    labels: tensor(labels, [n], "i32"),
    positions: tensor(pos, [1, n], "i32"),
    segments: tensor(seg, [1, n, 2], "i32"),
    offsets,
    b: 1,
    t: n,
    labelled,
  };
}

/** Releases a packed batch's tensors. */
export function disposePacked(batch: PackedBatch): void {
  disposeBatch(batch);
  batch.positions.dispose();
  batch.segments.dispose();
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
 * Mean of groups of rows of hidden [..., D] (flat row indices per group): [groups, D]. Each
 * group's sum runs over its own rows in order (shorter groups add exact zeros), so a group's
 * result does not depend on the other groups.
 */
export function meanRows(hidden: Tensor, groups: readonly (readonly number[])[]): Tensor {
  const d = hidden.shape[hidden.rank - 1];
  const flat = T.reshape(hidden, [-1, d]);
  const len = Math.max(1, ...groups.map((g) => g.length));
  const idx = new Int32Array(groups.length * len), w = new Float32Array(groups.length * len);
  groups.forEach((g, i) => {
    g.forEach((r, j) => {
      idx[i * len + j] = r;
      w[i * len + j] = 1 / g.length;
    });
  });
  const it = tensor(idx, [groups.length, len], "i32"), wt = tensor(w, [groups.length, len]);
  const out = T.sum(T.gatherScaled(flat, it, wt), 1);
  it.dispose();
  wt.dispose();
  return out;
}

/** Flat row indices of every sample's special tokens, in sample order ([] if one has none). */
export function specialRows(samples: readonly GemSample[], t: number): number[] {
  return samples.flatMap((s, i) => s.specialPos.map((p) => i * t + p));
}
