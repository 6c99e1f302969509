/** Study files, experiment keys, records and summaries (no GPU). */

import { test } from "node:test";
import { readdirSync } from "node:fs";
import { appendFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { buildConfig, ConfigError, maskTable } from "../../src/recipe/config.ts";
import { MASK_DESIGNS } from "../../src/gem/mask.ts";
import { appendRecord, readRecords, type RunRecord } from "../../src/study/records.ts";
import {
  canonicalJson,
  experimentKey,
  parseStudy,
  readStudy,
  StudyError,
  variantConfig,
} from "../../src/study/study.ts";
import {
  metricValue,
  paired,
  spread,
  summaryMarkdown,
  summarySvg,
} from "../../src/study/summary.ts";

const root = new URL("../../", import.meta.url).pathname;
const study = (extra: Record<string, unknown> = {}) => ({
  name: "t",
  variants: [{ label: "a", set: {} }, { label: "b", set: { "gem.k": 2 } }],
  ...extra,
});

test("study files: defaults, and errors that name the file and field", () => {
  const s = parseStudy(study(), "s.json");
  assert.deepEqual(s.seeds, [0, 1, 2]);
  assert.equal(s.pooling, "gem");
  assert.equal(s.reference, "a");
  assert.ok(s.tasks.includes("probe") && s.tasks.includes("indomain"));
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ colour: 1 }, /s\.json: field 'colour' is unknown/],
    [{ name: "Bad Name" }, /field 'name'/],
    [{ variants: [] }, /field 'variants' must be a non-empty/],
    [{ variants: [{ label: "a" }, { label: "a" }] }, /label 'a' twice/],
    [{ variants: [{ label: "a/b" }] }, /variants\[0\]\.label/],
    [{ tasks: ["stsb", "nope"] }, /field 'tasks' unknown task 'nope'/],
    [{ seeds: [0, -1] }, /field 'seeds'/],
    [{ reference: "zz" }, /field 'reference' must be one of the variant labels/],
    [{ variants: [{ label: "a", set: { "gem.k": 0 } }] }, /variant 'a': field 'gem.k'/],
    [{ variants: [{ label: "a", set: { "gem.colour": 1 } }] }, /unknown field 'gem.colour'/],
    [
      { variants: [{ label: "a", set: { "gem.mask": "nope" } }] },
      /gem\.mask: unknown mask design 'nope'/,
    ],
    [{ paper: { metric: "m", values: { zz: 1 } } }, /paper\.values\.zz' is not a variant label/],
  ];
  for (const [extra, re] of bad) {
    assert.throws(() => parseStudy(study(extra), "s.json"), (e: Error) => {
      assert.ok(e instanceof StudyError, `${JSON.stringify(extra)}: ${e}`);
      assert.match(e.message, re);
      return true;
    });
  }
});

test("study files: the committed studies parse and share the default recipe's runs", async () => {
  const files = ["token-count", "mask-design", "objectives"];
  const studies = await Promise.all(files.map((f) => readStudy(`${root}studies/${f}.json`)));
  const shared = [["k4"], ["gem"], ["default"]];
  for (const seed of [0, 1, 2]) {
    const keys = studies.map((s, i) => {
      const v = s.variants.find((x) => x.label === shared[i][0])!;
      return experimentKey(variantConfig(s, v, seed), false, s.pooling);
    });
    assert.equal(keys[0], keys[1]);
    assert.equal(keys[1], keys[2]);
  }
  // Every other variant is a distinct experiment.
  const all = studies.flatMap((s) =>
    s.variants.filter((v) => !v.untrained).map((v) =>
      experimentKey(variantConfig(s, v, 0), false, s.pooling)
    )
  );
  assert.equal(new Set(all).size, all.length - 2);
  const masks = studies[1].variants.map((v) => v.set["gem.mask"]);
  assert.deepEqual(masks.sort(), Object.keys(MASK_DESIGNS).sort());
  assert.deepEqual(
    studies[0].variants.map((v) => variantConfig(studies[0], v, 0).gem.k),
    [1, 2, 4, 5, 10],
  );
});

test("experiment keys: bookkeeping fields do not count, everything else does", () => {
  const s = parseStudy(study(), "s.json");
  const a = variantConfig(s, s.variants[0], 0);
  const again = buildConfig(s.base, [["checkpointEvery", "7"], ["evalEvery", "3"]]);
  assert.equal(experimentKey(a, false, "gem"), experimentKey(again, false, "gem"));
  assert.notEqual(experimentKey(a, false, "gem"), experimentKey(a, false, "mean"));
  assert.notEqual(experimentKey(a, false, "gem"), experimentKey(a, true, "gem"));
  const seed1 = variantConfig(s, s.variants[0], 1);
  assert.notEqual(experimentKey(a, false, "gem"), experimentKey(seed1, false, "gem"));
  assert.notEqual(
    experimentKey(a, false, "gem"),
    experimentKey(variantConfig(s, s.variants[1], 0), false, "gem"),
  );
  assert.equal(canonicalJson({ b: 1, a: [1, { d: 2, c: 3 }] }), '{"a":[1,{"c":3,"d":2}],"b":1}');
});

test("config: the mask is parsed when the config is read; causal is a design", () => {
  const c = buildConfig(null, [["gem.mask", "causal"]]);
  assert.deepEqual(maskTable(c), MASK_DESIGNS.causal);
  assert.equal(maskTable(c), maskTable(c));
  const table = [["causal", "none", "none", "none"], ["causal", "all", "none", "none"], [
    "none",
    "causal",
    "causal",
    "none",
  ], ["none", "none", "none", "none"]];
  const t = buildConfig(null, [["gem.mask", JSON.stringify(table)]]);
  assert.deepEqual(maskTable(t)[1], [1, 3, 0, 0]);
  assert.throws(() => buildConfig(null, [["gem.mask", "nope"]]), ConfigError);
  assert.throws(
    () => buildConfig(null, [["gem.mask", '[["causal"]]']]),
    /gem\.mask: a role table must be 4 rows/,
  );
});

function rec(label: string, seed: number | null, metrics: Record<string, number>): RunRecord {
  return {
    study: "t",
    label,
    seed,
    kind: seed === null ? "baseline" : "trained",
    pooling: "gem",
    config: buildConfig(null, []),
    key: `${label}-${seed}`,
    env: {
      commit: "0123456789abcdef",
      dirty: false,
      gemkit: "0",
      deno: "2",
      adapter: "llvmpipe",
      mesa: "22",
      tuning: { profile: "llvmpipe" },
    },
    data: {},
    train: seed === null ? null : { stepSeconds: 60, wallSeconds: 70, resumes: 0 },
    evalSeconds: 30,
    metrics,
    notes: [],
    date: "2026-01-01T00:00:00Z",
  };
}

test("records: appended atomically, read back in order; a bad line names its number", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const f = `${dir}/x/runs.jsonl`;
  assert.deepEqual(await readRecords(f), []);
  await appendRecord(f, rec("a", 0, { "stsb.spearman": 0.5 }));
  await appendRecord(f, rec("a", 1, { "stsb.spearman": 0.6 }));
  const back = await readRecords(f);
  assert.deepEqual(back.map((r) => r.seed), [0, 1]);
  assert.deepEqual(readdirSync(`${dir}/x`), ["runs.jsonl"]);
  await appendFile(f, "{broken\n");
  await assert.rejects(() => readRecords(f), /runs\.jsonl: line 3: not JSON/);
  await rm(dir, { recursive: true });
});

test("summary: spread, paired differences by seed, and the noise verdict", () => {
  const s = spread([1, 2, 3]);
  assert.equal(s.mean, 2);
  assert.equal(s.std, 1);
  assert.deepEqual([s.min, s.max], [1, 3]);
  const m = { key: "stsb.spearman", name: "STS-B", higher: true };
  const ref = [rec("a", 0, { "stsb.spearman": 0.5 }), rec("a", 1, { "stsb.spearman": 0.6 })];
  const up = [rec("b", 1, { "stsb.spearman": 0.7 }), rec("b", 0, { "stsb.spearman": 0.55 })];
  const p = paired(up, ref, m)!;
  assert.deepEqual(p.seeds, [0, 1]);
  assert.ok(Math.abs(p.diffs[0] - 0.05) < 1e-12 && Math.abs(p.diffs[1] - 0.1) < 1e-12);
  assert.equal(p.verdict, "better");
  const mixed = [rec("b", 0, { "stsb.spearman": 0.55 }), rec("b", 1, { "stsb.spearman": 0.5 })];
  assert.equal(paired(mixed, ref, m)!.verdict, "noise");
  const ppl = { key: "ppl-tinystories.perplexity", name: "ppl", higher: false };
  const r2 = [rec("a", 0, { [ppl.key]: 6 }), rec("a", 1, { [ppl.key]: 6 })];
  const worse = [rec("b", 0, { [ppl.key]: 7 }), rec("b", 1, { [ppl.key]: 6.5 })];
  assert.equal(paired(worse, r2, ppl)!.verdict, "worse");
  assert.equal(paired([rec("b", 2, { [ppl.key]: 7 })], r2, ppl), null);

  const st = parseStudy(study({ reference: "a" }), "s.json");
  const all = [rec("base-mean", null, { "stsb.spearman": 0.4 }), ...ref, ...up];
  const md = summaryMarkdown(st, all);
  assert.match(md, /\| base-mean \| - \| 0\.400 \|/);
  assert.match(md, /\| \*\*a\*\* \(reference\) \| 0,1 \| 0\.550 ± 0\.071<br>0\.500\.\.0\.600 \|/);
  assert.match(md, /\| b \| \+0\.075 \*\*better\*\*<br>\(\+0\.050, \+0\.100\) \|/);
  const svg = summarySvg(st, all);
  assert.ok(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"));
  assert.equal((svg.match(/<circle /g) ?? []).length, 4);
});

test("summary: a metric recorded as null (0/0) is undefined, never 0", () => {
  const st = parseStudy(study({ reference: "a" }), "s.json");
  const nan = JSON.parse(JSON.stringify({ "stsb.spearman": NaN }));
  assert.equal(nan["stsb.spearman"], null);
  const ref = [rec("a", 0, { "stsb.spearman": 0.5 })];
  const b = [rec("b", 0, nan)];
  assert.equal(metricValue(b[0], "stsb.spearman"), undefined);
  assert.equal(paired(b, ref, { key: "stsb.spearman", name: "STS-B", higher: true }), null);
  const md = summaryMarkdown(st, [...ref, ...b]);
  assert.match(md, /\| b \| 0 \| undefined \|/);
  assert.equal((summarySvg(st, [...ref, ...b]).match(/<circle /g) ?? []).length, 1);
});
