/**
 * `deno task generate --model PATH [--tokenizer PATH] --prompt TEXT --max-tokens N
 *   --temperature T --top-p P --seed S`: prints the prompt's continuation to stdout, progress and
 * timing to stderr.
 */

import { writeSync } from "node:fs";
import { args } from "../platform/platform.ts";
import { initGpu } from "../gpu/device.ts";
import { openModel } from "../recipe/open.ts";
import { generateText } from "../nn/generate.ts";
import { MODEL_FLAGS, modelOptions, parseArgs, runMain, TUNING_FLAG, UsageError } from "./args.ts";

/** Writes text to stdout at once (synchronously, so it keeps its place among stderr lines). */
function writeOut(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let off = 0; off < bytes.length;) off += writeSync(1, bytes, off);
}

const USAGE = "usage: deno task generate --model PATH [--tokenizer PATH] [--prompt TEXT] [options]";
const EXAMPLE =
  'deno task generate --model @data/models/llama2c/stories260K.bin --tokenizer @data/models/llama2c/tok512.bin --prompt "Once upon a time" --max-tokens 40 --temperature 0';

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      ...MODEL_FLAGS,
      tuning: TUNING_FLAG,
      prompt: { type: "string", help: "text to continue", default: "" },
      "max-tokens": { type: "number", help: "new tokens at most", default: 256 },
      temperature: { type: "number", help: "0 = greedy", default: 1.0 },
      "top-p": { type: "number", help: "nucleus mass kept", default: 0.9 },
      seed: { type: "number", help: "sampling seed", default: 0 },
    },
    USAGE,
    EXAMPLE,
  );
  if (!flags.model) throw new UsageError(`--model is required\n${USAGE}`);
  const temperature = flags.temperature as number, topP = flags["top-p"] as number;
  if (temperature < 0) throw new UsageError("--temperature must be >= 0");
  if (!(topP > 0 && topP <= 1)) throw new UsageError("--top-p must be in (0, 1]");
  await initGpu();
  const t0 = performance.now();
  const spec = flags.model as string;
  // A GEM checkpoint generates on the plain causal path; its tokenizer knows the specials.
  const opened = await openModel(spec, modelOptions(flags));
  const { model, tokenizer } = opened;
  console.error(`gemkit: loaded ${flags.model} in ${(performance.now() - t0).toFixed(0)} ms`);
  const prompt = flags.prompt as string;
  writeOut(prompt);
  const r = await generateText(model, tokenizer, prompt, {
    maxTokens: flags["max-tokens"] as number,
    temperature,
    topP,
    seed: flags.seed as number,
    stopIds: [tokenizer.bosId, tokenizer.eosId].filter((i) => i >= 0),
    onText: writeOut,
  });
  writeOut("\n");
  const n = r.ids.length;
  console.error(
    `gemkit: ${r.promptTokens} prompt tokens in ${r.prefillMs.toFixed(0)} ms, ${n} new tokens in ` +
      `${r.decodeMs.toFixed(0)} ms (${
        (n / (r.decodeMs / 1000)).toFixed(1)
      } tok/s), stop: ${r.stop}`,
  );
  opened.dispose();
});
