/**
 * Gradient rules, one per op (tinygrad style): given the upstream gradient `g` of a node's output,
 * return one gradient per input (null where none flows). Rules run with recording off and return
 * tensors the backward pass owns. Elementwise rules are WGSL expressions of the input values
 * (`a`, `b`), the upstream gradient `g` and the op's scalar `P.c`, run as one elementwise kernel;
 * fused ops call their backward kernels directly.
 */

import { gpu } from "../gpu/device.ts";
import { runAttentionBackward } from "../gpu/kernels/attention.ts";
import { runCrossEntropyBackward } from "../gpu/kernels/cross_entropy.ts";
import type { BinaryFn, UnaryFn } from "../gpu/kernels/elementwise.ts";
import {
  pageRows,
  runScatterGrouped,
  runScatterScan,
  scatterPlan,
  scatterPlanRows,
} from "../gpu/kernels/embedding.ts";
import { bindRange, paged } from "../gpu/pages.ts";
import { runArgmaxScatter } from "../gpu/kernels/reduce.ts";
import { runRope } from "../gpu/kernels/rope.ts";
import {
  rmsnormBackwardKernel,
  runRmsnormWeightGrad,
  runRowKernel,
  softmaxBackwardKernel,
} from "../gpu/kernels/rowwise.ts";
import { type Node, type Op, type OpNode, opNode } from "./graph.ts";
import {
  add,
  contiguous,
  copyInto,
  mapExpr,
  mapExprs,
  matmul,
  matmulAccumulate,
  permute,
  reshape,
  slice,
  sum,
  widened,
  zeros,
} from "./ops.ts";
import { empty, enableGrad, numel, scope, type Tensor, tensor } from "./tensor.ts";

/**
 * The gradient rule of op `K`: one gradient per input of `node` (null where none flows).
 * `pending[i]` is the gradient input i has gathered so far from its other consumers, when it
 * has one: a rule may add its own into that one in place (see {@link owned}) and return it.
 */
export type GradRule<K extends Op = Op> = (
  g: Tensor,
  node: OpNode<K>,
  out: Tensor,
  walk: Walk,
  pending: readonly (Tensor | null)[],
) => (Tensor | null)[];

/**
 * `p` when a rule may add into it in place: a contiguous f32 gradient of `shape` that nothing
 * else holds (a gradient passed on unchanged may still be shared with another input's).
 * Accumulating there in the kernel that computes the addend saves an add's pass and buffer,
 * and gives the same bits: the sum p + addend is formed from the same two values.
 */
function owned(p: Tensor | null | undefined, shape: readonly number[]): Tensor | null {
  return p && p.storage.refs === 1 && p.contiguous && p.offset === 0 && p.dtype === "f32" &&
      sameShapes(p.shape, shape)
    ? p
    : null;
}

/**
 * The backward walk itself (backward.ts passes it in, so this table does not import it): a
 * checkpoint's rule walks the graph of its recomputed block.
 */
export type Walk = (root: Tensor, grad: Tensor) => void;

/** Sums a broadcast gradient back down to `shape`. */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  let cur = g.alias();
  const lead = g.rank - shape.length;
  for (let i = 0; i < lead; i++) {
    const next = sum(cur, 0);
    cur.dispose();
    cur = next;
  }
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1 && cur.shape[d] !== 1) {
      const next = sum(cur, d, true);
      cur.dispose();
      cur = next;
    }
  }
  const out = reshape(cur, shape);
  cur.dispose();
  return out;
}

function sameShapes(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((s, i) => s === b[i]);
}

/**
 * Runs `expr` at the broadcast output shape, then reduces to `shape`. Where the expression is
 * the upstream gradient `g` itself at its own shape (an add's operands, as in every residual add,
 * or addScalar's input) it passes `g` on without a copy.
 */
function exprTo(
  expr: string,
  inputs: Record<string, Tensor>,
  outShape: readonly number[],
  shape: readonly number[],
  c = 0,
): Tensor {
  if (expr === "g" && sameShapes(inputs.g.shape, shape)) return inputs.g.alias();
  const full = mapExpr(expr, inputs, outShape, c);
  if (sameShapes(outShape, shape)) return full;
  const r = sumTo(full, shape);
  full.dispose();
  return r;
}

/** d unary(a) / da times the upstream gradient g, from the input value a. */
const UNARY_GRAD: Record<UnaryFn, string> = {
  copy: "g",
  neg: "-g",
  exp: "g * exp(a)",
  log: "g / a",
  sqrt: "g * 0.5 / sqrt(a)",
  rsqrt: "g * -0.5 * inverseSqrt(a) / a",
  sigmoid: "g * sigmoid(a) * (1.0 - sigmoid(a))",
  silu: "g * (sigmoid(a) * (1.0 + a * (1.0 - sigmoid(a))))",
  tanh: "g * (1.0 - tanh(clamp(a, -15.0, 15.0)) * tanh(clamp(a, -15.0, 15.0)))",
  relu: "select(0.0, g, a > 0.0)",
  square: "g * 2.0 * a",
  abs: "g * sign(a)",
  recip: "-g / (a * a)",
  addScalar: "g",
  mulScalar: "g * P.c",
  powScalar: "g * P.c * pow(a, P.c - 1.0)",
  fill: "0.0",
};

/** (d/da, d/db) of binary(a, b) times g; null where the op passes no gradient. */
const BINARY_GRAD: Record<BinaryFn, [string, string] | null> = {
  add: ["g", "g"],
  sub: ["g", "-g"],
  mul: ["g * b", "g * a"],
  div: ["g / b", "-g * a / (b * b)"],
  // Ties split the gradient, as PyTorch does.
  maximum: [
    "g * select(select(0.0, 1.0, a > b), 0.5, a == b)",
    "g * select(select(0.0, 1.0, b > a), 0.5, a == b)",
  ],
  minimum: [
    "g * select(select(0.0, 1.0, a < b), 0.5, a == b)",
    "g * select(select(0.0, 1.0, b < a), 0.5, a == b)",
  ],
  pow: ["g * b * pow(a, b - 1.0)", "g * pow(a, b) * log(a)"],
  gt: null,
  eq: null,
};

/** The rule of each op. */
export const GRADIENTS: { [K in Op]: GradRule<K> } = {
  reshape: (g, n) => [reshape(g, n.ctx.from)],
  permute: (g, n) => {
    const dims = n.ctx.dims;
    const inv = new Array<number>(dims.length);
    dims.forEach((d, i) => (inv[d] = i));
    return [permute(g, inv)];
  },
  slice: (g, n) => {
    const { axis, start, from } = n.ctx;
    const dx = zeros(from);
    const region = slice(dx, axis, start, start + g.shape[axis]);
    copyInto(region, g);
    region.dispose();
    return [dx];
  },
  expand: (g, n) => [sumTo(g, n.ctx.from)],
  copy: (g) => [g.alias()],
  // Gradients are f32 whatever the dtype of the value they belong to.
  cast: (g) => [g.alias()],
  concat: (g, n) => {
    let at = 0;
    return n.ctx.sizes.map((s) => slice(g, n.ctx.axis, at, at += s));
  },
  unary: (g, n) => {
    const [x] = n.saved;
    return [exprTo(UNARY_GRAD[n.ctx.fn], { a: x, g }, x.shape, x.shape, n.ctx.c)];
  },
  binary: (g, n) => {
    const [a, b] = n.saved;
    const rule = BINARY_GRAD[n.ctx.fn];
    if (!rule) return [null, null];
    return rule.map((expr, i) => exprTo(expr, { a, b, g }, g.shape, i === 0 ? a.shape : b.shape));
  },
  sum: (g, n) => {
    const { from, axis, scale } = n.ctx;
    const kept = reshape(g, from.map((s, d) => (d === axis ? 1 : s)));
    const dx = mapExpr("g * P.c", { g: kept }, from, scale);
    kept.dispose();
    return [dx];
  },
  max: (g, n) => {
    const { from, axis } = n.ctx;
    const [arg] = n.saved;
    const gc = contiguous(g);
    const dx = empty(from, "f32", "max.grad");
    runArgmaxScatter(gpu(), gc.buf, arg.buf, dx.buf, {
      outer: numel(from.slice(0, axis)),
      r: from[axis],
      inner: numel(from.slice(axis + 1)),
    });
    gc.dispose();
    return [dx];
  },
  matmul: (g, n, _out, _walk, pending) => {
    const [a, b] = n.saved;
    const { transA, transB } = n.ctx;
    const [l, r, o] = transA
      ? [b, g, { transA: transB, transB: true }]
      : [g, b, { transB: !transB }];
    const into = owned(pending[0], a.shape);
    if (into) matmulAccumulate(into, l, r, o);
    const da = into ?? matmul(l, r, o);
    // A batched a against a 2-D b (rows merged in the forward): db over all rows at once.
    const flat = a.rank > 2 && b.rank === 2 && !transA;
    const a2 = flat ? reshape(a, [-1, a.shape[a.rank - 1]]) : a;
    const g2 = flat ? reshape(g, [-1, g.shape[g.rank - 1]]) : g;
    let db = transB
      ? matmul(g2, a2, { transA: true, transB: transA })
      : matmul(a2, g2, { transA: !transA });
    if (flat) { for (const t of [a2, g2]) t.dispose(); }
    if (db.rank !== b.rank) {
      const r = sumTo(db, b.shape);
      db.dispose();
      db = r;
    }
    return [da, db];
  },
  softmax: (g, n) => [softmaxGrad(g, n.saved[0], false)],
  logSoftmax: (g, n) => [softmaxGrad(g, n.saved[0], true)],
  rmsnorm: (g, n, _out, _walk, pending) => {
    const [x, w, rstd] = n.saved;
    const d = x.shape[x.rank - 1], rows = x.size / d;
    const gc = contiguous(g);
    const into = owned(pending[0], x.shape);
    const dx = into ?? empty(x.shape, "f32", "rmsnorm.dx");
    runRowKernel(
      gpu(),
      (wg, mode) => rmsnormBackwardKernel(wg, mode, d % 4 === 0, !!into),
      [x.buf, w.buf, rstd.buf, gc.buf, dx.buf],
      rows,
      d,
    );
    const chunks = Math.ceil(rows / 256);
    const partial = empty([chunks, d], "f32", "rmsnorm.dw");
    runRmsnormWeightGrad(gpu(), x.buf, rstd.buf, gc.buf, partial.buf, rows, d);
    const dw = sum(partial, 0);
    partial.dispose();
    gc.dispose();
    return [dx, dw];
  },
  rope: (g, n) => {
    const [table, pos] = n.saved;
    const gc = contiguous(g);
    const dx = empty(g.shape, "f32", "rope.dx");
    runRope(gpu(), gc.buf, table.buf, pos?.buf ?? null, dx.buf, n.ctx.dims, -1);
    gc.dispose();
    return [dx];
  },
  // Both gradients in one pass: g, a and b are each read once.
  swiglu: (g, n) => {
    const [a, b] = n.saved;
    return mapExprs(
      ["g * b * sigmoid(a) * (1.0 + a * (1.0 - sigmoid(a)))", "g * a * sigmoid(a)"],
      { a, b, g },
      a.shape,
    );
  },
  embedding: (g, n) => {
    const [ids] = n.saved;
    const { v, d } = n.ctx;
    const gc = contiguous(g);
    const host = ids.storage.host;
    // Rows no id touches stay zero in the grouped scatter; the scan writes every row.
    const dw = host ? zeros([v, d]) : empty([v, d], "f32", "embedding.dw");
    if (host && paged(gpu(), dw.buf)) {
      // A weight past one binding: one plan and one window per page of rows.
      const all = host.subarray(ids.offset, ids.offset + ids.size);
      const rows = pageRows(gpu(), d);
      for (let r0 = 0; r0 < v; r0 += rows) {
        const r1 = Math.min(v, r0 + rows);
        const { plan, groups, count } = scatterPlanRows(all, r0, r1);
        if (!groups) continue;
        const planT = tensor(plan, [plan.length], "i32");
        const win = bindRange(gpu(), dw.buf, r0 * d, r1 * d, "embedding backward");
        runScatterGrouped(gpu(), gc.buf, planT.buf, groups, win.bind, count, d, r1 - r0);
        planT.dispose();
      }
    } else if (host) {
      // Grouped scatter: the host knows the ids, so sort positions by id once.
      const { plan, groups } = scatterPlan(host.subarray(ids.offset, ids.offset + ids.size));
      const planT = tensor(plan, [plan.length], "i32");
      runScatterGrouped(gpu(), gc.buf, planT.buf, groups, dw.buf, ids.size, d, v);
      planT.dispose();
    } else {
      runScatterScan(gpu(), gc.buf, ids.buf, dw.buf, ids.size, d, v);
    }
    gc.dispose();
    return [dw, null];
  },
  checkpoint: (g, n, _out, walk) => {
    const [x, ...kept] = n.saved;
    // A leaf standing for x: the recomputed block's gradient for x accumulates into it, by the
    // same two-term sum (norm path + residual) the unwrapped graph makes.
    const leaf = x.alias();
    leaf.requiresGrad = true;
    const out = enableGrad(() => scope(() => n.ctx.fn(leaf, kept)));
    walk(out, g);
    out.dispose();
    const dx = leaf.grad;
    leaf.grad = null;
    leaf.dispose();
    return [dx, ...n.inputs.slice(1).map(() => null)];
  },
  classifierCrossEntropy: (g, n) => {
    const [h, w, targets, lse, stats, saved] = n.saved;
    const { n: rows, v, ignore, chunk } = n.ctx;
    const gc = contiguous(g);
    // dlogits of columns c0..c0+width, then the two products matmul's own rule would make
    // (dh = dlogits @ w_c, dw_c = dlogits^T @ h), so one chunk is bitwise the unfused graph.
    const part = (logits: Tensor, wc: Tensor, c0: number, width: number) => {
      const dlogits = empty([rows, width], "f32", "ce.dx");
      runCrossEntropyBackward(
        gpu(),
        logits.buf,
        targets.buf,
        lse.buf,
        stats.buf,
        gc.buf,
        dlogits.buf,
        rows,
        width,
        ignore,
        c0,
      );
      const dh = matmul(dlogits, wc, { transB: false });
      const dw = matmul(dlogits, h, { transA: true, transB: false });
      dlogits.dispose();
      return { dh, dw };
    };
    if (saved) {
      const { dh, dw } = part(saved, w, 0, v);
      gc.dispose();
      return [dh, dw, null];
    }
    let dh: Tensor | null = null;
    const dw = empty([v, w.shape[1]], "f32", "ce.dw");
    for (let c0 = 0; c0 < v; c0 += chunk) {
      const width = Math.min(chunk, v - c0);
      const wc = slice(w, 0, c0, c0 + width);
      const logits = matmul(h, wc, { transB: true });
      const p = part(logits, wc, c0, width);
      logits.dispose();
      const rowsOfDw = slice(dw, 0, c0, c0 + width);
      copyInto(rowsOfDw, p.dw);
      for (const t of [wc, rowsOfDw, p.dw]) t.dispose();
      if (dh) {
        const sum = add(dh, p.dh);
        dh.dispose();
        p.dh.dispose();
        dh = sum;
      } else dh = p.dh;
    }
    gc.dispose();
    return [dh, dw, null];
  },
  crossEntropy: (g, n) => {
    const [logits, targets, lse, stats] = n.saved;
    const { n: nn, v, ignore } = n.ctx;
    const gc = contiguous(g);
    const dx = empty([nn, v], "f32", "ce.dx");
    runCrossEntropyBackward(
      gpu(),
      logits.buf,
      targets.buf,
      lse.buf,
      stats.buf,
      gc.buf,
      dx.buf,
      nn,
      v,
      ignore,
    );
    gc.dispose();
    return [dx, null];
  },
  attention: (g, n) => {
    // f16 activations are read by the backward kernels as widened f32 copies.
    const wide = n.saved.map((t) => t.dtype === "f16" ? widened(t) : t);
    const [q, k, v, roles, o, stats] = wide;
    const meta = n.ctx.packed ? roles : null;
    const gc = contiguous(g);
    const dq = empty(q.shape, "f32", "attention.dq");
    const dk = empty(k.shape, "f32", "attention.dk");
    const dv = empty(v.shape, "f32", "attention.dv");
    runAttentionBackward(
      gpu(),
      {
        q: q.buf,
        k: k.buf,
        v: v.buf,
        roles: roles.buf,
        meta: meta?.buf,
        o: o.buf,
        dout: gc.buf,
        stats: stats.buf,
        dq: dq.buf,
        dk: dk.buf,
        dv: dv.buf,
      },
      n.ctx.dims,
      n.ctx.table,
    );
    gc.dispose();
    wide.forEach((t, i) => t !== n.saved[i] && t.dispose());
    return [dq, dk, dv, null, null];
  },
};

/**
 * The gradients of `node`'s inputs by its op's rule; `pending` as {@link GradRule} says (a rule
 * that returns one of them added into it in place).
 */
export function gradientsOf(
  g: Tensor,
  node: Node,
  out: Tensor,
  walk: Walk,
  pending: readonly (Tensor | null)[] = [],
): (Tensor | null)[] {
  const n = opNode(node);
  return ruleOf(n.op)(g, n, out, walk, pending);
}

/** GRADIENTS[op] with its type tied to `op` (tsc cannot tie them through a union of ops). */
function ruleOf<K extends Op>(op: K): GradRule<K> {
  return GRADIENTS[op];
}

function softmaxGrad(g: Tensor, y: Tensor, log: boolean): Tensor {
  const n = y.shape[y.rank - 1];
  const gc = contiguous(g);
  const dx = empty(y.shape, "f32", "softmax.dx");
  runRowKernel(
    gpu(),
    (wg, mode) => softmaxBackwardKernel(log, wg, mode),
    [y.buf, gc.buf, dx.buf],
    y.size / n,
    n,
  );
  gc.dispose();
  return dx;
}
