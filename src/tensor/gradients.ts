/**
 * Gradient rules, one per op (tinygrad style): given the upstream gradient `g` of a node's output,
 * return one gradient per input (null where none flows). Rules run with recording off and return
 * tensors the backward pass owns. Fused ops call their backward kernels directly.
 */

import { gpu } from "../gpu/device.ts";
import { runAttentionBackward } from "../gpu/kernels/attention.ts";
import { runCrossEntropyBackward } from "../gpu/kernels/cross_entropy.ts";
import { UNARY_GRAD, type UnaryFn } from "../gpu/kernels/elementwise.ts";
import { runScatterGrouped, runScatterScan, scatterPlan } from "../gpu/kernels/embedding.ts";
import { runArgmaxScatter } from "../gpu/kernels/reduce.ts";
import { runRope } from "../gpu/kernels/rope.ts";
import {
  rmsnormBackwardKernel,
  runRmsnormWeightGrad,
  runRowKernel,
  softmaxBackwardKernel,
} from "../gpu/kernels/rowwise.ts";
import type { AttentionDims } from "../gpu/kernels/attention.ts";
import type { Node, Op } from "./graph.ts";
import {
  contiguous,
  copyInto,
  mapExpr,
  matmul,
  permute,
  reshape,
  slice,
  sum,
  zeros,
} from "./ops.ts";
import { empty, numel, type Tensor, tensor } from "./tensor.ts";

export type GradRule = (g: Tensor, node: Node, out: Tensor) => (Tensor | null)[];

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

/** Runs `expr` at the broadcast output shape, then reduces to `shape`. */
function exprTo(
  expr: string,
  inputs: Record<string, Tensor>,
  outShape: readonly number[],
  shape: readonly number[],
): Tensor {
  const full = mapExpr(expr, inputs, outShape);
  if (sameShapes(outShape, shape)) return full;
  const r = sumTo(full, shape);
  full.dispose();
  return r;
}

const BINARY_GRAD: Record<string, [string, string] | null> = {
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

export const GRADIENTS: Record<Op, GradRule> = {
  reshape: (g, n) => [reshape(g, n.ctx.from as number[])],
  permute: (g, n) => {
    const dims = n.ctx.dims as number[];
    const inv = new Array<number>(dims.length);
    dims.forEach((d, i) => (inv[d] = i));
    return [permute(g, inv)];
  },
  slice: (g, n) => {
    const dx = zeros(n.ctx.from as number[]);
    const region = slice(
      dx,
      n.ctx.axis as number,
      n.ctx.start as number,
      (n.ctx.start as number) + g.shape[n.ctx.axis as number],
    );
    copyInto(region, g);
    region.dispose();
    return [dx];
  },
  expand: (g, n) => [sumTo(g, n.ctx.from as number[])],
  copy: (g) => [g.alias()],
  concat: (g, n) => {
    const sizes = n.ctx.sizes as number[];
    let at = 0;
    return sizes.map((s) => slice(g, n.ctx.axis as number, at, at += s));
  },
  unary: (g, n) => {
    const [x] = n.saved;
    return [mapExpr(UNARY_GRAD[n.ctx.fn as UnaryFn], { a: x, g }, x.shape, n.ctx.c as number)];
  },
  binary: (g, n) => {
    const [a, b] = n.saved;
    const rule = BINARY_GRAD[n.ctx.fn as string];
    if (!rule) return [null, null];
    return rule.map((expr, i) => exprTo(expr, { a, b, g }, g.shape, i === 0 ? a.shape : b.shape));
  },
  sum: (g, n) => {
    const from = n.ctx.from as number[];
    const axis = n.ctx.axis as number;
    const kept = reshape(g, from.map((s, d) => (d === axis ? 1 : s)));
    const dx = mapExpr("g * P.c", { g: kept }, from, n.ctx.scale as number);
    kept.dispose();
    return [dx];
  },
  max: (g, n) => {
    const from = n.ctx.from as number[];
    const axis = n.ctx.axis as number;
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
  matmul: (g, n) => {
    const [a, b] = n.saved;
    const transA = n.ctx.transA as boolean, transB = n.ctx.transB as boolean;
    const da = transA
      ? matmul(b, g, { transA: transB, transB: true })
      : matmul(g, b, { transB: !transB });
    let db = transB
      ? matmul(g, a, { transA: true, transB: transA })
      : matmul(a, g, { transA: !transA });
    if (db.rank !== b.rank) {
      const r = sumTo(db, b.shape);
      db.dispose();
      db = r;
    }
    return [da, db];
  },
  softmax: (g, n) => [softmaxGrad(g, n.saved[0], false)],
  logSoftmax: (g, n) => [softmaxGrad(g, n.saved[0], true)],
  rmsnorm: (g, n) => {
    const [x, w, rstd] = n.saved;
    const d = x.shape[x.rank - 1], rows = x.size / d;
    const gc = contiguous(g);
    const dx = empty(x.shape, "f32", "rmsnorm.dx");
    runRowKernel(gpu(), rmsnormBackwardKernel, [x.buf, w.buf, rstd.buf, gc.buf, dx.buf], rows, d);
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
    const dims = n.ctx.dims as { b: number; t: number; h: number; d: number; maxPos: number };
    runRope(gpu(), gc.buf, table.buf, pos?.buf ?? null, dx.buf, dims, -1);
    gc.dispose();
    return [dx];
  },
  swiglu: (g, n) => {
    const [a, b] = n.saved;
    return [
      mapExpr("g * b * sigmoid(a) * (1.0 + a * (1.0 - sigmoid(a)))", { a, b, g }, a.shape),
      mapExpr("g * a * sigmoid(a)", { a, g }, a.shape),
    ];
  },
  embedding: (g, n) => {
    const [ids] = n.saved;
    const v = n.ctx.v as number, d = n.ctx.d as number;
    const gc = contiguous(g);
    const host = ids.storage.host;
    // Rows no id touches stay zero in the grouped scatter; the scan writes every row.
    const dw = host ? zeros([v, d]) : empty([v, d], "f32", "embedding.dw");
    if (host) {
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
  crossEntropy: (g, n) => {
    const [logits, targets, lse, stats] = n.saved;
    const nn = n.ctx.n as number, v = n.ctx.v as number;
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
      n.ctx.ignore as number,
    );
    gc.dispose();
    return [dx, null];
  },
  attention: (g, n) => {
    const [q, k, v, roles, o, stats] = n.saved;
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
      n.ctx.dims as AttentionDims,
      n.ctx.table as number[][],
    );
    gc.dispose();
    return [dq, dk, dv, null, null];
  },
};

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
