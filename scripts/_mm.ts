import { initGpu } from "../src/gpu/device.ts";
import * as T from "../src/tensor/ops.ts";
import { noGrad, tensor } from "../src/tensor/tensor.ts";
const g = await initGpu({ log: false });
async function time(name: string, flops: number, f: () => void, n = 5) {
  f();
  await g.sync();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) f();
  await g.sync();
  const ms = (performance.now() - t0) / n;
  console.log(name.padEnd(40), ms.toFixed(2), "ms", (flops / ms / 1e6).toFixed(2), "GFLOP/s");
}
const M = 4096;
for (const [k, n] of [[64, 64], [64, 32], [64, 172], [172, 64], [64, 512]]) {
  const a = tensor(new Float32Array(M * k).fill(0.01), [M, k]);
  const w = tensor(new Float32Array(n * k).fill(0.01), [n, k]);
  await time(
    `x[${M},${k}] @ W[${n},${k}]^T`,
    2 * M * k * n,
    () => T.matmul(a, w, { transB: true }).dispose(),
  );
  const wt = tensor(new Float32Array(n * k).fill(0.01), [k, n]);
  await time(`x[${M},${k}] @ W[${k},${n}]`, 2 * M * k * n, () => T.matmul(a, wt).dispose());
}
const q = tensor(new Float32Array(16 * 256 * 8 * 8).fill(0.01), [16, 256, 8, 8]);
const kv = tensor(new Float32Array(16 * 256 * 4 * 8).fill(0.01), [16, 256, 4, 8]);
const roles = T.zeros([16, 256], "i32");
await time(
  "attention 16x256 h8/4 d8",
  16 * 8 * 256 * 256 * 2 * 8 * 2 / 2,
  () => T.attention(q, kv, kv, roles, [[1]]).dispose(),
);
const x = tensor(new Float32Array(M * 64).fill(0.01), [M, 64]);
const wn = tensor(new Float32Array(64).fill(1), [64]);
await time("rmsnorm 4096x64", M * 64 * 4, () => T.rmsnorm(x, wn).dispose());
await time("add 4096x64", M * 64, () => T.add(x, x).dispose());
const x4 = tensor(new Float32Array(16 * 256 * 8 * 8).fill(0.01), [16, 256, 8, 8]);
const tab = T.ropeTable(8, 512);
await time("rope 16x256x8x8", 16 * 256 * 64, () => T.rope(x4, tab).dispose());
