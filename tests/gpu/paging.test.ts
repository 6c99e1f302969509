/**
 * Tensors past one storage binding (llvmpipe: 128 MiB): an embedding of 66,000 x 512 f32
 * (135 MB) gathers, scatters its gradient, feeds the chunked classifier loss, takes AdamW steps
 * and gradient clipping, each checked against a host reference; products with a weight or a result
 * past one binding run in pieces; an op with no paged form says so.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { BindingLimitError } from "../../src/gpu/errors.ts";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW, clipGradNorm } from "../../src/tensor/optim.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { testGpu } from "../helpers.ts";

const V = 66_000, D = 512;

/** A deterministic weight whose row r, column j is easy to recompute on the host. */
function weightAt(r: number, j: number): number {
  return Math.fround(Math.sin(r * 0.37 + j * 0.011) * 0.05);
}

test("a 135 MB embedding: gather, chunked classifier loss, scatter, AdamW and clipping", async () => {
  const g = await testGpu();
  assert.ok(V * D * 4 > g.bindingLimit, "the weight is past one binding");
  const host = new Float32Array(V * D);
  for (let r = 0; r < V; r++) for (let j = 0; j < D; j++) host[r * D + j] = weightAt(r, j);
  const w = T.parameter(tensor(host, [V, D]), "embed");
  const ids = [0, 65_999, 31_000, 65_536, 7, 31_000];
  const idsT = tensor(Int32Array.from(ids), [ids.length], "i32");
  // Gather: rows from the first page, the last, and one repeated.
  const x = T.embedding(w, idsT);
  const got = (await x.toArray()) as Float32Array;
  ids.forEach((id, i) => {
    assert.deepEqual(
      got.subarray(i * D, (i + 1) * D),
      host.subarray(id * D, (id + 1) * D),
      `id ${id}`,
    );
  });
  // The classifier loss over the same weight (tied), in row chunks of one binding each.
  const targets = [65_999, 3, 40_000, 12, 65_000, 1];
  const tT = tensor(Int32Array.from(targets), [targets.length], "i32");
  const loss = T.classifierCrossEntropy(x, w, tT);
  let want = 0;
  for (let i = 0; i < ids.length; i++) {
    let m = -Infinity;
    const logit = new Float64Array(V);
    for (let r = 0; r < V; r++) {
      let s = 0;
      for (let j = 0; j < D; j++) s += host[ids[i] * D + j] * host[r * D + j];
      logit[r] = s;
      m = Math.max(m, s);
    }
    let z = 0;
    for (let r = 0; r < V; r++) z += Math.exp(logit[r] - m);
    want += (m + Math.log(z) - logit[targets[i]]) / ids.length;
  }
  assert.ok(
    Math.abs((await loss.item()) - want) < 1e-4 * Math.abs(want),
    `${await loss.item()} vs ${want}`,
  );
  backward(loss);
  // The gradient reaches rows through both paths; the host checks a gathered row's scatter part
  // by a second, gather-only graph.
  const grad = (await w.grad!.toArray()) as Float32Array;
  assert.ok(grad.subarray(65_999 * D, 66_000 * D).some((v) => v !== 0), "the last page's rows");
  const w2 = T.parameter(tensor(host, [V, D]), "embed2");
  const y = T.embedding(w2, idsT);
  const weights = tensor(Float32Array.from({ length: ids.length * D }, (_, i) => (i % 7) - 3), [
    ids.length,
    D,
  ]);
  backward(T.sum(T.sum(T.mul(y, weights), 1), 0));
  const g2 = (await w2.grad!.toArray()) as Float32Array;
  for (const id of new Set(ids)) {
    const rows = ids.flatMap((v, i) => (v === id ? [i] : []));
    for (let j = 0; j < D; j += 37) {
      const s = rows.reduce((a, i) => a + (((i * D + j) % 7) - 3), 0);
      assert.equal(g2[id * D + j], s, `d/dw[${id}, ${j}]`);
    }
  }
  assert.equal(g2[1 * D + 5], 0, "rows no id touches stay zero");
  // Clipping: the norm over the whole paged gradient, against the host.
  let sq = 0;
  for (const v of g2) sq += v * v;
  const norm = clipGradNorm([w2], 1);
  const [n] = (await norm.toArray()) as Float32Array;
  assert.ok(Math.abs(n - Math.sqrt(sq)) < 1e-4 * Math.sqrt(sq), `${n} vs ${Math.sqrt(sq)}`);
  const coef = Math.min(1, 1 / (n + 1e-6));
  // AdamW on the paged weight: first step moves each touched element by lr * sign(g) (to float
  // rounding), untouched ones only by weight decay.
  const opt = new AdamW([w2], { lr: 1e-3, weightDecay: 0.1 });
  opt.update();
  const after = (await w2.toArray()) as Float32Array;
  for (const [r, j] of [[31_000, 3], [65_999, 511], [65_536, 0], [1, 5], [40_000, 100]]) {
    const i = r * D + j, gi = g2[i] * coef;
    const decayed = host[i] * (1 - 1e-3 * 0.1);
    const step = gi === 0 ? 0 : 1e-3 * (gi / Math.abs(gi)) * (Math.abs(gi) / (Math.abs(gi) + 1e-8));
    assert.ok(
      Math.abs(after[i] - (decayed - step)) < 1e-6,
      `w[${r}, ${j}]: ${after[i]} vs ${decayed - step}`,
    );
  }
  // An op with no paged form (a strided copy of the whole weight) is refused by name.
  assert.throws(() => T.contiguous(T.transpose(w)), (e: unknown) => {
    assert.ok(e instanceof BindingLimitError);
    assert.match(e.message, /a strided or broadcast operand of a tensor past one binding/);
    return true;
  });
  opt.dispose();
  for (const t of [w, w2, idsT, x, tT, loss, y, weights, norm]) t.dispose();
});

test("products with a weight or a result past one binding run in pieces", async () => {
  await testGpu();
  const N = 9000, K = 4096, M = 5; // the weight: 147 MB
  const W = Float32Array.from({ length: N * K }, (_, i) => Math.fround(Math.sin(i * 0.013) * 0.1));
  const X = Float32Array.from({ length: M * K }, (_, i) => Math.fround(Math.cos(i * 0.7)));
  const G = Float32Array.from({ length: M * N }, (_, i) => Math.fround(Math.sin(i * 0.3)));
  const w = tensor(W, [N, K]), x = tensor(X, [M, K]), g = tensor(G, [M, N]);
  const y = (await T.matmul(x, w, { transB: true }).toArray()) as Float32Array; // columns of w
  const dx = (await T.matmul(g, w).toArray()) as Float32Array; // the inner dimension
  const dw = (await T.matmul(g, x, { transA: true }).toArray()) as Float32Array; // a large result
  const dot = (n: number, f: (q: number) => number) => {
    let s = 0;
    for (let q = 0; q < n; q++) s += f(q);
    return s;
  };
  for (const [i, j] of [[0, 0], [4, 8999], [2, 4500], [3, 7000]]) {
    const want = dot(K, (q) => X[i * K + q] * W[j * K + q]);
    assert.ok(Math.abs(y[i * N + j] - want) < 1e-5, `y[${i}, ${j}]`);
  }
  for (const [i, j] of [[0, 0], [4, 4095], [2, 2000]]) {
    const want = dot(N, (q) => G[i * N + q] * W[q * K + j]);
    assert.ok(Math.abs(dx[i * K + j] - want) < 1e-4, `dx[${i}, ${j}]`);
  }
  for (const [i, j] of [[0, 0], [8999, 4095], [4500, 17]]) {
    const want = dot(M, (q) => G[q * N + i] * X[q * K + j]);
    assert.ok(Math.abs(dw[i * K + j] - want) < 1e-5, `dw[${i}, ${j}]`);
  }
  for (const t of [w, x, g]) t.dispose();
});
