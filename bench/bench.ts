/**
 * `deno task bench [names...] [--runs=N]`: runs the default benchmarks (matmul, model, cold) or the
 * named ones (also scale), the model and matmul suites' gemkit and PyTorch timings N times over
 * (each record then carries its `run`), prints a table, and writes
 * bench/results.json, or the file GEMKIT_BENCH_RESULTS names (records of the benches that ran
 * replace their old ones; others are kept). PyTorch's runs: see torchSetup in competitors.ts.
 *
 * Every figure is the median of several timed samples after warm-up, all in this one process,
 * with the min..max spread: these machines are noisy.
 */

import { initGpu } from "../src/gpu/device.ts";
import type { BenchContext, BenchRecord } from "./common.ts";
import { coldBench } from "./cold.ts";
import { matmulBench } from "./matmul.ts";
import { modelBench } from "./model.ts";
import { scaleBench } from "./scale.ts";

type Bench = (ctx: BenchContext) => Promise<BenchRecord[]>;

const BENCHES: Record<string, Bench> = {
  matmul: matmulBench,
  model: modelBench,
  cold: coldBench,
  scale: scaleBench,
};
/** What `deno task bench` runs without names (scale writes GBs and runs for minutes: by name). */
const DEFAULT = ["matmul", "model", "cold"];

function table(records: BenchRecord[]): string {
  const cols = [...new Set(records.flatMap((r) => Object.keys(r)))].filter((c) =>
    !["adapter", "date", "samples", "suite", "first_ids", "first_text", "sample_unit", "compile_ms"]
      .includes(c)
  );
  const fmt = (v: unknown) =>
    typeof v === "number"
      ? (Number.isInteger(v) ? String(v) : v.toPrecision(4))
      : String(v ?? "").slice(0, 60);
  const rows = records.map((r) => cols.map((c) => fmt(r[c])));
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((x, i) => x.padEnd(widths[i])).join("  ");
  return [line(cols), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

async function main() {
  const names = Deno.args.filter((a) => !a.startsWith("-"));
  for (const n of names) {
    if (!BENCHES[n]) {
      console.error(`bench: unknown benchmark '${n}'; known: ${Object.keys(BENCHES).join(", ")}`);
      Deno.exit(2);
    }
  }
  const run = names.length ? names : DEFAULT;
  const runsFlag = Deno.args.find((a) => a.startsWith("--runs="));
  const runs = runsFlag ? Number(runsFlag.slice(7)) : 1;
  if (!Number.isInteger(runs) || runs < 1) {
    console.error(`bench: --runs=N takes a positive integer, got '${runsFlag}'`);
    Deno.exit(2);
  }
  const gpu = await initGpu();
  const ctx: BenchContext = {
    adapter: gpu.description,
    quick: Deno.env.get("GEMKIT_BENCH_QUICK") === "1",
    profile: Deno.env.get("GEMKIT_PROFILE") === "1",
    runs,
    log: (m) => console.error(`bench: ${m}`),
  };
  const date = new Date().toISOString().slice(0, 10);
  const fresh: BenchRecord[] = [];
  for (const name of run) {
    ctx.log(`running ${name}`);
    const recs = await BENCHES[name](ctx);
    for (const r of recs) {
      fresh.push({ suite: name, ...r, adapter: ctx.adapter, tuning: gpu.tuningHash, date });
    }
    console.log(`\n## ${name}\n${table(recs)}`);
  }
  // GEMKIT_BENCH_RESULTS keeps another machine's numbers apart (bench/results_h100.json).
  const where = Deno.env.get("GEMKIT_BENCH_RESULTS");
  const path = where
    ? new URL(where, `file://${Deno.cwd()}/`)
    : new URL("./results.json", import.meta.url);
  let old: BenchRecord[] = [];
  try {
    old = JSON.parse(await Deno.readTextFile(path));
  } catch {
    // first run
  }
  const merged = [...old.filter((r) => !run.includes((r.suite ?? r.bench) as string)), ...fresh];
  const tmp = new URL(`${path.href}.tmp`);
  await Deno.writeTextFile(tmp, JSON.stringify(merged, null, 1) + "\n");
  await Deno.rename(tmp, path);
  ctx.log(`wrote ${path.pathname} (${fresh.length} new records)`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
