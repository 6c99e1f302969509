/**
 * `openModel(spec)`: the one place that decides what a model spec is. A path in any checkpoint
 * format, a run directory (its latest checkpoint), a GEM checkpoint (a directory with gem.json),
 * a Hugging Face directory, a hub id, or `@data/...`. Every CLI opens models through it.
 */

import type { GemModel } from "../gem/gem.ts";
import { isGemDir, loadGem } from "../gem/io.ts";
import { dataPath, loadModel, type LoadModelOptions, resolveRunDir } from "../io/model.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";

/** An opened model: the decoder, its tokenizer, and the GEM model when the spec is one. */
export interface OpenedModel {
  /** The decoder (for a GEM checkpoint, `gem.model`). */
  model: Llama;
  /** Its tokenizer (for a GEM checkpoint, with the special tokens). */
  tokenizer: Tokenizer;
  /** The GEM model, or null for a plain decoder. */
  gem: GemModel | null;
  /** The checkpoint's path. */
  path: string;
  /** "gem", or the plain checkpoint format ("hf", "llama2c"). */
  format: string;
  /** Releases the weights. */
  dispose(): void;
}

/**
 * Opens any model spec. A GEM checkpoint comes back with `gem` set; a plain checkpoint needs
 * `opts.tokenizer` when its format carries none (llama2.c).
 */
export async function openModel(spec: string, opts: LoadModelOptions = {}): Promise<OpenedModel> {
  if (await isGemDir(dataPath(spec))) {
    const path = await resolveRunDir(dataPath(spec));
    const gem = await loadGem(path);
    return {
      model: gem.model,
      tokenizer: gem.tokenizer,
      gem,
      path,
      format: "gem",
      dispose: () => gem.dispose(),
    };
  }
  const m = await loadModel(spec, opts);
  return { ...m, gem: null, dispose: () => m.model.dispose() };
}
