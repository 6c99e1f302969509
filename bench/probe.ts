/**
 * A first look at an adapter, run before the bench on a machine gemkit has not seen
 * (bench/device.sh): what initGpu found, the cost of one CPU<->GPU sync, and greedy text from
 * stories260K through the fused and the per-op decode paths, which must agree.
 *
 *   deno run -A bench/probe.ts
 */

import { gpu, initGpu } from "../src/gpu/device.ts";
import { loadModel } from "../src/io/model.ts";
import { dataDir } from "../src/io/paths.ts";
import { generate } from "../src/nn/generate.ts";
import { stats } from "./common.ts";

const g = await initGpu();
console.log(`adapter: ${g.description}; profile ${g.tuning.profile}`);

const syncs: number[] = [];
for (let i = 0; i < 20; i++) {
  const t = performance.now();
  await gpu().sync();
  syncs.push(performance.now() - t);
}
console.log(`empty sync: median ${stats(syncs).median.toFixed(2)} ms`);

const dir = `${dataDir()}/models/llama2c`;
const { model, tokenizer } = await loadModel(`${dir}/stories260K.bin`, {
  tokenizer: `${dir}/tok512.bin`,
});
const texts: string[] = [];
for (const fused of [true, false]) {
  for (let run = 0; run < 2; run++) {
    const t = performance.now();
    const r = await generate(model, [1], { maxTokens: 60, temperature: 0, stopIds: [], fused });
    const ms = performance.now() - t;
    const text = tokenizer.decode(r.ids);
    if (run === 1) texts.push(text);
    console.log(
      `${fused ? "fused " : "per-op"} run ${run}: ${ms.toFixed(1)} ms for 60 tokens; ` +
        JSON.stringify(text.slice(0, 70)),
    );
  }
}
if (texts[0] !== texts[1] || !texts[0].startsWith(" Once upon a time, there was a little girl")) {
  console.log("PROBE FAILED: fused and per-op greedy text differ or do not match the reference");
  Deno.exit(1);
}
console.log("probe ok");
