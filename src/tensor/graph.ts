/**
 * The autograd graph: each op that touches a tensor requiring gradients records a Node on its
 * output. A node keeps its inputs (for the walk back) and its own references to whatever the
 * backward rule needs (`saved`), so callers may dispose intermediates freely.
 */

import { engine, type Tensor } from "./tensor.ts";

/** Names of the differentiable ops; gradients.ts has one rule per name (tsc checks). */
export type Op =
  | "reshape"
  | "permute"
  | "slice"
  | "expand"
  | "copy"
  | "unary"
  | "binary"
  | "sum"
  | "max"
  | "matmul"
  | "softmax"
  | "logSoftmax"
  | "rmsnorm"
  | "rope"
  | "swiglu"
  | "embedding"
  | "crossEntropy"
  | "attention"
  | "concat";

/** A recorded op: what produced a tensor, for the backward pass. */
export interface Node {
  /** Which rule of gradients.ts applies. */
  readonly op: Op;
  /** The op's inputs, in order. */
  readonly inputs: readonly Tensor[];
  /** References owned by the node (aliases), released once backward has used them. */
  saved: Tensor[];
  /** Op attributes the rule needs (axis, fn name, shapes...). */
  readonly ctx: Record<string, unknown>;
}

/** True when an op on these inputs must be recorded. */
export function needsGrad(inputs: readonly Tensor[]): boolean {
  return engine.gradEnabled && inputs.some((t) => t.requiresGrad);
}

/**
 * Records `out = op(inputs)` if any input requires grad. `saved` tensors are aliased (the node
 * takes its own references); returns `out` for chaining.
 */
export function record(
  out: Tensor,
  op: Op,
  inputs: readonly Tensor[],
  saved: readonly Tensor[] = [],
  ctx: Record<string, unknown> = {},
): Tensor {
  if (!needsGrad(inputs)) return out;
  out.requiresGrad = true;
  out.node = { op, inputs: [...inputs], saved: saved.map((t) => t.alias()), ctx };
  return out;
}

/** Releases a node's saved references. */
export function releaseNode(node: Node): void {
  for (const t of node.saved) t.dispose();
  node.saved = [];
}
