/**
 * A model stored in f16: which parameters change type, that its logits are those of the f32
 * model whose matrices were rounded to f16 (kernels widen to f32 and accumulate in f32, so the
 * rounding of the weights is the only difference), how far that is from the f32 model, GEM
 * embeddings, LoRA over an f16 base, and `--dtype` on the command line.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW } from "../../src/tensor/optim.ts";
import { noGrad, tensor } from "../../src/tensor/tensor.ts";
import { readLlama2c } from "../../src/io/llama2c.ts";
import { dataDir } from "../../src/io/paths.ts";
import { Llama } from "../../src/nn/llama.ts";
import { openModel } from "../../src/recipe/open.ts";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildConfig } from "../../src/recipe/config.ts";
import { prepareRun } from "../../src/recipe/recipe.ts";
import { type StepRecord, train } from "../../src/train/trainer.ts";
import { runCli, testGpu } from "../helpers.ts";

const root = new URL("../../", import.meta.url).pathname;
const M = () => `${dataDir()}/models/llama2c`;
const IDS = [1, 403, 407, 261, 378, 285, 259, 300, 70, 40, 281, 500];

function logitsOf(m: Llama): Promise<Float32Array> {
  return noGrad(async () => {
    const ids = tensor(Int32Array.from(IDS), [1, IDS.length], "i32");
    const out = m.forward(ids);
    const logits = (await out.logits!.toArray()) as Float32Array;
    for (const t of [ids, out.hidden, out.logits!]) t.dispose();
    return logits;
  });
}

test("stories260K in f16: matrices f16, norms f32; logits equal the f32 model of rounded weights", async () => {
  await testGpu();
  const { config, weights } = await readLlama2c(`${M()}/stories260K.bin`);
  const half = Llama.fromWeights(config, weights, "stories260K", "f16");
  assert.equal(half.dtype, "f16");
  for (const [name, p] of half.params) {
    const norm = name.endsWith("norm.weight");
    assert.equal(p.dtype, norm ? "f32" : "f16", name);
    assert.equal(p.requiresGrad, norm, `${name}: f16 matrices are frozen`);
  }
  const rounded = new Map(
    [...weights].map((
      [n, w],
    ) => [n, n.endsWith("norm.weight") ? w : Float32Array.from(new Float16Array(w))]),
  );
  const ref = Llama.fromWeights(config, rounded, "rounded");
  const full = Llama.fromWeights(config, weights, "f32");
  const [h, r, f] = [await logitsOf(half), await logitsOf(ref), await logitsOf(full)];
  let dRef = 0, dFull = 0, scale = 0;
  for (let i = 0; i < h.length; i++) {
    dRef = Math.max(dRef, Math.abs(h[i] - r[i]));
    dFull = Math.max(dFull, Math.abs(h[i] - f[i]));
    scale = Math.max(scale, Math.abs(f[i]));
  }
  // Same values, same kernels and order: equal up to float noise.
  assert.ok(dRef <= 1e-5 * scale, `f16 storage vs rounded f32: max |diff| ${dRef}`);
  // The rounding of the weights themselves: a small, nonzero change of the logits.
  assert.ok(dFull > 0 && dFull < 0.02 * scale, `f16 vs f32: max |diff| ${dFull} of ${scale}`);
  // storeAs back to f32 keeps the rounded values and makes them trainable.
  half.storeAs("f32");
  assert.equal(half.dtype, "f32");
  assert.ok([...half.params.values()].every((p) => p.dtype === "f32" && p.requiresGrad));
  const back = await logitsOf(half);
  assert.ok(back.every((x, i) => Math.abs(x - h[i]) <= 1e-5 * scale));
  for (const m of [half, ref, full]) m.dispose();
});

test("LoRA over an f16 base: adapters and the f32 embedding train, the base stays f16", async () => {
  await testGpu();
  const { config, weights } = await readLlama2c(`${M()}/stories260K.bin`);
  const m = Llama.fromWeights(config, weights, "stories260K");
  m.storeAs("f16", ["model.embed_tokens.weight"]);
  const trained = [
    ...m.attachLora({ rank: 4, scale: 2, targets: ["q", "v"], seed: 1 }),
    m.params.get("model.embed_tokens.weight")!,
  ];
  const opt = new AdamW(trained, { lr: 1e-2 });
  const ids = tensor(Int32Array.from(IDS.slice(0, -1)), [1, IDS.length - 1], "i32");
  const targets = tensor(Int32Array.from(IDS.slice(1)), [IDS.length - 1], "i32");
  const losses: number[] = [];
  for (let step = 0; step < 3; step++) {
    const out = m.forward(ids, { logits: true });
    const loss = T.crossEntropy(T.reshape(out.logits!, [-1, config.vocabSize]), targets);
    losses.push(await loss.item());
    backward(loss);
    opt.update();
    for (const p of trained) p.grad?.dispose(), p.grad = null;
    loss.dispose();
    out.hidden.dispose();
    out.logits!.dispose();
  }
  assert.ok(losses[2] < losses[0], `loss falls: ${losses}`);
  const q = m.params.get("model.layers.0.self_attn.q_proj.weight")!;
  assert.equal(q.dtype, "f16");
  assert.equal(q.grad, null);
  m.dispose();
});

test("openModel with dtype f16: GEM embeddings agree with f32; generation runs op by op", async () => {
  await testGpu();
  const spec = `${root}results/checkpoints/default-s0`;
  const texts = ["A cat sat on the mat.", "The dog ran to the park with Tim."];
  const a = await openModel(spec), b = await openModel(spec, { dtype: "f16" });
  assert.equal(b.model.dtype, "f16");
  assert.equal(b.model.activations, "f16");
  const [va, vb] = [await a.encode(texts), await b.encode(texts)];
  for (let t = 0; t < texts.length; t++) {
    let dot = 0;
    for (let i = 0; i < va[t].length; i++) dot += va[t][i] * vb[t][i];
    assert.ok(dot > 0.999, `text ${t}: cosine ${dot} between f32 and f16 embeddings`);
  }
  const g = await b.generate("Once upon a time", { maxTokens: 8, temperature: 0 });
  assert.ok(g.ids.length > 0);
  a.dispose();
  b.dispose();
});

test("--dtype on the command line: f16 generates; other spellings are refused by name", async () => {
  await testGpu();
  const base = [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    "--prompt",
    "Once upon a time",
    "--max-tokens",
    "8",
    "--temperature",
    "0",
  ];
  const ok = await runCli(`${root}src/cli/generate.ts`, [...base, "--dtype", "f16"]);
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /^Once upon a time/);
  const bad = await runCli(`${root}src/cli/generate.ts`, [...base, "--dtype", "F16"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /--dtype must be f32 or f16, got 'F16'/);
});

/** Loss and every parameter's gradient of one next-token step on IDS. */
async function stepOf(m: Llama, checkpoint = false) {
  const ids = tensor(Int32Array.from(IDS.slice(0, -1)), [1, IDS.length - 1], "i32");
  const targets = tensor(Int32Array.from(IDS.slice(1)), [IDS.length - 1], "i32");
  const out = m.forward(ids, { checkpoint });
  const logits = (await out.logits!.toArray()) as Float32Array;
  const loss = T.crossEntropy(T.reshape(out.logits!, [-1, m.config.vocabSize]), targets);
  const value = await loss.item();
  backward(loss);
  const grads = new Map<string, Float32Array>();
  for (const [n, p] of m.params) {
    assert.equal(p.grad!.dtype, "f32", `${n}: gradient dtype`);
    grads.set(n, (await p.grad!.toArray()) as Float32Array);
    p.grad!.dispose();
    p.grad = null;
  }
  for (const t of [ids, targets, out.hidden, out.logits!, loss]) t.dispose();
  return { logits, loss: value, grads };
}

test("f16 activations: f32 master weights train; logits, loss and gradients near f32; checkpointing bitwise", async () => {
  await testGpu();
  const { config, weights } = await readLlama2c(`${M()}/stories260K.bin`);
  const m = Llama.fromWeights(config, weights, "stories260K");
  const f32 = await stepOf(m);
  m.activations = "f16";
  // What the layers store is f16; the residual stream, hidden states and logits stay f32.
  const out = noGrad(() => m.forward(tensor(Int32Array.from(IDS), [1, IDS.length], "i32")));
  assert.equal(out.hidden.dtype, "f32");
  assert.equal(out.logits!.dtype, "f32");
  out.hidden.dispose();
  out.logits!.dispose();
  const half = await stepOf(m), again = await stepOf(m), ckpt = await stepOf(m, true);
  assert.ok([...m.params.values()].every((p) => p.dtype === "f32" && p.requiresGrad));
  let dl = 0, scale = 0;
  half.logits.forEach((x, i) => {
    dl = Math.max(dl, Math.abs(x - f32.logits[i]));
    scale = Math.max(scale, Math.abs(f32.logits[i]));
  });
  // Activations rounded to 2^-11: logits move by a small, nonzero amount.
  assert.ok(dl > 0 && dl < 0.01 * scale, `logits: max |diff| ${dl} of ${scale}`);
  assert.ok(Math.abs(half.loss - f32.loss) < 1e-3 * f32.loss, `loss ${half.loss} vs ${f32.loss}`);
  for (const [n, g] of f32.grads) {
    const h = half.grads.get(n)!;
    let num = 0, den = 0;
    g.forEach((x, i) => (num += (h[i] - x) ** 2, den += x * x));
    // Measured 0.1% (the final norm) to 3% (layer 1's k): each op is exact to its goldens (the
    // f16act cases); the rounding of every stored activation compounds through the backward.
    assert.ok(Math.sqrt(num / den) < 0.05, `${n}: relative gradient error ${Math.sqrt(num / den)}`);
    assert.deepEqual(again.grads.get(n), h, `${n}: deterministic`);
    assert.deepEqual(ckpt.grads.get(n), h, `${n}: checkpointing changes no bit`);
  }
  m.dispose();
});

test("dtype f16 without LoRA: a GEM run trains f32 masters on f16 activations and resumes bitwise", async () => {
  await testGpu();
  const out = await mkdtemp(join(tmpdir(), "gemkit-f16-"));
  const config = () =>
    buildConfig(null, [
      ["steps", "4"],
      ["maxLen", "64"],
      ["batchSize", "4"],
      ["contrastive.batchSize", "4"],
      [
        "phases",
        JSON.stringify([{ frac: 0.5, alpha: 0, lr: 3e-3 }, { frac: 0.5, alpha: 0.5, lr: 3e-3 }]),
      ],
      ["dtype", "f16"],
    ]);
  const values = (m: Llama) =>
    Promise.all(m.parameters().map(async (p) => (await p.toArray()) as Float32Array));
  try {
    const whole = await prepareRun(config());
    assert.equal(whole.gem.model.activations, "f16");
    assert.ok(whole.gem.model.parameters().every((p) => p.dtype === "f32" && p.requiresGrad));
    const steps: StepRecord[] = [];
    await train(whole.task, config(), { out: `${out}/whole`, onStep: (r) => steps.push(r) });
    assert.ok(steps.every((s) => Number.isFinite(s.loss)), "finite losses");
    const want = await values(whole.gem.model);
    whole.gem.dispose();
    const first = await prepareRun(config());
    await train(first.task, config(), { out: `${out}/split`, stopAt: 2 });
    first.gem.dispose();
    const ckpt = `${out}/split/ckpt-000002`;
    const again = await prepareRun(config(), ckpt);
    assert.equal(again.gem.model.dtype, "f32", "master weights are saved and loaded in f32");
    assert.equal(again.gem.model.activations, "f16");
    await train(again.task, config(), { out: `${out}/split`, resume: ckpt });
    const got = await values(again.gem.model);
    again.gem.dispose();
    got.forEach((g, i) => assert.deepEqual(g, want[i], `parameter ${i}`));
  } finally {
    await rm(out, { recursive: true });
  }
});
