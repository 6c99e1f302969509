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
