/** The operands and shape of a batched product, shared by every matmul version. */

import type { Gpu } from "../device.ts";
import type { Binding } from "../pages.ts";

/** A matrix operand: buffer, element offset, and strides for (batch, row, col). */
export interface MatOperand {
  /** The buffer, or a window of it (a tensor past one binding). */
  buf: Binding;
  /** Element offset of [0, 0, 0]. */
  offset: number;
  /** Elements between batches (0 broadcasts one matrix). */
  batchStride: number;
  /** Elements between rows. */
  rowStride: number;
  /** Elements between columns. */
  colStride: number;
  /** Stored as f16 (widened to f32 as it is read; the product accumulates in f32). */
  f16?: boolean;
}

/** out[b] = A[b] @ B[b] with A [m, k] and B [k, n], for b < batch. */
export interface MatmulShape {
  /** Batches. */
  batch: number;
  /** Rows of A and out. */
  m: number;
  /** Columns of B and out. */
  n: number;
  /** Inner dimension. */
  k: number;
}

/**
 * Records C (contiguous [batch, M, N] at element `offC` of `c`) = A @ B, or with `accumulate`
 * C += A @ B (bitwise C + (A @ B): the product is summed as it would be alone, then added).
 */
export type MatmulRun = (
  gpu: Gpu,
  a: MatOperand,
  b: MatOperand,
  c: Binding,
  offC: number,
  s: MatmulShape,
  accumulate?: boolean,
) => void;
