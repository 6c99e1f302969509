/**
 * GEM on the GPU: vocabulary growth, the attention bottleneck end to end through the model,
 * embedding determinism and batch-size independence, and checkpoint round trips.
 */

import { test } from "node:test";
import { copyFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { compressedCache, reconstruct } from "../../src/gem/compress.ts";
import { addSpecialTokens, embedBatches, GemModel } from "../../src/gem/gem.ts";
import { drawSamples, stepLoss } from "../../src/gem/objective.ts";
import { buildConfig } from "../../src/recipe/config.ts";
import { encodeAll, objectiveOf } from "../../src/recipe/recipe.ts";
import { tinyStories } from "../../src/io/corpus.ts";
import { Rng } from "../../src/tensor/random.ts";
import type { Tokenizer } from "../../src/io/tokenizer.ts";
import { CAUSAL, Llama } from "../../src/nn/llama.ts";
import { FusedEncoder } from "../../src/nn/infer/fused.ts";
import { backward } from "../../src/tensor/backward.ts";
import { isGemDir, loadGem, saveGem } from "../../src/gem/io.ts";
import { MASK_DESIGNS, ROLE } from "../../src/gem/mask.ts";
import { loadModel } from "../../src/io/model.ts";
import { dataDir } from "../../src/io/paths.ts";
import { noGrad, tensor } from "../../src/tensor/tensor.ts";
import { assertClose, assertTensorClose, BWD, FWD, loadGoldens, testGpu } from "../helpers.ts";

const D = () => `${dataDir()}/models/llama2c`;

async function stories(k = 4): Promise<GemModel> {
  const { model, tokenizer } = await loadModel(`${D()}/stories260K.bin`, {
    tokenizer: `${D()}/tok512.bin`,
  });
  return await addSpecialTokens(model, tokenizer, {
    k,
    init: "mean",
    initNoise: 0.1,
    seed: 1,
  });
}

test("special tokens: vocabulary grows by k, original rows and logits unchanged", async () => {
  await testGpu();
  const { model: base } = await loadModel(`${D()}/stories260K.bin`, {
    tokenizer: `${D()}/tok512.bin`,
  });
  const before = (await base.params.get("model.embed_tokens.weight")!.toArray()) as Float32Array;
  const gem = await stories(4);
  assert.equal(gem.model.config.vocabSize, 516);
  assert.deepEqual(gem.info.specialIds, [512, 513, 514, 515]);
  assert.equal(gem.tokenizer.decode([512]), "<gem_0>");
  assert.ok(
    !gem.tokenizer.encode("<gem_0> hello", { bos: true }).includes(512),
    "encode never yields specials",
  );
  const after =
    (await gem.model.params.get("model.embed_tokens.weight")!.toArray()) as Float32Array;
  assert.deepEqual(after.subarray(0, before.length), before);
  // New rows sit near the mean embedding (noise is 0.1 of the per-dim std).
  const d = 64;
  for (let j = 0; j < d; j++) {
    let mean = 0;
    for (let r = 0; r < 512; r++) mean += before[r * d + j] / 512;
    assert.ok(Math.abs(after[512 * d + j] - mean) < 0.5, `dim ${j}`);
  }
  gem.dispose();
});

/** Logits [T, V] of one sequence under a mask design. */
async function logitsOf(
  gem: GemModel,
  ids: number[],
  roles: number[],
  design: string,
): Promise<Float32Array> {
  return await noGrad(async () => {
    const t = tensor(Int32Array.from(ids), [1, ids.length], "i32");
    const r = tensor(Int32Array.from(roles), [1, ids.length], "i32");
    const out = gem.model.forward(t, { roles: r, table: MASK_DESIGNS[design] });
    const l = (await out.logits!.toArray()) as Float32Array;
    for (const x of [t, r, out.logits!, out.hidden]) x.dispose();
    return l;
  });
}

test("bottleneck end to end: the suffix reaches the prefix only through the specials", async () => {
  await testGpu();
  const gem = await stories(2);
  const v = gem.model.config.vocabSize;
  // BOS p p p | S S | x x x
  const roles = [0, 0, 0, 0, 1, 1, 2, 2, 2].map((r) => r as number);
  const a = [1, 403, 407, 261, 512, 513, 298, 315, 421];
  const b = [1, 376, 286, 432, 512, 513, 298, 315, 421]; // other prefix, same suffix
  const rows = (l: Float32Array, from: number, to: number) => l.slice(from * v, to * v);
  // specials-self-only cuts the only path: suffix logits are bitwise the same.
  const cutA = await logitsOf(gem, a, roles, "specials-self-only");
  const cutB = await logitsOf(gem, b, roles, "specials-self-only");
  assert.deepEqual(rows(cutA, 4, 9), rows(cutB, 4, 9));
  // Under the GEM mask the prefix does reach the suffix (through the specials)...
  const gemA = await logitsOf(gem, a, roles, "gem");
  const gemB = await logitsOf(gem, b, roles, "gem");
  assert.notDeepEqual(rows(gemA, 6, 9), rows(gemB, 6, 9));
  // ...and nothing looks ahead: prefix and special positions ignore the suffix.
  const c = [...a.slice(0, 6), 401, 396, 267];
  const gemC = await logitsOf(gem, c, roles, "gem");
  assert.deepEqual(rows(gemA, 0, 6), rows(gemC, 0, 6));
  // Specials do not see each other under gem: S1's logits ignore S2's token.
  const swapped = [...a.slice(0, 5), 512, ...a.slice(6)];
  assert.deepEqual(rows(await logitsOf(gem, swapped, roles, "gem"), 4, 5), rows(gemA, 4, 5));
  assert.equal(roles[4], ROLE.special);
  gem.dispose();
});

/** Texts of several lengths, the shortest a single word. */
const EMBED_TEXTS = [
  "Once upon a time, there was a little girl.",
  "The dog ran.",
  "Lily and Ben played in the park with a big red ball all day long.",
  "Hi",
  "She was happy.",
];

test("embed: deterministic, batch-size independent, input order kept; all poolings", async () => {
  await testGpu();
  const gem = await stories(4);
  const texts = EMBED_TEXTS;
  for (const pooling of ["gem", "mean", "last"] as const) {
    const one = await gem.embed(texts, { pooling, batch: 1 });
    const all = await gem.embed(texts, { pooling, batch: 8 });
    const again = await gem.embed(texts, { pooling, batch: 3 });
    // Batches closed by a token budget (a few texts each; the longest alone), and the default.
    const lengths = texts.map((t) =>
      gem.tokenizer.encode(t, { bos: true }).length + (pooling === "gem" ? 4 : 0)
    )
      .sort((a, b) => a - b);
    const split = embedBatches(lengths, { batchTokens: 12 });
    assert.ok(
      split.length >= 3 && split.at(-1)![1] - split.at(-1)![0] === 1,
      JSON.stringify(split),
    );
    const few = await gem.embed(texts, { pooling, batchTokens: 12 });
    const byDefault = await gem.embed(texts, { pooling });
    assert.equal(one.vectors.length, 5);
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(all.vectors[i], one.vectors[i], `${pooling} text ${i}: batch 8 vs 1`);
      assert.deepEqual(again.vectors[i], one.vectors[i], `${pooling} text ${i}: batch 3 vs 1`);
      assert.deepEqual(few.vectors[i], one.vectors[i], `${pooling} text ${i}: 12 tokens vs 1`);
      assert.deepEqual(byDefault.vectors[i], one.vectors[i], `${pooling} text ${i}: default`);
      const norm = Math.hypot(...one.vectors[i]);
      assert.ok(Math.abs(norm - 1) < 1e-5, "unit norm");
    }
    const solo = await gem.embed([texts[2]], { pooling });
    assert.deepEqual(solo.vectors[0], one.vectors[2]);
  }
  gem.dispose();
});

test("embed: the fused path equals the general forward within 1e-5 for every pooling", async () => {
  await testGpu();
  const gem = await stories(4);
  const texts = EMBED_TEXTS.slice(0, 4);
  for (const pooling of ["gem", "mean", "last"] as const) {
    const fused = await gem.embed(texts, { pooling, batch: 3, path: "fused" });
    const forward = await gem.embed(texts, { pooling, batch: 3, path: "forward" });
    for (let i = 0; i < texts.length; i++) {
      assertClose(fused.vectors[i], forward.vectors[i], FWD, `${pooling} text ${i}`);
    }
  }
  gem.dispose();
});

test("FusedEncoder.pool refuses a span outside the batch, naming it", async () => {
  await testGpu();
  const gem = await stories(2);
  const enc = new FusedEncoder(gem.model);
  const t = (a: number[], shape: number[]) => tensor(Int32Array.from(a), shape, "i32");
  const inputs = {
    positions: t([0, 1, 2, 3], [1, 4]),
    segments: t([0, 4, 0, 4, 0, 4, 0, 4], [1, 4, 2]),
    roles: t([0, 0, 0, 0], [1, 4]),
    table: CAUSAL,
  };
  const tokens = t([1, 5, 9, 7], [1, 4]);
  for (const span of [[2, 3], [0, 0], [-1, 2]] as [number, number][]) {
    assert.throws(
      () => noGrad(() => enc.pool(tokens, inputs, [[0, 1], span], null)),
      new RegExp(`group \\(${span[0]}, ${span[1]}\\) is not within 4 rows`),
    );
  }
  enc.dispose();
  for (const x of [tokens, inputs.positions, inputs.segments, inputs.roles]) x.dispose();
  gem.dispose();
});

test("GEM checkpoint: save then load gives the same embeddings and settings", async () => {
  await testGpu();
  const gem = await stories(3);
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  await saveGem(dir, gem, `${D()}/tok512.bin`);
  const back = await loadGem(dir);
  assert.deepEqual(back.info.specialIds, gem.info.specialIds);
  assert.equal(back.info.mask, "gem");
  const texts = ["A cat sat on the mat.", "Tom had a toy car."];
  assert.deepEqual((await back.embed(texts)).vectors, (await gem.embed(texts)).vectors);
  assert.equal(back.tokenizer.decode([514]), "<gem_2>");
  // The specials' names and ids for other tools, as Hugging Face lists added tokens.
  const map = JSON.parse(await readFile(`${dir}/special_tokens_map.json`, "utf8"));
  assert.deepEqual(map.additional_special_tokens, ["<gem_0>", "<gem_1>", "<gem_2>"]);
  const added = JSON.parse(await readFile(`${dir}/added_tokens.json`, "utf8"));
  assert.deepEqual(added, { "<gem_0>": 512, "<gem_1>": 513, "<gem_2>": 514 });
  await writeFile(`${dir}/gem.json`, JSON.stringify({ ...back.info, k: 0 }));
  await assert.rejects(loadGem(dir), /gem\.json: field 'k'/);
  await rm(dir, { recursive: true });
  gem.dispose();
  back.dispose();
});

test("GEM checkpoint of a tokenizer.json model: the specials are in its tokenizer files", async () => {
  await testGpu();
  // The tiny GQA fixture (vocabulary 67) with a word-level tokenizer.json of 11 words.
  const words = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "<", "gem_0", ">"];
  const base = await mkdtemp(join(tmpdir(), "gemkit-"));
  const fixture = new URL("../fixtures/tiny_gqa/hf", import.meta.url).pathname;
  for (const f of ["config.json", "model.safetensors"]) {
    await copyFile(`${fixture}/${f}`, `${base}/${f}`);
  }
  await writeFile(
    `${base}/tokenizer.json`,
    JSON.stringify({
      added_tokens: [],
      pre_tokenizer: { type: "Whitespace" },
      normalizer: null,
      post_processor: null,
      decoder: { type: "WordPiece", prefix: "##", cleanup: false },
      model: {
        type: "WordLevel",
        vocab: Object.fromEntries(words.map((w, i) => [w, i])),
        unk_token: "<unk>",
      },
    }),
  );
  await writeFile(`${base}/tokenizer_config.json`, JSON.stringify({ bos_token: "<s>" }));
  const { model, tokenizer } = await loadModel(base);
  const gem = await addSpecialTokens(model, tokenizer, { k: 2, mask: "gem" });
  assert.deepEqual(gem.info.specialIds, [67, 68]);
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  await saveGem(dir, gem, `${base}/tokenizer.json`);
  const json = JSON.parse(await readFile(`${dir}/tokenizer.json`, "utf8"));
  assert.deepEqual(
    json.added_tokens.map((t: { id: number; content: string }) => [t.id, t.content]),
    [
      [67, "<gem_0>"],
      [68, "<gem_1>"],
    ],
  );
  const config = JSON.parse(await readFile(`${dir}/tokenizer_config.json`, "utf8"));
  assert.equal(config.bos_token, "<s>");
  assert.equal(config.added_tokens_decoder["68"].content, "<gem_1>");
  assert.deepEqual(config.additional_special_tokens, ["<gem_0>", "<gem_1>"]);
  const back = await loadGem(dir);
  // A special's name in a text is text to gemkit: the specials are appended by id only.
  assert.deepEqual(back.tokenizer.encode("the cat <gem_0>"), [3, 4, 8, 9, 10]);
  assert.equal(back.tokenizer.decode([67]), "<gem_0>");
  const texts = ["the cat sat on the mat", "the mat"];
  assert.deepEqual((await back.embed(texts)).vectors, (await gem.embed(texts)).vectors);
  for (const m of [gem, back]) m.dispose();
  for (const d of [base, dir]) await rm(d, { recursive: true });
});

test("a training run directory loads as its latest checkpoint", async () => {
  await testGpu();
  const gem = await stories(2);
  const run = await mkdtemp(join(tmpdir(), "gemkit-"));
  assert.equal(await isGemDir(run), false);
  await saveGem(`${run}/ckpt-000007`, gem, `${D()}/tok512.bin`);
  await writeFile(`${run}/latest`, "ckpt-000007\n");
  assert.equal(await isGemDir(run), true);
  const back = await loadGem(run);
  assert.equal(back.info.k, 2);
  assert.equal(back.model.config.vocabSize, 514);
  await writeFile(`${run}/latest`, "../elsewhere");
  await assert.rejects(loadGem(run), /latest: must name a checkpoint directory/);
  await rm(run, { recursive: true });
  for (const m of [gem, back]) m.dispose();
});

test("GEM batch loss and gradients match PyTorch (mixed NTP + symmetric InfoNCE)", async () => {
  await testGpu();
  const [c] = loadGoldens("gem_batch.json");
  const a = c.attrs as Record<string, number>;
  const config = {
    dim: a.dim,
    nLayers: a.nLayers,
    nHeads: a.nHeads,
    nKvHeads: a.nKvHeads,
    hiddenDim: a.hidden,
    vocabSize: a.vocab,
    maxSeqLen: a.seqLen,
    ropeTheta: a.theta,
    normEps: a.eps,
    tiedEmbeddings: true,
  };
  const weights = new Map<string, Float32Array>();
  for (const [name, t] of Object.entries(c.inputs)) {
    if (name.startsWith("model.")) weights.set(name, Float32Array.from(t.data));
  }
  const model = Llama.fromWeights(config, weights, "gem_batch.json");
  const info = {
    k: a.k,
    specialIds: [16, 17, 18, 19],
    specialNames: ["s0", "s1", "s2", "s3"],
    mask: "gem",
    pooling: "mean" as const,
    logitScale: c.inputs.logit_scale.data[0],
  };
  const gem = new GemModel(model, {} as Tokenizer, info);
  // Rebuild the golden's rows as samples (pads stripped; collate re-pads them).
  const t = a.seqLen;
  const row = (r: number) => {
    const ids = c.inputs.ids.data.slice(r * t, (r + 1) * t);
    const roles = c.inputs.roles.data.slice(r * t, (r + 1) * t);
    const n = roles.filter((x) => x !== ROLE.pad).length;
    return {
      ids: ids.slice(0, n),
      roles: roles.slice(0, n),
      labels: c.inputs.labels.data.slice(r * t, r * t + n),
      specialPos: roles.map((x, i) => (x === ROLE.special ? i : -1)).filter((i) => i >= 0),
    };
  };
  const samples = {
    ntp: [row(0), row(1), row(2)],
    anchors: [row(3), row(4)],
    positives: [row(5), row(6)],
  };
  const loss = stepLoss(gem, samples, a.alpha, 1);
  await assertTensorClose(loss.ntp!, c.outputs.ntp, FWD, "ntp");
  await assertTensorClose(loss.contrastive!, c.outputs.contrastive, FWD, "contrastive");
  await assertTensorClose(loss.total, c.outputs.total, FWD, "total");
  backward(loss.total);
  for (const [name, g] of Object.entries(c.grads!)) {
    const p = name === "logit_scale" ? gem.logitScale : model.params.get(name)!;
    await assertTensorClose(p.grad!, g, BWD, `grad ${name}`);
  }
  for (const x of [loss.ntp!, loss.contrastive!, loss.total]) x.dispose();
  gem.dispose();
});

test("compression: decoding from the specials' cache alone equals the full GEM-masked pass", async () => {
  await testGpu();
  const gem = await stories(4);
  const text = gem.tokenizer.encode("Tom had a red ball. He liked to throw it.", { bos: true });
  const n = text.length + 4;
  const suffix = [401, 396];
  const ids = [...text, ...gem.info.specialIds, ...suffix];
  const roles = ids.map((_, i) => (i < text.length ? 0 : i < n ? 1 : 2));
  const full = await logitsOf(gem, ids, roles, "gem");
  const v = gem.model.config.vocabSize;
  const { cache, firstLogits, nextPosition } = await compressedCache(gem, text, 4);
  assert.equal(nextPosition, n);
  const tol = { atol: 1e-5, rtol: 1e-4 };
  assertClose(firstLogits, full.slice((n - 1) * v, n * v), tol, "logits at the last special");
  for (let i = 0; i < suffix.length; i++) {
    const l = await noGrad(async () => {
      const t = tensor(Int32Array.from([suffix[i]]), [1, 1], "i32");
      const r = tensor(Int32Array.from([2]), [1, 1], "i32");
      const p = tensor(Int32Array.from([n + i]), [1, 1], "i32");
      const out = gem.model.forward(t, { roles: r, positions: p, table: gem.table, cache });
      const x = (await out.logits!.toArray()) as Float32Array;
      for (const y of [t, r, p, out.logits!, out.hidden]) y.dispose();
      return x;
    });
    assertClose(
      l,
      full.slice((n + i) * v, (n + i + 1) * v),
      tol,
      `suffix token ${i} from the compressed cache`,
    );
  }
  cache.dispose();
  const rec = await reconstruct(gem, "Tom had a red ball.", 8);
  assert.ok(rec.decoded.length <= 8 && rec.exactPrefix <= rec.decoded.length);
  assert.equal(rec.text, gem.tokenizer.decode(rec.decoded));
  gem.dispose();
});

test("activation checkpointing: bitwise the same loss and gradients, a lower peak", async () => {
  const g = await testGpu();
  const gem = await stories(4);
  const config = buildConfig(null, [["maxLen", "96"], ["batchSize", "6"], [
    "contrastive.batchSize",
    "6",
  ]]);
  const texts = encodeAll(gem.tokenizer, tinyStories().train.slice(0, 40));
  const step = async (checkpointing: boolean) => {
    let i = 0;
    const source = { next: () => texts[i++ % texts.length] };
    const o = { ...objectiveOf(config, gem), checkpointing };
    const samples = drawSamples(source, new Rng(3), o, 0.5);
    g.pool.resetPeak();
    const before = g.pool.liveBytes;
    const r = stepLoss(gem, samples, 0.5, 1, o);
    backward(r.total);
    const peak = g.pool.peakLiveBytes - before;
    const loss = await r.total.item();
    for (const t of [r.total, r.ntp, r.contrastive]) t?.dispose();
    const grads: Float32Array[] = [];
    for (const p of gem.parameters()) {
      grads.push((await p.grad!.toArray()) as Float32Array);
      p.grad!.dispose();
      p.grad = null;
    }
    return { loss, grads, peak };
  };
  const plain = await step(false);
  const ckpt = await step(true);
  assert.equal(ckpt.loss, plain.loss);
  assert.equal(ckpt.grads.length, gem.parameters().length);
  plain.grads.forEach((grad, i) => assert.deepEqual(ckpt.grads[i], grad, `parameter ${i}`));
  assert.ok(ckpt.peak < 0.6 * plain.peak, `peak ${ckpt.peak} vs ${plain.peak} without`);
  gem.dispose();
});
