/**
 * Kernels against the CPU references on shapes the goldens do not reach (tile edges, long rows,
 * folded grids), under several tunings (workgroup sizes, matmul tiles), as llm.c checks every
 * kernel version at every block size.
 */

import type { Tuning } from "../../src/gpu/tuning.ts";
import * as T from "../../src/tensor/ops.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { assertClose, FWD, testGpu } from "../helpers.ts";
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
    attentionWorkgroup: 64,
    attentionBlock: 4,
    threadRowMaxLen: 1 << 20,
    serialReduceMax: 1 << 20,
  },
  {
    elementwiseWorkgroup: 256,
    rowWorkgroup: 256,
    matmul: { tileM: 4, tileN: 4, workgroup: 64 },
    attentionWorkgroup: 8,
    attentionBlock: 0,
    threadRowMaxLen: 0,
    serialReduceMax: 0,
  },
  {
    elementwiseWorkgroup: 32,
    rowWorkgroup: 32,
    matmul: { tileM: 1, tileN: 1, workgroup: 32 },
    attentionWorkgroup: 32,
    attentionBlock: 3,
    threadRowMaxLen: 128,
    serialReduceMax: 64,
  },
];

async function underEachTuning(fn: (label: string) => Promise<void>): Promise<void> {
  const gpu = await testGpu();
  const saved = { ...gpu.tuning };
  try {
    for (const t of TUNINGS) {
      Object.assign(gpu.tuning, t);
      await fn(JSON.stringify(t));
    }
  } finally {
    Object.assign(gpu.tuning, saved);
  }
}

Deno.test("matmul vs CPU: tile edges, transposes, batch, every tuning", async () => {
  const shapes = [[1, 129, 67, 255], [3, 17, 130, 9], [1, 256, 256, 64], [2, 8, 1, 33]];
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
      for (const x of [ta, tb, c, at, bt, c2]) x.dispose();
    }
  });
});

Deno.test("attention vs CPU: random role tables, GQA, long rows, every tuning", async () => {
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

Deno.test("row kernels vs CPU: softmax, log-softmax, rmsnorm, cross-entropy; long/short rows, both modes", async () => {
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

Deno.test("rope vs CPU at 512 positions (angles from the float64 table)", async () => {
  await testGpu();
  const dims = { b: 1, t: 512, h: 2, d: 64 };
  const x = randomArray(512 * 2 * 64, 5);
  const table = T.ropeTable(64, 512, 10000);
  const y = T.rope(tensor(x, [1, 512, 2, 64]), table);
  assertClose(await y.toArray(), ropeRef(x, dims, 10000), FWD, "rope 512");
  y.dispose();
  table.dispose();
});

Deno.test("elementwise over a grid folded past 65535 workgroups", async () => {
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

Deno.test("reductions vs CPU: serial and tree kernels, long and short axes, every tuning", async () => {
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
