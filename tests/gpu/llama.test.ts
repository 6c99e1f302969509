/**
 * The decoder against the PyTorch re-implementation (tests/goldens/llama_ref.py): stories260K
 * logits on the full-sequence and KV-cache paths, 200 greedy tokens from BOS, and two small
 * random models of other shapes (GQA with an unshared classifier, MQA) in llama2.c format.
 */

import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { disposePacked, pack } from "../../src/gem/batch.ts";
import { rawSample } from "../../src/gem/sample.ts";
import { readHfModel } from "../../src/io/hf.ts";
import { CheckpointError, parseLlama2c, readLlama2c } from "../../src/io/llama2c.ts";
import { dataDir } from "../../src/io/paths.ts";
import { FusedDecoder, type FusedDecoderOptions } from "../../src/nn/infer/fused.ts";
import { generate } from "../../src/nn/generate.ts";
import { inferTuning } from "../../src/nn/infer/tuning.ts";
import { CAUSAL_PADDED, Llama, padBatch } from "../../src/nn/llama.ts";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW } from "../../src/tensor/optim.ts";
import { noGrad, scope, tensor } from "../../src/tensor/tensor.ts";
import { assertClose, fusedSkip, type GoldenTensor, readBytes, testGpu } from "../helpers.ts";

const LOGITS_TOL = { atol: 1e-4, rtol: 1e-4 };
const stories = JSON.parse(
  readFileSync(new URL("../goldens/llama_stories260k.json", import.meta.url), "utf8"),
);
const tiny = JSON.parse(
  readFileSync(new URL("../goldens/llama_tiny.json", import.meta.url), "utf8"),
);
const repo = (p: string) => decodeURIComponent(new URL(`../../${p}`, import.meta.url).pathname);

async function loadStories(): Promise<Llama> {
  const { config, weights } = await readLlama2c(`${dataDir()}/models/llama2c/stories260K.bin`);
  return Llama.fromWeights(config, weights, "stories260K.bin");
}

/** Logits of every position of `ids`, full-sequence path. */
async function fullLogits(m: Llama, ids: number[]): Promise<Float32Array> {
  return await noGrad(async () => {
    const toks = tensor(Int32Array.from(ids), [1, ids.length], "i32");
    const out = m.forward(toks);
    const l = (await out.logits!.toArray()) as Float32Array;
    for (const t of [toks, out.logits!, out.hidden]) t.dispose();
    return l;
  });
}

/** Logits of every position of `ids`, fed one token at a time through a KV cache. */
async function cachedLogits(m: Llama, ids: number[]): Promise<Float32Array> {
  const v = m.config.vocabSize;
  const all = new Float32Array(ids.length * v);
  const cache = m.newCache(1, ids.length);
  await noGrad(async () => {
    for (let t = 0; t < ids.length; t++) {
      const tok = tensor(Int32Array.from([ids[t]]), [1, 1], "i32");
      const out = m.forward(tok, { cache });
      all.set((await out.logits!.toArray()) as Float32Array, t * v);
      for (const x of [tok, out.logits!, out.hidden]) x.dispose();
    }
  });
  cache.dispose();
  return all;
}

test("stories260K: prompt logits match PyTorch (full sequence and KV cache)", async () => {
  await testGpu();
  const m = await loadStories();
  const ids: number[] = stories.prompt.ids;
  const want = (stories.prompt_logits as GoldenTensor).data;
  assertClose(await fullLogits(m, ids), want, LOGITS_TOL, "full-sequence logits");
  assertClose(await cachedLogits(m, ids), want, LOGITS_TOL, "KV-cache logits");
  m.dispose();
});

for (
  const [name, fused] of [
    ["fused v3", { version: 3 }],
    ["fused v2", { version: 2 }],
    ["per-op", false],
  ] as const
) {
  const skip = fused ? fusedSkip() : undefined;
  test(`stories260K: 200 greedy tokens from BOS equal the reference (${name} decode)`, {
    skip,
  }, async () => {
    await testGpu();
    const m = await loadStories();
    const r = await generate(m, [1], {
      maxTokens: 200,
      temperature: 0,
      stopIds: [],
      readEvery: 50,
      fused,
    });
    assert.deepEqual(r.ids, stories.greedy.ids);
    assert.equal(r.stop, "max-tokens");
    m.dispose();
  });
}

/** The fused path's models: stories260K with its prompt; tiny_gqa (GQA, separate classifier, odd vocabulary). */
const FUSED_CASES: (() => Promise<{ m: Llama; ids: number[] }>)[] = [
  async () => ({ m: await loadStories(), ids: stories.prompt.ids }),
  async () => {
    const { config, weights } = await readLlama2c(repo(tiny.models[0].bin));
    return { m: Llama.fromWeights(config, weights, "tiny_gqa"), ids: tiny.models[0].tokens };
  },
];

test("fused path: a model it cannot take (head dim 6) is refused by FusedDecoder, and generate falls back", async () => {
  await testGpu();
  const m = Llama.random(
    {
      dim: 36,
      nLayers: 2,
      nHeads: 6,
      nKvHeads: 3,
      hiddenDim: 50,
      vocabSize: 40,
      maxSeqLen: 32,
      ropeTheta: 10000,
      normEps: 1e-5,
      tiedEmbeddings: true,
    },
    1,
    0.5,
  );
  assert.throws(() => new FusedDecoder(m), /fused decode kernels do not take/);
  const opts = { maxTokens: 8, temperature: 0, stopIds: [] };
  const auto = await generate(m, [1, 5, 7], opts);
  const perOp = await generate(m, [1, 5, 7], { ...opts, fused: false });
  assert.equal(auto.ids.length, 8);
  assert.deepEqual(auto.ids, perOp.ids);
  m.dispose();
});

for (const fused of [true, false]) {
  const name = `generate: stops at the first stop id, whichever batch of steps read it back (${
    fused ? "fused" : "per-op"
  } decode)`;
  test(name, { skip: fused ? fusedSkip() : undefined }, async () => {
    await testGpu();
    const m = await loadStories();
    const ref: number[] = stories.greedy.ids;
    // An id whose first use is well inside the reference, so the stop lands mid-batch.
    const at = ref.findIndex((id, i) => i >= 30 && ref.indexOf(id) === i);
    for (const readEvery of [4, 7, 64]) {
      let streamed: number[] = [];
      const r = await generate(m, [1], {
        maxTokens: 200,
        temperature: 0,
        stopIds: [ref[at]],
        readEvery,
        fused,
        onIds: (ids) => (streamed = [...ids]),
      });
      assert.deepEqual(r.ids, ref.slice(0, at), `fused ${fused}, readEvery ${readEvery}`);
      assert.deepEqual(streamed, r.ids, "the ids streamed to onIds");
      assert.equal(r.stop, "stop-id");
    }
    m.dispose();
  });
}

test("sampled generation: the fused v3 sampler, v2 and the per-op path pick the same ids", {
  skip: fusedSkip(),
}, async () => {
  await testGpu();
  const m = await loadStories();
  const run = (fused: false | FusedDecoderOptions, seed: number) =>
    generate(m, [1], { maxTokens: 120, temperature: 0.8, topP: 0.9, seed, stopIds: [], fused });
  for (const seed of [3, 4]) {
    const ref = await run(false, seed);
    assert.equal(ref.ids.length, 120);
    assert.deepEqual((await run({ version: 3 }, seed)).ids, ref.ids, `v3, seed ${seed}`);
    assert.deepEqual((await run({ version: 2 }, seed)).ids, ref.ids, `v2, seed ${seed}`);
  }
  // Another seed gives another text; greedy decoding is not what was sampled.
  assert.notDeepEqual((await run({ version: 3 }, 3)).ids, (await run({ version: 3 }, 4)).ids);
  assert.notDeepEqual((await run({ version: 3 }, 3)).ids, stories.greedy.ids.slice(0, 120));
  m.dispose();
});

test(
  "generate: a prompt through the fused prefill or the general forward, then fused steps, gives the per-op ids",
  { skip: fusedSkip() },
  async () => {
    await testGpu();
    const m = await loadStories();
    const prompt: number[] = stories.prompt.ids;
    const run = (fused: boolean, prefill?: "fused" | "forward") =>
      generate(m, prompt, { maxTokens: 60, temperature: 0, stopIds: [], fused, prefill });
    const ref = await run(false);
    assert.equal(ref.ids.length, 60);
    assert.equal(ref.promptTokens, prompt.length);
    assert.deepEqual((await run(true, "fused")).ids, ref.ids, "fused prefill");
    assert.deepEqual((await run(true, "forward")).ids, ref.ids, "general forward prefill");
    // The prompt matters: from BOS alone the text is another.
    assert.notDeepEqual(ref.ids, stories.greedy.ids.slice(0, 60));
    m.dispose();
  },
);

test("fused prefill: logits equal the general forward, whole and in two parts through the cache", {
  skip: fusedSkip(),
}, async () => {
  await testGpu();
  for (const load of FUSED_CASES) {
    const { m, ids } = await load();
    const v = m.config.vocabSize, n = ids.length;
    const want = await fullLogits(m, ids);
    const decoder = new FusedDecoder(m);
    const run = async (parts: number[][], lastOnly: boolean) => {
      const cache = m.newCache(1, n);
      const out: number[] = [];
      for (const part of parts) {
        const tok = tensor(Int32Array.from(part), [1, part.length], "i32");
        const l = decoder.prefill(tok, cache, lastOnly);
        out.push(...(await l.toArray() as Float32Array));
        l.dispose();
        tok.dispose();
      }
      assert.equal(cache.length, n);
      cache.dispose();
      return out;
    };
    const label = `${m.config.nLayers} layers`;
    assertClose(await run([ids], false), want, LOGITS_TOL, `${label}, whole`);
    const split = Math.floor(n / 3);
    assertClose(
      await run([ids.slice(0, split), ids.slice(split)], false),
      want,
      LOGITS_TOL,
      `${label}, ${split} + ${n - split}`,
    );
    assertClose(await run([ids], true), want.subarray((n - 1) * v), LOGITS_TOL, `${label}, last`);
    const small = m.newCache(1, 2);
    assert.throws(
      () => decoder.prefill(tensor(Int32Array.from(ids), [1, n], "i32"), small),
      /exceed the cache/,
    );
    small.length = 2;
    assert.throws(
      () => decoder.step(small, tensor(Int32Array.of(ids[0]), [1, 1], "i32")),
      /position 2 does not fit the cache \[1, 2\]/,
    );
    small.dispose();
    decoder.dispose();
    m.dispose();
  }
});

test(
  "fused prefill and decode: bitwise the same logits with A shared or not, textures sampled or read as storage",
  {
    skip: fusedSkip(),
  },
  async () => {
    const gpu = await testGpu();
    if (!gpu.subgroupSize) return; // kernels.test.ts asserts llvmpipe has them
    const saved = { ...gpu.tuning };
    try {
      for (const load of FUSED_CASES) {
        const { m, ids } = await load();
        const decoder = new FusedDecoder(m), stepper = new FusedDecoder(m, { version: 3 });
        // The prefill's logits, then three decode steps' (packed weights read as textures).
        const run = async (matmulSubgroups: boolean, storageTextureReads: boolean) => {
          Object.assign(gpu.tuning, { matmulSubgroups, storageTextureReads });
          const cache = m.newCache(1, ids.length);
          const tok = tensor(Int32Array.from(ids), [1, ids.length], "i32");
          const l = decoder.prefill(tok, cache, false);
          const out = [await l.toArray()];
          for (const x of [l, tok, cache]) x.dispose();
          const steps = m.newCache(1, 3);
          for (let t = 0; t < 3; t++) {
            const one = tensor(Int32Array.of(ids[t]), [1, 1], "i32");
            const s = noGrad(() => stepper.step(steps, one));
            out.push(await s.toArray());
            s.dispose();
            one.dispose();
          }
          steps.dispose();
          return out;
        };
        const plain = await run(false, false);
        for (const [sg, st] of [[true, false], [false, true], [true, true]]) {
          const label = `${m.config.nLayers} layers, A ${sg ? "shared" : "per lane"}, ` +
            `textures ${st ? "read as storage" : "sampled"}`;
          assert.deepEqual(await run(sg, st), plain, label);
        }
        decoder.dispose();
        stepper.dispose();
        m.dispose();
      }
    } finally {
      Object.assign(gpu.tuning, saved);
    }
  },
);

// v2: a dispatch per layer, the head in the last one or separate. v3: one dispatch for every
// layer, or runs of 2 layers (stories260K: 2 + 2 + 1, the residual passed through X).
const DECODERS: [string, FusedDecoderOptions][] = [
  ["v2, head fused", { version: 2, fuseHead: true }],
  ["v2, head separate", { version: 2, fuseHead: false }],
  ["v3, all layers", { version: 3 }],
  ["v3, 2 layers per dispatch", { version: 3, layersPerStep: 2 }],
];

test("fused decode step: logits equal the per-op cached forward at every position", {
  skip: fusedSkip(),
}, async () => {
  await testGpu();
  for (const load of FUSED_CASES) {
    const { m, ids } = await load();
    const want = await cachedLogits(m, ids);
    const v = m.config.vocabSize;
    for (const [name, opts] of DECODERS) {
      const cache = m.newCache(1, ids.length);
      const decoder = new FusedDecoder(m, opts);
      for (let t = 0; t < ids.length; t++) {
        const tok = tensor(Int32Array.from([ids[t]]), [1, 1], "i32");
        const l = noGrad(() => decoder.step(cache, tok));
        assertClose(
          await l.toArray(),
          want.subarray(t * v, (t + 1) * v),
          LOGITS_TOL,
          `${m.config.nLayers} layers, position ${t}, ${name}`,
        );
        l.dispose();
        tok.dispose();
      }
      decoder.dispose();
      cache.dispose();
    }
    m.dispose();
  }
});

for (const model of tiny.models) {
  test(`${model.name}: llama2.c checkpoint logits (both paths) and greedy continuation`, async () => {
    await testGpu();
    const { config, weights } = await readLlama2c(repo(model.bin));
    assert.equal(config.tiedEmbeddings, model.config.shared);
    assert.equal(config.nKvHeads, model.config.n_kv_heads);
    const m = Llama.fromWeights(config, weights, model.bin);
    const want = (model.logits as GoldenTensor).data;
    assertClose(await fullLogits(m, model.tokens), want, LOGITS_TOL, `${model.name} logits`);
    assertClose(
      await cachedLogits(m, model.tokens),
      want,
      LOGITS_TOL,
      `${model.name} cached logits`,
    );
    const r = await generate(m, model.tokens, { maxTokens: 10, temperature: 0, stopIds: [] });
    assert.deepEqual(r.ids, model.greedy);
    m.dispose();
  });
}

for (const model of tiny.models) {
  test(`${model.name}: Hugging Face checkpoint (permuted q/k, safetensors) gives the same logits`, async () => {
    await testGpu();
    const { config, weights } = await readHfModel(repo(model.hf));
    const m = Llama.fromWeights(config, weights, model.hf);
    const want = (model.logits as GoldenTensor).data;
    assertClose(await fullLogits(m, model.tokens), want, LOGITS_TOL, `${model.name} HF logits`);
    m.dispose();
  });
}

test("llama2.c loader: truncated and inconsistent files name the file and the field", async () => {
  const path = repo(tiny.models[0].bin);
  const bytes = await readBytes(path);
  assert.throws(
    () => parseLlama2c(bytes.subarray(0, 20), "short.bin"),
    (e: Error) =>
      e instanceof CheckpointError && /short\.bin/.test(e.message) && /header/.test(e.message),
  );
  assert.throws(
    () => parseLlama2c(bytes.subarray(0, bytes.length - 8), "cut.bin"),
    (e: Error) =>
      e instanceof CheckpointError && /cut\.bin/.test(e.message) && /truncated/.test(e.message),
  );
  const bad = bytes.slice();
  new DataView(bad.buffer).setInt32(8, 4, true); // n_layers 3 -> 4
  assert.throws(
    () => parseLlama2c(bad, "layers.bin"),
    (e: Error) =>
      e instanceof CheckpointError && /layers\.bin/.test(e.message) && /n_layers 4/.test(e.message),
  );
  new DataView(bad.buffer).setInt32(8, -1, true);
  assert.throws(
    () => parseLlama2c(bad, "neg.bin"),
    (e: Error) => e instanceof CheckpointError && /n_layers = -1/.test(e.message),
  );
  await assert.rejects(
    readLlama2c("/nonexistent/model.bin"),
    (e: Error) => e instanceof CheckpointError && /\/nonexistent\/model\.bin/.test(e.message),
  );
});

test("padded batch: each sequence's logits equal its unpadded logits", async () => {
  await testGpu();
  const m = await loadStories();
  const seqs = [stories.prompt.ids.slice(0, 4), stories.prompt.ids, [1, 403]];
  const batch = padBatch(seqs);
  const got = await noGrad(async () => {
    const out = m.forward(batch.tokens, { roles: batch.roles, table: CAUSAL_PADDED });
    const l = (await out.logits!.toArray()) as Float32Array;
    out.logits!.dispose();
    out.hidden.dispose();
    return l;
  });
  const v = m.config.vocabSize, t = batch.tokens.shape[1];
  for (let b = 0; b < seqs.length; b++) {
    const alone = await fullLogits(m, seqs[b]);
    assertClose(
      got.subarray(b * t * v, (b * t + seqs[b].length) * v),
      alone,
      LOGITS_TOL,
      `sequence ${b}`,
    );
  }
  batch.tokens.dispose();
  batch.roles.dispose();
  m.dispose();
});

test("hidden states of every layer; backward reaches every parameter; AdamW steps lower the loss", async () => {
  const gpu = await testGpu();
  const m = await loadStories();
  const ids: number[] = stories.greedy.ids.slice(0, 64);
  const tokens = tensor(Int32Array.from(ids.slice(0, -1)), [1, 63], "i32");
  const targets = tensor(Int32Array.from(ids.slice(1)), [63], "i32");
  const layers = noGrad(() => m.forward(tokens, { layers: true, logits: false }));
  assert.equal(layers.layers!.length, m.config.nLayers + 1);
  const normed = noGrad(() =>
    T.rmsnorm(layers.layers!.at(-1)!, m.params.get("model.norm.weight")!, 1e-5)
  );
  assertClose(
    await normed.toArray(),
    await layers.hidden.toArray(),
    { atol: 0, rtol: 0 },
    "final norm",
  );
  for (const t of [normed, layers.hidden, ...layers.layers!]) t.dispose();

  const opt = new AdamW(m.parameters(), { lr: 1e-3, weightDecay: 0 });
  const before = gpu.pool.liveBytes;
  const losses: number[] = [];
  for (let step = 0; step < 3; step++) {
    const loss = scope(() => {
      const out = m.forward(tokens);
      return T.crossEntropy(T.reshape(out.logits!, [63, m.config.vocabSize]), targets);
    });
    backward(loss);
    if (step === 0) {
      for (const p of m.parameters()) assert.ok(p.grad, `no gradient for ${p.label}`);
    }
    opt.update();
    opt.zeroGrad();
    losses.push(await loss.item());
    loss.dispose();
  }
  assert.equal(gpu.pool.liveBytes, before, "a training step leaks no buffers");
  assert.ok(losses[2] < losses[0], `loss did not fall: ${losses}`);
  opt.dispose();
  tokens.dispose();
  targets.dispose();
  m.dispose();
});

test("packed batch: sequences packed in one row give their own logits", async () => {
  await testGpu();
  const m = await loadStories();
  const seqs: number[][] = [stories.prompt.ids.slice(0, 4), stories.prompt.ids, [1, 403]];
  const samples = seqs.map((ids) => rawSample(ids, 64));
  const batch = pack(samples);
  const roles = tensor(
    batch.roles.storage.host!.map((r) => (r === 3 ? 1 : 0)),
    [1, batch.t],
    "i32",
  );
  const got = await noGrad(async () => {
    const out = m.forward(batch.tokens, {
      roles,
      table: CAUSAL_PADDED,
      positions: batch.positions,
      segments: batch.segments,
    });
    const l = (await out.logits!.toArray()) as Float32Array;
    out.logits!.dispose();
    out.hidden.dispose();
    return l;
  });
  const v = m.config.vocabSize;
  for (let i = 0; i < seqs.length; i++) {
    const at = batch.offsets[i];
    assertClose(
      got.subarray(at * v, (at + seqs[i].length) * v),
      await fullLogits(m, seqs[i]),
      LOGITS_TOL,
      `sequence ${i}`,
    );
  }
  disposePacked(batch);
  roles.dispose();
  m.dispose();
});

test("generation past llvmpipe's loop cap: a 32,000-word model samples the same ids as op by op", async () => {
  // The one-dispatch decode kernel would loop ~81,000 times per token here; llvmpipe stops an
  // invocation's loops at 65,535 silently (it sampled id 0 every time), so such a model decodes
  // op by op there, with a notice, whatever `fused` asks.
  const g = await testGpu();
  const model = Llama.random(
    {
      dim: 288,
      hiddenDim: 768,
      nLayers: 6,
      nHeads: 6,
      nKvHeads: 6,
      vocabSize: 32000,
      maxSeqLen: 256,
      ropeTheta: 10000,
      normEps: 1e-5,
      tiedEmbeddings: true,
    },
    7,
    0.2,
  );
  const lines: string[] = [];
  const old = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  try {
    const opts = { maxTokens: 12, temperature: 1, topP: 0.9, seed: 3, stopIds: [] };
    const auto = await generate(model, [1, 5, 9, 200], opts);
    const perOp = await generate(model, [1, 5, 9, 200], { ...opts, fused: false });
    assert.deepEqual(auto.ids, perOp.ids);
    assert.ok(new Set(auto.ids).size > 3, `sampled ids vary: ${auto.ids}`);
  } finally {
    console.error = old;
    model.dispose();
  }
  if (g.loopLimit < Infinity && inferTuning().fusedDecode) {
    assert.match(lines.join("\n"), /past this adapter's cap of 65535/);
  }
});

test("generation of a model wider than the fused decoder runs op by op, with a notice", async () => {
  await testGpu();
  const model = Llama.random({
    dim: 640,
    hiddenDim: 1280,
    nLayers: 1,
    nHeads: 5,
    nKvHeads: 5,
    vocabSize: 64,
    maxSeqLen: 32,
    ropeTheta: 10000,
    normEps: 1e-5,
    tiedEmbeddings: true,
  }, 3);
  const lines: string[] = [];
  const old = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  let r;
  try {
    r = await generate(model, [1, 5, 9], { maxTokens: 4, temperature: 0 });
  } finally {
    console.error = old;
  }
  assert.equal(r.ids.length, 4);
  if (inferTuning().fusedDecode) {
    assert.deepEqual(lines, [
      "gemkit: generating op by op: the fused decoder covers dim <= 512 and MLP width <= 2048 (this model: 640 and 1280)",
    ]);
  }
  // Op by op, the same tokens as the general forward's greedy argmax.
  const ids = [1, 5, 9];
  for (let i = 0; i < 4; i++) {
    const out = model.forward(tensor(Int32Array.from(ids), [1, ids.length], "i32"));
    const l = (await out.logits!.toArray()) as Float32Array;
    const last = l.subarray((ids.length - 1) * 64, ids.length * 64);
    ids.push(last.indexOf(Math.max(...last)));
    out.logits!.dispose();
    out.hidden.dispose();
  }
  assert.deepEqual(r.ids, ids.slice(3));
  model.dispose();
});
