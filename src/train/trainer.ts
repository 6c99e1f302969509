/**
 * The training loop, for any model: schedule (warm-up + cosine per phase), gradient accumulation,
 * global-norm clipping, AdamW, JSONL logs, a progress line, and checkpoints that make a stopped
 * run resumable exactly.
 *
 * A checkpoint is a directory `<run>/ckpt-<step>` holding the model (written by the task), the
 * optimizer moments (trainer/optimizer.safetensors) and trainer/state.json (step, data position,
 * RNG state, config). It is written under a temporary name and renamed into place; then the file
 * `<run>/latest` is replaced atomically to point at it. A crash at any moment leaves the last
 * complete checkpoint intact.
 */

import { readdirSync } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { exit, onSignal as listen, OS } from "../platform/platform.ts";
import { writeAtomic } from "../io/atomic.ts";
import { resolveRunDir } from "../io/model.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { clipGradNorm, type Trainable } from "../tensor/optim.ts";
import { AdamW } from "../tensor/optim.ts";
import { backward } from "../tensor/backward.ts";
import { noGrad, scope, type Tensor, tensor } from "../tensor/tensor.ts";
import * as T from "../tensor/ops.ts";
import { gpu } from "../gpu/device.ts";
import { type LoopConfig, scheduleAt } from "./schedule.ts";

/** What one micro-batch returns to the loop. */
export interface MicroLoss {
  /** The loss to differentiate (already scaled for accumulation). */
  total: Tensor;
  /** Unscaled parts to log (e.g. ntp, contrastive). */
  parts: Record<string, Tensor | undefined>;
  /** Tokens processed. */
  tokens: number;
}

/** The model-specific side of training. */
export interface TrainTask {
  /** Parameters to optimise (whole leaves, or trained rows of one), in a fixed order. */
  params: Trainable[];
  /** Weight decay on (true) or off, per parameter. */
  decay: boolean[];
  /** Loss of micro-batch `micro` of step `step` (alpha from the schedule, scale = 1/accum). */
  micro(step: number, micro: number, alpha: number, scale: number): MicroLoss;
  /** Writes the model into a checkpoint directory. */
  saveModel(dir: string): Promise<void>;
  /** The data side's state (stream positions, RNG), restored by `restoreData`. */
  dataState(): unknown;
  /** Restores what dataState returned. */
  restoreData(state: unknown): void;
}

/** What the trainer keeps in trainer/state.json; `C` is the run's whole configuration. */
export interface TrainerState<C extends LoopConfig = LoopConfig> {
  /** Steps completed. */
  step: number;
  /** The data side state. */
  data: unknown;
  /** The run configuration. */
  config: C;
  /** AdamW step count. */
  optimizerStep: number;
  /**
   * Hash of the kernel tuning the run trained with (src/gpu/tuning.ts): another tuning may sum
   * in another order, so a resumed run refuses one that differs. Absent in older checkpoints.
   */
  tuning?: string;
}

/** Options of {@link train}. */
export interface TrainOptions {
  /** Run directory (checkpoints, log.jsonl). */
  out: string;
  /** Stop (with a checkpoint) after this many steps in total. */
  stopAt?: number;
  /** Resume from this checkpoint directory (the model must already be loaded from it). */
  resume?: string;
  /** Called with each step's log record. */
  onStep?: (rec: StepRecord) => void;
  /** Run at steps where `(step+1) % evalEvery === 0`; its record is logged. */
  evaluate?: (step: number) => Promise<Record<string, number>>;
}

/** One line of log.jsonl. */
export interface StepRecord {
  /** Steps completed. */
  step: number;
  /** Learning rate used. */
  lr: number;
  /** Contrastive weight used. */
  alpha: number;
  /** Total loss. */
  loss: number;
  /** Gradient norm before clipping. */
  gradNorm: number;
  /** Tokens per second of the step. */
  tokensPerSec: number;
  /** Step time in ms. */
  ms: number;
  /** Most device bytes live at once during the step (the buffer pool's count). */
  peakBytes: number;
  /** Loss parts (ntp, contrastive) and evaluation results. */
  [part: string]: number;
}

/** Training stopped on a non-finite loss; the last good checkpoint is kept. */
export class NonFiniteLossError extends Error {
  /** Error class name. */
  override name = "NonFiniteLossError";
}

/** How a run ended. */
export interface TrainResult {
  /** Steps completed. */
  steps: number;
  /** Why the run ended. */
  stopped: "done" | "stop-at" | "signal";
  /** The last checkpoint written. */
  checkpoint: string;
}

function ckptName(step: number): string {
  return `ckpt-${String(step).padStart(6, "0")}`;
}

/** Resolves `--resume` (a run directory with `latest`, or a checkpoint directory). */
export async function resolveCheckpoint(path: string): Promise<string> {
  const ckpt = await resolveRunDir(path);
  if (ckpt !== path) return ckpt;
  await stat(`${path}/trainer/state.json`).catch(() => {
    throw new Error(
      `${path}: neither a run directory (no 'latest') nor a checkpoint (no trainer/state.json)`,
    );
  });
  return path;
}

/** Reads a checkpoint's trainer state. */
export async function readTrainerState<C extends LoopConfig = LoopConfig>(
  ckpt: string,
): Promise<TrainerState<C>> {
  const path = `${ckpt}/trainer/state.json`;
  try {
    return JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new Error(`${path}: cannot read (${e instanceof Error ? e.message : e})`);
  }
}

async function saveCheckpoint(
  out: string,
  step: number,
  task: TrainTask,
  opt: AdamW,
  config: LoopConfig,
  keep: number,
): Promise<string> {
  const name = ckptName(step);
  const tmp = `${out}/.${name}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await mkdir(`${tmp}/trainer`, { recursive: true });
  await task.saveModel(tmp);
  const moments: { name: string; shape: number[]; data: Float32Array }[] = [];
  for (let i = 0; i < opt.params.length; i++) {
    const shape = [...opt.shapes[i]];
    moments.push({ name: `m.${i}`, shape, data: (await opt.m[i].toArray()) as Float32Array });
    moments.push({ name: `v.${i}`, shape, data: (await opt.v[i].toArray()) as Float32Array });
  }
  await writeSafetensors(`${tmp}/trainer/optimizer.safetensors`, moments, { dtype: "F32" });
  const state: TrainerState = {
    step,
    data: task.dataState(),
    config,
    optimizerStep: opt.step,
    tuning: gpu().tuningHash,
  };
  await writeFile(`${tmp}/trainer/state.json`, JSON.stringify(state, null, 1) + "\n");
  await rm(`${out}/${name}`, { recursive: true }).catch(() => {});
  await rename(tmp, `${out}/${name}`);
  await writeAtomic(`${out}/latest`, name + "\n");
  // Prune older checkpoints beyond `keep`.
  const all = readdirSync(out).filter((n) => /^ckpt-\d{6}$/.test(n)).sort();
  for (const old of all.slice(0, Math.max(0, all.length - keep))) {
    await rm(`${out}/${old}`, { recursive: true });
  }
  return `${out}/${name}`;
}

/** Restores optimizer moments and step from a checkpoint. */
async function restoreOptimizer(ckpt: string, opt: AdamW, state: TrainerState): Promise<void> {
  const st = await readSafetensors(`${ckpt}/trainer/optimizer.safetensors`);
  for (let i = 0; i < opt.params.length; i++) {
    for (const [which, list] of [["m", opt.m], ["v", opt.v]] as const) {
      const t = st.tensors.get(`${which}.${i}`);
      if (!t || t.shape.join() !== opt.shapes[i].join()) {
        throw new Error(
          `${ckpt}/trainer/optimizer.safetensors: ${which}.${i} missing or of the wrong shape`,
        );
      }
      list[i].dispose();
      list[i] = tensor(t.data as Float32Array, t.shape);
    }
  }
  opt.step = state.optimizerStep;
}

/**
 * Trains `task` under `config` from step 0, or from a checkpoint with `resume`. The whole config
 * (a {@link LoopConfig} or any extension of it) is saved in each checkpoint's state.json.
 */
export async function train(
  task: TrainTask,
  config: LoopConfig,
  opts: TrainOptions,
): Promise<TrainResult> {
  await mkdir(opts.out, { recursive: true });
  const opt = new AdamW(task.params, {
    lr: config.phases[0].lr,
    beta1: config.optim.beta1,
    beta2: config.optim.beta2,
    eps: config.optim.eps,
    weightDecay: config.optim.weightDecay,
  });
  let step = 0;
  if (opts.resume) {
    const state = await readTrainerState(opts.resume);
    const here = gpu().tuningHash;
    if (state.tuning !== undefined && state.tuning !== here) {
      throw new Error(
        `${opts.resume}: trained with kernel tuning ${state.tuning}, this process has ${here} ` +
          `(${gpu().tuningSource}); resuming would not continue the run exactly: pin the run's ` +
          "tuning with --tuning FILE, or GEMKIT_TUNING=builtin if it was the built-in one",
      );
    }
    await restoreOptimizer(opts.resume, opt, state);
    task.restoreData(state.data);
    step = state.step;
  }
  const log = await open(`${opts.out}/log.jsonl`, "a");
  const enc = new TextEncoder();
  let signalled = false;
  const onSignal = () => {
    if (signalled) exit(130);
    signalled = true;
    console.error(
      "\ngemkit: interrupted; saving a checkpoint after this step (Ctrl-C again to abort)",
    );
  };
  const signals = OS === "win32" ? ["SIGINT"] as const : ["SIGINT", "SIGTERM"] as const;
  const unlisten = signals.map((s) => listen(s, onSignal));
  const end = Math.min(config.steps, opts.stopAt ?? config.steps);
  let lastCkpt = opts.resume ?? "";
  let savedAt = step;
  try {
    while (step < end && !signalled) {
      const t0 = performance.now();
      gpu().pool.resetPeak();
      const { lr, alpha } = scheduleAt(config, step);
      let tokens = 0;
      const sums: Record<string, number> = {};
      let total = 0;
      const pending: [string, Tensor][] = [];
      for (let m = 0; m < config.accum; m++) {
        const r = scope(() => task.micro(step, m, alpha, 1 / config.accum));
        backward(r.total);
        tokens += r.tokens;
        pending.push(["loss", r.total]);
        for (const [k, v] of Object.entries(r.parts)) if (v) pending.push([k, v]);
      }
      const norm = config.optim.clip > 0 ? clipGradNorm(task.params, config.optim.clip) : null;
      // The losses and the gradient norm in one readback: each read waits out a fixed ~10 ms in
      // Deno (four reads a step took 46 ms on llvmpipe with GEM's two loss parts; one takes 13).
      const host = await readScalars([...pending.map(([, t]) => t), ...(norm ? [norm] : [])]);
      pending.forEach(([k, t], i) => {
        t.dispose();
        if (k === "loss") total += host[i];
        else sums[k] = (sums[k] ?? 0) + host[i] / config.accum;
      });
      if (!Number.isFinite(total)) {
        norm?.dispose();
        throw new NonFiniteLossError(
          `loss is ${total} at step ${
            step + 1
          }; stopped without updating. The last good checkpoint is ` +
            `${lastCkpt || "(none yet)"}. Try a lower lr or gradient clipping (optim.clip).`,
        );
      }
      const gradNorm = norm ? host[pending.length] : NaN;
      norm?.dispose();
      opt.update({ lr, decayMask: task.decay });
      opt.zeroGrad();
      step++;
      const ms = performance.now() - t0;
      const rec: StepRecord = {
        step,
        lr,
        alpha,
        loss: total,
        gradNorm,
        tokensPerSec: tokens / (ms / 1000),
        ms,
        peakBytes: gpu().pool.peakLiveBytes,
        ...sums,
      };
      if (opts.evaluate && config.evalEvery > 0 && step % config.evalEvery === 0) {
        Object.assign(rec, await opts.evaluate(step));
      }
      await log.write(enc.encode(JSON.stringify(rec) + "\n"));
      opts.onStep?.(rec);
      if (step % config.checkpointEvery === 0 && step < end) {
        lastCkpt = await saveCheckpoint(opts.out, step, task, opt, config, config.keepCheckpoints);
        savedAt = step;
      }
    }
    if (savedAt !== step || !lastCkpt) {
      lastCkpt = await saveCheckpoint(opts.out, step, task, opt, config, config.keepCheckpoints);
    }
  } finally {
    for (const stop of unlisten) stop();
    await log.close();
    opt.dispose();
  }
  return {
    steps: step,
    stopped: signalled ? "signal" : step >= config.steps ? "done" : "stop-at",
    checkpoint: lastCkpt,
  };
}

/** The first element of each tensor, read back together. */
async function readScalars(ts: readonly Tensor[]): Promise<Float32Array> {
  if (!ts.length) return new Float32Array(0);
  // The views made on the way are released by the scope; the joined copy is returned.
  const all = noGrad(() =>
    scope(() => T.concat(ts.map((t) => T.slice(T.reshape(t, [-1]), 0, 0, 1)), 0))
  );
  const host = (await all.toArray()) as Float32Array;
  all.dispose();
  return host;
}
