/**
 * `deno task convert --input PATH --output PATH [--dtype f32|f16] [--merge]`: converts a checkpoint
 * between llama2.c (`.bin`) and Hugging Face (a directory with config.json + model.safetensors)
 * layouts, permuting q/k rows for HF's rotate_half RoPE on the way. The direction follows the
 * input. `--merge` folds the LoRA adapters of a checkpoint directory (adapter_config.json and
 * adapter_model.safetensors, as a LoRA training run writes them) into its weights, W + scale B A,
 * and writes a plain checkpoint with the directory's other files (gem.json, tokenizer, card).
 */

import { copyFile, readdir, stat } from "node:fs/promises";
import { args } from "../platform/platform.ts";
import { readHfModel, writeHfModel } from "../io/hf.ts";
import { readAdapters } from "../io/peft.ts";
import { mergedWeight } from "../nn/lora.ts";
import { readLlama2c, writeLlama2c } from "../io/llama2c.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";

const USAGE = "usage: deno task convert --input PATH --output PATH [--dtype f32|f16] [--merge]";
const EXAMPLE =
  "deno task convert --input ../shared/data/models/llama2c/stories260K.bin --output /tmp/stories260K-hf";

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      input: { type: "string", help: "llama2.c .bin file, or Hugging Face directory" },
      output: { type: "string", help: "HF directory (from .bin), or .bin file (from HF)" },
      dtype: {
        type: "string",
        help: "f32 | f16: safetensors dtype when writing HF",
        default: "f32",
      },
      merge: {
        type: "boolean",
        help: "fold a checkpoint directory's LoRA adapters into its weights",
        default: false,
      },
    },
    USAGE,
    EXAMPLE,
  );
  if (!flags.input || !flags.output) {
    throw new UsageError(`--input and --output are required\n${USAGE}`);
  }
  // One lowercase spelling for every command's --dtype; safetensors names it in capitals.
  const spelled = flags.dtype as string;
  if (spelled !== "f32" && spelled !== "f16") {
    throw new UsageError(`--dtype must be f32 or f16, got '${spelled}'`);
  }
  const dtype = spelled === "f16" ? "F16" : "F32";
  const input = flags.input as string, output = flags.output as string;
  if (flags.merge) {
    const { config, weights } = await readHfModel(input);
    const adapters = await readAdapters(input, config);
    if (!adapters) throw new UsageError(`${input}: no adapter_config.json, nothing to merge`);
    const { rank, scale } = adapters.opts;
    for (const [name, { a, b }] of adapters.weights) {
      weights.set(name, mergedWeight(weights.get(name)!, a, b, rank, scale));
    }
    await writeHfModel(output, config, weights, { dtype });
    // The checkpoint's other files (gem.json, tokenizer files, model card) come along.
    const skip = /^(model.*\.safetensors(\.index\.json)?|config\.json|adapter_.*)$/;
    for (const e of await readdir(input, { withFileTypes: true })) {
      if (e.isFile() && !skip.test(e.name)) {
        await copyFile(`${input}/${e.name}`, `${output}/${e.name}`);
      }
    }
    console.error(
      `gemkit: ${input} with ${adapters.weights.size} LoRA adapters (rank ${rank}, scale ${scale}) ` +
        `-> ${output}, merged`,
    );
    return;
  }
  if ((await stat(input)).isDirectory()) {
    const { config, weights } = await readHfModel(input);
    await writeLlama2c(output, config, weights);
    console.error(`gemkit: ${input} (Hugging Face) -> ${output} (llama2.c)`);
  } else {
    const { config, weights } = await readLlama2c(input);
    await writeHfModel(output, config, weights, { dtype });
    console.error(`gemkit: ${input} (llama2.c) -> ${output} (Hugging Face, ${spelled})`);
  }
});
