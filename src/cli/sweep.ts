/**
 * `deno task sweep --study studies/NAME.json [--only LABEL,...] [--seeds 0,2] [--runs DIR]
 *   [--results DIR] [--summarize] [--plan]`
 *
 * Runs a study: every variant x seed is trained into its own directory under --runs and
 * evaluated; one record per finished run is appended to <results>/NAME/runs.jsonl. The base
 * model's reference poolings are evaluated once. Idempotent: a recorded run is skipped, a run
 * recorded by another study with the same resolved config is copied instead of trained again,
 * and an interrupted run continues from its last checkpoint (every 20 steps; `--stop-at N` stops
 * each training after step N on purpose). Each run trains
 * in a fresh process, so a record reproduces with `--only LABEL --seeds S` alone.
 * `--summarize` writes <results>/NAME/README.md and the figures from the records.
 */

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { args, exit, exitCode, onSignal as listen, scriptCommand } from "../platform/platform.ts";
import { initGpu } from "../gpu/device.ts";
import { evalTask } from "../eval/registry.ts";
import { buildConfig } from "../recipe/config.ts";
import { allRecords, appendRecord, readRecords, type RunRecord } from "../study/records.ts";
import {
  baselineKey,
  runBaseline,
  RunInterrupted,
  type RunPlace,
  runTrained,
  runUntrained,
} from "../study/run.ts";
import { experimentKey, readStudy, type Study, variantConfig } from "../study/study.ts";
import { writeSummary } from "../study/summary.ts";
import { parseArgs, runMain, TUNING_FLAG, UsageError } from "./args.ts";

const USAGE = "usage: deno task sweep --study FILE [--only LABEL,...] [--seeds 0,1,2] " +
  "[--runs DIR] [--results DIR] [--summarize] [--plan] [--stop-at N]";
const EXAMPLE = "deno task sweep --study studies/token-count.json --plan";

/** One unit of work: a baseline row, the untrained row, or a variant with a seed. */
interface Job {
  label: string;
  seed: number | null;
  key: string;
  kind: RunRecord["kind"];
}

function jobsOf(study: Study, only: Set<string> | null, seeds: number[] | null): Job[] {
  const jobs: Job[] = [];
  const base = buildConfig(study.base, [], study.file);
  for (const p of study.baselines) {
    const label = `base-${p}`;
    if (!only || only.has(label)) {
      jobs.push({ label, seed: null, key: baselineKey(base, p), kind: "baseline" });
    }
  }
  for (const v of study.variants) {
    if (only && !only.has(v.label)) continue;
    if (v.untrained) {
      const c = variantConfig(study, v, 0);
      jobs.push({
        label: v.label,
        seed: 0,
        key: experimentKey(c, true, study.pooling),
        kind: "untrained",
      });
      continue;
    }
    for (const s of seeds ?? study.seeds) {
      const c = variantConfig(study, v, s);
      jobs.push({
        label: v.label,
        seed: s,
        key: experimentKey(c, false, study.pooling),
        kind: "trained",
      });
    }
  }
  return jobs;
}

/** Whether a record has every metric the study's tasks report (gem tasks only for GEM rows). */
function covers(rec: RunRecord, study: Study): boolean {
  return study.tasks.every((t) => {
    const task = evalTask(t);
    if (task.kind === "gem" && rec.kind === "baseline") return true;
    return `${t}.${task.headline}` in rec.metrics;
  });
}

/** The job's id on a worker's command line: LABEL, or LABEL:SEED for a trained run. */
function workerId(j: Job): string {
  return j.kind === "trained" ? `${j.label}:${j.seed}` : j.label;
}

function jobName(j: Job): string {
  return j.seed === null || j.kind === "untrained" ? j.label : `${j.label} seed ${j.seed}`;
}

/** Exit code of a worker whose run stopped at --stop-at: the sweep goes on with the next job. */
const PAUSED = 3;

const log = (m: string) => console.error(`gemkit sweep: ${m}`);

/** Runs one job in this process and appends its record (the worker side). */
async function work(study: Study, job: Job, place: RunPlace, file: string): Promise<void> {
  await initGpu({ log: false });
  const v = study.variants.find((x) => x.label === job.label);
  const rec = job.kind === "baseline"
    ? await runBaseline(study, job.label.slice(5) as "mean" | "last" | "prompt", place)
    : job.kind === "untrained"
    ? await runUntrained(study, v!, place)
    : await runTrained(study, v!, job.seed!, place);
  await appendRecord(file, rec);
  log(`recorded ${jobName(job)} in ${file}`);
}

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      study: { type: "string", help: "study file (studies/*.json)" },
      only: {
        type: "string",
        help: "comma list of variant labels (base-mean etc. for references)",
      },
      seeds: { type: "string", help: "comma list of seeds (default: the study's)" },
      runs: { type: "string", help: "folder of run directories", default: "runs/ablations" },
      results: { type: "string", help: "folder of records", default: "results/ablations" },
      summarize: { type: "boolean", help: "only write the summary from the records" },
      plan: { type: "boolean", help: "print what would run, reuse or be skipped, then stop" },
      "stop-at": {
        type: "number",
        help: "stop each training after this step, with a checkpoint (rerun to continue)",
      },
      tuning: TUNING_FLAG,
      worker: { type: "string", help: "(internal) run one job: LABEL or LABEL:SEED" },
    },
    USAGE,
    EXAMPLE,
  );
  if (!flags.study) throw new UsageError(`--study is required\n${USAGE}`);
  const study = await readStudy(flags.study as string);
  const results = flags.results as string;
  const file = `${results}/${study.name}/runs.jsonl`;
  const place: RunPlace = {
    runsDir: flags.runs as string,
    log,
    stopAt: flags["stop-at"] as number | undefined,
  };
  if (flags.summarize) {
    await writeSummary(study, await readRecords(file), `${results}/${study.name}`);
    log(`wrote ${results}/${study.name}/README.md and figures`);
    return;
  }
  const only = flags.only
    ? new Set(String(flags.only).split(",").map((s) => s.trim()).filter(Boolean))
    : null;
  const known = new Set([
    ...study.variants.map((v) => v.label),
    ...study.baselines.map((p) => `base-${p}`),
  ]);
  for (const l of only ?? []) {
    if (!known.has(l)) {
      throw new UsageError(`--only: no variant '${l}' in ${study.file} (${[...known].join(", ")})`);
    }
  }
  const seeds = flags.seeds
    ? String(flags.seeds).split(",").map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 0) throw new UsageError(`--seeds: '${s}' is not a seed`);
      return n;
    })
    : null;
  const jobs = jobsOf(study, only, seeds);
  if (flags.worker) {
    const job = jobs.find((j) => workerId(j) === flags.worker);
    if (!job) throw new UsageError(`--worker ${flags.worker}: no such job`);
    try {
      await work(study, job, place, file);
    } catch (e) {
      if (e instanceof RunInterrupted) {
        log(e.message);
        exit(e.reason === "signal" ? 130 : PAUSED);
      }
      throw e;
    }
    return;
  }
  // A signal reaches the worker too (same process group); it checkpoints and exits, then we stop.
  let stopping = false;
  const onSignal = () => (stopping = true);
  for (const s of ["SIGINT", "SIGTERM"] as const) listen(s, onSignal);
  let ran = 0, reused = 0, skipped = 0, paused = 0;
  for (const job of jobs) {
    const mine = await readRecords(file);
    if (mine.some((r) => r.key === job.key && r.label === job.label && covers(r, study))) {
      skipped++;
      if (flags.plan) log(`done     ${jobName(job)}`);
      continue;
    }
    const other = (await allRecords(results)).find((r) =>
      r.key === job.key && !r.reusedFrom && covers(r, study)
    );
    if (other) {
      reused++;
      if (flags.plan) {
        log(`reuse    ${jobName(job)} <- ${other.study} ${other.label}`);
        continue;
      }
      await appendRecord(file, {
        ...other,
        study: study.name,
        label: job.label,
        reusedFrom: { study: other.study, label: other.label },
      });
      log(`${jobName(job)}: same experiment as ${other.study} ${other.label}; record reused`);
      continue;
    }
    if (flags.plan) {
      log(`run      ${jobName(job)}`);
      ran++;
      continue;
    }
    const worker = workerId(job);
    const t0 = performance.now();
    const [cmd, ...cmdArgs] = scriptCommand(fileURLToPath(import.meta.url));
    const child = spawn(
      cmd,
      [
        ...cmdArgs,
        "--study",
        flags.study as string,
        "--runs",
        place.runsDir,
        "--results",
        results,
        "--worker",
        worker,
        ...(place.stopAt !== undefined ? ["--stop-at", String(place.stopAt)] : []),
      ],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
    const exited = new Promise<number>((resolve, reject) => {
      child.on("error", reject);
      child.on("close", (code, signal) => resolve(exitCode(code, signal)));
    });
    const forward = () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
    };
    const unlisten = listen("SIGTERM", forward);
    const code = await exited.finally(unlisten);
    if (code === PAUSED && !stopping) {
      paused++;
      continue;
    }
    if (code !== 0) {
      log(`${jobName(job)}: worker exited with ${code}; stopping (rerun to continue)`);
      exit(code);
    }
    ran++;
    log(`${jobName(job)}: done in ${((performance.now() - t0) / 60000).toFixed(1)} min`);
    if (stopping) exit(130);
  }
  log(
    `${study.name}: ${ran} ${
      flags.plan ? "to run" : "run"
    }, ${reused} reused, ${skipped} already recorded`,
  );
  if (!flags.plan) {
    await writeSummary(study, await readRecords(file), `${results}/${study.name}`);
    log(`wrote ${results}/${study.name}/README.md`);
  }
});
