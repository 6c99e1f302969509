/**
 * f16 storage: uploads and reads round to nearest even exactly as Float16Array does, casts and
 * their gradients, products with f16 operands under every matmul version (the reference: the
 * f32 product of the f16-rounded inputs, since every kernel widens f16 to f32 and accumulates
 * in f32), the f16 gather, and an f16 embedding past one binding (llvmpipe: 128 MiB).
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type { Tuning } from "../../src/gpu/tuning.ts";
import { DTypeError } from "../../src/gpu/errors.ts";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW } from "../../src/tensor/optim.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { assertClose, FWD, testGpu } from "../helpers.ts";
import { matmulRef, randomArray } from "../cpu/reference.ts";

const round16 = (x: ArrayLike<number>) => Float32Array.from(new Float16Array(Array.from(x)));

const MATMUL_VERSIONS: Partial<Tuning>[] = [
  { matmulVersion: 3 },
  { matmulVersion: 2, matmul: { tileM: 4, tileN: 8, workgroup: 32 } },
  { matmulVersion: 1, matmul: { tileM: 4, tileN: 4, workgroup: 64 } },
];

test("f16 upload, read back and cast round to nearest even like Float16Array", async () => {
  await testGpu();
  // Odd length (a padded last word), values past f16's range, subnormals and ties.
  const host = Float32Array.from([1.0009765625 + 2 ** -11, 65504, 70000, -1e-7, 3e-5, 0.1, 2 / 3]);
  const want = round16(host);
  const t16 = tensor(host, [host.length], "f16");
  assert.equal(t16.dtype, "f16");
  assert.deepEqual(await t16.toArray(), want);
  const c = T.cast(tensor(host), "f16");
  assert.deepEqual(await c.toArray(), want, "device rounding agrees with the host's");
  const back = T.cast(c, "f32");
  assert.equal(back.dtype, "f32");
  assert.deepEqual(await back.toArray(), want);
  // A strided f16 view (every other element from offset 1) reads back through the cast.
  const view = T.slice(T.reshape(tensor(host.subarray(0, 6), [6], "f16"), [3, 2]), 1, 1, 2);
  assert.deepEqual(await view.toArray(), Float32Array.from([want[1], want[3], want[5]]));
  for (const x of [t16, c, back, view]) x.dispose();
  assert.throws(() => T.cast(tensor(Int32Array.from([1]), [1], "i32"), "f16"), DTypeError);
});

test("cast's gradient is f32 and passes through unchanged", async () => {
  await testGpu();
  const w = T.parameter(tensor([0.5, -1.25, 3]), "w");
  const y = T.sum(T.mul(T.cast(T.cast(w, "f16"), "f32"), tensor([2, 3, 4])));
  backward(y);
  assert.equal(w.grad!.dtype, "f32");
  assert.deepEqual(await w.grad!.toArray(), Float32Array.from([2, 3, 4]));
  for (const x of [w, y]) x.dispose();
});

test("matmul with f16 operands: every version, transposes, batch, against the rounded inputs", async () => {
  const gpu = await testGpu();
  const saved = { ...gpu.tuning };
  try {
    for (const tuning of MATMUL_VERSIONS) {
      Object.assign(gpu.tuning, tuning);
      for (const [batch, m, k, n] of [[1, 33, 68, 29], [2, 9, 64, 12], [1, 5, 7, 3]]) {
        const a = randomArray(batch * m * k, m + k), b = randomArray(batch * k * n, n * 3 + k);
        const want = matmulRef(round16(a), round16(b), batch, m, k, n);
        const wantA = matmulRef(round16(a), b, batch, m, k, n);
        const label = `${JSON.stringify(tuning)} ${[batch, m, k, n]}`;
        const a16 = tensor(a, [batch, m, k], "f16"), b16 = tensor(b, [batch, k, n], "f16");
        const b32 = tensor(b, [batch, k, n]);
        const c = T.matmul(a16, b16);
        assert.equal(c.dtype, "f32", "products of f16 operands are f32");
        assertClose(await c.toArray(), want, FWD, `f16 @ f16 ${label}`);
        const mixed = T.matmul(a16, b32);
        assertClose(await mixed.toArray(), wantA, FWD, `f16 @ f32 ${label}`);
        // Transposed f16 storage, as a weight [out, in] is read with transB.
        const bt = T.cast(T.contiguous(T.transpose(T.cast(b16, "f32"))), "f16");
        const c2 = T.matmul(a16, bt, { transB: true });
        assertClose(await c2.toArray(), want, FWD, `f16 @ f16^T ${label}`);
        const at = T.cast(T.contiguous(T.transpose(T.cast(a16, "f32"))), "f16");
        const c3 = T.matmul(at, b16, { transA: true });
        assertClose(await c3.toArray(), want, FWD, `f16^T @ f16 ${label}`);
        for (const x of [a16, b16, b32, c, mixed, bt, c2, at, c3]) x.dispose();
      }
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
});

test("a frozen f16 weight: gradients reach the f32 input and the LoRA-style f32 branch", async () => {
  await testGpu();
  const [m, k, n] = [6, 16, 10];
  const xs = randomArray(m * k, 5), ws = randomArray(n * k, 6);
  const x = T.parameter(tensor(xs, [m, k]), "x");
  const w = tensor(ws, [n, k], "f16");
  const y = T.sumAll(T.matmul(x, w, { transB: true }));
  backward(y);
  // d/dx sum(x W^T) = ones [m, n] @ W: each row is the column sums of W (rounded to f16).
  const w16 = round16(ws), colSum = new Float32Array(k);
  for (let r = 0; r < n; r++) for (let j = 0; j < k; j++) colSum[j] += w16[r * k + j];
  const want = new Float32Array(m * k);
  for (let i = 0; i < m; i++) want.set(colSum, i * k);
  assertClose(await x.grad!.toArray(), want, FWD, "dx through an f16 weight");
  assert.equal(w.grad, null, "the f16 weight takes no gradient");
  for (const t of [x, w, y]) t.dispose();
});

test("AdamW refuses an f16 parameter with a message that says what to do", async () => {
  await testGpu();
  const w = T.parameter(tensor([1, 2, 3, 4], [4], "f16"), "model.layers.0.mlp.up_proj.weight");
  assert.throws(
    () => new AdamW([w], { lr: 1e-3 }),
    (e: Error) => e instanceof DTypeError && /up_proj/.test(e.message) && /f32/.test(e.message),
  );
  w.dispose();
});

test("an f16 embedding past one binding: gather and chunked classifier loss", async () => {
  const g = await testGpu();
  const V = 131_200, D = 512;
  assert.ok(V * D * 2 > g.bindingLimit, "the f16 weight is past one binding");
  const host = new Float32Array(V * D);
  for (let i = 0; i < host.length; i++) host[i] = Math.sin(i * 0.0137) * 0.05;
  const w = tensor(host, [V, D], "f16");
  const rounded = new Float32Array(new Float16Array(host));
  const ids = [0, V - 1, 70_000, 65_600, 7];
  const x = T.embedding(w, tensor(Int32Array.from(ids), [ids.length], "i32"));
  const got = (await x.toArray()) as Float32Array;
  ids.forEach((id, i) => {
    assert.deepEqual(got.subarray(i * D, (i + 1) * D), rounded.subarray(id * D, (id + 1) * D));
  });
  const targets = [V - 1, 3, 100_000, 12, 65_601];
  const loss = T.classifierCrossEntropy(x, w, tensor(Int32Array.from(targets), [5], "i32"));
  let want = 0;
  const logit = new Float64Array(V);
  for (let i = 0; i < ids.length; i++) {
    let mx = -Infinity;
    for (let r = 0; r < V; r++) {
      let s = 0;
      for (let j = 0; j < D; j++) s += rounded[ids[i] * D + j] * rounded[r * D + j];
      logit[r] = s;
      mx = Math.max(mx, s);
    }
    let z = 0;
    for (let r = 0; r < V; r++) z += Math.exp(logit[r] - mx);
    want += (mx + Math.log(z) - logit[targets[i]]) / ids.length;
  }
  const l = await loss.item();
  assert.ok(Math.abs(l - want) < 1e-4 * Math.abs(want), `loss ${l} vs ${want}`);
  for (const t of [w, x, loss]) t.dispose();
});
