/**
 * `deno task convert --input PATH --output PATH [--dtype F32|F16]`: converts a checkpoint between
 * llama2.c (`.bin`) and Hugging Face (a directory with config.json + model.safetensors) layouts,
 * permuting q/k rows for HF's rotate_half RoPE on the way. The direction follows the input.
 */

import { stat } from "node:fs/promises";
import { args } from "../platform/platform.ts";
import { readHfModel, writeHfModel } from "../io/hf.ts";
import { readLlama2c, writeLlama2c } from "../io/llama2c.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";

const USAGE = "usage: deno task convert --input PATH --output PATH [--dtype F32|F16]";
const EXAMPLE =
  "deno task convert --input ../shared/data/models/llama2c/stories260K.bin --output /tmp/stories260K-hf";

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      input: { type: "string", help: "llama2.c .bin file, or Hugging Face directory" },
      output: { type: "string", help: "HF directory (from .bin), or .bin file (from HF)" },
      dtype: { type: "string", help: "safetensors dtype when writing HF", default: "F32" },
    },
    USAGE,
    EXAMPLE,
  );
  if (!flags.input || !flags.output) {
    throw new UsageError(`--input and --output are required\n${USAGE}`);
  }
  const dtype = flags.dtype as string;
  if (dtype !== "F32" && dtype !== "F16") {
    throw new UsageError(`--dtype must be F32 or F16, got ${dtype}`);
  }
  const input = flags.input as string, output = flags.output as string;
  if ((await stat(input)).isDirectory()) {
    const { config, weights } = await readHfModel(input);
    await writeLlama2c(output, config, weights);
    console.error(`gemkit: ${input} (Hugging Face) -> ${output} (llama2.c)`);
  } else {
    const { config, weights } = await readLlama2c(input);
    await writeHfModel(output, config, weights, { dtype });
    console.error(`gemkit: ${input} (llama2.c) -> ${output} (Hugging Face, ${dtype})`);
  }
});
