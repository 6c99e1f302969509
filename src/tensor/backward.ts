/**
 * Reverse-mode autodiff: walks the graph recorded by ops from a scalar (or seeded) output back to
 * the leaves, applying the rule table in gradients.ts. Leaf gradients accumulate into `.grad`;
 * each node's saved references are released as soon as its rule has run.
 */

import { gpu } from "../gpu/device.ts";
import { runAccumulate } from "../gpu/kernels/optim.ts";
import { releaseNode } from "./graph.ts";
import { gradientsOf } from "./gradients.ts";
import { add, contiguous, copyInto, full } from "./ops.ts";
import { empty, keep, noGrad, type Tensor } from "./tensor.ts";

/** Non-leaf tensors reachable from `root`, inputs before their consumers. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, expanded] = stack.pop()!;
    if (expanded) {
      order.push(t);
      continue;
    }
    if (seen.has(t) || !t.node) continue;
    seen.add(t);
    stack.push([t, true]);
    for (const x of t.node.inputs) if (x.node && !seen.has(x)) stack.push([x, false]);
  }
  return order;
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  const dense = contiguous(g);
  g.dispose();
  if (!leaf.grad) {
    // A leaf's gradient is written in place (accumulation, clipping), so one still shared with
    // another gradient (an add passes g itself to both operands) gets storage of its own.
    if (dense.storage.refs === 1) leaf.grad = keep(dense);
    else {
      leaf.grad = keep(empty(dense.shape, "f32", "grad"));
      copyInto(leaf.grad, dense);
      dense.dispose();
    }
    return;
  }
  runAccumulate(gpu(), dense.buf, dense.offset, leaf.grad.buf, leaf.grad.offset, dense.size);
  dense.dispose();
}

/** Options of {@link backward}. */
export interface BackwardOptions {
  /** Upstream gradient of `root` (default: ones). */
  grad?: Tensor;
  /** Keep the graph (saved tensors) for another backward pass. */
  retainGraph?: boolean;
}

/** Computes gradients of `root` with respect to every leaf that requires them. */
export function backward(root: Tensor, opts: BackwardOptions = {}): void {
  if (!root.requiresGrad) {
    throw new Error(`backward: ${root.describe()} does not require grad (no parameter reached it)`);
  }
  noGrad(() => {
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, opts.grad ? opts.grad.alias() : full(root.shape, 1));
    if (!root.node) {
      accumulateLeaf(root, grads.get(root)!);
      return;
    }
    const order = topoOrder(root);
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const node = t.node!;
      const g = grads.get(t);
      grads.delete(t);
      if (g) {
        // What each input has gathered so far, offered to the rule to add into (an input
        // given twice is left out: the rule would add into it twice).
        const pending = node.inputs.map((x, j) =>
          x.node && node.inputs.indexOf(x) === j && node.inputs.lastIndexOf(x) === j
            ? grads.get(x) ?? null
            : null
        );
        const results = gradientsOf(g, node, t, (r, grad) => backward(r, { grad }), pending);
        const leaves: [Tensor, Tensor][] = [];
        node.inputs.forEach((x, j) => {
          let r = results[j];
          if (!r) return;
          if (!x.requiresGrad) return r.dispose();
          if (r === g) r = g.alias();
          if (!x.node) return leaves.push([x, r]);
          const prev = grads.get(x);
          if (prev === r) return; // added into in place by the rule
          if (prev) {
            grads.set(x, add(prev, r));
            prev.dispose();
            r.dispose();
          } else grads.set(x, r);
        });
        g.dispose();
        // After g is released, a leaf gradient still sharing storage shares it with another.
        for (const [x, r] of leaves) accumulateLeaf(x, r);
      }
      if (!opts.retainGraph) {
        releaseNode(node);
        t.node = null;
      }
    }
  });
}

/** Releases the graph below `root` without computing gradients. */
export function freeGraph(root: Tensor): void {
  for (const t of topoOrder(root)) {
    releaseNode(t.node!);
    t.node = null;
  }
}
