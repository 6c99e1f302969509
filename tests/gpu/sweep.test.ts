/**
 * `deno task sweep` end to end on a tiny study: records, skipping, reuse across studies, the
 * untrained and baseline rows, and a run stopped midway that resumes to bitwise the same weights.
 */

import { test } from "node:test";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { readRecords } from "../../src/study/records.ts";
import { runCli, testGpu } from "../helpers.ts";

const CLI = new URL("../../src/cli/sweep.ts", import.meta.url).pathname;

async function sweep(args: string[]) {
  const r = await runCli(CLI, args, { GEMKIT_LOG: "0" });
  return { code: r.code, err: r.err };
}

const BASE = {
  steps: 4,
  warmup: 1,
  batchSize: 4,
  maxLen: 48,
  "contrastive.batchSize": 4,
  phases: [{ frac: 0.5, alpha: 0, lr: 0.001 }, { frac: 0.5, alpha: 0.5, lr: 0.0003 }],
};

async function studyFile(dir: string, name: string, variants: unknown[], extra = {}) {
  const f = `${dir}/${name}.json`;
  await writeFile(
    f,
    JSON.stringify({
      name,
      base: BASE,
      seeds: [0],
      tasks: ["probe"],
      baselines: [],
      variants,
      ...extra,
    }),
  );
  return f;
}

test("sweep: records each run once, reuses across studies, resumes a stopped run exactly", async () => {
  await testGpu();
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const one = await studyFile(dir, "one", [
    { label: "k2", set: { "gem.k": 2 } },
    { label: "fresh", set: { "gem.k": 2 }, untrained: true },
  ]);
  const paths = ["--runs", `${dir}/runs`, "--results", `${dir}/results`];
  // Stopped after step 2 with a checkpoint, then continued: the sweep goes on to the next job.
  const stop = await sweep(["--study", one, ...paths, "--stop-at", "2"]);
  assert.equal(stop.code, 0, stop.err);
  assert.match(stop.err, /stopped at step 2/);
  let recs = await readRecords(`${dir}/results/one/runs.jsonl`);
  assert.deepEqual(recs.map((r) => r.label), ["fresh"]);
  const resumed = await sweep(["--study", one, ...paths]);
  assert.equal(resumed.code, 0, resumed.err);
  assert.match(resumed.err, /resuming at step 2/);
  assert.match(resumed.err, /1 run, 0 reused, 1 already recorded/);
  recs = await readRecords(`${dir}/results/one/runs.jsonl`);
  const k2 = recs.find((r) => r.label === "k2")!;
  assert.equal(k2.kind, "trained");
  assert.equal(k2.train!.resumes, 1);
  assert.equal(k2.config.gem.k, 2);
  assert.equal(k2.config.checkpointEvery, 20);
  assert.match(k2.env.commit, /^[0-9a-f]{40}$|^unknown$/);
  assert.ok(k2.env.adapter.length > 0);
  assert.ok(Object.keys(k2.data).includes("models/llama2c/stories260K.bin"));
  for (const m of ["ownFirst8", "otherFirst8", "noneFirst8", "gapFirst8"]) {
    assert.ok(Number.isFinite(k2.metrics[`probe.${m}`]), m);
  }
  const fresh = recs.find((r) => r.label === "fresh")!;
  assert.equal(fresh.kind, "untrained");
  assert.equal(fresh.train, null);
  // Untrained specials and trained ones differ.
  assert.notEqual(fresh.metrics["probe.ownFirst8"], k2.metrics["probe.ownFirst8"]);

  // The same run without the stop, elsewhere: bitwise the same weights and metrics.
  const clean = await sweep([
    "--study",
    one,
    "--runs",
    `${dir}/runs2`,
    "--results",
    `${dir}/results2`,
    "--only",
    "k2",
  ]);
  assert.equal(clean.code, 0, clean.err);
  const again = (await readRecords(`${dir}/results2/one/runs.jsonl`))[0];
  assert.equal(again.weights, k2.weights);
  assert.deepEqual(again.metrics, k2.metrics);
  assert.equal(again.train!.resumes, 0);

  // Rerun: nothing to do. Another study with the same experiment reuses the record.
  const idle = await sweep(["--study", one, ...paths]);
  assert.match(idle.err, /0 run, 0 reused, 2 already recorded/);
  const two = await studyFile(dir, "two", [{ label: "two-k", set: { "gem.k": 2 } }]);
  const reuse = await sweep(["--study", two, ...paths]);
  assert.equal(reuse.code, 0, reuse.err);
  assert.match(reuse.err, /same experiment as one k2; record reused/);
  const copied = (await readRecords(`${dir}/results/two/runs.jsonl`))[0];
  assert.deepEqual(copied.reusedFrom, { study: "one", label: "k2" });
  assert.equal(copied.label, "two-k");
  assert.equal(copied.weights, k2.weights);
  const readme = await readFile(`${dir}/results/two/README.md`, "utf8");
  assert.match(readme, /reuse another study's record/);
  await stat(`${dir}/results/two/figure.svg`);

  // A run directory holding another config is refused, not overwritten.
  const other = await studyFile(dir, "one", [{ label: "k2", set: { "gem.k": 3 } }]);
  const clash = await sweep(["--study", other, "--runs", `${dir}/runs`, "--results", `${dir}/r3`]);
  assert.notEqual(clash.code, 0);
  assert.match(clash.err, /k2-s0: holds a run of another config/);
  await rm(dir, { recursive: true });
});

test("sweep: usage errors name the flag or label", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const f = await studyFile(dir, "u", [{ label: "a", set: {} }]);
  const r = await sweep(["--study", f, "--only", "zz", "--plan"]);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /--only: no variant 'zz'/);
  const s = await sweep(["--study", f, "--seeds", "0,x", "--plan"]);
  assert.match(s.err, /--seeds: 'x' is not a seed/);
  const m = await sweep(["--study", `${dir}/none.json`]);
  assert.match(m.err, /none\.json: cannot read as JSON/);
  await rm(dir, { recursive: true });
});
