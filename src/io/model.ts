/**
 * One entry point for "a model" in the io layer: a file or directory in any registered checkpoint
 * format (llama2.c `.bin`, Hugging Face directory), a run directory (its `latest` checkpoint), a
 * hub id `org/name[@revision]` fetched into the local cache, or `@data/...` in the shared data
 * directory. GEM checkpoints (an HF directory with gem.json) are opened by `openModel` in the
 * recipe layer, which builds on this.
 */

import { readFile } from "node:fs/promises";
import { Llama, type WeightDType } from "../nn/llama.ts";
import { type ModelFormat, statOrNull } from "./format.ts";
import { hfFormat } from "./hf.ts";
import { llama2cFormat } from "./llama2c.ts";
import { dataDir } from "./paths.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";

/** Checkpoint formats, tried in order. */
export const FORMATS: readonly ModelFormat[] = [hfFormat, llama2cFormat];

/** A loaded model with its tokenizer and where it came from. */
export interface LoadedModel {
  /** The decoder. */
  model: Llama;
  /** Its tokenizer. */
  tokenizer: Tokenizer;
  /** Path of the checkpoint (file or directory). */
  path: string;
  /** Checkpoint format it was read from (a {@link FORMATS} name). */
  format: string;
}

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /** Tokenizer file; required for llama2.c checkpoints, else the directory's tokenizer. */
  tokenizer?: string;
  /** Cap on the context length (RoPE table, KV cache) for long-context checkpoints. */
  maxSeqLen?: number;
  /** How the matrices are stored on the device (default f32; f16 halves them, frozen). */
  dtype?: WeightDType;
}

/** A model spec that is neither a file nor a directory nor a hub id. */
export class ModelNotFoundError extends Error {
  /** Error class name. */
  override name = "ModelNotFoundError";
}

/** `@data/...` means the shared data directory; any other path is returned unchanged. */
export function dataPath(p: string): string {
  return p.startsWith("@data/") ? `${dataDir()}/${p.slice(6)}` : p;
}

/**
 * A training run directory (`DIR/latest` names its newest checkpoint) resolves to that checkpoint,
 * so `--model runs/gem` means the run's latest weights; any other path is returned unchanged.
 */
export async function resolveRunDir(path: string): Promise<string> {
  const info = await statOrNull(path);
  if (!info?.isDirectory() || await statOrNull(`${path}/config.json`)) return path;
  let latest: string;
  try {
    latest = (await readFile(`${path}/latest`, "utf8")).trim();
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

/** A checkpoint located on disk: its path and format. */
export interface LocatedModel {
  /** File or directory of the checkpoint. */
  path: string;
  /** Its format. */
  format: ModelFormat;
}

/**
 * Resolves a spec (`@data/...`, a run directory, a path, or a hub id fetched into the cache) to a
 * checkpoint on disk and detects its format. Errors name the spec.
 */
export async function locateModel(spec: string): Promise<LocatedModel> {
  let path = await resolveRunDir(dataPath(spec));
  let info = await statOrNull(path);
  if (!info && /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(spec)) {
    const { resolveModel } = await import("./hub.ts");
    path = await resolveModel(spec);
    info = await statOrNull(path);
  }
  if (!info) {
    throw new ModelNotFoundError(`${spec}: no such file or directory (nor a hub id org/name)`);
  }
  for (const format of FORMATS) {
    if (await format.detect(path, info)) return { path, format };
  }
  throw new ModelNotFoundError(
    `${path}: not a checkpoint of a known format (${FORMATS.map((f) => f.name).join(", ")}); ` +
      "a directory needs config.json",
  );
}

/**
 * Loads a plain decoder and its tokenizer from any spec {@link locateModel} accepts, or from a
 * model it has already located (so a hub id is not resolved twice).
 */
export async function loadModel(
  spec: string | LocatedModel,
  opts: LoadModelOptions = {},
): Promise<LoadedModel> {
  const { path, format } = typeof spec === "string" ? await locateModel(spec) : spec;
  const tokPath = opts.tokenizer ? dataPath(opts.tokenizer) : await format.tokenizerIn(path);
  if (!tokPath) {
    throw new ModelNotFoundError(
      format === llama2cFormat
        ? `${typeof spec === "string" ? spec : path}: a llama2.c checkpoint needs ` +
          "--tokenizer PATH (e.g. tok512.bin)"
        : `${path}: no tokenizer.json, tokenizer.bin or tokenizer.model; pass --tokenizer PATH`,
    );
  }
  const { config, weights } = await format.read(path, { maxSeqLen: opts.maxSeqLen });
  const tokenizer = loadTokenizer(tokPath, { vocabSize: config.vocabSize });
  const model = Llama.fromWeights(config, weights, path, opts.dtype);
  return { model, tokenizer, path, format: format.name };
}
