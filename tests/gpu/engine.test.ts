/**
 * Engine behaviour: ownership and leaks, scopes, grad mode, views under autograd, errors for bad
 * input, command batching, and a finite-difference check of a composite's gradients.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { DisposedError, DTypeError, IndexError, ShapeError } from "../../src/gpu/errors.ts";
import { backward, freeGraph } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { Rng } from "../../src/tensor/random.ts";
import { noGrad, scope, type Tensor, tensor } from "../../src/tensor/tensor.ts";
import { assertClose, testGpu } from "../helpers.ts";

test("pool: 1,000 create/dispose cycles leave live bytes unchanged and reuse buffers", async () => {
  const gpu = await testGpu();
  const before = gpu.pool.liveBytes, count = gpu.pool.liveCount;
  for (let i = 0; i < 1000; i++) {
    const t = tensor(new Float32Array(1 + (i % 37) * 100), [1 + (i % 37) * 100]);
    const u = T.exp(t);
    t.dispose();
    u.dispose();
  }
  assert.equal(gpu.pool.liveBytes, before);
  assert.equal(gpu.pool.liveCount, count);
  assert.ok(gpu.pool.pooledBytes > 0, "released buffers are cached for reuse");
});

test("pool: forward + backward + optimizer-free step leaves no live buffers behind", async () => {
  const gpu = await testGpu();
  const rng = new Rng(1);
  const w = T.parameter(T.randn([16, 16], rng, 0.3), "w");
  const x = T.randn([4, 16], rng);
  const before = gpu.pool.liveBytes;
  for (let i = 0; i < 3; i++) {
    const loss = scope(() => T.sumAll(T.square(T.rmsnorm(T.matmul(x, w), T.full([16], 1)))));
    backward(loss);
    loss.dispose();
    w.grad!.dispose();
    w.grad = null;
  }
  assert.equal(gpu.pool.liveBytes, before, `leaked: ${JSON.stringify([...gpu.pool.liveOwners()])}`);
  await gpu.sync();
  w.dispose();
  x.dispose();
});

test("views: slice, transpose and expand carry gradients back", async () => {
  await testGpu();
  const x = T.parameter(tensor([1, 2, 3, 4, 5, 6], [2, 3]), "x");
  const y = scope(() => {
    const s = T.slice(x, 1, 1, 3); // [[2,3],[5,6]]
    const t = T.transpose(s); // [[2,5],[3,6]]
    const e = T.expand(T.reshape(T.slice(x, 0, 0, 1), [1, 3]), [4, 3]); // row 0, 4 times
    return T.add(T.sumAll(T.mul(t, t)), T.sumAll(e));
  });
  assert.equal(await y.item(), 4 + 9 + 25 + 36 + 4 * 6);
  backward(y);
  // d/dx: 2x on the slice, plus 4 on row 0 from the expand.
  assertClose(await x.grad!.toArray(), [4, 8, 10, 0, 10, 12], { atol: 0, rtol: 0 }, "grad");
  x.dispose();
  y.dispose();
});

test("grad mode: noGrad records nothing; freeGraph releases saved tensors", async () => {
  const gpu = await testGpu();
  const w = T.parameter(tensor([1, 2], [2]), "w");
  const y = noGrad(() => T.mul(w, w));
  assert.equal(y.requiresGrad, false);
  assert.equal(y.node, null);
  const before = gpu.pool.liveBytes;
  const z = T.mul(w, w);
  assert.ok(z.node);
  freeGraph(z);
  assert.equal(z.node, null);
  z.dispose();
  assert.equal(gpu.pool.liveBytes, before);
  for (const t of [w, y]) t.dispose();
});

test("scope: disposes what it created, keeps what it returns", async () => {
  const gpu = await testGpu();
  const before = gpu.pool.liveCount;
  const kept = scope(() => {
    const a = tensor([1, 2, 3]);
    const b = T.exp(a);
    T.neg(b);
    return { b };
  });
  assert.equal(gpu.pool.liveCount, before + 1);
  assert.ok(!kept.b.disposed);
  kept.b.dispose();
  assert.equal(gpu.pool.liveCount, before);
});

test("ownership: use after dispose throws a DisposedError naming the tensor", async () => {
  await testGpu();
  const t = tensor([1, 2, 3]);
  t.label = "weights";
  t.dispose();
  t.dispose(); // idempotent
  assert.throws(
    () => T.exp(t),
    (e: Error) => e instanceof DisposedError && /weights f32\[3\]/.test(e.message),
  );
});

test("errors: mismatched shapes name the op and both shapes", async () => {
  await testGpu();
  const a = tensor(new Float32Array(6), [2, 3]), b = tensor(new Float32Array(8), [4, 2]);
  assert.throws(
    () => T.matmul(a, b),
    (e: Error) =>
      e instanceof ShapeError && /matmul/.test(e.message) && /\[2,3\]/.test(e.message) &&
      /\[4,2\]/.test(e.message),
  );
  assert.throws(
    () => T.add(a, b),
    (e: Error) =>
      e instanceof ShapeError && /binary\(add\)/.test(e.message) && /\[2,3\]/.test(e.message),
  );
  assert.throws(
    () => T.rmsnorm(a, b),
    (e: Error) => e instanceof ShapeError && /rmsnorm/.test(e.message),
  );
  assert.throws(
    () => T.reshape(a, [4, 2]),
    (e: Error) => e instanceof ShapeError && /reshape/.test(e.message),
  );
  assert.throws(() => tensor([1, 2, 3], [2, 2]), ShapeError);
  for (const t of [a, b]) t.dispose();
});

test("errors: wrong dtype names the op and the operand", async () => {
  await testGpu();
  const ids = tensor(Int32Array.from([0, 1]), [2]);
  const w = tensor(new Float32Array(6), [3, 2]);
  assert.throws(
    () => T.exp(ids),
    (e: Error) =>
      e instanceof DTypeError && /unary\(exp\)/.test(e.message) && /i32\[2\]/.test(e.message),
  );
  assert.throws(
    () => T.embedding(w, w),
    (e: Error) => e instanceof DTypeError && /embedding: ids must be i32/.test(e.message),
  );
  assert.throws(() => tensor([1.5], [1], "i32"), DTypeError);
  for (const t of [ids, w]) t.dispose();
});

test("errors: out-of-range indices name the op, the value and the shapes", async () => {
  await testGpu();
  const w = tensor(new Float32Array(6), [3, 2]);
  const ids = tensor(Int32Array.from([0, 3]), [2]);
  assert.throws(
    () => T.embedding(w, ids),
    (e: Error) =>
      e instanceof IndexError && /embedding/.test(e.message) && /3/.test(e.message) &&
      /\[3,2\]/.test(e.message),
  );
  const logits = tensor(new Float32Array(6), [2, 3]);
  const targets = tensor(Int32Array.from([1, 5]), [2]);
  assert.throws(
    () => T.crossEntropy(logits, targets),
    (e: Error) => e instanceof IndexError && /crossEntropy/.test(e.message),
  );
  const q = tensor(new Float32Array(8), [1, 2, 1, 4]);
  const roles = tensor(Int32Array.from([0, 2]), [1, 2]);
  assert.throws(
    () => T.attention(q, q, q, roles, [[1, 0], [1, 1]]),
    (e: Error) => e instanceof IndexError && /attention: role 2/.test(e.message),
  );
  assert.throws(
    () => T.attention(q, q, q, roles, [[1, 5]]),
    (e: Error) => e instanceof ShapeError && /role table/.test(e.message),
  );
  for (const t of [w, ids, logits, targets, q, roles]) t.dispose();
});

test("cross-entropy with every row ignored is 0 with zero gradient", async () => {
  await testGpu();
  const logits = T.parameter(tensor([1, 2, 3, 4], [2, 2]), "logits");
  const loss = T.crossEntropy(logits, tensor(Int32Array.from([-1, -1]), [2]));
  assert.equal(await loss.item(), 0);
  backward(loss);
  assert.deepEqual([...await logits.grad!.toArray()], [0, 0, 0, 0]);
  logits.dispose();
  loss.dispose();
});

test("embedding backward: grouped (host ids) and scan (GPU-only ids) kernels match the CPU", async () => {
  await testGpu();
  const idsHost = tensor(Int32Array.from([3, 1, 3, 0, 1, 3]), [2, 3]);
  // A copy made on the GPU has no host copy, so its backward takes the scan kernel.
  const idsGpu = T.contiguous(T.transpose(idsHost));
  assert.ok(idsHost.storage.host && !idsGpu.storage.host);
  for (const ids of [idsHost, idsGpu]) {
    const flat = (await ids.toArray()) as Int32Array;
    const w = T.parameter(tensor(new Float32Array(10).map((_, i) => i), [5, 2]), "w");
    const y = T.embedding(w, ids);
    const g = tensor(new Float32Array(y.size).map((_, i) => i + 1), y.shape);
    backward(y, { grad: g });
    const want = new Float32Array(10);
    flat.forEach((id, pos) => {
      want[2 * id] += 2 * pos + 1;
      want[2 * id + 1] += 2 * pos + 2;
    });
    assertClose(
      await w.grad!.toArray(),
      want,
      { atol: 0, rtol: 0 },
      `dW (host ids: ${!!ids.storage.host})`,
    );
    for (const t of [w, y, g]) t.dispose();
  }
  idsHost.dispose();
  idsGpu.dispose();
});

test("batching: a forward + backward records many dispatches and only syncs on read", async () => {
  const gpu = await testGpu();
  const rng = new Rng(3);
  const w = T.parameter(T.randn([32, 32], rng, 0.2), "w");
  const x = T.randn([8, 32], rng);
  const r0 = gpu.stats.reads;
  const d0 = gpu.stats.dispatches;
  const loss = scope(() => {
    let h = x;
    for (let i = 0; i < 4; i++) h = T.silu(T.matmul(h, w));
    return T.sumAll(h);
  });
  backward(loss);
  assert.equal(gpu.stats.reads, r0, "no readback inside forward or backward");
  assert.ok(gpu.stats.dispatches - d0 >= 16);
  await loss.item();
  assert.equal(gpu.stats.reads, r0 + 1);
  for (const t of [w, x, loss]) t.dispose();
});

test("profile: GPU time per kernel, results unchanged, and no profile left open", async () => {
  const gpu = await testGpu();
  const rng = new Rng(4);
  const a = T.randn([64, 48], rng), b = T.randn([48, 40], rng);
  const plain = await noGrad(() => T.silu(T.matmul(a, b))).toArray();
  gpu.startProfile();
  assert.throws(() => gpu.startProfile(), /already running/);
  const c = noGrad(() => T.silu(T.matmul(a, b)));
  const profiled = await c.toArray();
  const kernels = await gpu.stopProfile();
  assert.deepEqual(profiled, plain);
  assert.ok(kernels.some((k) => k.kernel.startsWith("matmul")), JSON.stringify(kernels));
  assert.ok(kernels.every((k) => k.calls >= 1 && k.ms >= 0 && Number.isFinite(k.ms)));
  await assert.rejects(gpu.stopProfile(), /no profile is running/);
  for (const t of [a, b, c]) t.dispose();
});

test("profile: more dispatches than one submit's timestamps keeps every kernel's params", async () => {
  const gpu = await testGpu();
  const before = gpu.maxDispatchesPerSubmit;
  gpu.maxDispatchesPerSubmit = 1 << 20; // only the uniform ring and the query set force submits
  const n = 2100; // > 4096 timestamps / 2
  gpu.startProfile();
  const out = noGrad(() =>
    scope(() => {
      let x = tensor(new Float32Array(4), [4]);
      for (let i = 0; i < n; i++) x = T.addScalar(x, i);
      return x;
    })
  );
  const got = await out.toArray();
  const kernels = await gpu.stopProfile();
  gpu.maxDispatchesPerSubmit = before;
  assert.deepEqual(Array.from(got), new Array(4).fill((n * (n - 1)) / 2));
  assert.equal(kernels.reduce((a, k) => a + k.calls, 0), n);
  out.dispose();
});

/** Loss of a small composite: attention + SwiGLU + RMSNorm + cross-entropy. */
function composite(
  p: Record<string, Tensor>,
  tokens: Tensor,
  roles: Tensor,
  targets: Tensor,
  table: Tensor,
): Tensor {
  return scope(() => {
    const h = T.embedding(p.emb, tokens); // [1, 6, 8]
    const a = T.rmsnorm(h, p.norm);
    const q = T.rope(T.reshape(T.matmul(a, p.wq), [1, 6, 2, 4]), table);
    const kv = T.reshape(T.matmul(a, p.wk), [1, 6, 1, 4]);
    const att = T.reshape(T.attention(q, kv, kv, roles, [[1, 0, 0], [1, 2, 0], [0, 1, 1]]), [
      1,
      6,
      8,
    ]);
    const m = T.swiglu(T.matmul(att, p.w1), T.matmul(att, p.w3));
    const logits = T.reshape(T.matmul(T.add(h, m), p.emb, { transB: true }), [6, 5]);
    return T.crossEntropy(logits, targets);
  });
}

test("finite differences agree with autograd on a composite (20 coordinates)", async () => {
  await testGpu();
  const rng = new Rng(11);
  const p: Record<string, Tensor> = {
    emb: T.randn([5, 8], rng, 0.5),
    norm: T.addScalar(T.randn([8], rng, 0.1), 1),
    wq: T.randn([8, 8], rng, 0.4),
    wk: T.randn([8, 4], rng, 0.4),
    w1: T.randn([8, 8], rng, 0.4),
    w3: T.randn([8, 8], rng, 0.4),
  };
  for (const [k, v] of Object.entries(p)) T.parameter(v, k);
  const tokens = tensor(Int32Array.from([1, 4, 2, 2, 0, 3]), [1, 6]);
  const roles = tensor(Int32Array.from([0, 0, 1, 2, 2, 2]), [1, 6]);
  const targets = tensor(Int32Array.from([4, 2, -1, 0, 3, 1]), [6]);
  const table = T.ropeTable(4, 6);
  const loss = composite(p, tokens, roles, targets, table);
  backward(loss);
  loss.dispose();
  const names = Object.keys(p);
  const h = 1e-2;
  for (let i = 0; i < 20; i++) {
    const name = names[i % names.length];
    const host = (await p[name].toArray()) as Float32Array;
    const j = rng.int(host.length);
    const analytic = (await p[name].grad!.toArray())[j];
    const at = async (delta: number) => {
      const moved = host.slice();
      moved[j] += delta;
      const t = tensor(moved, p[name].shape);
      const saved = p[name];
      p[name] = t;
      const l = noGrad(() => composite(p, tokens, roles, targets, table));
      p[name] = saved;
      const v = await l.item();
      l.dispose();
      t.dispose();
      return v;
    };
    const fd = ((await at(h)) - (await at(-h))) / (2 * h);
    assertClose([analytic], [fd], { atol: 2e-3, rtol: 3e-2 }, `d loss / d ${name}[${j}]`);
  }
  for (const t of [...Object.values(p), tokens, roles, targets, table]) t.dispose();
});

test("pool: past its cache limit, released buffers are destroyed only after the submit", async () => {
  const gpu = await testGpu();
  const limit = gpu.pool.maxPooledBytes;
  gpu.pool.maxPooledBytes = 0;
  try {
    const x = tensor(new Float32Array(4096).fill(1), [4096]);
    let y = T.exp(x);
    for (let i = 0; i < 20; i++) {
      const z = T.addScalar(y, 1); // recorded, not yet submitted
      y.dispose(); // its buffer is still used by the open encoder
      y = z;
    }
    const v = await y.toArray();
    assertClose([v[0]], [Math.E + 20], { atol: 1e-4, rtol: 1e-6 }, "result");
    x.dispose();
    y.dispose();
  } finally {
    gpu.pool.maxPooledBytes = limit;
  }
});

test("add passes its gradient through without a copy; leaves still get storage of their own", async () => {
  await testGpu();
  const a = tensor(new Float32Array([1, 2, 3, 4]), [4]);
  const b = tensor(new Float32Array([5, 6, 7, 8]), [4]);
  a.requiresGrad = b.requiresGrad = true;
  const w = tensor(new Float32Array([1, 10, 100, 1000]), [4]);
  // Both operands of one add are leaves, and a is used again: its gradient accumulates in place.
  const l = T.add(T.sumAll(T.mul(T.add(a, b), w)), T.sumAll(T.mul(a, w)));
  backward(l);
  assert.notEqual(a.grad!.storage, b.grad!.storage);
  assert.deepEqual([...(await a.grad!.toArray())], [2, 20, 200, 2000]);
  assert.deepEqual([...(await b.grad!.toArray())], [1, 10, 100, 1000]);
  // An in-place write to one leaf's gradient leaves the other's alone.
  const s = T.mulScalar(a.grad!, 0);
  T.copyInto(a.grad!, s);
  assert.deepEqual([...(await b.grad!.toArray())], [1, 10, 100, 1000]);
  for (const t of [a, b, w, l, s]) t.dispose();
});

test("matmulAccumulate: dst + op(a) @ op(b) bitwise, every transpose, version and split-K", async () => {
  const gpu = await testGpu();
  const saved = gpu.tuning.matmulVersion;
  const rng = new Rng(9);
  try {
    for (const version of [1, 2, 3]) {
      gpu.tuning.matmulVersion = version;
      // Batched rows against a 2-D weight, transposed operands, and a long inner dimension
      // with a small result (split-K in v2 and v3).
      for (
        const [as, bs, o] of [
          [[2, 7, 12], [12, 20], {}],
          [[12, 33], [20, 12], { transA: true, transB: true }],
          [[4096, 8], [4096, 12], { transA: true }],
        ] as const
      ) {
        const a = T.randn(as, rng), b = T.randn(bs, rng);
        const prod = T.matmul(a, b, o);
        const dst = T.randn(prod.shape, rng);
        const want = await T.add(dst, prod).toArray();
        T.matmulAccumulate(dst, a, b, o);
        assert.deepEqual(await dst.toArray(), want, `v${version} ${JSON.stringify([as, bs, o])}`);
        for (const t of [a, b, prod, dst]) t.dispose();
      }
    }
  } finally {
    gpu.tuning.matmulVersion = saved;
  }
  const d = T.zeros([3, 4]);
  assert.throws(() => T.matmulAccumulate(d, T.zeros([3, 5]), T.zeros([5, 5])), /cannot accumulate/);
  d.dispose();
});

test("backward adds a gradient gathered from several consumers in place: no add kernels, same gradients", async () => {
  const gpu = await testGpu();
  const rng = new Rng(10);
  const w = [0, 1, 2].map(() => T.parameter(T.randn([16, 8], rng)));
  const x0 = T.parameter(T.randn([2, 5, 8], rng)), nw = T.parameter(T.randn([8], rng));
  // x feeds three projections (as q, k and v) and, through an RMSNorm, the residual.
  const loss = () => {
    const x = T.mulScalar(x0, 1.5);
    const h = T.rmsnorm(x, nw);
    const ys = w.map((wi) => T.matmul(h, wi, { transB: true }));
    return T.sumAll(
      T.add(T.add(T.add(ys[0], T.mulScalar(ys[1], 2)), ys[2]), T.matmul(x, w[0], { transB: true })),
    );
  };
  const l = loss();
  gpu.startProfile();
  backward(l);
  const kernels = await gpu.stopProfile();
  const adds = kernels.filter((k) => k.kernel.includes("(a + b)"));
  assert.deepEqual(adds, [], "the gradients of h and x are summed where they are computed");
  assert.ok(kernels.some((k) => k.kernel.endsWith("_acc") || k.kernel.includes("_acc_")));
  const got = await x0.grad!.toArray();
  // The same sums as separate adds, from the same products.
  const h0 = await nw.grad!.toArray();
  for (const p of [...w, x0, nw]) p.grad?.dispose(), p.grad = null;
  const ref = T.parameter(tensor(await x0.toArray() as Float32Array, x0.shape));
  const g = T.full([2, 5, 16], 1);
  const dh = T.add(T.add(T.matmul(g, w[0]), T.matmul(T.mulScalar(g, 2), w[1])), T.matmul(g, w[2]));
  const x = T.mulScalar(ref, 1.5);
  const hh = T.rmsnorm(x, nw);
  backward(hh, { grad: dh });
  assertClose(await nw.grad!.toArray(), h0, { atol: 1e-5, rtol: 1e-5 }, "norm weight gradient");
  const dxRes = T.mulScalar(T.matmul(g, w[0]), 1.5);
  const want = await T.add(ref.grad!, dxRes).toArray();
  assertClose(got, want, { atol: 1e-5, rtol: 1e-5 }, "x gradient");
  for (const t of [...w, x0, nw, l, ref, g, dh, x, hh, dxRes]) t.dispose();
});

test("gatherScaled: bitwise mul(embedding, scale), vec4 or not, f16 weights too", async () => {
  await testGpu();
  const rng = new Rng(11);
  for (const [v, d, dtype] of [[9, 8, "f32"], [9, 6, "f32"], [9, 8, "f16"]] as const) {
    const w = T.cast(T.randn([v, d], rng), dtype);
    const ids = tensor(Int32Array.from([3, 0, 8, 8, 1, 5]), [2, 3], "i32");
    const scale = T.randn([2, 3], rng);
    const want = noGrad(() => T.mul(T.embedding(w, ids), T.reshape(scale, [2, 3, 1])));
    const got = T.gatherScaled(w, ids, scale);
    assert.deepEqual(got.shape, [2, 3, d]);
    assert.deepEqual(await got.toArray(), await want.toArray(), `${v} x ${d} ${dtype}`);
    for (const t of [w, ids, scale, want, got]) t.dispose();
  }
  assert.throws(
    () =>
      T.gatherScaled(T.zeros([4, 4]), tensor(Int32Array.from([0, 9]), [2], "i32"), T.zeros([2])),
    /gatherScaled: id \(weight \[4,4\]\) 9 at flat position 1 .* outside \[0, 4\)/,
  );
});
