/**
 * The classifier fused with the cross-entropy (`classifierCrossEntropy`): with one vocabulary
 * chunk it is bitwise the unfused `crossEntropy(matmul(h, w^T))` in loss and gradients; with
 * several it matches it to float rounding while no buffer holds the [N, V] logits.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { scope, type Tensor, tensor } from "../../src/tensor/tensor.ts";
import { assertClose, testGpu } from "../helpers.ts";

/** Deterministic values in [-scale, scale). */
function values(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}

const N = 37, D = 24, V = 203;

/** Loss, dh and dw of one way of computing the loss, on fresh leaves. */
async function run(
  loss: (h: Tensor, w: Tensor, t: Tensor) => Tensor,
  targets: number[],
): Promise<{ loss: number; dh: Float32Array; dw: Float32Array }> {
  const h = tensor(values(N * D, 1, 2), [N, D]);
  const w = tensor(values(V * D, 2, 0.5), [V, D]);
  h.requiresGrad = w.requiresGrad = true;
  const t = tensor(Int32Array.from(targets), [N], "i32");
  const l = scope(() => loss(h, w, t));
  backward(l);
  const out = {
    loss: await l.item(),
    dh: await h.grad!.toArray() as Float32Array,
    dw: await w.grad!.toArray() as Float32Array,
  };
  for (const x of [h, w, t, l]) x.dispose();
  return out;
}

const targets = Array.from({ length: N }, (_, i) => (i % 5 === 3 ? -1 : (i * 53) % V));
const unfused = (h: Tensor, w: Tensor, t: Tensor) =>
  T.crossEntropy(T.matmul(h, w, { transB: true }), t);

test("classifierCrossEntropy with one chunk is bitwise the unfused ops", async () => {
  await testGpu();
  const want = await run(unfused, targets);
  const got = await run((h, w, t) => T.classifierCrossEntropy(h, w, t), targets);
  assert.equal(T.logitsChunk(N, V), V, "the default is one chunk here");
  assert.equal(got.loss, want.loss);
  assert.deepEqual(got.dh, want.dh);
  assert.deepEqual(got.dw, want.dw);
});

test("classifierCrossEntropy in chunks matches, with no [N, V] buffer", async () => {
  const g = await testGpu();
  const want = await run(unfused, targets);
  for (const chunk of [64, 50, 7, 1]) {
    g.pool.resetPeak();
    const got = await run((h, w, t) => T.classifierCrossEntropy(h, w, t, { chunk }), targets);
    assert.ok(Math.abs(got.loss - want.loss) <= 1e-6 * Math.abs(want.loss), `chunk ${chunk}`);
    assertClose(got.dh, want.dh, { atol: 1e-6, rtol: 1e-4 }, `dh, chunk ${chunk}`);
    assertClose(got.dw, want.dw, { atol: 1e-6, rtol: 1e-4 }, `dw, chunk ${chunk}`);
    // The largest buffer is a weight or its gradient ([V, D]), never the logits.
    assert.ok(g.pool.largestAcquire <= V * D * 4, `chunk ${chunk}: ${g.pool.largestAcquire}`);
    assert.ok(g.pool.largestAcquire < N * V * 4);
  }
  // Every target ignored: loss 0 and no gradient, as the unfused op.
  const none = targets.map(() => -1);
  const zero = await run((h, w, t) => T.classifierCrossEntropy(h, w, t, { chunk: 50 }), none);
  assert.equal(zero.loss, 0);
  assert.ok(zero.dh.every((x) => x === 0) && zero.dw.every((x) => x === 0));
  assert.throws(
    () =>
      T.classifierCrossEntropy(
        tensor(new Float32Array(4), [2, 2]),
        tensor(new Float32Array(6), [2, 3]),
        tensor(Int32Array.of(0, 1), [2], "i32"),
      ),
    /classifierCrossEntropy: h \[2,2\] must be \[N, D\], w \[2,3\] \[V, D\]/,
  );
  assert.throws(() => T.logitsChunk(4, 10, 0), /chunk must be a positive integer/);
});

test("row kernels on long rows (a large vocabulary's logits) match the host", async () => {
  await testGpu();
  for (const v of [8192, 8193, 40_000]) {
    const x = Float32Array.from({ length: 2 * v }, (_, i) => Math.sin(i * 0.1) * 3);
    const t = [v - 1, 3];
    const loss = await T.crossEntropy(tensor(x, [2, v]), tensor(Int32Array.from(t), [2], "i32"))
      .item();
    const logp = (await T.logSoftmax(tensor(x, [2, v])).toArray()) as Float32Array;
    let want = 0;
    for (let r = 0; r < 2; r++) {
      let m = -Infinity, z = 0;
      for (let j = 0; j < v; j++) m = Math.max(m, x[r * v + j]);
      for (let j = 0; j < v; j++) z += Math.exp(x[r * v + j] - m);
      const lse = m + Math.log(z);
      want += (lse - x[r * v + t[r]]) / 2;
      for (const j of [0, 5, v - 1]) {
        assert.ok(
          Math.abs(logp[r * v + j] - (x[r * v + j] - lse)) < 1e-4,
          `logSoftmax ${v} [${r}, ${j}]`,
        );
      }
    }
    assert.ok(Math.abs(loss - want) < 1e-4 * want, `cross-entropy over ${v}: ${loss} vs ${want}`);
  }
});
