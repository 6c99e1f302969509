/**
 * Study files: a base config, labelled variants (each a set of config overrides), seeds, the
 * pooling and eval tasks, and reference poolings of the base model. Parsing checks every field
 * and names the one at fault. Also the canonical key that decides when two runs are the same
 * experiment, so a variant shared by several studies is trained once.
 */

import { canonicalJson } from "../platform/json.ts";
import { readFile } from "node:fs/promises";
import { evalTask } from "../eval/registry.ts";
import { buildConfig, ConfigError, type TrainConfig } from "../recipe/config.ts";

/** One labelled variant of a study. */
export interface Variant {
  /** Short label (file-name safe). */
  label: string;
  /** Config overrides, dotted paths to values (`{"gem.k": 5}`). */
  set: Record<string, unknown>;
  /** No training: the base model with fresh special tokens, evaluated once (seed 0). */
  untrained?: boolean;
  /** One line saying what the variant is. */
  about?: string;
}

/** A number from the paper to show beside a variant. */
export interface PaperNumbers {
  /** What the numbers are (metric, benchmark, model). */
  metric: string;
  /** Value by variant label. */
  values: Record<string, number>;
}

/** A parsed study file. */
export interface Study {
  /** Name; records go to results/ablations/NAME. */
  name: string;
  /** The question the study answers. */
  question: string;
  /** Base config object (fields of the training config; default: the default recipe). */
  base: Record<string, unknown>;
  /** The variants. */
  variants: Variant[];
  /** Label of the variant others are compared with, seed by seed. */
  reference: string;
  /** Seeds of every trained variant. */
  seeds: number[];
  /** Pooling of the trained models' embeddings. */
  pooling: "gem" | "mean" | "last";
  /** Eval task names. */
  tasks: string[];
  /** Poolings of the base model evaluated once per study as reference rows. */
  baselines: ("mean" | "last" | "prompt")[];
  /** The paper's numbers, when it has them. */
  paper?: PaperNumbers;
  /** The file it was read from. */
  file: string;
}

/** The tasks every study runs unless its file says otherwise. */
export const DEFAULT_TASKS = [
  "indomain",
  "stsb",
  "sick",
  "banking77",
  "trec",
  "cranfield",
  "ppl-tinystories",
  "probe",
];

/**
 * Config fields that change how a run is saved or how much memory it takes, never what it
 * computes (checkpointing recomputes activations bit for bit): left out of experiment keys.
 */
export const BOOKKEEPING_FIELDS = [
  "checkpointEvery",
  "keepCheckpoints",
  "evalEvery",
  "checkpointing",
] as const;

/** A study file that cannot be used; the message names the file and field. */
export class StudyError extends Error {
  /** Error class name. */
  override name = "StudyError";
}

/** Parses and checks a study object read from `file`. */
export function parseStudy(raw: unknown, file: string): Study {
  const bad = (field: string, why: string): never => {
    throw new StudyError(`${file}: field '${field}' ${why}`);
  };
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    bad("(root)", "must be an object");
  }
  const j = raw as Record<string, unknown>;
  const known = [
    "name",
    "question",
    "base",
    "variants",
    "reference",
    "seeds",
    "pooling",
    "tasks",
    "baselines",
    "paper",
  ];
  for (const k of Object.keys(j)) {
    if (!known.includes(k)) bad(k, `is unknown (known: ${known.join(", ")})`);
  }
  if (typeof j.name !== "string" || !/^[a-z0-9][a-z0-9-]*$/.test(j.name)) {
    bad("name", "must be lower-case letters, digits and dashes");
  }
  const question = j.question ?? "";
  if (typeof question !== "string") bad("question", "must be a string");
  const base = j.base ?? {};
  if (typeof base !== "object" || base === null || Array.isArray(base)) {
    bad("base", "must be an object");
  }
  if (!Array.isArray(j.variants) || j.variants.length === 0) {
    bad("variants", "must be a non-empty array");
  }
  const variants = (j.variants as unknown[]).map((v, i): Variant => {
    if (typeof v !== "object" || v === null) bad(`variants[${i}]`, "must be {label, set}");
    const x = v as Record<string, unknown>;
    for (const k of Object.keys(x)) {
      if (!["label", "set", "untrained", "about"].includes(k)) {
        bad(`variants[${i}].${k}`, "is unknown");
      }
    }
    if (typeof x.label !== "string" || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(x.label)) {
      bad(`variants[${i}].label`, "must be letters, digits, '_', '.', '-'");
    }
    const set = x.set ?? {};
    if (typeof set !== "object" || set === null || Array.isArray(set)) {
      bad(`variants[${i}].set`, "must be an object of config overrides");
    }
    if (x.untrained !== undefined && typeof x.untrained !== "boolean") {
      bad(`variants[${i}].untrained`, "must be true or false");
    }
    if (x.about !== undefined && typeof x.about !== "string") {
      bad(`variants[${i}].about`, "must be a string");
    }
    return {
      label: x.label as string,
      set: set as Record<string, unknown>,
      untrained: x.untrained as boolean | undefined,
      about: x.about as string | undefined,
    };
  });
  const labels = new Set<string>();
  for (const v of variants) {
    if (labels.has(v.label)) bad("variants", `has the label '${v.label}' twice`);
    labels.add(v.label);
  }
  const reference = j.reference ?? variants[0].label;
  if (typeof reference !== "string" || !labels.has(reference)) {
    bad("reference", `must be one of the variant labels (${[...labels].join(", ")})`);
  }
  const seeds = j.seeds ?? [0, 1, 2];
  if (
    !Array.isArray(seeds) || !seeds.length || !seeds.every((s) => Number.isInteger(s) && s >= 0)
  ) {
    bad("seeds", "must be a non-empty array of integers >= 0");
  }
  const pooling = j.pooling ?? "gem";
  if (!["gem", "mean", "last"].includes(pooling as string)) {
    bad("pooling", "must be gem, mean or last");
  }
  const tasks = j.tasks ?? DEFAULT_TASKS;
  if (!Array.isArray(tasks) || !tasks.length) {
    bad("tasks", "must be a non-empty array of task names");
  }
  for (const t of tasks as unknown[]) {
    try {
      evalTask(t as string);
    } catch (e) {
      bad("tasks", (e as Error).message);
    }
  }
  const baselines = j.baselines ?? ["mean", "last", "prompt"];
  if (
    !Array.isArray(baselines) || !baselines.every((b) => ["mean", "last", "prompt"].includes(b))
  ) {
    bad("baselines", "must be an array of mean, last, prompt");
  }
  let paper: PaperNumbers | undefined;
  if (j.paper !== undefined) {
    const p = j.paper as Record<string, unknown>;
    if (typeof p !== "object" || p === null || typeof p.metric !== "string") {
      bad("paper", "must be {metric, values}");
    }
    const values = p.values as Record<string, unknown>;
    if (typeof values !== "object" || values === null) {
      bad("paper.values", "must map labels to numbers");
    }
    for (const [k, v] of Object.entries(values)) {
      if (!labels.has(k)) bad(`paper.values.${k}`, "is not a variant label");
      if (typeof v !== "number") bad(`paper.values.${k}`, "must be a number");
    }
    paper = { metric: p.metric as string, values: values as Record<string, number> };
  }
  const study: Study = {
    name: j.name as string,
    question: question as string,
    base: base as Record<string, unknown>,
    variants,
    reference: reference as string,
    seeds: seeds as number[],
    pooling: pooling as Study["pooling"],
    tasks: tasks as string[],
    baselines: baselines as Study["baselines"],
    paper,
    file,
  };
  // Every variant's config must build: errors now, not hours into a sweep.
  for (const v of variants) {
    try {
      variantConfig(study, v, study.seeds[0]);
    } catch (e) {
      if (e instanceof ConfigError) {
        throw new StudyError(`${file}: variant '${v.label}': ${e.message}`);
      }
      throw e;
    }
  }
  return study;
}

/** Reads and parses a study file. */
export async function readStudy(file: string): Promise<Study> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, "utf8"));
  } catch (e) {
    throw new StudyError(`${file}: cannot read as JSON (${e instanceof Error ? e.message : e})`);
  }
  return parseStudy(raw, file);
}

/** Steps between checkpoints of sweep runs: a killed run loses at most this many steps. */
export const SWEEP_CHECKPOINT_EVERY = 20;

/**
 * The resolved config of one run: defaults < the study's base < the variant's overrides, then the
 * seed and the sweep's checkpointing (which never changes results).
 */
export function variantConfig(study: Study, v: Variant, seed: number): TrainConfig {
  const overrides: [string, string][] = [
    ...Object.entries(v.set).map(([k, x]) => [k, JSON.stringify(x)] as [string, string]),
    ["seed", String(seed)],
    ["checkpointEvery", String(SWEEP_CHECKPOINT_EVERY)],
    ["keepCheckpoints", "1"],
  ];
  return buildConfig(study.base, overrides, `${study.file} variant '${v.label}'`);
}

/** JSON with object keys sorted at every level: equal values give equal strings. */
export { canonicalJson };

/**
 * What makes two runs the same experiment: the resolved config without its bookkeeping fields,
 * whether it was trained, and the pooling it was evaluated with.
 */
export function experimentKey(
  config: TrainConfig,
  untrained: boolean,
  pooling: string,
): string {
  const c = structuredClone(config) as unknown as Record<string, unknown>;
  for (const f of BOOKKEEPING_FIELDS) delete c[f];
  // Without adapters the LoRA fields change nothing (and records made before they existed
  // have no such fields).
  if ((c.lora as { rank?: number } | undefined)?.rank === 0) delete c.lora;
  // Likewise f32 storage, the only storage before f16 existed.
  if (c.dtype === "f32") delete c.dtype;
  if (untrained) {
    // Nothing of the schedule or objective matters to an untrained model.
    return canonicalJson({
      untrained: true,
      pooling,
      model: config.model,
      tokenizer: config.tokenizer,
      gem: {
        k: config.gem.k,
        mask: config.gem.mask,
        pooling: config.gem.pooling,
        init: config.gem.init,
        initNoise: config.gem.initNoise,
      },
      seed: config.seed,
    });
  }
  return canonicalJson({ config: c, pooling });
}
