/**
 * Kernels against the CPU references on shapes the goldens do not reach (tile edges, long rows,
 * folded grids), under several tunings (workgroup sizes, matmul tiles), as llm.c checks every
 * kernel version at every block size.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { choosePlan } from "../../src/gpu/kernels/matmul_tex.ts";
import { runRmsnormPool } from "../../src/gpu/kernels/rowwise.ts";
import { runSample } from "../../src/gpu/kernels/sample.ts";
import { runElementwise } from "../../src/gpu/kernels/elementwise.ts";
import { type Gpu, gpu } from "../../src/gpu/device.ts";
import { isLlvmpipe, type Tuning } from "../../src/gpu/tuning.ts";
import * as T from "../../src/tensor/ops.ts";
import { backward } from "../../src/tensor/backward.ts";
import { type Tensor, tensor } from "../../src/tensor/tensor.ts";
import { assertClose, everyTuning, FWD, testGpu } from "../helpers.ts";
import {
  attentionRef,
  crossEntropyRef,
  matmulRef,
  randomArray,
  rmsnormRef,
  ropeRef,
  softmaxRef,
} from "../cpu/reference.ts";

const TUNINGS: Partial<Tuning>[] = [
  {
    elementwiseWorkgroup: 64,
    rowWorkgroup: 64,
    matmul: { tileM: 8, tileN: 8, workgroup: 64 },
    matmulVersion: 3,
    attentionWorkgroup: 64,
    attentionBlock: 8,
    attentionVersion: 3,
    attentionKvTextures: true,
    storageTextureReads: true,
    threadRowMaxLen: 1 << 20,
    serialReduceMax: 1 << 20,
  },
  // Attention v3 with K and V in storage buffers, blocks of 4; matmul v3 sampling its textures.
  {
    attentionVersion: 3,
    attentionBlock: 4,
    attentionKvTextures: false,
    attentionWorkgroup: 16,
    storageTextureReads: false,
  },
  {
    elementwiseWorkgroup: 256,
    elementwiseVec4: false,
    rowWorkgroup: 256,
    matmul: { tileM: 4, tileN: 4, workgroup: 64 },
    matmulVersion: 1,
    attentionWorkgroup: 8,
    attentionBlock: 0,
    attentionVersion: 2,
    threadRowMaxLen: 0,
    serialReduceMax: 0,
  },
  {
    elementwiseWorkgroup: 32,
    rowWorkgroup: 32,
    matmul: { tileM: 4, tileN: 8, workgroup: 32 },
    matmulVersion: 2,
    attentionWorkgroup: 32,
    attentionBlock: 3,
    attentionVersion: 2,
    threadRowMaxLen: 128,
    serialReduceMax: 64,
  },
];

async function underEachTuning(fn: (label: string) => Promise<void>): Promise<void> {
  const gpu = await testGpu();
  const saved = { ...gpu.tuning };
  try {
    for (const t of everyTuning() ? TUNINGS : [{}]) {
      Object.assign(gpu.tuning, t);
      await fn(everyTuning() ? JSON.stringify(t) : "(adapter tuning)");
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
}

test("matmul vs CPU: tile edges, transposes, batch, every tuning", async () => {
  // K % 4 == 0 with odd M, N exercises v2's edges; K % 4 != 0 falls back to v1.
  const shapes = [
    [1, 129, 67, 255],
    [3, 17, 130, 9],
    [1, 256, 256, 64],
    [2, 8, 1, 33],
    [1, 33, 68, 29],
    [2, 7, 12, 5],
    [1, 1, 4, 1],
    [1, 8, 4096, 8], // few tiles, long K: split-K
    [2, 9, 1028, 12],
  ];
  await underEachTuning(async (tuning) => {
    for (const [batch, m, k, n] of shapes) {
      const a = randomArray(batch * m * k, m * 7 + k), b = randomArray(batch * k * n, n * 13 + k);
      const want = matmulRef(a, b, batch, m, k, n);
      const ta = tensor(a, [batch, m, k]), tb = tensor(b, [batch, k, n]);
      const c = T.matmul(ta, tb);
      assertClose(await c.toArray(), want, FWD, `matmul ${[batch, m, k, n]} ${tuning}`);
      // The same product through transposed views: a^T^T @ b^T^T.
      const at = T.contiguous(T.transpose(ta)), bt = T.contiguous(T.transpose(tb));
      const c2 = T.matmul(at, bt, { transA: true, transB: true });
      assertClose(await c2.toArray(), want, FWD, `matmul^T ${[batch, m, k, n]} ${tuning}`);
      const c3 = T.matmul(ta, bt, { transB: true }), c4 = T.matmul(at, tb, { transA: true });
      assertClose(await c3.toArray(), want, FWD, `matmul a @ b^T ${[batch, m, k, n]} ${tuning}`);
      assertClose(await c4.toArray(), want, FWD, `matmul a^T @ b ${[batch, m, k, n]} ${tuning}`);
      for (const x of [ta, tb, c, at, bt, c2, c3, c4]) x.dispose();
    }
  });
});

test("matmul v1 past llvmpipe's loop cap: K x tile over 65,535, and K itself over it", async () => {
  // llvmpipe stops a loop at 65,535 iterations per invocation, counted over the loops around it
  // (Gpu.loopLimit): K = 8,192 under an 8 x 8 tile, and K = 70,001 (split into ranges there).
  const gpu = await testGpu();
  const saved = structuredClone(gpu.tuning);
  try {
    Object.assign(gpu.tuning, { matmulVersion: 1, matmul: { tileM: 8, tileN: 8, workgroup: 64 } });
    for (const [m, k, n] of [[9, 8192, 8], [3, 70001, 5]]) {
      const a = randomArray(m * k, k + m), b = randomArray(k * n, k + n);
      const want = matmulRef(a, b, 1, m, k, n);
      const c = T.matmul(tensor(a, [m, k]), tensor(b, [k, n]));
      // Sums of 8,192 to 70,001 products: the tolerance grows with K.
      assertClose(
        await c.toArray(),
        want,
        { atol: 1e-5 * Math.sqrt(k), rtol: 1e-4 },
        `v1 ${[m, k, n]}`,
      );
      c.dispose();
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
});

test("attention vs CPU: random role tables, GQA, long rows, every tuning", async () => {
  await underEachTuning(async (tuning) => {
    for (
      const [b, t, hq, hkv, d, r] of [[2, 37, 4, 2, 16, 3], [1, 130, 2, 1, 8, 2], [
        1,
        5,
        3,
        3,
        2,
        4,
      ]]
    ) {
      let seed = b * 1000 + t;
      const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296);
      const table = Array.from(
        { length: r },
        () => Array.from({ length: r }, () => Math.floor(rnd() * 4)),
      );
      const roles = Int32Array.from({ length: b * t }, () => Math.floor(rnd() * r));
      const q = randomArray(b * t * hq * d, 1 + t), k = randomArray(b * t * hkv * d, 2 + t);
      const v = randomArray(b * t * hkv * d, 3 + t);
      const dims = { b, t, hq, hkv, d, scale: 1 / Math.sqrt(d) };
      const want = attentionRef(q, k, v, roles, table, dims);
      const out = T.attention(
        tensor(q, [b, t, hq, d]),
        tensor(k, [b, t, hkv, d]),
        tensor(v, [b, t, hkv, d]),
        tensor(roles, [b, t]),
        table,
      );
      assertClose(
        await out.toArray(),
        want,
        FWD,
        `attention ${[b, t, hq, hkv, d]} table ${JSON.stringify(table)} ${tuning}`,
      );
      out.dispose();
    }
  });
});

test("row kernels vs CPU: softmax, log-softmax, rmsnorm, cross-entropy; long/short rows, both modes", async () => {
  await underEachTuning(async (tuning) => {
    for (const [rows, n] of [[3, 1000], [70, 3], [1, 4097]]) {
      const x = randomArray(rows * n, rows + n, 4), w = randomArray(n, n);
      const tx = tensor(x, [rows, n]), tw = tensor(w, [n]);
      for (const log of [false, true]) {
        const y = log ? T.logSoftmax(tx) : T.softmax(tx);
        assertClose(
          await y.toArray(),
          softmaxRef(x, n, log),
          FWD,
          `softmax(log=${log}) ${rows}x${n} ${tuning}`,
        );
        y.dispose();
      }
      const y = T.rmsnorm(tx, tw, 1e-5);
      assertClose(await y.toArray(), rmsnormRef(x, w, 1e-5), FWD, `rmsnorm ${rows}x${n} ${tuning}`);
      const targets = Int32Array.from({ length: rows }, (_, i) => (i % 3 === 2 ? -1 : (i * 7) % n));
      const ce = T.crossEntropy(tx, tensor(targets, [rows], "i32"));
      const want = crossEntropyRef(x, targets, n, -1);
      assertClose([await ce.item()], [want], FWD, `cross-entropy ${rows}x${n} ${tuning}`);
      for (const t of [tx, tw, y, ce]) t.dispose();
    }
  });
});

test("rmsnorm pool vs CPU: RMSNorm, a mean over each span of rows, L2 norm; spans alone decide", async () => {
  const g = await testGpu();
  const rows = 37, n = 24, eps = 1e-5;
  const x = randomArray(rows * n, 11, 3), w = randomArray(n, 12);
  const normed = rmsnormRef(x, w, eps);
  const ref = (spans: [number, number][], l2: boolean) =>
    spans.flatMap(([start, count]) => {
      const v = Array.from({ length: n }, (_, j) => {
        let s = 0;
        for (let r = start; r < start + count; r++) s += normed[r * n + j];
        return s / count;
      });
      const norm = Math.sqrt(v.reduce((a, b) => a + b * b, 0) + 1e-12);
      return l2 ? v.map((e) => e / norm) : v;
    });
  const run = async (spans: [number, number][], l2: boolean) => {
    const tx = tensor(x, [rows, n]), tw = tensor(w, [n]);
    const tg = tensor(Int32Array.from(spans.flat()), [spans.length, 2], "i32");
    const r = T.zeros([rows]), y = T.zeros([spans.length, n]);
    runRmsnormPool(
      g,
      { x: tx.buf, w: tw.buf, g: tg.buf, y: y.buf, r: r.buf },
      spans.length,
      n,
      eps,
      l2 ? 1e-12 : null,
    );
    const out = (await y.toArray()) as Float32Array;
    for (const t of [tx, tw, tg, r, y]) t.dispose();
    return out;
  };
  const spans: [number, number][] = [[0, 1], [1, 9], [10, 20], [30, 7]];
  for (const l2 of [false, true]) {
    const out = await run(spans, l2);
    assertClose(out, ref(spans, l2), FWD, `rmsnorm pool l2=${l2}`);
    // A span's vector is the same bits alone or among others.
    const alone = await run([spans[2]], l2);
    assert.deepEqual(Array.from(alone), Array.from(out.subarray(2 * n, 3 * n)));
  }
  const z = T.zeros([8]), b = z.buf;
  assert.throws(
    () => runRmsnormPool(g, { x: b, w: b, g: b, y: b, r: b }, 1, 6, eps, null),
    /row length 6 is not a multiple of 4/,
  );
  z.dispose();
});

test("rope vs CPU at 512 positions (angles from the float64 table), v1 and v2", async () => {
  // The tunings switch vec4 elementwise (rope v2) on and off; d = 6 always takes v1.
  await underEachTuning(async (tuning) => {
    for (const d of [64, 6]) {
      const dims = { b: 1, t: 512, h: 2, d };
      const x = randomArray(512 * 2 * d, 5);
      const table = T.ropeTable(d, 512, 10000);
      const y = T.rope(tensor(x, [1, 512, 2, d]), table);
      assertClose(await y.toArray(), ropeRef(x, dims, 10000), FWD, `rope 512 d=${d} ${tuning}`);
      y.dispose();
      table.dispose();
    }
  });
});

test("elementwise vs CPU: vec4 and scalar paths, offsets, broadcast, every tuning", async () => {
  await underEachTuning(async (tuning) => {
    for (const n of [4096, 4094, 12]) {
      const a = randomArray(n, n, 2), b = randomArray(n, n + 1, 2);
      const ta = tensor(a, [n]), tb = tensor(b, [n]);
      const sum = T.add(ta, tb), act = T.silu(ta);
      // Views at offsets 4 (vec4-aligned) and 3 (not): the kernels read through the offset.
      const s4 = T.slice(ta, 0, 4, n - 4), s3 = T.slice(tb, 0, 3, n - 1);
      const mixed = T.mul(s4, T.slice(tb, 0, 4, n - 4)), odd = T.mulScalar(s3, 2);
      const [gs, ga, gm, go] = await Promise.all([sum, act, mixed, odd].map((t) => t.toArray()));
      assertClose(gs, Array.from(a, (x, i) => x + b[i]), FWD, `add n=${n} ${tuning}`);
      assertClose(ga, Array.from(a, (x) => x / (1 + Math.exp(-x))), FWD, `silu n=${n} ${tuning}`);
      assertClose(
        gm,
        Array.from(a.slice(4, n - 4), (x, i) => x * b[i + 4]),
        FWD,
        `mul@4 ${tuning}`,
      );
      assertClose(go, Array.from(b.slice(3, n - 1), (x) => 2 * x), FWD, `mulScalar@3 ${tuning}`);
      for (const t of [ta, tb, sum, act, s4, s3, mixed, odd]) t.dispose();
    }
    const rows = tensor(randomArray(64, 9, 1), [16, 4]), bias = tensor(randomArray(4, 10, 1), [4]);
    const br = T.add(rows, bias);
    const [r, bb, got] = await Promise.all([rows, bias, br].map((t) => t.toArray()));
    assertClose(got, Array.from(r, (x, i) => x + bb[i % 4]), FWD, `broadcast ${tuning}`);
    for (const t of [rows, bias, br]) t.dispose();
  });
});

test("elementwise with several expressions equals one kernel each, bitwise, on every path", async () => {
  const exprs = ["g * b * sigmoid(a) * (1.0 + a * (1.0 - sigmoid(a)))", "g * a * sigmoid(a)"];
  await underEachTuning(async (tuning) => {
    // n % 4 == 0 (vec4 where the tuning has it), n % 4 != 0 (contiguous scalar), and a transposed
    // view (strided index math).
    for (const [n, transposed] of [[4096, false], [4094, false], [48, true]] as const) {
      const t = (seed: number) => tensor(randomArray(n, seed, 3), transposed ? [6, n / 6] : [n]);
      const [a0, b, g] = [t(n), t(n + 1), t(n + 2)];
      const a = transposed ? T.transpose(a0, 0, 1) : a0;
      const shape = a.shape;
      const ins = {
        a,
        b: transposed ? T.transpose(b, 0, 1) : b,
        g: transposed ? T.transpose(g, 0, 1) : g,
      };
      const both = T.mapExprs(exprs, ins, shape);
      const apart = exprs.map((e) => T.mapExpr(e, ins, shape));
      for (let j = 0; j < exprs.length; j++) {
        assert.deepEqual(
          await both[j].toArray(),
          await apart[j].toArray(),
          `expression ${j}, n=${n}${transposed ? " transposed" : ""} ${tuning}`,
        );
      }
      const host = [await a.toArray(), await ins.b.toArray(), await ins.g.toArray()];
      const [ha, hb, hg] = host.map((x) => Array.from(x as Float32Array));
      const sig = (x: number) => 1 / (1 + Math.exp(-x));
      assertClose(
        await both[0].toArray(),
        ha.map((x, i) => hg[i] * hb[i] * sig(x) * (1 + x * (1 - sig(x)))),
        FWD,
        `da ${tuning}`,
      );
      assertClose(
        await both[1].toArray(),
        ha.map((x, i) => hg[i] * x * sig(x)),
        FWD,
        `db ${tuning}`,
      );
      for (const x of [a0, b, g, ...both, ...apart]) x.dispose();
      if (transposed) { for (const x of [a, ins.b, ins.g]) x.dispose(); }
    }
  });
  // One output per expression, of one element type: anything else is refused before a dispatch.
  const x = tensor(randomArray(8, 1, 1), [8]);
  const outs = [T.zeros([8]), T.zeros([8])];
  const ins = [{ name: "a", buf: x.buf, offset: 0, strides: [1], type: "f32" as const }];
  const out = (t: Tensor) => ({ buf: t.buf, offset: 0, strides: [1], type: "f32" as const });
  assert.throws(
    () => runElementwise(gpu(), ["a", "a * 2.0"], ins, out(outs[0]), [8]),
    /2 expressions need as many outputs \(got 1\)/,
  );
  assert.throws(() => runElementwise(gpu(), [], ins, [], [8]), /0 expressions/);
  assert.throws(
    () =>
      runElementwise(gpu(), ["a", "a"], ins, [out(outs[0]), { ...out(outs[1]), type: "i32" }], [0]),
    /all of one element type/,
  );
  for (const t of [x, ...outs]) t.dispose();
});

test("elementwise over a grid folded past 65535 workgroups", async () => {
  await testGpu();
  const n = 65535 * 64 + 1234;
  const x = new Float32Array(n).map((_, i) => (i % 1000) / 100);
  const y = T.mulScalar(tensor(x, [n]), 3);
  const got = await y.toArray();
  for (const i of [0, 1, 65535 * 64 - 1, 65535 * 64, n - 1]) {
    assertClose([got[i]], [x[i] * 3], FWD, `element ${i}`);
  }
  y.dispose();
});

test("reductions vs CPU: serial and tree kernels, long and short axes, every tuning", async () => {
  await underEachTuning(async (tuning) => {
    const cases: [number[], number][] = [[[3, 1000], 1], [[5000], 0], [[7, 33, 5], 1], [[2, 3], 0]];
    for (const [shape, axis] of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const x = randomArray(n, n + axis, 3);
      const tx = tensor(x, shape);
      const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
      const r = shape[axis];
      const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
      const wantSum: number[] = [], wantMax: number[] = [];
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          let s = 0, m = -Infinity;
          for (let k = 0; k < r; k++) {
            const v = x[(o * r + k) * inner + i];
            s += v;
            m = Math.max(m, v);
          }
          wantSum.push(s);
          wantMax.push(m);
        }
      }
      const s = T.sum(tx, axis), m = T.max(tx, axis), mean = T.mean(tx, axis);
      assertClose(
        await s.toArray(),
        wantSum,
        { atol: 1e-4, rtol: 1e-5 },
        `sum [${shape}] axis ${axis} ${tuning}`,
      );
      assertClose(
        await m.toArray(),
        wantMax,
        { atol: 0, rtol: 0 },
        `max [${shape}] axis ${axis} ${tuning}`,
      );
      assertClose(
        await mean.toArray(),
        wantSum.map((v) => v / r),
        FWD,
        `mean [${shape}] ${tuning}`,
      );
      for (const t of [tx, s, m, mean]) t.dispose();
    }
  });
});

test("attention on packed sequences equals the padded batch, forward and backward, every tuning", async () => {
  // Three sequences, lengths 5, 9 and 2, roles from the GEM table with a pad role 3.
  const table = [[1, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]];
  const lens = [5, 9, 2], roles = [[0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1, 2, 2, 2], [0, 1]];
  const [hq, hkv, d] = [4, 2, 8];
  const n = 16, tmax = 9;
  await underEachTuning(async (tuning) => {
    const q = randomArray(n * hq * d, 1),
      k = randomArray(n * hkv * d, 2),
      v = randomArray(n * hkv * d, 3);
    const dout = randomArray(n * hq * d, 4);
    // Packed: one row of 16 tokens.
    const seg = new Int32Array(n * 2), packedRoles = new Int32Array(n);
    let at = 0;
    lens.forEach((len, i) => {
      for (let p = 0; p < len; p++) {
        seg.set([at, at + len], 2 * (at + p));
        packedRoles[at + p] = roles[i][p];
      }
      at += len;
    });
    const P = (x: Float32Array, h: number) => T.parameter(tensor(x, [1, n, h, d]));
    const [pq, pk, pv] = [P(q, hq), P(k, hkv), P(v, hkv)];
    const po = T.attention(pq, pk, pv, tensor(packedRoles, [1, n], "i32"), table, {
      segments: tensor(seg, [1, n, 2], "i32"),
    });
    backward(po, { grad: tensor(dout, [1, n, hq, d]) });
    // Padded: [3, 9] with pad role 3 after each sequence.
    const pad = (x: Float32Array, h: number) => {
      const out = new Float32Array(3 * tmax * h * d);
      let a = 0;
      lens.forEach((len, i) => {
        out.set(x.subarray(a * h * d, (a + len) * h * d), i * tmax * h * d);
        a += len;
      });
      return out;
    };
    const padRoles = new Int32Array(3 * tmax).fill(3);
    roles.forEach((r, i) => padRoles.set(r, i * tmax));
    const B = (x: Float32Array, h: number) => T.parameter(tensor(pad(x, h), [3, tmax, h, d]));
    const [bq, bk, bv] = [B(q, hq), B(k, hkv), B(v, hkv)];
    const bo = T.attention(bq, bk, bv, tensor(padRoles, [3, tmax], "i32"), table);
    backward(bo, { grad: tensor(pad(dout, hq), [3, tmax, hq, d]) });
    const tol = { atol: 1e-5, rtol: 1e-4 };
    const same = async (packed: Tensor, padded: Tensor, h: number, what: string) =>
      assertClose(
        pad((await packed.toArray()) as Float32Array, h),
        await padded.toArray(),
        tol,
        `${what} ${tuning}`,
      );
    await same(po, bo, hq, "out");
    await same(pq.grad!, bq.grad!, hq, "dq");
    await same(pk.grad!, bk.grad!, hkv, "dk");
    await same(pv.grad!, bv.grad!, hkv, "dv");
    const wantOut = attentionRef(
      q.subarray(0, 5 * hq * d),
      k.subarray(0, 5 * hkv * d),
      v.subarray(0, 5 * hkv * d),
      roles[0],
      table,
      { b: 1, t: 5, hq, hkv, d, scale: 1 / Math.sqrt(d) },
    );
    assertClose(
      ((await po.toArray()) as Float32Array).subarray(0, 5 * hq * d),
      wantOut,
      tol,
      `first sequence vs CPU ${tuning}`,
    );
    // The token records built once (packedTokens), as a model's layers share them: bitwise the
    // same forward and gradients.
    const records = T.packedTokens(
      tensor(packedRoles, [1, n], "i32"),
      tensor(seg, [1, n, 2], "i32"),
    );
    const [rq, rk, rv] = [P(q, hq), P(k, hkv), P(v, hkv)];
    const ro = T.attention(rq, rk, rv, tensor(packedRoles, [1, n], "i32"), table, {
      packed: records,
    });
    backward(ro, { grad: tensor(dout, [1, n, hq, d]) });
    for (
      const [a, b, what] of [[ro, po, "out"], [rq.grad!, pq.grad!, "dq"], [
        rk.grad!,
        pk.grad!,
        "dk",
      ], [rv.grad!, pv.grad!, "dv"]] as const
    ) {
      assert.deepEqual(await a.toArray(), await b.toArray(), `packed records: ${what} ${tuning}`);
    }
    for (const x of [pq, pk, pv, po, bq, bk, bv, bo, rq, rk, rv, ro, records]) x.dispose();
  });
  // A token outside its own segment is refused where the records are built, by token.
  const bad = new Int32Array([0, 2, 0, 2, 3, 4, 0, 4]);
  assert.throws(
    () => T.packedTokens(tensor(new Int32Array(4), [1, 4], "i32"), tensor(bad, [1, 4, 2], "i32")),
    /segment \(3, 4\) of token 2 does not contain its position 2/,
  );
});

/** The plan runMatmulTex makes for an [m, k] x [k, n] product on this device (subgroup 0: plain). */
function planOn(gpu: Gpu, m: number, k: number, n: number, batch: number, subgroup = 0) {
  return choosePlan(
    m,
    n,
    k,
    batch,
    gpu.cores,
    gpu.simdWidth,
    32,
    gpu.tuning.matmulTileArea,
    subgroup,
  );
}

test("matmul v3: lanes split between columns and rows, every split the plan picks", async () => {
  const gpu = await testGpu();
  const saved = { ...gpu.tuning };
  Object.assign(gpu.tuning, { matmulVersion: 3 });
  // [batch, m, k, n]: narrow products give a few column lanes a wide tile each, wide ones give
  // every lane its own columns; long K adds split-K. Edges on every side.
  const shapes = [[1, 33, 12, 9], [2, 65, 68, 9], [1, 33, 1028, 30], [1, 33, 68, 67]];
  const splits = new Set<number>();
  try {
    for (const [batch, m, k, n] of shapes) {
      const plan = planOn(gpu, m, k, n, batch);
      splits.add(plan.wc);
      const a = randomArray(batch * m * k, m + 3 * k), b = randomArray(batch * k * n, n + 5 * k);
      const want = matmulRef(a, b, batch, m, k, n);
      const ta = tensor(a, [batch, m, k]), tb = tensor(b, [batch, k, n]);
      const at = T.contiguous(T.transpose(ta)), bt = T.contiguous(T.transpose(tb));
      const label = `${[batch, m, k, n]} plan ${JSON.stringify(plan)}`;
      const outs = [
        T.matmul(ta, tb),
        T.matmul(at, bt, { transA: true, transB: true }),
        T.matmul(ta, bt, { transB: true }),
        T.matmul(at, tb, { transA: true }),
      ];
      for (const c of outs) assertClose(await c.toArray(), want, FWD, label);
      for (const x of [ta, tb, at, bt, ...outs]) x.dispose();
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
  // The shapes reach both kinds of plan on this adapter.
  assert.ok(splits.has(gpu.simdWidth), `no plan with every lane on columns: ${[...splits]}`);
  assert.ok([...splits].some((w) => w < gpu.simdWidth), `no split lanes: ${[...splits]}`);
});

test("matmul v3 sharing A through subgroups or reading textures as storage: bitwise the plain kernel's products", async () => {
  const gpu = await testGpu();
  // Deno's wgpu and Bun's Dawn both grant subgroups on llvmpipe: the shared path must run here.
  if (isLlvmpipe(gpu.description)) assert.ok(gpu.subgroupSize > 0, "no subgroups on llvmpipe");
  if (!gpu.subgroupSize) return;
  // Both runtimes take read-only storage textures on llvmpipe too.
  const saved = { ...gpu.tuning };
  gpu.tuning.storageTextureReads = true;
  const storage = gpu.textureReads === "rtex";
  Object.assign(gpu.tuning, saved);
  if (isLlvmpipe(gpu.description)) assert.ok(storage, "no read-only storage textures on llvmpipe");
  // [batch, m, k, n]: row tails against every tile height, a K tail (masked last step), split-K
  // (long K, few outputs), N tails with and without vec4 stores, a wide N; A and B each stored
  // either way.
  const shapes = [[1, 33, 12, 9], [2, 65, 68, 67], [1, 9, 4098, 12], [1, 257, 64, 64], [
    1,
    40,
    6,
    516,
  ], [1, 1, 4, 1]];
  const kernels = new Set<string>();
  try {
    Object.assign(gpu.tuning, { matmulVersion: 3 });
    for (const [batch, m, k, n] of shapes) {
      const plan = planOn(gpu, m, k, n, batch);
      const shared = planOn(gpu, m, k, n, batch, gpu.subgroupSize);
      assert.equal(shared.shareA, gpu.subgroupSize);
      assert.equal(shared.slices, plan.slices, `${[batch, m, k, n]}: the same split-K`);
      const a = randomArray(batch * m * k, m + 7 * k), b = randomArray(batch * k * n, n + 3 * k);
      const want = matmulRef(a, b, batch, m, k, n);
      const ta = tensor(a, [batch, m, k]), tb = tensor(b, [batch, k, n]);
      const at = T.contiguous(T.transpose(ta)), bt = T.contiguous(T.transpose(tb));
      const run = async (subgroups: boolean, storageReads: boolean) => {
        gpu.tuning.matmulSubgroups = subgroups;
        gpu.tuning.storageTextureReads = storageReads;
        gpu.startProfile();
        const outs = [
          T.matmul(ta, tb),
          T.matmul(ta, bt, { transB: true }),
          T.matmul(at, tb, { transA: true }),
          T.matmul(at, bt, { transA: true, transB: true }),
        ];
        const got = await Promise.all(outs.map((c) => c.toArray()));
        for (const t of await gpu.stopProfile()) kernels.add(t.kernel);
        for (const c of outs) c.dispose();
        return got;
      };
      const [on, off] = [await run(true, false), await run(false, false)];
      const label = `${[batch, m, k, n]} plan ${JSON.stringify(shared)}`;
      for (const [sg, got] of [[true, await run(true, true)], [false, await run(false, true)]]) {
        assert.deepEqual(got, on, `${label}: textures read as storage${sg ? ", A shared" : ""}`);
      }
      // f32 sums over a long K drift from the f64 reference by ~1e-5 per 512 terms.
      const tol = { ...FWD, atol: FWD.atol * Math.max(1, k / 512) };
      for (let i = 0; i < on.length; i++) {
        assertClose(on[i], want, tol, label);
        assert.deepEqual(on[i], off[i], `${label}: bitwise the plain kernel's`);
      }
      for (const x of [ta, tb, at, bt]) x.dispose();
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
  const names = [...kernels].filter((k) => k.startsWith("matmul_v3_"));
  assert.ok(
    names.some((k) => k.includes(`_sg${gpu.subgroupSize}`)),
    `no shared-A kernel: ${names}`,
  );
  assert.ok(names.some((k) => !k.includes("_sg") && !k.includes("pack")), `no plain one: ${names}`);
  if (storage) {
    for (const sg of [true, false]) {
      assert.ok(
        names.some((k) => k.endsWith("_st") && k.includes("_sg") === sg),
        `no ${sg ? "shared-A" : "plain"} kernel reading storage textures: ${names}`,
      );
    }
  }
});

test("matmul on strided views and broadcast weights, every version", async () => {
  await underEachTuning(async (tuning) => {
    const [m, k, n] = [37, 24, 19];
    const big = randomArray(m * 40, 91), w = randomArray(n * k, 92);
    // A = columns 3..27 of a [37, 40] matrix: row stride 40, not its width.
    const tb = tensor(big, [m, 40]);
    const a = T.slice(tb, 1, 3, 3 + k);
    const aHost = new Float32Array(m * k);
    for (let i = 0; i < m; i++) aHost.set(big.subarray(i * 40 + 3, i * 40 + 3 + k), i * k);
    const tw = tensor(w, [n, k]);
    const want = matmulRef(
      aHost,
      Float32Array.from({ length: k * n }, (_, i) => w[(i % n) * k + Math.floor(i / n)]),
      1,
      m,
      k,
      n,
    );
    const c = T.matmul(a, tw, { transB: true });
    assertClose(await c.toArray(), want, FWD, `strided A ${tuning}`);
    // Batched A [3, m, k] against a 2-D weight (broadcast), transposed.
    const a3 = tensor(new Float32Array(3 * m * k).map((_, i) => aHost[i % (m * k)]), [3, m, k]);
    const c3 = T.matmul(a3, tw, { transB: true });
    const got3 = (await c3.toArray()) as Float32Array;
    for (let bi = 0; bi < 3; bi++) {
      assertClose(got3.subarray(bi * m * n, (bi + 1) * m * n), want, FWD, `batch ${bi} ${tuning}`);
    }
    for (const x of [tb, a, tw, c, a3, c3]) x.dispose();
  });
});

/**
 * The sampler's CPU reference: softmax(l / temperature) in float64, the kept set {p >= theta}
 * with theta the largest threshold whose mass reaches topP, then the first id (vocabulary
 * order) at which the kept running mass passes u times the kept mass. Returns, per kept id, the
 * u in the middle of its interval, so the GPU's float32 sums cannot land on the other side.
 */
function nucleusRef(l: Float32Array, temperature: number, topP: number) {
  const m = l.reduce((a, b) => Math.max(a, b), -Infinity);
  const e = Array.from(l, (x) => Math.exp((x - m) / temperature));
  const z = e.reduce((a, b) => a + b, 0);
  const p = e.map((x) => x / z);
  const sorted = [...p].sort((a, b) => b - a);
  let mass = 0, theta = 0;
  for (const q of sorted) {
    mass += q;
    theta = q;
    if (mass >= topP) break;
  }
  const kept = p.map((q, i) => [q, i]).filter(([q]) => q >= theta);
  const total = kept.reduce((a, [q]) => a + q, 0);
  let acc = 0;
  return kept.map(([q, id]) => {
    const u = (acc + q / 2) / total;
    acc += q;
    return { id, u };
  });
}

/**
 * Runs the sampler over one row of logits for `us.length` steps (step i draws with us[i]);
 * returns the ids it recorded in its history and its last `next` id.
 */
async function sampleRow(
  gpu: Awaited<ReturnType<typeof testGpu>>,
  logits: Float32Array,
  us: readonly number[],
  temperature: number,
  topP: number,
): Promise<{ history: number[]; next: number }> {
  const v = logits.length, steps = us.length;
  const tl = tensor(logits, [1, 1, v]);
  const tu = tensor(Float32Array.from(us), [steps]);
  const next = tensor(new Int32Array(1), [1, 1], "i32");
  const hist = tensor(new Int32Array(steps), [1, steps], "i32");
  for (let step = 0; step < steps; step++) {
    runSample(gpu, tl.buf, tu.buf, next.buf, hist.buf, {
      vocab: v,
      rowStride: v,
      rowOffset: 0,
      batch: 1,
      step,
      maxNew: steps,
      temperature,
      topP,
    });
  }
  const history = Array.from(await hist.toArray() as Int32Array);
  const [last] = Array.from(await next.toArray() as Int32Array);
  for (const t of [tl, tu, next, hist]) t.dispose();
  return { history, next: last };
}

test("past llvmpipe's loop cap: top-p over 128,256 ids at workgroup 32; an id at 70,000 positions", async () => {
  const gpu = await testGpu();
  const saved = gpu.tuning.rowWorkgroup;
  try {
    // One invocation loops ~36 times over its share of the vocabulary, with every loop counted
    // against llvmpipe's cap together: 128,256 ids at 32 lanes would pass 65,535, so the sampler
    // widens its workgroup there.
    gpu.tuning.rowWorkgroup = 32;
    const logits = randomArray(128256, 5, 12);
    const want = nucleusRef(logits, 1, 0.9).slice(0, 3);
    const { history } = await sampleRow(gpu, logits, want.map((w) => w.u), 1, 0.9);
    assert.deepEqual(history, want.map((w) => w.id));
  } finally {
    gpu.tuning.rowWorkgroup = saved;
  }
  // The embedding's gradient sums each id's positions in one invocation: 70,001 of id 1.
  const n = 70003, d = 3;
  const ids = Int32Array.from({ length: n }, (_, i) => (i < 70001 ? 1 : 2));
  const g = randomArray(n * d, 9);
  const w = T.parameter(tensor(new Float32Array(4 * d), [4, d]), "w");
  const y = T.embedding(w, tensor(ids, [n], "i32"));
  backward(T.sum(T.reshape(T.mul(y, tensor(g, [n, d])), [n * d])));
  const want = new Float64Array(4 * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) want[ids[i] * d + j] += g[i * d + j];
  assertClose(
    await w.grad!.toArray(),
    want,
    { atol: 1e-2, rtol: 1e-4 },
    "dW over 70,001 positions",
  );
});

test("sampler vs CPU: greedy, temperature and top-p pick the reference id for each u", async () => {
  const gpu = await testGpu();
  const saved = gpu.tuning.rowWorkgroup;
  try {
    for (const wg of [64, 256]) {
      gpu.tuning.rowWorkgroup = wg;
      // 300 ids (several per invocation), logits spread so the nucleus holds dozens of ids.
      const v = 300, logits = randomArray(v, 77, 3);
      for (const [temperature, topP] of [[1, 0.9], [0.5, 0.7], [2, 1], [1, 0.2]]) {
        const want = nucleusRef(logits, temperature, topP);
        assert.ok(want.length >= 2, `${want.length} kept ids`);
        const { history } = await sampleRow(gpu, logits, want.map((w) => w.u), temperature, topP);
        assert.deepEqual(
          history,
          want.map((w) => w.id),
          `T ${temperature}, top-p ${topP}, wg ${wg}`,
        );
      }
      // Greedy: the first arg-max, whatever u is.
      const tied = Float32Array.from({ length: 300 }, (_, i) => (i === 123 || i === 250 ? 5 : 0));
      assert.equal((await sampleRow(gpu, tied, [0.99], 0, 0.9)).next, 123);
    }
  } finally {
    gpu.tuning.rowWorkgroup = saved;
  }
});
