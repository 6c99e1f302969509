import { initGpu } from "../src/gpu/device.ts";
import { loadModel } from "../src/io/model.ts";
import { noGrad, tensor } from "../src/tensor/tensor.ts";
const g = await initGpu({ log: false });
const D = "/work/shared/data/models/llama2c";
const { model } = await loadModel(`${D}/stories260K.bin`, { tokenizer: `${D}/tok512.bin` });
const toks = tensor(Int32Array.from({ length: 16 * 256 }, (_, i) => (i * 7919 + 13) % 509 + 3), [
  16,
  256,
], "i32");
for (let r = 0; r < 2; r++) {
  const o = noGrad(() => model.forward(toks));
  await o.logits!.toArray();
  o.logits!.dispose();
  o.hidden.dispose();
}
let t0 = performance.now();
const o = noGrad(() => model.forward(toks));
await o.logits!.item;
await g.sync();
o.logits!.dispose();
o.hidden.dispose();
console.log("forward 16x256 ms", (performance.now() - t0).toFixed(0));
g.startProfile();
const o2 = noGrad(() => model.forward(toks));
o2.logits!.dispose();
o2.hidden.dispose();
const prof = await g.stopProfile();
let tot = 0;
for (const p of prof) tot += p.ms;
console.log("total gpu ms", tot.toFixed(1));
for (const p of prof.slice(0, 12)) console.log(p.kernel.padEnd(40), p.count, p.ms.toFixed(2));
