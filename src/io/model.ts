/**
 * One entry point for "a model": a llama2.c `.bin` (with `--tokenizer`), a Hugging Face
 * directory (config.json + safetensors + tokenizer.json), or a hub id `org/name[@revision]`
 * fetched into the local cache.
 */

import { Llama } from "../nn/llama.ts";
import { readHfModel } from "./hf.ts";
import { readLlama2c } from "./llama2c.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";

/** A loaded model with its tokenizer and where it came from. */
export interface LoadedModel {
  /** The decoder. */
  model: Llama;
  /** Its tokenizer. */
  tokenizer: Tokenizer;
  /** Path of the checkpoint (file or directory). */
  path: string;
  /** Checkpoint layout it was read from. */
  format: "llama2c" | "hf";
}

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /** Tokenizer file; required for llama2.c checkpoints, else the directory's tokenizer. */
  tokenizer?: string;
  /** Cap on the context length (RoPE table, KV cache) for long-context checkpoints. */
  maxSeqLen?: number;
}

/** A model spec that is neither a file nor a directory nor a hub id. */
export class ModelNotFoundError extends Error {
  /** Error class name. */
  override name = "ModelNotFoundError";
}

async function stat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch {
    return null;
  }
}

/**
 * A training run directory (`DIR/latest` names its newest checkpoint) resolves to that checkpoint,
 * so `--model runs/gem` means the run's latest weights; any other path is returned unchanged.
 */
export async function resolveRunDir(path: string): Promise<string> {
  const info = await stat(path);
  if (!info?.isDirectory || await stat(`${path}/config.json`)) return path;
  let latest: string;
  try {
    latest = (await Deno.readTextFile(`${path}/latest`)).trim();
  } catch {
    return path;
  }
  if (!latest || latest.includes("/")) {
    throw new ModelNotFoundError(
      `${path}/latest: must name a checkpoint directory, got '${latest}'`,
    );
  }
  return `${path}/${latest}`;
}

/** The tokenizer file saved beside an HF-layout checkpoint, if any. */
async function tokenizerIn(dir: string): Promise<string | null> {
  for (const f of ["tokenizer.json", "tokenizer.bin"]) {
    if (await stat(`${dir}/${f}`)) return `${dir}/${f}`;
  }
  return null;
}

/** Loads a model and its tokenizer from a path or a hub id. */
export async function loadModel(spec: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  let path = await resolveRunDir(spec);
  let info = await stat(path);
  if (!info && /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(spec)) {
    const { resolveModel } = await import("./hub.ts");
    path = await resolveModel(spec);
    info = await stat(path);
  }
  if (!info) {
    throw new ModelNotFoundError(`${spec}: no such file or directory (nor a hub id org/name)`);
  }
  if (info.isFile) {
    if (!opts.tokenizer) {
      throw new ModelNotFoundError(
        `${spec}: a llama2.c checkpoint needs --tokenizer PATH (e.g. tok512.bin)`,
      );
    }
    const { config, weights } = await readLlama2c(path);
    if (opts.maxSeqLen) config.maxSeqLen = Math.min(config.maxSeqLen, opts.maxSeqLen);
    const tokenizer = loadTokenizer(opts.tokenizer, { vocabSize: config.vocabSize });
    return { model: Llama.fromWeights(config, weights, path), tokenizer, path, format: "llama2c" };
  }
  const tokPath = opts.tokenizer ?? (await tokenizerIn(path));
  if (!tokPath) {
    throw new ModelNotFoundError(
      `${path}: no tokenizer.json or tokenizer.bin; pass --tokenizer PATH`,
    );
  }
  const { config, weights } = await readHfModel(path, { maxSeqLen: opts.maxSeqLen });
  const tokenizer = loadTokenizer(tokPath, { vocabSize: config.vocabSize });
  return { model: Llama.fromWeights(config, weights, path), tokenizer, path, format: "hf" };
}
