import { initGpu } from "../src/gpu/device.ts";
import * as T from "../src/tensor/ops.ts";
import { tensor } from "../src/tensor/tensor.ts";
const g = await initGpu({ log: false });
async function time(name: string, f: () => void, n = 20) {
  f();
  await g.sync();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) f();
  await g.sync();
  console.log(name.padEnd(30), ((performance.now() - t0) / n).toFixed(3), "ms");
}
const M = 4096;
const x = tensor(new Float32Array(M * 64).fill(0.01), [M, 64]);
const wn = tensor(new Float32Array(64).fill(1), [64]);
for (const wg of [64, 128, 256, 512, 1024]) {
  g.tuning.elementwiseWorkgroup = wg;
  g.tuning.rowWorkgroup = Math.min(wg, 256);
  await time(`add wg ${wg}`, () => T.add(x, x).dispose());
  await time(`rmsnorm wg ${g.tuning.rowWorkgroup}`, () => T.rmsnorm(x, wn).dispose());
}
const tiny = tensor(new Float32Array(64).fill(0.01), [64]);
await time(`tiny add`, () => T.add(tiny, tiny).dispose(), 200);
