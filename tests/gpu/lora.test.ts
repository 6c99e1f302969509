/**
 * LoRA: fresh adapters change no output; a GEM run with adapters moves only the adapters, the
 * special tokens' rows and lambda; its checkpoint (PEFT adapter files) reloads and resumes bit
 * for bit; merging (in memory, and with `deno task convert --merge`) computes what the adapted
 * model did; AdamW on rows of a leaf is AdamW on those rows alone.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadGem } from "../../src/gem/io.ts";
import { buildConfig } from "../../src/recipe/config.ts";
import { prepareRun } from "../../src/recipe/recipe.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW } from "../../src/tensor/optim.ts";
import { type Tensor, tensor } from "../../src/tensor/tensor.ts";
import { train } from "../../src/train/trainer.ts";
import type { GemModel } from "../../src/gem/gem.ts";
import { assertClose, runCli, testGpu } from "../helpers.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const ids = [1, 403, 261, 378, 298, 29, 5, 77];

async function logits(gem: GemModel): Promise<Float32Array> {
  const out = gem.model.forward(tensor(Int32Array.from(ids), [1, ids.length], "i32"));
  const l = (await out.logits!.toArray()) as Float32Array;
  out.logits!.dispose();
  out.hidden.dispose();
  return l;
}

async function arrays(ts: readonly Tensor[]): Promise<Float32Array[]> {
  return await Promise.all(ts.map(async (t) => (await t.toArray()) as Float32Array));
}

const config = (extra: [string, string][] = []) =>
  buildConfig(null, [
    ["steps", "4"],
    ["maxLen", "64"],
    ["batchSize", "4"],
    ["contrastive.batchSize", "4"],
    [
      "phases",
      JSON.stringify([{ frac: 0.5, alpha: 0, lr: 3e-3 }, { frac: 0.5, alpha: 0.5, lr: 3e-3 }]),
    ],
    ["lora.rank", "4"],
    ["lora.targets", JSON.stringify(["q", "v", "gate", "down"])],
    ...extra,
  ]);

test("LoRA: fresh adapters change nothing; training moves only adapters, special rows, lambda", async () => {
  await testGpu();
  const plain = await prepareRun(config([["lora.rank", "0"]]));
  const before = await logits(plain.gem);
  const baseWeights = await arrays(plain.gem.model.parameters());
  plain.gem.dispose();
  const run = await prepareRun(config());
  assert.deepEqual(await logits(run.gem), before, "B = 0: outputs bitwise unchanged");
  assert.equal(run.gem.model.lora.size, 5 * 4);
  const names = [...run.gem.model.params.keys()];
  const out = await mkdtemp(join(tmpdir(), "gemkit-lora-"));
  try {
    await train(run.task, config(), { out });
    const after = await arrays(run.gem.model.parameters());
    const first = run.gem.info.specialIds[0], d = run.gem.model.config.dim;
    names.forEach((name, i) => {
      if (name === "model.embed_tokens.weight") {
        assert.deepEqual(after[i].subarray(0, first * d), baseWeights[i].subarray(0, first * d));
        assert.notDeepEqual(after[i].subarray(first * d), baseWeights[i].subarray(first * d));
      } else assert.deepEqual(after[i], baseWeights[i], `${name} stays frozen`);
    });
    for (const { b } of run.gem.model.lora.values()) {
      assert.ok(((await b.toArray()) as Float32Array).some((x) => x !== 0), "B has moved");
    }
    // The checkpoint: PEFT files beside the base weights; it loads with its adapters.
    const ckpt = `${out}/ckpt-000004`;
    const files = await readdir(ckpt);
    assert.ok(files.includes("adapter_model.safetensors") && files.includes("adapter_config.json"));
    const cfg = JSON.parse(await readFile(`${ckpt}/adapter_config.json`, "utf8"));
    assert.deepEqual(
      { r: cfg.r, alpha: cfg.lora_alpha, targets: cfg.target_modules },
      { r: 4, alpha: 8, targets: ["q_proj", "v_proj", "gate_proj", "down_proj"] },
    );
    const back = await loadGem(ckpt);
    const adapted = await logits(run.gem);
    assert.deepEqual(await logits(back), adapted);
    // Merged in memory, and by deno task convert --merge: the same model, to float rounding.
    await back.model.mergeLora();
    assert.equal(back.model.lora.size, 0);
    assertClose(await logits(back), adapted, { atol: 1e-5, rtol: 1e-4 }, "merged in memory");
    back.dispose();
    const merged = `${out}/merged`;
    const r = await runCli(`${ROOT}src/cli/convert.ts`, [
      "--merge",
      "--input",
      ckpt,
      "--output",
      merged,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /20 LoRA adapters \(rank 4, scale 2\) -> .*merged, merged/);
    const mergedFiles = await readdir(merged);
    assert.ok(!mergedFiles.some((f) => f.startsWith("adapter_")), mergedFiles.join());
    assert.ok(mergedFiles.includes("gem.json") && mergedFiles.includes("tokenizer.bin"));
    const m = await loadGem(merged);
    assert.equal(m.model.lora.size, 0);
    assertClose(await logits(m), adapted, { atol: 1e-5, rtol: 1e-4 }, "merged by convert");
    m.dispose();
    const none = await runCli(`${ROOT}src/cli/convert.ts`, [
      "--merge",
      "--input",
      merged,
      "--output",
      `${out}/x`,
    ]);
    assert.notEqual(none.code, 0);
    assert.match(none.err, /no adapter_config\.json, nothing to merge/);
  } finally {
    run.gem.dispose();
    await rm(out, { recursive: true });
  }
});

test("LoRA: a resumed run ends bitwise where an unbroken one does, f32 and f16 base", async () => {
  await testGpu();
  const out = await mkdtemp(join(tmpdir(), "gemkit-lora-"));
  try {
    for (const dtype of ["f32", "f16"]) {
      const c = () => config([["dtype", dtype]]);
      const whole = await prepareRun(c());
      await train(whole.task, c(), { out: `${out}/whole-${dtype}` });
      const want = await arrays([
        ...whole.gem.model.parameters(),
        ...whole.gem.model.loraParameters(),
      ]);
      whole.gem.dispose();
      const first = await prepareRun(c());
      await train(first.task, c(), { out: `${out}/split-${dtype}`, stopAt: 2 });
      first.gem.dispose();
      const ckpt = `${out}/split-${dtype}/ckpt-000002`;
      const again = await prepareRun(c(), ckpt);
      assert.equal(again.gem.model.dtype, dtype, "the resumed base is stored as configured");
      await train(again.task, c(), { out: `${out}/split-${dtype}`, resume: ckpt });
      const got = await arrays([
        ...again.gem.model.parameters(),
        ...again.gem.model.loraParameters(),
      ]);
      again.gem.dispose();
      assert.equal(got.length, want.length);
      got.forEach((g, i) => assert.deepEqual(g, want[i], `${dtype} tensor ${i}`));
    }
    // A resumed run whose config disagrees with the checkpoint's adapters is refused by name.
    await assert.rejects(
      prepareRun(config([["lora.rank", "8"]]), `${out}/split-f32/ckpt-000002`),
      /field 'lora' is \{"rank":8/,
    );
  } finally {
    await rm(out, { recursive: true });
  }
});

test("AdamW on rows of a leaf updates those rows as AdamW on them alone, the rest untouched", async () => {
  await testGpu();
  const rows = 6, cols = 5, from = 4;
  const w0 = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i) * 0.5);
  const g0 = Float32Array.from({ length: rows * cols }, (_, i) => Math.cos(i * 1.7));
  const leaf = T.parameter(tensor(w0, [rows, cols]), "w");
  const part = T.parameter(tensor(w0.slice(from * cols), [rows - from, cols]), "part");
  const a = new AdamW([{ leaf, from, to: rows }], { lr: 0.1, weightDecay: 0.1 });
  const b = new AdamW([part], { lr: 0.1, weightDecay: 0.1 });
  for (let s = 0; s < 3; s++) {
    leaf.grad = tensor(g0, [rows, cols]);
    part.grad = tensor(g0.slice(from * cols), [rows - from, cols]);
    a.update();
    b.update();
    a.zeroGrad();
    b.zeroGrad();
  }
  const got = (await leaf.toArray()) as Float32Array;
  assert.deepEqual(got.subarray(0, from * cols), w0.subarray(0, from * cols));
  assert.deepEqual(got.subarray(from * cols), await part.toArray());
  assert.deepEqual(a.shapes, [[rows - from, cols]]);
  for (const t of [leaf, part]) t.dispose();
  a.dispose();
  b.dispose();
});
