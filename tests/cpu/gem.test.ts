/** GEM's pieces that need no GPU: role tables, sample building, config validation, schedule. */

import { test } from "node:test";
import { modelCard } from "../../src/gem/card.ts";
import assert from "node:assert/strict";
import { drawMask, MASK_DESIGNS, parseRoleTable, ROLE } from "../../src/gem/mask.ts";
import {
  cropSample,
  dropoutPositive,
  embedSample,
  gemSample,
  IGNORE,
  rawSample,
  type SampleOptions,
} from "../../src/gem/sample.ts";
import { Rng } from "../../src/tensor/random.ts";
import { EMBED_BATCH_TOKENS, embedBatches } from "../../src/gem/gem.ts";
import { buildConfig, ConfigError, scheduleAt } from "../../src/recipe/config.ts";

// A sample: BOS p1 p2 | S1 S2 | x1 x2 (roles 0 0 0 1 1 2 2).
const ROLES = [0, 0, 0, 1, 1, 2, 2];

test("mask designs equal hand-written masks for prefix | 2 specials | suffix", () => {
  const expect: Record<string, number[][]> = {
    gem: [
      [1, 0, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0, 0], // S1: prefix and itself
      [1, 1, 1, 0, 1, 0, 0], // S2: prefix and itself, not S1
      [0, 0, 0, 1, 1, 1, 0], // x1: specials and itself, no prefix
      [0, 0, 0, 1, 1, 1, 1],
    ],
    "specials-see-each-other": [
      [1, 0, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 1, 0, 0], // S2 sees S1
      [0, 0, 0, 1, 1, 1, 0],
      [0, 0, 0, 1, 1, 1, 1],
    ],
    "no-bottleneck": [
      [1, 0, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 1, 0, 0],
      [1, 1, 1, 1, 1, 1, 0], // the suffix sees the prefix too
      [1, 1, 1, 1, 1, 1, 1],
    ],
    "specials-self-only": [
      [1, 0, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0, 0],
      [0, 0, 0, 1, 0, 0, 0], // specials see nothing of the prefix
      [0, 0, 0, 0, 1, 0, 0],
      [0, 0, 0, 1, 1, 1, 0],
      [0, 0, 0, 1, 1, 1, 1],
    ],
  };
  for (const [name, m] of Object.entries(expect)) {
    assert.deepEqual(drawMask(MASK_DESIGNS[name], ROLES), m, name);
  }
  // Padding neither sees nor is seen.
  const withPad = drawMask(MASK_DESIGNS.gem, [0, 0, 3]);
  assert.deepEqual(withPad, [[1, 0, 0], [1, 1, 0], [0, 0, 0]]);
});

test("user role tables: names or codes; bad cells name the cell", () => {
  const t = parseRoleTable([
    ["causal", "none", "none", "none"],
    ["all", "self", "none", "none"],
    [0, 1, 1, 0],
    [0, 0, 0, 0],
  ], "gem.mask");
  assert.deepEqual(t[1], [3, 2, 0, 0]);
  assert.throws(() => parseRoleTable("nope", "gem.mask"), /unknown mask design 'nope'/);
  assert.throws(() => parseRoleTable([[1, 0, 0, 0]], "gem.mask"), /4 rows/);
  assert.throws(
    () => parseRoleTable([[1, 0, 0, 9], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], "gem.mask"),
    /gem\.mask\[0\]\[3\]/,
  );
  assert.throws(
    () => parseRoleTable([[1, 0, 0, 1], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], "m"),
    /padding/,
  );
});

const OPTS: SampleOptions = {
  specialIds: [100, 101, 102],
  insertion: "random",
  minPrefix: 2,
  minSuffix: 2,
  maxLen: 64,
};

test("samples: roles, labels (no loss on targets that are specials) and split bounds", () => {
  const rng = new Rng(5);
  const text = [1, ...Array.from({ length: 20 }, (_, i) => 10 + i)];
  for (let trial = 0; trial < 50; trial++) {
    const s = gemSample(text, OPTS, rng);
    const first = s.specialPos[0];
    assert.deepEqual(s.specialPos, [first, first + 1, first + 2]);
    assert.ok(first >= 1 + OPTS.minPrefix && s.ids.length - first - 3 >= OPTS.minSuffix);
    assert.deepEqual(s.ids.filter((x) => x >= 100), [100, 101, 102]);
    for (let t = 0; t < s.ids.length; t++) {
      const role = t < first ? ROLE.prefix : t < first + 3 ? ROLE.special : ROLE.suffix;
      assert.equal(s.roles[t], role);
      const next = s.ids[t + 1];
      const want = next === undefined || next >= 100 ? IGNORE : next;
      assert.equal(s.labels[t], want, `label at ${t}`);
    }
    // s_k predicts the first suffix token.
    assert.equal(s.labels[first + 2], s.ids[first + 3]);
  }
  const raw = rawSample(text, 8);
  assert.deepEqual(raw.ids, text.slice(0, 8));
  assert.deepEqual(raw.labels, [...text.slice(1, 8), IGNORE]);
  assert.ok(raw.roles.every((r) => r === ROLE.prefix));
});

test("samples: reconstruction, end insertion, dropout and crop positives, embedding form", () => {
  const rng = new Rng(9);
  const text = [1, 5, 6, 7, 8, 9];
  const rec = gemSample(text, { ...OPTS, insertion: "reconstruct" }, rng);
  assert.deepEqual(rec.ids, [1, 5, 6, 7, 8, 9, 100, 101, 102, 5, 6, 7, 8, 9]);
  const end = gemSample(text, { ...OPTS, insertion: "end" }, rng);
  assert.deepEqual(end.ids, [...text, 100, 101, 102]);
  assert.deepEqual(end.labels.slice(-4), [IGNORE, IGNORE, IGNORE, IGNORE]);
  const long = [1, ...Array.from({ length: 200 }, (_, i) => 10 + (i % 50))];
  const anchor = gemSample(long, OPTS, rng);
  const pos = dropoutPositive(anchor, OPTS.specialIds, 0.5, rng);
  const prefixLen = anchor.specialPos[0], posPrefix = pos.specialPos[0];
  assert.ok(posPrefix < prefixLen, "dropout removed prefix tokens");
  assert.equal(pos.ids[0], 1, "BOS kept");
  assert.deepEqual(
    pos.ids.slice(posPrefix + 3),
    anchor.ids.slice(prefixLen + 3),
    "suffix unchanged",
  );
  const crop = cropSample(long, 0.5, { ...OPTS, maxLen: 256 }, rng);
  assert.equal(crop.ids.length, 1 + 100 + 3);
  assert.equal(cropSample(long, 0.5, OPTS, rng).ids.length, 64, "crops fit maxLen");
  assert.equal(crop.ids[0], 1);
  assert.deepEqual(embedSample(text, OPTS.specialIds, 64).ids, [...text, 100, 101, 102]);
  assert.equal(embedSample(long, OPTS.specialIds, 50).ids.length, 50);
});

test("config: defaults, overrides, errors naming the field; schedule shape", () => {
  const c = buildConfig(null, [["gem.k", "8"], ["steps", "40"]]);
  assert.equal(c.gem.k, 8);
  assert.equal(c.steps, 40);
  assert.throws(
    () => buildConfig(null, [["gem.kk", "1"]]),
    (e: Error) => e instanceof ConfigError && /'gem\.kk'/.test(e.message),
  );
  assert.throws(() => buildConfig(null, [["gem.rawProb", "1.5"]]), /'gem\.rawProb'/);
  assert.throws(() => buildConfig({ steps: -1 }, [], "my.json"), /'steps'/);
  assert.throws(
    () => buildConfig(null, [["phases", '[{"frac":0.5,"alpha":0,"lr":1e-3}]']]),
    /sum to 1/,
  );
  assert.throws(() => buildConfig(null, [["contrastive.pairs", "supervised"]]), /pairsFile/);
  assert.equal(c.dtype, "f32");
  assert.throws(() => buildConfig(null, [["dtype", "F16"]]), /'dtype'.*f32/);
  assert.equal(buildConfig(null, [["dtype", "f16"]]).dtype, "f16");
  assert.equal(buildConfig(null, [["dtype", "f16"], ["lora.rank", "4"]]).dtype, "f16");
  const s = buildConfig(null, [["steps", "100"], ["warmup", "10"]]);
  const at = (i: number) => scheduleAt(s, i);
  assert.equal(at(0).alpha, 0);
  assert.equal(at(99).alpha, 0.5);
  assert.ok(at(0).lr < at(9).lr, "warm-up rises");
  assert.ok(Math.abs(at(10).lr - 1e-3) < 1e-9, "peak after warm-up");
  assert.ok(at(24).lr < at(11).lr, "cosine falls within a phase");
  assert.ok(Math.abs(at(99).lr - 0.1 * 3e-4) < 1e-9, "ends at minLrFrac");
});

test("model card: base model, specials, mask, pooling, how to embed, config and results", () => {
  const info = {
    k: 2,
    specialIds: [512, 513],
    specialNames: ["<gem_0>", "<gem_1>"],
    mask: "gem",
    pooling: "mean" as const,
    logitScale: 2.9957,
  };
  const card = modelCard(info, {
    base: "@data/models/llama2c/stories260K.bin",
    config: { steps: 400, gem: { k: 2 } },
    results: "## Evaluation\n\n| a | b |",
  });
  assert.match(card, /^---\nlibrary_name: gemkit\n/);
  assert.match(card, /base_model: @data\/models\/llama2c\/stories260K\.bin/);
  assert.match(card, /\| special tokens \| 2: `<gem_0>` `<gem_1>` \(ids 512, 513\) \|/);
  assert.match(card, /\| attention mask \(training\) \| `gem` \|/);
  assert.match(card, /\| pooling of the specials \| mean, then L2-normalised \|/);
  assert.match(card, /deno task embed --model THIS_DIR/);
  assert.match(card, /"steps": 400/);
  assert.match(card, /## Evaluation\n\n\| a \| b \|\n$/);
  // A role table instead of a design name is written out.
  assert.match(
    modelCard({ ...info, mask: [[1, 0], [1, 2]] }, { base: "b" }),
    /\[\[1,0\],\[1,2\]\]/,
  );
});

test("embedding batches close at the token budget or the text limit; a long text goes alone", () => {
  const lengths = [3, 4, 5, 6, 20, 2];
  assert.deepEqual(embedBatches(lengths, { batchTokens: 12 }), [[0, 3], [3, 4], [4, 5], [5, 6]]);
  assert.deepEqual(embedBatches(lengths, { batchTokens: 12, batch: 2 }), [
    [0, 2],
    [2, 4],
    [4, 5],
    [5, 6],
  ]);
  assert.deepEqual(embedBatches(lengths, { batch: 4, batchTokens: 1e9 }), [[0, 4], [4, 6]]);
  // The default budget: all of these at once.
  assert.deepEqual(embedBatches(lengths, {}), [[0, 6]]);
  assert.equal(
    embedBatches(Array(EMBED_BATCH_TOKENS + 1).fill(1), {}).length,
    2,
    "one token over the budget",
  );
  assert.deepEqual(embedBatches([], {}), []);
  for (const bad of [0, -1, 2.5, NaN]) {
    assert.throws(() => embedBatches(lengths, { batch: bad }), /batch must be a positive integer/);
    assert.throws(
      () => embedBatches(lengths, { batchTokens: bad }),
      /batchTokens must be a positive integer/,
    );
  }
});
