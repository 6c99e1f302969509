/**
 * `deno task train [--config FILE] [--out DIR] [--steps N] [--seed S] [--resume DIR]
 *   [--stop-at K] [--no-report] [--plan] [--memory-gb G] [key=value ...]`
 *
 * With no arguments: GEM fine-tuning of stories260K on the TinyStories train split with the
 * default recipe (src/recipe/config.ts), then a report of perplexity and embedding quality before
 * and after on held-out data. Every run first makes its memory plan from the model's config alone
 * (src/recipe/plan.ts) and refuses to start when one binding would exceed the adapter's limit;
 * `--plan` prints the plan and exits.
 */

import { args, exit, stderrIsTerminal, writeStderr } from "../platform/platform.ts";
import { initGpu } from "../gpu/device.ts";
import { tinyStories } from "../io/corpus.ts";
import { buildConfig, readConfigFile, type TrainConfig } from "../recipe/config.ts";
import type { GemModel } from "../gem/gem.ts";
import { checkpointConfig, gemTask, loadRunGem, openBase, withSpecials } from "../recipe/recipe.ts";
import { type StepRecord, train } from "../train/trainer.ts";
import { readTrainerState, resolveCheckpoint } from "../train/trainer.ts";
import { parseArgs, runMain, TUNING_FLAG, UsageError } from "./args.ts";
import {
  checkPlan,
  formatBytes,
  formatPlan,
  PlanError,
  planRun,
  planTarget,
} from "../recipe/plan.ts";
import { inDomainRetrieval, perplexity } from "../eval/quick.ts";
import { baselineReport, gemReport, printReport } from "./report.ts";

const USAGE = "usage: deno task train [--config FILE] [--out DIR] [--steps N] [--seed S] " +
  "[--resume DIR] [--stop-at K] [--no-report] [--plan] [--memory-gb G] [key=value ...]";
const EXAMPLE = "deno task train --steps 200 --out runs/quick";

function progress(total: number, start: number) {
  const tty = stderrIsTerminal();
  const t0 = performance.now();
  let lastLine = 0;
  return (r: StepRecord) => {
    const done = r.step - start, left = total - r.step;
    const eta = done > 0 ? ((performance.now() - t0) / done) * left / 1000 : 0;
    const parts = Object.entries(r).filter(([k]) => ["ntp", "contrastive"].includes(k))
      .map(([k, v]) => `${k} ${v.toFixed(3)}`).join(" ");
    const msg =
      `step ${r.step}/${total} loss ${r.loss.toFixed(4)} ${parts} lr ${r.lr.toExponential(2)} ` +
      `|g| ${r.gradNorm.toFixed(2)} ${Math.round(r.tokensPerSec)} tok/s ETA ${Math.round(eta)}s`;
    if (tty) {
      const w = 24, fill = Math.round((r.step / total) * w);
      writeStderr(`\r[${"#".repeat(fill)}${".".repeat(w - fill)}] ${msg}\x1b[K`);
      if (r.step === total) console.error();
    } else if (
      r.step === start + 1 || r.step === total ||
      r.step - lastLine >= Math.max(1, Math.round(total / 20))
    ) {
      lastLine = r.step;
      console.error(`gemkit: ${msg}`);
    }
  };
}

await runMain(async () => {
  const { flags, overrides } = parseArgs(
    args(),
    {
      config: { type: "string", help: "JSON config file (fields: src/recipe/config.ts, README)" },
      out: {
        type: "string",
        help: "run directory (default runs/gem; with --resume, the resumed run's)",
      },
      steps: { type: "number", help: "optimizer steps of the whole run (fixes the schedule)" },
      seed: { type: "number", help: "seed" },
      resume: { type: "string", help: "continue a run: its directory or a checkpoint directory" },
      "stop-at": { type: "number", help: "stop after this step, with a checkpoint" },
      tuning: TUNING_FLAG,
      report: {
        type: "boolean",
        help: "evaluate before/after and print the report",
        default: true,
      },
      "no-report": { type: "boolean", help: "skip the report", default: false },
      plan: {
        type: "boolean",
        help: "print the memory plan (made before loading any weight) and exit",
        default: false,
      },
      "memory-gb": {
        type: "number",
        help:
          "device memory budget the plan is checked against (default on llvmpipe: the host's available memory)",
      },
    },
    USAGE,
    EXAMPLE,
  );
  let out = (flags.out as string | undefined) ?? "runs/gem";
  let config: TrainConfig;
  let ckpt: string | undefined;
  if (flags.resume) {
    ckpt = await resolveCheckpoint(flags.resume as string);
    if (flags.out === undefined) out = ckpt.replace(/\/[^/]+\/?$/, "") || ".";
    if (overrides.length || flags.config || flags.steps !== undefined || flags.seed !== undefined) {
      throw new UsageError(
        "--resume continues the saved run exactly: drop --config, --steps, --seed and overrides",
      );
    }
    config = await checkpointConfig(ckpt);
  } else {
    const file = flags.config ? await readConfigFile(flags.config as string) : null;
    const extra: [string, string][] = [];
    if (flags.steps !== undefined) extra.push(["steps", String(flags.steps)]);
    if (flags.seed !== undefined) extra.push(["seed", String(flags.seed)]);
    config = buildConfig(file, [...overrides, ...extra], (flags.config as string) ?? "config");
  }
  await initGpu({ log: !flags.plan });
  const plan = await planRun(config, planTarget(flags["memory-gb"] as number | undefined), ckpt);
  const verdict = checkPlan(plan);
  if (flags.plan) {
    console.log(formatPlan(plan));
    if (verdict.error) console.log(`refused: ${verdict.error}`);
    else if (verdict.warning) console.log(`warning: ${verdict.warning}`);
    exit(verdict.error ? 1 : 0);
  }
  if (verdict.error) throw new PlanError(verdict.error);
  console.error(
    `gemkit: memory plan: up to ${formatBytes(plan.total)} for ${plan.tokens} tokens per ` +
      `micro-batch; largest binding ${plan.largest.name} (deno task train --plan for the rest)`,
  );
  if (verdict.warning) console.warn(`gemkit: ${verdict.warning}`);
  const wantReport = (flags.report as boolean) && !(flags["no-report"] as boolean);
  let baseline = null;
  let gem: GemModel;
  if (ckpt) {
    gem = await loadRunGem(ckpt, config);
  } else {
    const base = await openBase(config);
    // The base model's report comes first: adding the specials consumes the base model.
    if (wantReport) baseline = await baselineReport(base.model, base.tokenizer, base.path);
    gem = await withSpecials(base, config);
  }
  const task = gemTask(gem, config);
  const start = ckpt ? (await readTrainerState(ckpt)).step : 0;
  console.error(
    `gemkit: training ${config.steps} steps (from ${start}), k=${config.gem.k}, mask ${
      JSON.stringify(config.gem.mask)
    }, run directory ${out}`,
  );
  // Validation slice of the train part: for choosing recipes, never the held-out paragraphs.
  const evaluate = async () => {
    const val = tinyStories().validation;
    const r = await inDomainRetrieval(
      async (t) => (await gem.embed(t)).vectors,
      val,
    );
    const p = await perplexity(gem.model, gem.tokenizer, val);
    return { valRecallAt1: r.recallAt1, valNdcgAt10: r.ndcgAt10, valPerplexity: p.perplexity };
  };
  const result = await train(task, config, {
    out,
    resume: ckpt,
    evaluate,
    stopAt: flags["stop-at"] as number | undefined,
    onStep: progress(Math.min(config.steps, (flags["stop-at"] as number) ?? config.steps), start),
  });
  console.error(
    `gemkit: ${result.stopped} at step ${result.steps}; checkpoint ${result.checkpoint}`,
  );
  if (wantReport && result.stopped === "done") {
    const after = await gemReport(gem);
    await printReport(baseline, after, config, result.checkpoint);
  }
  gem.dispose();
  if (result.stopped === "signal") exit(130);
});
