/**
 * One run of a study: train a variant with a seed into its own directory (resuming exactly where
 * a killed run left off), evaluate it with the study's pooling and tasks, and return its record.
 * Also the untrained row (fresh specials) and the base model's reference rows.
 */

import { checkPlan, PlanError, planRun, planTarget } from "../recipe/plan.ts";
import { mkdir, readFile } from "node:fs/promises";
import type { GemModel } from "../gem/gem.ts";
import { loadGem } from "../gem/io.ts";
import { evalTask } from "../eval/registry.ts";
import { makeEmbedder } from "../eval/tasks.ts";
import { writeAtomic } from "../io/atomic.ts";
import { sha256Path } from "../io/hash.ts";
import { resolveRunDir } from "../io/model.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";
import { buildConfig, type TrainConfig } from "../recipe/config.ts";
import {
  checkpointConfig,
  configFiles,
  openBase,
  prepareRun,
  withSpecials,
} from "../recipe/recipe.ts";
import { readTrainerState, type StepRecord, train } from "../train/trainer.ts";
import { hashData, runEnv, type RunRecord } from "./records.ts";
import { canonicalJson, experimentKey, type Study, type Variant, variantConfig } from "./study.ts";

/** Where a sweep writes and how it reports. */
export interface RunPlace {
  /** Folder of run directories (checkpoints; not committed). */
  runsDir: string;
  /** Progress lines. */
  log: (msg: string) => void;
  /** Stop each training after this step, with a checkpoint (the run continues on the next call). */
  stopAt?: number;
}

/** The training stopped early (a signal, or `stopAt`) after saving a checkpoint. */
export class RunInterrupted extends Error {
  /** Error class name. */
  override name = "RunInterrupted";
  /** Why: a signal (stop the sweep) or the requested stop step (go on with the next run). */
  constructor(message: string, readonly reason: "signal" | "stop-at") {
    super(message);
  }
}

/** Metrics, notes and time of evaluating one model with one pooling. */
export interface Evaluation {
  /** `task.metric` -> value. */
  metrics: Record<string, number>;
  /** Task notes, prefixed by the task. */
  notes: string[];
  /** Wall time. */
  seconds: number;
}

/**
 * Evaluates a model on `tasks` with `pooling`: embedding tasks through that pooling, language
 * tasks once, gem tasks when `gem` is given (skipped otherwise).
 */
export async function evaluateModel(
  model: Llama,
  tokenizer: Tokenizer,
  gem: GemModel | undefined,
  pooling: "gem" | "mean" | "last" | "prompt",
  tasks: readonly string[],
  log: (msg: string) => void = () => {},
): Promise<Evaluation> {
  const t0 = performance.now();
  const metrics: Record<string, number> = {};
  const notes: string[] = [];
  const embedder = makeEmbedder(model, tokenizer, pooling, gem);
  for (const name of tasks) {
    const task = evalTask(name);
    if (task.kind === "gem" && !gem) continue;
    const r = await task.run({ model, tokenizer, gem, embedder, seed: 0 });
    for (const [k, v] of Object.entries(r.metrics)) {
      if (!k.startsWith("acc.")) metrics[`${name}.${k}`] = v;
    }
    notes.push(...r.notes.map((n) => `${name}: ${n}`));
    log(
      `  ${name}: ${task.headline} ${r.metrics[task.headline].toFixed(4)} (${
        r.seconds.toFixed(0)
      } s)`,
    );
  }
  return { metrics, notes, seconds: (performance.now() - t0) / 1000 };
}

/** Files the study's tasks read. */
function taskFiles(tasks: readonly string[]): string[] {
  return tasks.flatMap((t) => evalTask(t).files.map((f) => `@data/${f}`));
}

/** Summed step time (s) of a run's log, counting each step once (its last entry). */
async function stepSeconds(dir: string): Promise<number> {
  const byStep = new Map<number, number>();
  try {
    for (const line of (await readFile(`${dir}/log.jsonl`, "utf8")).split("\n")) {
      if (!line.trim()) continue;
      const r = JSON.parse(line) as StepRecord;
      byStep.set(r.step, r.ms);
    }
  } catch {
    return 0;
  }
  return [...byStep.values()].reduce((a, b) => a + b, 0) / 1000;
}

interface WallLog {
  seconds: number;
  segments: number;
}

async function readWall(dir: string): Promise<WallLog> {
  try {
    return JSON.parse(await readFile(`${dir}/wall.json`, "utf8"));
  } catch {
    return { seconds: 0, segments: 0 };
  }
}

/** The run directory of a variant and seed. */
export function runDir(place: RunPlace, study: Study, v: Variant, seed: number): string {
  return `${place.runsDir}/${study.name}/${v.label}-s${seed}`;
}

/**
 * Trains (or finishes training) one variant with one seed, then evaluates the final checkpoint.
 * A run directory holding another config is refused, never overwritten.
 */
export async function runTrained(
  study: Study,
  v: Variant,
  seed: number,
  place: RunPlace,
): Promise<RunRecord> {
  const config = variantConfig(study, v, seed);
  const key = experimentKey(config, false, study.pooling);
  const dir = runDir(place, study, v, seed);
  let resume: string | undefined;
  let done = 0;
  const ckpt = await resolveRunDir(dir);
  if (ckpt !== dir) {
    const saved = await checkpointConfig(ckpt);
    if (experimentKey(saved, false, study.pooling) !== key) {
      throw new Error(
        `${dir}: holds a run of another config (${ckpt}/trainer/state.json); ` +
          "remove the directory or choose another --runs folder",
      );
    }
    resume = ckpt;
    done = (await readTrainerState(ckpt)).step;
  }
  const wall = await readWall(dir);
  if (done < config.steps) {
    place.log(
      `${study.name} ${v.label} seed ${seed}: training ${config.steps} steps` +
        (resume ? ` (resuming at step ${done})` : "") + ` in ${dir}`,
    );
    // wall.json counts segments and their time; it is updated at each checkpoint, so a killed
    // segment loses at most the time since its last one.
    const t0 = performance.now();
    const before = wall.seconds;
    wall.segments += 1;
    const saveWall = async () => {
      wall.seconds = before + (performance.now() - t0) / 1000;
      await writeAtomic(`${dir}/wall.json`, JSON.stringify(wall) + "\n");
    };
    // Refused before anything is written when one binding would exceed the adapter's limit.
    const verdict = checkPlan(await planRun(config, planTarget(), resume));
    if (verdict.error) throw new PlanError(`${v.label} seed ${seed}: ${verdict.error}`);
    await mkdir(dir, { recursive: true });
    await saveWall();
    const { gem, task } = await prepareRun(config, resume);
    let last = 0;
    const result = await train(task, config, {
      out: dir,
      resume,
      stopAt: place.stopAt,
      onStep: (r) => {
        if (r.step % config.checkpointEvery === 0) void saveWall();
        if (r.step - last >= 50 || r.step === config.steps) {
          last = r.step;
          place.log(
            `  step ${r.step}/${config.steps} loss ${r.loss.toFixed(4)} (${r.ms.toFixed(0)} ms)`,
          );
        }
      },
    });
    gem.dispose();
    await saveWall();
    if (result.stopped !== "done") {
      throw new RunInterrupted(
        `${dir}: stopped at step ${result.steps} (${result.stopped}); rerun to continue`,
        result.stopped === "signal" ? "signal" : "stop-at",
      );
    }
  }
  const final = await resolveRunDir(dir);
  place.log(`${study.name} ${v.label} seed ${seed}: evaluating ${final}`);
  const gem = await loadGem(final);
  return await evaluated(study, place, { model: gem.model, tokenizer: gem.tokenizer, gem }, {
    label: v.label,
    seed,
    kind: "trained",
    pooling: study.pooling,
    config,
    key,
    files: configFiles(config),
    weights: await sha256Path(`${final}/model.safetensors`),
    train: {
      stepSeconds: await stepSeconds(dir),
      wallSeconds: wall.seconds,
      resumes: Math.max(0, wall.segments - 1),
    },
  });
}

/** What a record says about its run besides the evaluation and the environment. */
interface RunHead {
  label: string;
  seed: number | null;
  kind: RunRecord["kind"];
  pooling: "gem" | "mean" | "last" | "prompt";
  config: TrainConfig;
  key: string;
  /** Files read besides the tasks' (model, tokenizer, training data). */
  files: string[];
  weights?: string;
  train: RunRecord["train"];
}

/** Evaluates a model (then disposes it) and builds its record. */
async function evaluated(
  study: Study,
  place: RunPlace,
  m: { model: Llama; tokenizer: Tokenizer; gem?: GemModel },
  head: RunHead,
): Promise<RunRecord> {
  let ev: Evaluation;
  try {
    ev = await evaluateModel(m.model, m.tokenizer, m.gem, head.pooling, study.tasks, place.log);
  } finally {
    (m.gem ?? m.model).dispose();
  }
  // gem tasks do not run without a GEM model, so their files are not read then.
  const tasks = study.tasks.filter((t) => m.gem || evalTask(t).kind !== "gem");
  const { files, ...rest } = head;
  return {
    study: study.name,
    ...rest,
    env: await runEnv(),
    data: await hashData([...files, ...taskFiles(tasks)]),
    evalSeconds: ev.seconds,
    metrics: ev.metrics,
    notes: ev.notes,
    date: new Date().toISOString(),
  };
}

/** The base model with the variant's fresh special tokens, untrained (seed 0), evaluated. */
export async function runUntrained(
  study: Study,
  v: Variant,
  place: RunPlace,
): Promise<RunRecord> {
  const config = variantConfig(study, v, 0);
  place.log(`${study.name} ${v.label}: base model + fresh specials, no training`);
  const gem = await withSpecials(await openBase(config), config);
  return await evaluated(study, place, { model: gem.model, tokenizer: gem.tokenizer, gem }, {
    label: v.label,
    seed: 0,
    kind: "untrained",
    pooling: study.pooling,
    config,
    key: experimentKey(config, true, study.pooling),
    files: [config.model, config.tokenizer],
    train: null,
  });
}

/** The key of a base-model reference row. */
export function baselineKey(config: TrainConfig, pooling: string): string {
  return canonicalJson({ baseline: pooling, model: config.model, tokenizer: config.tokenizer });
}

/** The base model of the study's config, evaluated with a baseline pooling (no gem tasks). */
export async function runBaseline(
  study: Study,
  pooling: "mean" | "last" | "prompt",
  place: RunPlace,
): Promise<RunRecord> {
  const config = buildConfig(study.base, [], study.file);
  place.log(`${study.name} base-${pooling}: the base model, ${pooling} pooling`);
  const base = await openBase(config);
  return await evaluated(study, place, base, {
    label: `base-${pooling}`,
    seed: null,
    kind: "baseline",
    pooling,
    config,
    key: baselineKey(config, pooling),
    files: [config.model, config.tokenizer],
    train: null,
  });
}
