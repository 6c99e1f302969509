/**
 * Training configuration: one JSON object, every field documented here with its default, merged
 * from defaults < `--config FILE` < `key=value` overrides (dotted paths). Bad values are errors
 * that name the field. The mask design is parsed into its role table here, once
 * ({@link maskTable}).
 */

import { readFile } from "node:fs/promises";
import { parseRoleTable } from "../gem/mask.ts";
import type { RoleTable } from "../tensor/ops.ts";
import type { LoopConfig } from "../train/schedule.ts";
import { LORA_TARGETS, type LoraTarget } from "../nn/lora.ts";

import type { Phase } from "../train/schedule.ts";
export { type Phase, scheduleAt } from "../train/schedule.ts";

/** GEM's settings: the special tokens, where samples put them, and the mask. */
export interface GemSettings {
  /** Number of special tokens. */
  k: number;
  /** Probability a text stays plain causal LM. */
  rawProb: number;
  /** Where specials go in next-token samples. */
  insertion: "random" | "end" | "reconstruct";
  /** Fewest text tokens before the specials at a random split. */
  minPrefix: number;
  /** Fewest tokens after the specials at a random split. */
  minSuffix: number;
  /** Mask design name, or a role table (rule names or codes). */
  mask: string | number[][];
  /** Pooling of the specials' states. */
  pooling: "mean" | "concat" | "last";
  /** Special-token rows: mean of the embeddings plus noise, or noise only. */
  init: "mean" | "random";
  /** Noise std as a fraction of the embeddings' per-dim std. */
  initNoise: number;
}

/** Contrastive settings. */
export interface ContrastiveSettings {
  /** How positives are made. */
  pairs: "crop" | "dropout" | "mix" | "supervised";
  /** Pairs per step (in-batch negatives). */
  batchSize: number;
  /** Prefix token dropout rate of dropout positives. */
  dropout: number;
  /** Crop length as a fraction of the text. */
  cropFrac: number;
  /** Average both directions of InfoNCE. */
  symmetric: boolean;
  /** JSONL of {query, positive} for supervised pairs. */
  pairsFile: string;
}

/** Everything `deno task train` can be told (field names are those of the JSON config). */
export interface TrainConfig extends LoopConfig {
  /** Checkpoint to start from. */
  model: string;
  /** Its tokenizer file. */
  tokenizer: string;
  /** Training texts. */
  data: string;
  /** Seed of everything random. */
  seed: number;
  /** Texts per step for the next-token loss. */
  batchSize: number;
  /** Longest sample in tokens. */
  maxLen: number;
  /** GEM settings. */
  gem: GemSettings;
  /** Contrastive settings. */
  contrastive: ContrastiveSettings;
  /** Activation checkpointing per layer. */
  checkpointing: boolean;
  /** LoRA: rank 0 trains every weight; above 0 only adapters and the special-token rows. */
  lora: LoraSettings;
  /**
   * Precision: f32, or f16 (mixed precision: f16 activations; f32 master weights, gradients and
   * optimizer state; with LoRA the frozen base matrices stored in f16).
   */
  dtype: "f32" | "f16";
}

/** LoRA settings (`lora.*`). */
export interface LoraSettings {
  /** Adapter rank; 0 = no adapters (full fine-tuning). */
  rank: number;
  /** Multiplier of the adapters' product (PEFT's lora_alpha / r). */
  scale: number;
  /** Projections adapted: any of q, k, v, o, gate, up, down. */
  targets: LoraTarget[];
}

/** Field documentation: dotted path -> [default, help]. The README table is generated from it. */
export const FIELDS: Record<string, [unknown, string]> = {
  model: [
    "@data/models/llama2c/stories260K.bin",
    "checkpoint: llama2.c .bin, HF directory, or hub id org/name (@data = the shared data dir)",
  ],
  tokenizer: [
    "@data/models/llama2c/tok512.bin",
    "tokenizer file for a llama2.c model; a model that carries its own (HF directory, hub id) uses it unless this is changed",
  ],
  data: [
    "tinystories",
    "training texts: tinystories (train split), wikitext (WikiText-2 sentences), or a .txt/.jsonl file",
  ],
  steps: [400, "optimizer steps in the whole run; fixes the schedule"],
  seed: [0, "seed of data order, sample building, special-token init"],
  batchSize: [32, "texts per step for the next-token loss"],
  maxLen: [256, "longest sample in tokens"],
  accum: [1, "micro-batches per step (gradient accumulation)"],
  warmup: [20, "linear warm-up steps at the start of each phase"],
  minLrFrac: [0.1, "cosine decay ends at this fraction of the phase's lr"],
  phases: [
    [{ frac: 0.25, alpha: 0, lr: 1e-3 }, { frac: 0.75, alpha: 0.5, lr: 3e-4 }],
    "schedule: [{frac, alpha, lr}], contrastive weight alpha per phase (paper: alpha 0 for 100 steps, then 1)",
  ],
  "optim.beta1": [0.9, "AdamW beta1"],
  "optim.beta2": [0.95, "AdamW beta2"],
  "optim.eps": [1e-8, "AdamW epsilon"],
  "optim.weightDecay": [0.01, "decoupled weight decay on matrices (not on norm weights or lambda)"],
  "optim.clip": [1.0, "global gradient-norm clip (0 = off)"],
  "gem.k": [4, "number of special tokens"],
  "gem.rawProb": [0.5, "probability a text stays plain causal LM (paper: 0.8)"],
  "gem.insertion": ["random", "where specials go in NTP samples: random | end | reconstruct"],
  "gem.minPrefix": [4, "fewest text tokens before the specials at a random split"],
  "gem.minSuffix": [4, "fewest tokens after the specials at a random split"],
  "gem.mask": [
    "gem",
    "mask design: gem | specials-see-each-other | no-bottleneck | specials-self-only | causal | 4x4 role table",
  ],
  "gem.pooling": ["mean", "pooling of the specials' states: mean | concat | last"],
  "gem.init": ["mean", "special-token rows: mean of embeddings + noise | random"],
  "gem.initNoise": [0.1, "noise std as a fraction of the embeddings' per-dim std"],
  "contrastive.pairs": [
    "mix",
    "positives: crop (two random crops of a text) | dropout (paper) | mix (half each) | supervised",
  ],
  "contrastive.batchSize": [32, "pairs per step (in-batch negatives)"],
  "contrastive.dropout": [0.1, "prefix token dropout rate for dropout positives"],
  "contrastive.cropFrac": [0.5, "crop length as a fraction of the text"],
  "contrastive.symmetric": [true, "average both directions of InfoNCE (CLIP style)"],
  "contrastive.pairsFile": ["", "JSONL of {query, positive} for supervised pairs"],
  "lora.rank": [
    0,
    "LoRA rank: 0 trains every weight; above 0 freezes the base weights and trains adapters plus the special tokens' embedding rows",
  ],
  "lora.scale": [2, "multiplier of the adapters' product B A (PEFT's lora_alpha / r)"],
  "lora.targets": [
    ["q", "k", "v", "o", "gate", "up", "down"],
    "projections with adapters: any of q, k, v, o, gate, up, down",
  ],
  dtype: [
    "f32",
    "precision: f32 | f16 (mixed precision: activations stored in f16, accumulation, the residual stream, the loss, gradients and AdamW state in f32; full training keeps f32 master weights rounded to f16 per forward; with lora.rank > 0 the frozen base matrices are stored in f16)",
  ],
  checkpointing: [
    false,
    "activation checkpointing per layer: keep each block's input only, recompute it in backward (same gradients, less memory)",
  ],
  checkpointEvery: [100, "steps between checkpoints (also at the end and on Ctrl-C)"],
  keepCheckpoints: [2, "checkpoints kept in the run directory"],
  evalEvery: [0, "steps between evaluations on the validation slice, logged (0 = none)"],
};

/** A configuration value that cannot be used; the message names the field. */
export class ConfigError extends Error {
  /** Error class name. */
  override name = "ConfigError";
}

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(".");
  let o = obj;
  for (const p of parts.slice(0, -1)) {
    if (typeof o[p] !== "object" || o[p] === null) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts.at(-1)!] = value;
}

function getPath(obj: Record<string, unknown>, path: string): unknown {
  return path.split(".").reduce<unknown>(
    (o, p) => (o as Record<string, unknown> | undefined)?.[p],
    obj,
  );
}

/** The default configuration. */
export function defaultConfig(): TrainConfig {
  const c: Record<string, unknown> = {};
  for (const [path, [v]] of Object.entries(FIELDS)) setPath(c, path, structuredClone(v));
  return c as unknown as TrainConfig;
}

/** Reads a JSON config file; an unreadable or malformed file is a ConfigError naming it. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new ConfigError(`${path}: cannot read as JSON (${e instanceof Error ? e.message : e})`);
  }
}

/** Parses an override value: JSON when it parses, else the raw string. */
function parseValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/**
 * Merges a config file's object and `key=value` overrides into the defaults and validates the
 * result. `source` names the file in errors.
 */
export function buildConfig(
  file: Record<string, unknown> | null,
  overrides: readonly [string, string][],
  source = "config",
): TrainConfig {
  const c = defaultConfig() as unknown as Record<string, unknown>;
  const apply = (path: string, v: unknown, where: string) => {
    const known = path in FIELDS || Object.keys(FIELDS).some((f) => f.startsWith(path + "."));
    if (!known) throw new ConfigError(`${where}: unknown field '${path}'`);
    if (path in FIELDS) setPath(c, path, v);
    else if (typeof v === "object" && v) {
      for (const [k, x] of Object.entries(v)) apply(`${path}.${k}`, x, where);
    } else throw new ConfigError(`${where}: field '${path}' is a group; set its members`);
  };
  if (file) { for (const [k, v] of Object.entries(file)) apply(k, v, source); }
  for (const [k, v] of overrides) apply(k, parseValue(v), "override");
  validate(c);
  return c as unknown as TrainConfig;
}

/** Role tables of validated configs: the mask is parsed once, when the config is read. */
const tables = new WeakMap<object, RoleTable>();

/** The role table of a config's `gem.mask` (parsed when the config was built). */
export function maskTable(c: TrainConfig): RoleTable {
  let t = tables.get(c);
  if (!t) {
    t = parseRoleTable(c.gem.mask, "gem.mask");
    tables.set(c, t);
  }
  return t;
}

function validate(c: Record<string, unknown>): void {
  const bad = (f: string, why: string): never => {
    throw new ConfigError(`field '${f}' ${why}, got ${JSON.stringify(getPath(c, f))}`);
  };
  const int = (f: string, min: number) => {
    const v = getPath(c, f);
    if (!Number.isInteger(v) || (v as number) < min) bad(f, `must be an integer >= ${min}`);
  };
  const num = (f: string, lo: number, hi: number) => {
    const v = getPath(c, f);
    if (typeof v !== "number" || !(v >= lo && v <= hi)) {
      bad(f, `must be a number in [${lo}, ${hi}]`);
    }
  };
  const oneOf = (f: string, opts: string[]) => {
    if (!opts.includes(getPath(c, f) as string)) bad(f, `must be one of ${opts.join(", ")}`);
  };
  for (const f of ["model", "tokenizer", "data", "contrastive.pairsFile"]) {
    if (typeof getPath(c, f) !== "string") bad(f, "must be a string");
  }
  int("steps", 1);
  int("seed", 0);
  int("batchSize", 1);
  int("maxLen", 8);
  int("accum", 1);
  int("warmup", 0);
  num("minLrFrac", 0, 1);
  const phases = c.phases;
  if (!Array.isArray(phases) || phases.length === 0) bad("phases", "must be a non-empty array");
  (phases as Phase[]).forEach((p, i) => {
    if (typeof p !== "object" || !p) bad(`phases.${i}`, "must be {frac, alpha, lr}");
    for (const [k, lo, hi] of [["frac", 0, 1], ["alpha", 0, 1], ["lr", 0, 1]] as const) {
      const v = (p as unknown as Record<string, unknown>)[k];
      if (typeof v !== "number" || !(v >= lo && v <= hi)) {
        throw new ConfigError(
          `field 'phases[${i}].${k}' must be a number in [${lo}, ${hi}], got ${JSON.stringify(v)}`,
        );
      }
    }
  });
  const sum = (phases as Phase[]).reduce((s, p) => s + p.frac, 0);
  if (Math.abs(sum - 1) > 1e-6) bad("phases", `fractions must sum to 1 (they sum to ${sum})`);
  num("optim.beta1", 0, 0.999999);
  num("optim.beta2", 0, 0.999999);
  num("optim.eps", 0, 1);
  num("optim.weightDecay", 0, 10);
  num("optim.clip", 0, 1e9);
  int("gem.k", 1);
  num("gem.rawProb", 0, 1);
  oneOf("gem.insertion", ["random", "end", "reconstruct"]);
  int("gem.minPrefix", 0);
  int("gem.minSuffix", 0);
  oneOf("gem.pooling", ["mean", "concat", "last"]);
  oneOf("gem.init", ["mean", "random"]);
  num("gem.initNoise", 0, 100);
  oneOf("contrastive.pairs", ["crop", "dropout", "mix", "supervised"]);
  int("contrastive.batchSize", 2);
  num("contrastive.dropout", 0, 0.99);
  num("contrastive.cropFrac", 0.05, 1);
  if (typeof getPath(c, "contrastive.symmetric") !== "boolean") {
    bad("contrastive.symmetric", "must be true or false");
  }
  if (getPath(c, "contrastive.pairs") === "supervised" && !getPath(c, "contrastive.pairsFile")) {
    bad("contrastive.pairsFile", "is required when contrastive.pairs is supervised");
  }
  if (typeof getPath(c, "checkpointing") !== "boolean") {
    bad("checkpointing", "must be true or false");
  }
  int("lora.rank", 0);
  num("lora.scale", 0, 1e6);
  const targets = getPath(c, "lora.targets");
  if (
    !Array.isArray(targets) || !targets.length ||
    !targets.every((t) => (LORA_TARGETS as readonly unknown[]).includes(t))
  ) {
    bad("lora.targets", `must be a non-empty list of ${LORA_TARGETS.join(", ")}`);
  }
  oneOf("dtype", ["f32", "f16"]);
  int("checkpointEvery", 1);
  int("keepCheckpoints", 1);
  int("evalEvery", 0);
  try {
    tables.set(c, parseRoleTable(getPath(c, "gem.mask"), "gem.mask"));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const k = getPath(c, "gem.k") as number;
  if (k + 8 > (getPath(c, "maxLen") as number)) {
    bad("gem.k", `leaves no room in maxLen ${getPath(c, "maxLen")}`);
  }
}
