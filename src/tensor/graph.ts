/**
 * The autograd graph: each op that touches a tensor requiring gradients records a Node on its
 * output. A node keeps its inputs (for the walk back) and its own references to whatever the
 * backward rule needs (`saved`), so callers may dispose intermediates freely.
 */

import type { BinaryFn, UnaryFn } from "../gpu/kernels/elementwise.ts";
import type { AttentionDims } from "../gpu/kernels/attention.ts";
import { engine, type Node, type Op, type Tensor } from "./tensor.ts";

export type { Node, Op } from "./tensor.ts";

/**
 * A checkpointed block: its output from its input `x` and the tensors it reads besides its
 * parameters (`kept`: roles, positions...), which the node holds until backward recomputes it.
 */
export type CheckpointFn = (x: Tensor, kept: readonly Tensor[]) => Tensor;

/**
 * What each op records for its gradient rule, by op name: record() takes exactly this and the
 * op's rule in gradients.ts reads exactly this, so tsc checks both sides. The public `Node`
 * keeps `ctx` loose because these types (UnaryFn, AttentionDims...) are not part of the API.
 */
export interface OpCtx {
  reshape: { from: readonly number[] };
  permute: { dims: readonly number[] };
  slice: { axis: number; start: number; from: readonly number[] };
  expand: { from: readonly number[] };
  copy: NoCtx;
  cast: NoCtx;
  concat: { axis: number; sizes: readonly number[] };
  unary: { fn: UnaryFn; c: number };
  binary: { fn: BinaryFn };
  sum: { axis: number; keepdim: boolean; scale: number; from: readonly number[] };
  max: { axis: number; from: readonly number[] };
  matmul: { transA: boolean; transB: boolean };
  softmax: NoCtx;
  logSoftmax: NoCtx;
  rmsnorm: { eps: number };
  rope: { dims: { b: number; t: number; h: number; d: number; maxPos: number } };
  swiglu: NoCtx;
  embedding: { v: number; d: number };
  crossEntropy: { n: number; v: number; ignore: number };
  classifierCrossEntropy: { n: number; v: number; ignore: number; chunk: number };
  checkpoint: { fn: CheckpointFn };
  attention: { dims: AttentionDims; table: readonly (readonly number[])[]; packed: boolean };
}

/** The ctx of an op that records nothing. */
type NoCtx = Record<never, never>;

/** A node recorded by op `K`, its ctx typed by {@link OpCtx}. */
export type OpNode<K extends Op = Op> = {
  [P in K]: Omit<Node, "op" | "ctx"> & { readonly op: P; readonly ctx: OpCtx[P] };
}[K];

/**
 * A node as record() made it. record() is the only place nodes are built, and it takes the ctx
 * {@link OpCtx} gives the op, so the node's ctx has that shape; the public `Node` cannot say so.
 */
export function opNode(node: Node): OpNode {
  return node as OpNode;
}

/** True when an op on these inputs must be recorded. */
export function needsGrad(inputs: readonly Tensor[]): boolean {
  return engine.gradEnabled && inputs.some((t) => t.requiresGrad);
}

/** record()'s ctx argument: required when the op records something, absent otherwise. */
type CtxArg<K extends Op> = keyof OpCtx[K] extends never ? [] : [ctx: OpCtx[K]];

/**
 * Records `out = op(inputs)` if any input requires grad. `saved` tensors are aliased (the node
 * takes its own references); `ctx` is what the op's gradient rule reads. Returns `out`.
 */
export function record<K extends Op>(
  out: Tensor,
  op: K,
  inputs: readonly Tensor[],
  saved: readonly Tensor[] = [],
  ...ctx: CtxArg<K>
): Tensor {
  if (!needsGrad(inputs)) return out;
  out.requiresGrad = true;
  out.node = { op, inputs: [...inputs], saved: saved.map((t) => t.alias()), ctx: ctx[0] ?? {} };
  return out;
}

/** Releases a node's saved references. */
export function releaseNode(node: Node): void {
  for (const t of node.saved) t.dispose();
  node.saved = [];
}
