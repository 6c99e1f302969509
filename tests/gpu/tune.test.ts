/**
 * The kernel autotuner: candidates are checked before they are timed (a failing one is dropped
 * with its reason), the device's tuning is left as it was, `deno task tune` writes a profile for
 * this adapter's key, `--tuning FILE` pins one (a corrupt one is refused by name), and a resumed
 * run refuses a tuning other than the one it trained with.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROFILE_FORMAT, readProfile, tuningHash } from "../../src/gpu/tuning.ts";
import { type Knob, knobs, sampled, tune } from "../../src/tune/tune.ts";
import { runCli, testGpu } from "../helpers.ts";

const SHAPES = { tokens: 24, dim: 16, hiddenDim: 40, vocab: 36 };

test("sampled check: a wrong entry is named with its reference", () => {
  const ref = (r: number, c: number) => r * 10 + c;
  const good = Float32Array.from({ length: 6 }, (_, i) => ref(Math.floor(i / 3), i % 3));
  assert.equal(sampled("y", 2, 3, ref)(good), null);
  const bad = good.slice();
  bad[5] += 0.01;
  assert.match(sampled("y", 2, 3, ref)(bad) ?? "", /y\[1, 2\] = 12\.01.*reference 12/);
});

test("tune: every candidate checked, a failing one dropped with its reason; tuning restored", async () => {
  const g = await testGpu();
  const before = structuredClone(g.tuning);
  const impossible: Knob = {
    name: "rowWorkgroup",
    // A workgroup per row, of 4096 invocations: past WebGPU's 1024, the kernel cannot run.
    values: [4096],
    apply: (t, v) => Object.assign(t, { rowWorkgroup: v, threadRowMaxLen: 1 }),
    fields: ["rowWorkgroup", "threadRowMaxLen"],
    workload: "rows",
  };
  const small = knobs("small").filter((k) => k.name === "elementwiseWorkgroup");
  const r = await tune(g, SHAPES, { knobs: [impossible, ...small], reps: 2, budgetS: 120 });
  assert.deepEqual(g.tuning, before, "the device's tuning is as it was");
  const dropped = r.trials.find((t) => t.knob === "rowWorkgroup");
  assert.ok(
    dropped && !dropped.ok && dropped.ms === null && dropped.error,
    JSON.stringify(r.trials),
  );
  assert.equal(
    r.tuning.matmul.workgroup,
    before.matmul.workgroup,
    "a dropped value is never taken",
  );
  assert.ok(r.trials.filter((t) => t.knob === "elementwiseWorkgroup").every((t) => t.ok));
  for (const w of ["rows", "elementwise"] as const) {
    assert.ok(r.startMs[w] > 0 && r.bestMs[w] > 0, `${w} timed`);
  }
});

test("tune: training's packed attention, forward and dV checked, at every block size", async () => {
  const g = await testGpu();
  const before = structuredClone(g.tuning);
  const packed = knobs("full").filter((k) => k.workload === "attentionPacked");
  assert.deepEqual(packed.map((k) => k.name), ["attentionBlockPacked"]);
  // Head dimension 8 (vec4 blocks), 2 query heads per key/value head, two rows of 64.
  const shapes = { tokens: 128, dim: 32, hiddenDim: 40, vocab: 36, heads: 4, kvHeads: 2, seq: 64 };
  const r = await tune(g, shapes, { knobs: packed, reps: 2, budgetS: 120 });
  assert.deepEqual(g.tuning, before);
  const tried = new Set(r.trials.map((t) => t.value));
  for (const v of [1, 2, 4, 8, 16]) {
    assert.ok(v === before.attentionBlockPacked || tried.has(v), `block ${v} tried`);
  }
  assert.ok(r.trials.every((t) => t.ok), JSON.stringify(r.trials));
  assert.ok(r.startMs.attentionPacked > 0);
});

test("deno task tune writes a profile for this adapter; --tuning pins one; resume refuses another", async () => {
  const g = await testGpu();
  const dir = await mkdtemp(join(tmpdir(), "gemkit-tune-"));
  try {
    const out = `${dir}/profile.json`;
    const r = await runCli("src/cli/tune.ts", ["--budget-s", "30", "--tokens", "64", "--out", out]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.trim(), out);
    const { tuning, warning } = readProfile(out, g.profileKey);
    assert.equal(warning, null, "made for this adapter, driver, runtime and version");
    assert.match(r.err, new RegExp(`profile ${tuningHash(tuning)} written`));

    // A run trained with the built-in tuning, resumed under another one: refused by name.
    const other = `${dir}/other.json`;
    const changed = {
      ...g.tuning,
      elementwiseWorkgroup: g.tuning.elementwiseWorkgroup === 64 ? 128 : 64,
    };
    await writeFile(
      other,
      JSON.stringify({ format: PROFILE_FORMAT, key: g.profileKey, tuning: changed }),
    );
    const small = ["batchSize=2", "contrastive.batchSize=2", "maxLen=32", "--no-report"];
    const first = await runCli("src/cli/train.ts", [
      "--steps",
      "2",
      "--stop-at",
      "1",
      "--out",
      `${dir}/run`,
      ...small,
    ]);
    assert.equal(first.code, 0, first.err);
    const refused = await runCli("src/cli/train.ts", ["--resume", `${dir}/run`, "--tuning", other]);
    assert.equal(refused.code, 1, refused.err);
    assert.match(refused.err, /trained with kernel tuning [0-9a-f]{16}, this process has/);
    const again = await runCli("src/cli/train.ts", ["--resume", `${dir}/run`]);
    assert.equal(again.code, 0, again.err);

    // A corrupt pinned profile is an error naming the file.
    const corrupt = `${dir}/corrupt.json`;
    await writeFile(corrupt, '{"format": "gemkit-tuning/1", "key": {}, "tuning": {"profile": 3}}');
    const bad = await runCli("src/cli/generate.ts", [
      "--model",
      "@data/models/llama2c/stories260K.bin",
      "--tokenizer",
      "@data/models/llama2c/tok512.bin",
      "--max-tokens",
      "2",
      "--tuning",
      corrupt,
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.err, new RegExp(`${corrupt}: tuning field`));
  } finally {
    await rm(dir, { recursive: true });
  }
});
