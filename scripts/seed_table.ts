/**
 * The README's results table: the base model's poolings beside the GEM runs of several seeds
 * (mean, and min..max over seeds), from `deno task eval` results.json files.
 *
 *   deno run -A scripts/seed_table.ts BASE/results.json RUN1/results.json RUN2/results.json ...
 *
 * Prints markdown to stdout. Every task's headline metrics are shown; the GEM columns use the
 * runs' `gem` pooling, and `mean` pooling on the same trained weights when it was evaluated.
 */

interface Result {
  task: string;
  pooling: string;
  metrics: Record<string, number>;
  notes: string[];
}
interface ResultsFile {
  model: string;
  results: Result[];
}

/** Metrics shown per task, in order. */
const SHOWN: Record<string, string[]> = {
  stsb: ["spearman"],
  sick: ["spearman"],
  banking77: ["accuracy", "macroF1"],
  trec: ["accuracy", "macroF1"],
  "trec-fine": ["accuracy"],
  "banking77-clustering": ["vMeasure"],
  "trec-clustering": ["vMeasure"],
  cranfield: ["ndcgAt10", "mrrAt10", "recallAt100"],
  indomain: ["recallAt1", "ndcgAt10"],
  "ppl-tinystories": ["perplexity", "bitsPerByte"],
  "ppl-wikitext": ["perplexity", "bitsPerByte"],
  mmlu: ["accuracy"],
};

function value(f: ResultsFile, task: string, pooling: string, metric: string): number | undefined {
  const r = f.results.find((x) => x.task === task && (x.pooling === pooling || x.pooling === "-"));
  return r?.metrics[metric];
}

const f3 = (x: number) => (Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(3));

function seedCell(xs: (number | undefined)[]): string {
  const v = xs.filter((x): x is number => x !== undefined);
  if (!v.length) return "-";
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  if (v.length === 1) return f3(mean);
  return `${f3(mean)} (${f3(Math.min(...v))}..${f3(Math.max(...v))})`;
}

if (import.meta.main) {
  const [basePath, ...runPaths] = Deno.args;
  if (!basePath || !runPaths.length) {
    console.error(
      "usage: deno run -A scripts/seed_table.ts BASE/results.json RUN/results.json ...",
    );
    Deno.exit(2);
  }
  const read = (p: string): ResultsFile => JSON.parse(Deno.readTextFileSync(p));
  const base = read(basePath), runs = runPaths.map(read);
  const n = runs.length;
  const lines = [
    `| task | metric | base mean | base last | base prompt | GEM, gem pooling (${n} seeds) | GEM, mean pooling |`,
    "|---|---|---|---|---|---|---|",
  ];
  for (const [task, metrics] of Object.entries(SHOWN)) {
    if (!base.results.some((r) => r.task === task)) continue;
    for (const m of metrics) {
      const b = ["mean", "last", "prompt"].map((p) => value(base, task, p, m));
      const lang = base.results.find((r) => r.task === task)?.pooling === "-";
      const bCells = lang ? [f3(b[0]!), "", ""] : b.map((x) => (x === undefined ? "-" : f3(x)));
      lines.push(
        `| ${task} | ${m} | ${bCells.join(" | ")} | ${
          seedCell(runs.map((r) => value(r, task, "gem", m)))
        } | ${lang ? "" : seedCell(runs.map((r) => value(r, task, "mean", m)))} |`,
      );
    }
  }
  const notes = new Set(
    [base, ...runs].flatMap((f) => f.results.flatMap((r) => r.notes.map((x) => `${r.task}: ${x}`))),
  );
  console.log(lines.join("\n"));
  if (notes.size) {
    console.log("\nNotes from the runs:\n\n" + [...notes].map((x) => `- ${x}`).join("\n"));
  }
}
