/**
 * `deno task eval --model PATH [--tokenizer PATH] [--tasks all|stsb,sick,...] [--pooling P|all]
 *   [--seed S] [--out DIR] [--mmlu-limit N]`
 *
 * Runs embedding tasks under each pooling and the language tasks on the same weights, and writes
 * results.json (every metric, model, poolings, seed, data file hashes, versions, time),
 * results.md and report.html (plotly bar charts, opens offline) into --out.
 */

import type { Pooling } from "../gem/gem.ts";
import { initGpu } from "../gpu/device.ts";
import { dataDir } from "../io/paths.ts";
import { openModel } from "../recipe/open.ts";
import {
  ALL_TASKS,
  EMBEDDING_TASKS,
  makeEmbedder,
  mmluTask,
  runEmbeddingTask,
  type TaskResult,
  tinyStoriesPerplexityTask,
  wikitextPerplexityTask,
} from "../eval/tasks.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";
import { type Figure, figuresHtml } from "./plotly.ts";

const USAGE =
  "usage: deno task eval --model PATH [--tokenizer PATH] [--tasks all|LIST] [--pooling P|all] " +
  "[--seed S] [--out DIR]";

/** Files each task reads, hashed into results.json. */
const TASK_FILES: Record<string, string[]> = {
  stsb: ["eval/stsb/sts-test.csv"],
  sick: ["eval/sick"],
  banking77: ["eval/banking77"],
  trec: ["eval/trec_qc"],
  "trec-fine": ["eval/trec_qc"],
  "banking77-clustering": ["eval/banking77"],
  "trec-clustering": ["eval/trec_qc"],
  cranfield: ["eval/cranfield"],
  indomain: ["corpus/tinystories_valid_head.txt"],
  "ppl-tinystories": ["corpus/tinystories_valid_head.txt"],
  "ppl-wikitext": ["corpus/wikitext2_test.tokens.txt"],
  mmlu: ["eval/mmlu"],
};

async function sha256Of(path: string): Promise<string> {
  const info = await Deno.stat(path);
  const h = async (bytes: Uint8Array<ArrayBuffer>) =>
    [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))].map((b) =>
      b.toString(16).padStart(2, "0")
    )
      .join("");
  if (info.isFile) return await h(await Deno.readFile(path));
  // A directory: hash of the sorted (name, file hash) list.
  const parts: string[] = [];
  const walk = async (dir: string, rel: string) => {
    const entries = [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`, `${rel}${e.name}/`);
      else parts.push(`${rel}${e.name} ${await h(await Deno.readFile(`${dir}/${e.name}`))}`);
    }
  };
  await walk(path, "");
  return await h(new TextEncoder().encode(parts.join("\n")));
}

function fmt(x: number): string {
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(4);
}

/** Headline metric of each task, for tables and charts. */
const HEADLINE: Record<string, string> = {
  stsb: "spearman",
  sick: "spearman",
  banking77: "accuracy",
  trec: "accuracy",
  "trec-fine": "accuracy",
  "banking77-clustering": "vMeasure",
  "trec-clustering": "vMeasure",
  cranfield: "ndcgAt10",
  indomain: "ndcgAt10",
  "ppl-tinystories": "perplexity",
  "ppl-wikitext": "perplexity",
  mmlu: "accuracy",
};

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
  const { flags } = parseArgs(Deno.args, {
    model: {
      type: "string",
      help: "checkpoint: GEM run checkpoint, HF directory, llama2.c .bin, or org/name",
    },
    tokenizer: { type: "string", help: "tokenizer file (llama2.c models)" },
    tasks: {
      type: "string",
      help: `all, or a comma list of: ${ALL_TASKS.join(", ")}`,
      default: "all",
    },
    pooling: { type: "string", help: "gem | mean | last | prompt | all", default: "all" },
    seed: { type: "number", help: "seed of k-means restarts", default: 0 },
    out: { type: "string", help: "output directory", default: "runs/eval" },
    "mmlu-limit": { type: "number", help: "questions per MMLU subject at most (default: all)" },
  }, USAGE);
  if (!flags.model) throw new UsageError(`--model is required\n${USAGE}`);
  const tasks = flags.tasks === "all"
    ? ALL_TASKS
    : String(flags.tasks).split(",").map((t) => t.trim());
  for (const t of tasks) {
    if (!ALL_TASKS.includes(t)) {
      throw new UsageError(`unknown task '${t}'; known: ${ALL_TASKS.join(", ")}`);
    }
  }
  const gpu = await initGpu();
  const t0 = performance.now();
  const spec = flags.model as string;
  const opened = await openModel(spec, { tokenizer: flags.tokenizer as string | undefined });
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
  const results: TaskResult[] = [];
  const log = (m: string) => console.error(`gemkit eval: ${m}`);
  const tty = Deno.stderr.isTerminal();
  const progress = (label: string) => (done: number, total: number) => {
    if (tty) Deno.stderr.writeSync(new TextEncoder().encode(`\r${label}: ${done}/${total}\x1b[K`));
  };
  for (const task of tasks.filter((t) => (EMBEDDING_TASKS as readonly string[]).includes(t))) {
    for (const pooling of poolings) {
      const e = makeEmbedder(
        model,
        tokenizer,
        pooling as Pooling | "prompt",
        gem,
        progress(`${task} ${pooling}`),
      );
      const r = await runEmbeddingTask(task, e, flags.seed as number);
      if (tty) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
      log(
        `${task} ${pooling}: ${
          Object.entries(r.metrics).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")
        } (${r.seconds.toFixed(0)} s)`,
      );
      results.push(r);
    }
  }
  for (const task of tasks) {
    let r: TaskResult | null = null;
    if (task === "ppl-tinystories") r = await tinyStoriesPerplexityTask(model, tokenizer);
    if (task === "ppl-wikitext") r = await wikitextPerplexityTask(model, tokenizer);
    if (task === "mmlu") {
      r = await mmluTask(model, tokenizer, {
        limitPerSubject: flags["mmlu-limit"] as number | undefined,
        onProgress: progress("mmlu"),
      });
      if (tty) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
    }
    if (r) {
      log(
        `${task}: ${
          Object.entries(r.metrics).filter(([k]) => !k.startsWith("acc.")).map(([k, v]) =>
            `${k} ${fmt(v)}`
          ).join(", ")
        } (${r.seconds.toFixed(0)} s)`,
      );
      results.push(r);
    }
  }
  const out = flags.out as string;
  await Deno.mkdir(out, { recursive: true });
  const data: Record<string, string> = {};
  for (const f of new Set(tasks.flatMap((t) => TASK_FILES[t] ?? []))) {
    data[f] = await sha256Of(`${dataDir()}/${f}`);
  }
  const modelPath = spec;
  const json = {
    model: modelPath,
    gem: gem?.info ?? null,
    poolings,
    seed: flags.seed,
    data,
    versions: {
      gemkit:
        JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url))).version,
      deno: Deno.version.deno,
      adapter: gpu.description,
    },
    date: new Date().toISOString(),
    seconds: (performance.now() - t0) / 1000,
    results,
  };
  await Deno.writeTextFile(`${out}/results.json`, JSON.stringify(json, null, 1) + "\n");
  const md = `# gemkit eval: ${modelPath}\n\n${markdown(results, poolings)}`;
  await Deno.writeTextFile(`${out}/results.md`, md);
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
        y: results.filter((r) => r.pooling === p).map((r) => r.metrics[HEADLINE[r.task]]),
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
  await Deno.writeTextFile(
    `${out}/report.html`,
    await figuresHtml(`gemkit eval: ${modelPath}`, figures, `<table>${table}</table>`),
  );
  console.log(md);
  log(`wrote ${out}/results.json, results.md, report.html (${json.seconds.toFixed(0)} s)`);
  opened.dispose();
});
