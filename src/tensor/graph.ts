/**
 * The autograd graph: each op that touches a tensor requiring gradients records a Node on its
 * output. A node keeps its inputs (for the walk back) and its own references to whatever the
 * backward rule needs (`saved`), so callers may dispose intermediates freely.
 */

import { engine, type Node, type Op, type Tensor } from "./tensor.ts";

export type { Node, Op } from "./tensor.ts";

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
