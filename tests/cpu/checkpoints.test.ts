/**
 * Checkpoint conversion without a GPU: the HF q/k permutation against the fixture PyTorch wrote,
 * llama2.c <-> HF round trips, HF config validation, and Llama 3 RoPE scaling frequencies.
 */

import { test } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { ropeFrequency } from "../../src/gpu/kernels/rope.ts";
import { configFromHf, permuteRope, readHfModel, writeHfModel } from "../../src/io/hf.ts";
import { CheckpointError, readLlama2c, writeLlama2c } from "../../src/io/llama2c.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { assertClose, runCli } from "../helpers.ts";

const repo = (p: string) => decodeURIComponent(new URL(`../../${p}`, import.meta.url).pathname);

test("HF q/k permutation equals the one PyTorch's export applied (tiny_gqa fixture)", async () => {
  const { config, weights } = await readLlama2c(repo("tests/fixtures/tiny_gqa/model.bin"));
  const st = await readSafetensors(repo("tests/fixtures/tiny_gqa/hf/model.safetensors"));
  const hd = config.dim / config.nHeads;
  for (const [name, heads] of [["q_proj", config.nHeads], ["k_proj", config.nKvHeads]] as const) {
    const key = `model.layers.1.self_attn.${name}.weight`;
    const mine = permuteRope(weights.get(key)!, heads, hd, config.dim, true);
    assert.deepEqual(mine, st.tensors.get(key)!.data, `${name} rows`);
    assert.deepEqual(permuteRope(mine, heads, hd, config.dim, false), weights.get(key));
  }
});

test("HF reader gives the llama2.c weights for the same model; writer round-trips", async () => {
  for (const name of ["tiny_gqa", "tiny_mqa"]) {
    const a = await readLlama2c(repo(`tests/fixtures/${name}/model.bin`));
    const b = await readHfModel(repo(`tests/fixtures/${name}/hf`));
    assert.deepEqual({ ...b.config, maxSeqLen: a.config.maxSeqLen }, a.config);
    for (const [k, w] of a.weights) assert.deepEqual(b.weights.get(k), w, `${name} ${k}`);
    const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
    await writeHfModel(dir, a.config, a.weights);
    const c = await readHfModel(dir);
    for (const [k, w] of a.weights) assert.deepEqual(c.weights.get(k), w, `${name} rewritten ${k}`);
    await writeLlama2c(`${dir}/model.bin`, a.config, c.weights);
    const d = await readLlama2c(`${dir}/model.bin`);
    assert.deepEqual(d.config, a.config);
    for (const [k, w] of a.weights) assert.deepEqual(d.weights.get(k), w, `${name} llama2.c ${k}`);
    assert.deepEqual(readdirSync(dir).sort(), [
      "config.json",
      "model.bin",
      "model.safetensors",
    ]);
    await rm(dir, { recursive: true });
  }
});

test("HF config: missing or unsupported fields name the file and the field", () => {
  const ok = {
    hidden_size: 48,
    intermediate_size: 100,
    num_hidden_layers: 3,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    vocab_size: 67,
    max_position_embeddings: 64,
  };
  assert.equal(configFromHf(ok, "c.json").normEps, 1e-6);
  const bad = (j: Record<string, unknown>, re: RegExp) =>
    assert.throws(
      () => configFromHf(j, "c.json"),
      (e: Error) =>
        (e instanceof CheckpointError || e.name === "ShapeError") && /c\.json/.test(e.message) &&
        re.test(e.message),
    );
  const { hidden_size: _, ...noHidden } = ok;
  bad(noHidden, /'hidden_size' is missing/);
  bad({ ...ok, num_key_value_heads: 4 }, /nKvHeads/);
  bad({ ...ok, model_type: "gpt2" }, /model_type/);
  bad({ ...ok, attention_bias: true }, /attention_bias/);
  bad({ ...ok, rope_scaling: { rope_type: "yarn" } }, /rope_scaling/);
  bad({ ...ok, vocab_size: "67" }, /'vocab_size' is not a number/);
});

test("Llama 3 RoPE scaling frequencies match transformers' formula", () => {
  const g = JSON.parse(
    readFileSync(new URL("../goldens/rope_llama3.json", import.meta.url), "utf8"),
  );
  for (const c of g.cases) {
    const scaling = {
      type: "llama3" as const,
      factor: c.factor,
      lowFreqFactor: c.low,
      highFreqFactor: c.high,
      originalMaxPositionEmbeddings: c.old_ctx,
    };
    const mine = c.inv_freq.map((_: number, k: number) =>
      ropeFrequency(k, c.head_dim, c.theta, scaling)
    );
    assertClose(mine, c.inv_freq, { atol: 0, rtol: 1e-12 }, `head_dim ${c.head_dim}`);
  }
});

test("deno task convert: llama2.c -> HF -> llama2.c gives the same config and weights", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const cli = new URL("../../src/cli/convert.ts", import.meta.url).pathname;
  const run = async (...args: string[]) => {
    const r = await runCli(cli, args);
    assert.equal(r.code, 0, r.err);
  };
  const src = repo("tests/fixtures/tiny_gqa/model.bin");
  await run("--input", src, "--output", `${dir}/hf`);
  await run("--input", `${dir}/hf`, "--output", `${dir}/back.bin`);
  const a = await readLlama2c(src), b = await readLlama2c(`${dir}/back.bin`);
  assert.deepEqual(b.config, a.config);
  for (const [k, w] of a.weights) assert.deepEqual(b.weights.get(k), w, k);
  await rm(dir, { recursive: true });
});
