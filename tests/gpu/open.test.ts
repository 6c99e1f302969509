/** openModel: every kind of model spec resolves in one place; formats through the registry. */

import { test } from "node:test";
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { addSpecialTokens } from "../../src/gem/gem.ts";
import { saveGem } from "../../src/gem/io.ts";
import { hfFormat } from "../../src/io/hf.ts";
import { FORMATS, loadModel, locateModel, ModelNotFoundError } from "../../src/io/model.ts";
import { dataDir } from "../../src/io/paths.ts";
import { generateText } from "../../src/nn/generate.ts";
import { openModel } from "../../src/recipe/open.ts";
import { buildConfig } from "../../src/recipe/config.ts";
import { openBase } from "../../src/recipe/recipe.ts";
import { testGpu } from "../helpers.ts";

const M = () => `${dataDir()}/models/llama2c`;
const TOK = "@data/models/llama2c/tok512.bin";

async function weights(m: { model: { params: Map<string, { toArray(): Promise<unknown> }> } }) {
  return (await m.model.params.get("model.embed_tokens.weight")!.toArray()) as Float32Array;
}

test("openModel: llama2.c file, @data path, HF directory, GEM checkpoint and run directory", async () => {
  await testGpu();
  const bin = await openModel(`${M()}/stories260K.bin`, { tokenizer: `${M()}/tok512.bin` });
  assert.equal(bin.format, "llama2c");
  assert.equal(bin.gem, null);
  const viaData = await openModel("@data/models/llama2c/stories260K.bin", { tokenizer: TOK });
  assert.equal(viaData.path, `${dataDir()}/models/llama2c/stories260K.bin`);
  assert.deepEqual(await weights(viaData), await weights(bin));
  assert.equal(
    viaData.tokenizer.encode("Once upon a time").join(),
    bin.tokenizer.encode("Once upon a time").join(),
  );
  viaData.dispose();

  const hfDir = new URL("../fixtures/tiny_gqa/hf", import.meta.url).pathname;
  await assert.rejects(
    () => openModel(hfDir),
    /no tokenizer\.json, tokenizer\.bin or tokenizer\.model; pass --tokenizer/,
  );
  assert.equal((await locateModel(hfDir)).format.name, "hf");
  // An HF directory written through the registry carries its tokenizer: no flag needed.
  const hfOut = await mkdtemp(join(tmpdir(), "gemkit-"));
  const located = await locateModel(`${M()}/stories260K.bin`);
  await hfFormat.write(hfOut, await located.format.read(located.path, {}), {});
  await copyFile(`${M()}/tok512.bin`, `${hfOut}/tokenizer.bin`);
  const hf = await openModel(hfOut);
  assert.equal(hf.format, "hf");
  assert.deepEqual(await weights(hf), await weights(bin));
  hf.dispose();
  // Training from it: the config's default tokenizer (stories260K's) gives way to the model's
  // own; one named explicitly is kept.
  const own = await openBase(buildConfig(null, [["model", hfOut]]));
  assert.equal(own.tokenizer.file, `${hfOut}/tokenizer.bin`);
  own.model.dispose();
  const named = await openBase(
    buildConfig(null, [["model", hfOut], ["tokenizer", `${M()}/tok512.bin`]]),
  );
  assert.equal(named.tokenizer.file, `${M()}/tok512.bin`);
  named.model.dispose();
  await rm(hfOut, { recursive: true });

  const gem = await addSpecialTokens(bin.model, bin.tokenizer, { k: 3, mask: "causal" });
  const run = await mkdtemp(join(tmpdir(), "gemkit-"));
  await saveGem(`${run}/ckpt-000005`, gem, `${M()}/tok512.bin`);
  await writeFile(`${run}/latest`, "ckpt-000005\n");
  const want = await weights(gem);
  gem.dispose();
  for (const spec of [run, `${run}/ckpt-000005`]) {
    const g = await openModel(spec);
    assert.equal(g.format, "gem", spec);
    assert.equal(g.path, `${run}/ckpt-000005`);
    assert.equal(g.gem!.info.k, 3);
    assert.equal(g.gem!.info.mask, "causal");
    assert.equal(g.model, g.gem!.model);
    assert.deepEqual(g.gem!.info.specialIds, [512, 513, 514]);
    assert.deepEqual(await weights(g), want);
    g.dispose();
  }
  // To the io layer alone the directory is an HF checkpoint whose vocabulary outgrew its
  // tokenizer file: refused with the sizes named (openModel is the GEM-aware entry).
  await assert.rejects(
    () => loadModel(`${run}/ckpt-000005`),
    /tokenizer\.bin: holds 512 tokens, fewer than the model's vocab size 515/,
  );
  await rm(run, { recursive: true });
});

test("openModel: errors name the spec; the registry lists each format once", async () => {
  await testGpu();
  assert.deepEqual(FORMATS.map((f) => f.name), ["hf", "llama2c"]);
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  await assert.rejects(() => openModel(`${dir}/missing`), (e: Error) => {
    assert.ok(e instanceof ModelNotFoundError);
    assert.match(e.message, /missing: no such file or directory/);
    return true;
  });
  await assert.rejects(
    () => openModel(dir),
    /not a checkpoint of a known format \(hf, llama2c\); a directory needs config\.json/,
  );
  await assert.rejects(
    () => openModel(`${M()}/stories260K.bin`),
    /a llama2\.c checkpoint needs --tokenizer PATH/,
  );
  await writeFile(`${dir}/latest`, "../elsewhere\n");
  await assert.rejects(() => openModel(dir), /latest: must name a checkpoint directory/);
  await rm(dir, { recursive: true });
});

test("openModel: encode, similarity and generate on the committed GEM checkpoint", async () => {
  await testGpu();
  const root = new URL("../../", import.meta.url).pathname;
  const m = await openModel(`${root}results/checkpoints/default-s0`);
  const texts = ["Tom saw a big cat.", "Lily went to the park.", "The cat ran away from Tom."];
  const progress: number[] = [];
  const v = await m.encode(texts, { batchSize: 2, onProgress: (d, n) => progress.push(d / n) });
  assert.equal(v.length, 3);
  assert.equal(v[0].length, 64);
  assert.deepEqual(progress.at(-1), 1);
  // The same vectors as the GEM model's own embed, batch size aside (batch-independent).
  const direct = (await m.gem!.embed(texts, { batch: 64 })).vectors;
  for (let i = 0; i < 3; i++) assert.deepEqual(v[i], direct[i]);
  const norm = (x: Float32Array) => Math.sqrt(x.reduce((a, b) => a + b * b, 0));
  assert.ok(Math.abs(norm(v[0]) - 1) < 1e-5);
  const raw = await m.encode(texts, { normalize: false });
  const k = norm(raw[1]);
  assert.ok(Math.abs(k - 1) > 1e-3, "unnormalised vectors keep their length");
  for (let j = 0; j < 64; j++) assert.ok(Math.abs(raw[1][j] / k - v[1][j]) < 1e-5);
  const dot = v[0].reduce((a, x, j) => a + x * v[2][j], 0);
  assert.ok(Math.abs((await m.similarity(texts[0], texts[2])) - dot) < 1e-6);
  const mean = await m.encode(texts, { pooling: "mean" });
  assert.notDeepEqual(mean[0], v[0]);
  const g = await m.generate("Once upon a time", { maxTokens: 12, temperature: 0 });
  assert.equal(g.ids.length, 12);
  assert.ok(g.text.length > 10);
  m.dispose();
  const plain = await openModel("@data/models/llama2c/stories260K.bin", {
    tokenizer: "@data/models/llama2c/tok512.bin",
  });
  await assert.rejects(() => plain.encode(texts, { pooling: "gem" }), /gem pooling needs a GEM/);
  const pm = await plain.encode(texts);
  assert.equal(pm[0].length, 64);
  const want = await generateText(plain.model, plain.tokenizer, "Once upon a time", {
    maxTokens: 12,
    temperature: 0,
    stopIds: [1, 2],
  });
  assert.equal(
    (await plain.generate("Once upon a time", { maxTokens: 12, temperature: 0 })).text,
    want.text,
  );
  plain.dispose();
});
