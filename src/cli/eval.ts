/**
 * `deno task eval --model PATH [--tokenizer PATH] [--tasks all|stsb,sick,...] [--pooling P|all]
 *   [--seed S] [--out DIR] [--mmlu-limit N]`
 *
 * Runs embedding tasks under each pooling and the language tasks on the same weights, and writes
 * results.json (every metric, model, poolings, seed, data file hashes, versions, time),
 * results.md and report.html (plotly bar charts, opens offline) into --out.
 */

import { dirname } from "node:path";
import { mkdir } from "node:fs/promises";
import { args, gemkitVersion, stderrIsTerminal, writeStderr } from "../platform/platform.ts";
import { progressPrinter } from "../platform/progress.ts";
import type { Pooling } from "../gem/gem.ts";
import { initGpu } from "../gpu/device.ts";
import { dataDir } from "../io/paths.ts";
import { openModel } from "../recipe/open.ts";
import { type EvalTask, evalTask, TASK_NAMES, TASKS } from "../eval/registry.ts";
import { makeEmbedder, type TaskResult } from "../eval/tasks.ts";
import { sha256Path } from "../io/hash.ts";
import { writeAtomic } from "../io/atomic.ts";
import { MODEL_FLAGS, modelOptions, parseArgs, runMain, TUNING_FLAG, UsageError } from "./args.ts";
import { type Figure, figuresHtml } from "../eval/plotly.ts";
import { runEnv, runtimeVersions } from "../study/records.ts";
import { mtebFiles } from "../eval/mteb.ts";

const USAGE =
  "usage: deno task eval --model PATH [--tokenizer PATH] [--tasks all|LIST] [--pooling P|all] " +
  "[--seed S] [--out DIR]";
const EXAMPLE =
  "deno task eval --model @data/models/llama2c/stories260K.bin --tokenizer @data/models/llama2c/tok512.bin --tasks stsb --pooling mean --out /tmp/gemkit-eval";

function fmt(x: number): string {
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(4);
}

function markdown(results: TaskResult[], poolings: string[]): string {
  const tasks = [...new Set(results.map((r) => r.task))];
  const lines = [
    "| task | metric | " + poolings.join(" | ") + " |",
    "|---|---|" + poolings.map(() => "---|").join(""),
  ];
  for (const t of tasks) {
    const rs = results.filter((r) => r.task === t);
    const metrics = Object.keys(rs[0].metrics).filter((m) => !m.startsWith("acc."));
    for (const m of metrics) {
      if (rs[0].pooling === "-") {
        lines.push(
          `| ${t} | ${m} | ${fmt(rs[0].metrics[m])}${
            poolings.slice(1).map(() => " | ").join("")
          } |`,
        );
      } else {
        lines.push(`| ${t} | ${m} | ${
          poolings.map((p) => {
            const r = rs.find((x) => x.pooling === p);
            return r ? fmt(r.metrics[m]) : "-";
          }).join(" | ")
        } |`);
      }
    }
  }
  const notes = results.flatMap((r) => r.notes.map((n) => `- ${r.task} (${r.pooling}): ${n}`));
  return lines.join("\n") + (notes.length ? `\n\nNotes:\n${notes.join("\n")}\n` : "\n");
}

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      ...MODEL_FLAGS,
      tuning: TUNING_FLAG,
      tasks: {
        type: "string",
        help: `all, or a comma list of: ${TASK_NAMES.join(", ")} (probe: GEM models only)`,
        default: "all",
      },
      pooling: { type: "string", help: "gem | mean | last | prompt | all", default: "all" },
      seed: { type: "number", help: "seed of k-means restarts", default: 0 },
      out: { type: "string", help: "output directory", default: "runs/eval" },
      "mmlu-limit": { type: "number", help: "questions per MMLU subject at most (default: all)" },
      format: {
        type: "string",
        help: "gemkit, or mteb: also one MTEB-style JSON per task in OUT/mteb/",
        default: "gemkit",
      },
    },
    USAGE,
    EXAMPLE,
  );
  if (!flags.model) throw new UsageError(`--model is required\n${USAGE}`);
  if (flags.format !== "gemkit" && flags.format !== "mteb") {
    throw new UsageError(`--format must be gemkit or mteb, got '${flags.format}'`);
  }
  const named = flags.tasks === "all"
    ? null
    : String(flags.tasks).split(",").map((t) => t.trim()).filter(Boolean);
  for (const t of named ?? []) {
    if (!TASK_NAMES.includes(t)) {
      throw new UsageError(`unknown task '${t}'; known: ${TASK_NAMES.join(", ")}`);
    }
  }
  const gpu = await initGpu();
  const t0 = performance.now();
  const spec = flags.model as string;
  const opened = await openModel(spec, modelOptions(flags));
  const { model, tokenizer } = opened;
  const gem = opened.gem ?? undefined;
  const allPoolings: string[] = gem
    ? ["gem", "mean", "last", "prompt"]
    : ["mean", "last", "prompt"];
  const poolings = flags.pooling === "all" ? allPoolings : String(flags.pooling).split(",");
  for (const p of poolings) {
    if (!["gem", "mean", "last", "prompt"].includes(p)) {
      throw new UsageError(`unknown pooling '${p}'`);
    }
    if (p === "gem" && !gem) {
      throw new UsageError(`--pooling gem needs a GEM checkpoint (a directory with gem.json)`);
    }
  }
  // "all" means every task this model can run: gem tasks need a GEM checkpoint.
  const tasks: EvalTask[] = named
    ? named.map(evalTask)
    : TASKS.filter((t) => t.kind !== "gem" || gem);
  const bad = tasks.find((t) => t.kind === "gem" && !gem);
  if (bad) {
    throw new UsageError(`task '${bad.name}' needs a GEM checkpoint (a directory with gem.json)`);
  }
  const results: TaskResult[] = [];
  const log = (m: string) => console.error(`gemkit eval: ${m}`);
  // One progress line per task run, numbered among all of them: "[3/12] stsb mean".
  const runs = tasks.filter((t) => t.kind === "embedding").length * poolings.length +
    tasks.filter((t) => t.kind !== "embedding").length;
  let run = 0;
  const progress = (label: string) =>
    progressPrinter(`gemkit eval: [${++run}/${runs}] ${label}`, { unit: "items" });
  // A task that stops short of its total leaves the terminal line open: clear it.
  const clearLine = () => stderrIsTerminal() && writeStderr("\r\x1b[K");
  const ctx = {
    model,
    tokenizer,
    gem,
    seed: flags.seed as number,
    mmluLimit: flags["mmlu-limit"] as number | undefined,
  };
  const show = (r: TaskResult) =>
    Object.entries(r.metrics).filter(([k]) => !k.startsWith("acc.")).map(([k, v]) =>
      `${k} ${fmt(v)}`
    ).join(", ");
  for (const task of tasks.filter((t) => t.kind === "embedding")) {
    for (const pooling of poolings) {
      const embedder = makeEmbedder(
        model,
        tokenizer,
        pooling as Pooling | "prompt",
        gem,
        progress(`${task.name} ${pooling}`),
      );
      const r = await task.run({ ...ctx, embedder });
      clearLine();
      log(`${task.name} ${pooling}: ${show(r)} (${r.seconds.toFixed(0)} s)`);
      results.push(r);
    }
  }
  for (const task of tasks.filter((t) => t.kind !== "embedding")) {
    const r = await task.run({ ...ctx, onProgress: progress(task.name) });
    clearLine();
    log(`${task.name}: ${show(r)} (${r.seconds.toFixed(0)} s)`);
    results.push(r);
  }
  const out = flags.out as string;
  await mkdir(out, { recursive: true });
  const data: Record<string, string> = {};
  for (const f of new Set(tasks.flatMap((t) => t.files))) {
    data[f] = await sha256Path(`${dataDir()}/${f}`);
  }
  const modelPath = spec;
  const env = await runEnv();
  const json = {
    model: modelPath,
    commit: env.commit,
    dirty: env.dirty,
    config: { tasks: tasks.map((t) => t.name), mmluLimit: flags["mmlu-limit"] ?? null },
    gem: gem?.info ?? null,
    poolings,
    seed: flags.seed,
    data,
    versions: {
      gemkit: gemkitVersion(),
      ...runtimeVersions(),
      adapter: gpu.description,
    },
    date: new Date().toISOString(),
    seconds: (performance.now() - t0) / 1000,
    results,
  };
  await writeAtomic(`${out}/results.json`, JSON.stringify(json, null, 1) + "\n");
  if (flags.format === "mteb") {
    const about = { model: modelPath, gem: json.gem, commit: env.commit, dirty: env.dirty, data };
    for (const f of mtebFiles(results, about)) {
      await mkdir(dirname(`${out}/${f.path}`), { recursive: true });
      await writeAtomic(`${out}/${f.path}`, JSON.stringify(f.json, null, 1) + "\n");
    }
  }
  const md = `# gemkit eval: ${modelPath}\n\n${markdown(results, poolings)}`;
  await writeAtomic(`${out}/results.md`, md);
  const figures: Figure[] = [
      ...new Set(
        results.filter((r) => r.pooling !== "-").map((r) => r.task),
      ),
    ].length
    ? [{
      data: poolings.map((p) => ({
        type: "bar",
        name: p,
        x: results.filter((r) => r.pooling === p).map((r) => r.task),
        y: results.filter((r) => r.pooling === p).map((r) => r.metrics[evalTask(r.task).headline]),
      })),
      layout: {
        title: "Embedding tasks (headline metric) by pooling",
        barmode: "group",
        yaxis: { range: [0, 1] },
      },
    }]
    : [];
  const table = md.split("\n").filter((l) => l.startsWith("|")).map((l) =>
    "<tr>" + l.split("|").slice(1, -1).map((c) => `<td>${c.trim()}</td>`).join("") + "</tr>"
  ).filter((l) => !l.includes("<td>---</td>")).join("\n");
  await writeAtomic(
    `${out}/report.html`,
    await figuresHtml(`gemkit eval: ${modelPath}`, figures, `<table>${table}</table>`),
  );
  console.log(md);
  log(`wrote ${out}/results.json, results.md, report.html (${json.seconds.toFixed(0)} s)`);
  opened.dispose();
});
