/**
 * Run by tests/gpu/scale.test.ts in a process of its own, so its peak host memory is its own:
 * loads the Hugging Face checkpoint in DIR with its matrices stored in f16, runs the forward on
 * TOKENS (comma-separated ids), and prints JSON: per position the logits' log-sum-exp, argmax and
 * the logits at PROBES (comma-separated ids), the next-token loss, the same again with f16
 * activations (`activations`), and the process's peak RSS.
 *
 *   deno run -A tests/gpu/scale_f16_child.ts DIR TOKENS PROBES
 */

import { readHfModel } from "../../src/io/hf.ts";
import { Llama } from "../../src/nn/llama.ts";
import * as T from "../../src/tensor/ops.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { gpu, initGpu } from "../../src/gpu/device.ts";
import { logitRows, peakRss } from "../helpers.ts";

const [dir, tokenArg, probeArg] = process.argv.slice(2);
const tokens = tokenArg.split(",").map(Number), probes = probeArg.split(",").map(Number);
await initGpu({ log: false });
const { config, weights } = await readHfModel(dir, { maxSeqLen: 64 });
const model = Llama.fromWeights(config, weights, dir, "f16");
weights.clear();
const v = config.vocabSize, t = tokens.length;
const ids = tensor(Int32Array.from(tokens), [1, t], "i32");
const targets = tensor(Int32Array.from([...tokens.slice(1), -1]), [t], "i32");
async function run() {
  const out = model.forward(ids, { logits: false });
  const h = T.reshape(out.hidden, [t, config.dim]);
  const logits = T.matmul(h, model.classifier, { transB: true });
  const rows = logitRows((await logits.toArray()) as Float32Array, v, probes);
  const loss = await T.classifierCrossEntropy(h, model.classifier, targets).item();
  for (const x of [out.hidden, h, logits]) x.dispose();
  return { rows, loss };
}
const { rows, loss } = await run();
model.activations = "f16";
const activations = await run();
console.log(JSON.stringify({
  dtype: model.dtype,
  adapter: gpu().description,
  rows,
  loss,
  activations,
  peakRss: peakRss(),
}));
process.exit(0);
