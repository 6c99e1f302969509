/**
 * A checkpoint format: how to recognise it on disk, read it into gemkit's layout (weights keyed
 * by Hugging Face names, RoPE rows interleaved) and write it back. Each format lives in its own
 * module and exports one of these; `FORMATS` in model.ts lists them, so a new format is one file
 * plus one line there.
 */

import type { Stats } from "node:fs";
import { stat } from "node:fs/promises";
import type { LlamaConfig } from "../nn/llama.ts";

/** Config and weights of a checkpoint, in gemkit's layout. */
export interface Checkpoint {
  /** The model's shape. */
  config: LlamaConfig;
  /** Weights keyed by Hugging Face names. */
  weights: Map<string, Float32Array>;
}

/** One checkpoint format. */
export interface ModelFormat {
  /** Short name (reported as `LoadedModel.format`). */
  name: string;
  /** Whether `path` (with its stat) holds a checkpoint of this format. */
  detect(path: string, info: Stats): Promise<boolean>;
  /** Reads config and weights; `maxSeqLen` caps the context of long-context checkpoints. */
  read(path: string, opts: { maxSeqLen?: number }): Promise<Checkpoint>;
  /** Reads only the config (memory plans are made before any weight is loaded). */
  readConfig(path: string): Promise<LlamaConfig>;
  /** Writes a checkpoint (each file atomically). */
  write(
    path: string,
    ckpt: Checkpoint,
    opts: { dtype?: "F32" | "F16" },
  ): Promise<void>;
  /** The tokenizer file stored with the checkpoint, or null (then the caller names one). */
  tokenizerIn(path: string): Promise<string | null>;
}

/** Stat that answers null for a missing path. */
export async function statOrNull(path: string): Promise<Stats | null> {
  try {
    return await stat(path);
  } catch {
    return null;
  }
}
