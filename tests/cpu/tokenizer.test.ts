/**
 * Tokenizers: llama2.c's against SentencePiece and a Python transcription of run.c
 * (tests/goldens/tokenizer.json), decoding, GEM special tokens, the Hugging Face wrapper, and
 * malformed files. Reads the shared data through dataDir(); needs no GPU.
 */

import { test } from "node:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import assert from "node:assert/strict";
import { dataDir, DataDirError } from "../../src/io/paths.ts";
import { loadTokenizer, TokenizerError, TokenizerFileError } from "../../src/io/tokenizer.ts";
import { Llama2cTokenizer, parseLlama2cTokenizer } from "../../src/io/tokenizer_llama2c.ts";
import { HfTokenizer } from "../../src/io/tokenizer_hf.ts";
import { withGemConfig, withGemTokens } from "../../src/gem/io.ts";
import { Tokenizer as HfCore } from "@huggingface/tokenizers";
import { parseSentencePieceModel } from "../../src/io/sentencepiece.ts";
import { readBytesSync } from "../helpers.ts";

interface TokCase {
  name: string;
  text: string;
  sp: number[];
  l2c32k: number[];
  l2c512: number[];
}

const golden = JSON.parse(
  readFileSync(new URL("../goldens/tokenizer.json", import.meta.url), "utf8"),
) as { version: number; cases: TokCase[] };
assert.equal(golden.version, 1);
const cases = golden.cases;

const models = `${dataDir()}/models/llama2c`;
const TOK512 = `${models}/tok512.bin`;
const TOK32K = `${models}/tokenizer.bin`;
const tok512 = Llama2cTokenizer.load(TOK512, { vocabSize: 512 });
const tok32k = Llama2cTokenizer.load(TOK32K, { vocabSize: 32000 });

test("dataDir: honours GEMKIT_DATA and names a missing path", () => {
  const old = process.env.GEMKIT_DATA;
  try {
    process.env.GEMKIT_DATA = "/nonexistent/gemkit-data";
    assert.throws(() => dataDir(), (e: Error) => {
      assert.ok(e instanceof DataDirError);
      assert.match(e.message, /\/nonexistent\/gemkit-data/);
      return true;
    });
    process.env.GEMKIT_DATA = models;
    assert.equal(dataDir(), models);
  } finally {
    if (old === undefined) delete process.env.GEMKIT_DATA;
    else process.env.GEMKIT_DATA = old;
  }
});

test("llama2c: files load with the expected sizes and fixed ids", () => {
  assert.equal(tok512.vocabSize, 512);
  assert.equal(tok32k.vocabSize, 32000);
  for (const t of [tok512, tok32k]) {
    assert.equal(t.bosId, 1);
    assert.equal(t.eosId, 2);
    assert.equal(t.piece(1), "\n<s>\n");
    assert.equal(t.piece(3 + 0x0a), "<0x0A>");
  }
  assert.equal(tok32k.piece(3186), " world");
  // Without a vocab size the whole file is read.
  assert.equal(Llama2cTokenizer.load(TOK512).vocabSize, 512);
});

test("llama2c: Llama-2 vocabulary encodes exactly as SentencePiece", () => {
  assert.ok(cases.length >= 40);
  for (const c of cases) {
    assert.deepEqual(tok32k.encode(c.text), c.sp, `${c.name} ${JSON.stringify(c.text)}`);
    // The Python run.c transcription agrees too (the generator checks sp == l2c32k).
    assert.deepEqual(c.l2c32k, c.sp, c.name);
  }
});

test("llama2c: tok512 encodes as the Python transcription of run.c", () => {
  for (const c of cases) {
    assert.deepEqual(tok512.encode(c.text), c.l2c512, `${c.name} ${JSON.stringify(c.text)}`);
  }
  const long = cases.find((c) => c.name.startsWith("long/"))!;
  assert.ok(long.l2c512.length > 900, "the long case should have ~1000 tokens");
});

test("llama2c: bos/eos wrap the ids; empty text gives no dummy prefix", () => {
  for (const t of [tok512, tok32k]) {
    const body = t.encode("Hello there");
    assert.deepEqual(t.encode("Hello there", { bos: true, eos: true }), [1, ...body, 2]);
    assert.deepEqual(t.encode("", { bos: true, eos: true }), [1, 2]);
    assert.deepEqual(t.encode(""), []);
  }
});

test("llama2c: heap merging equals run.c's rescan-every-pair loop on random text", () => {
  // run.c's merge loop, verbatim, over the ids before merging (the dummy prefix and codepoints).
  const lookups = new Map<Llama2cTokenizer, Map<string, number>>();
  for (const t of [tok512, tok32k]) {
    const byPiece = new Map<string, number>();
    for (let i = 0; i < t.vocabSize; i++) if (!byPiece.has(t.piece(i))) byPiece.set(t.piece(i), i);
    lookups.set(t, byPiece);
  }
  const naive = (t: Llama2cTokenizer, text: string): number[] => {
    const byPiece = lookups.get(t)!;
    const ids = text.length ? [byPiece.get(" ")!] : [];
    for (const ch of text) {
      const id = byPiece.get(ch);
      if (id !== undefined) ids.push(id);
      else for (const b of new TextEncoder().encode(ch)) ids.push(b + 3);
    }
    for (;;) {
      let best = -1e10, bestId = -1, bestIdx = -1;
      for (let i = 0; i + 1 < ids.length; i++) {
        const id = byPiece.get(t.piece(ids[i]) + t.piece(ids[i + 1]));
        if (id !== undefined && t.scores[id] > best) {
          [best, bestId, bestIdx] = [t.scores[id], id, i];
        }
      }
      if (bestIdx < 0) return ids;
      ids.splice(bestIdx, 2, bestId);
    }
  };
  // Small alphabets give many equal pairs, so the leftmost-on-ties rule is exercised.
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const alphabet = ["a", "b", "e", "t", "h", " ", " ", "\n", "é", "😀"];
  for (let trial = 0; trial < 150; trial++) {
    let text = "";
    const n = 1 + Math.floor(rand() * 60);
    for (let i = 0; i < n; i++) text += alphabet[Math.floor(rand() * alphabet.length)];
    for (const t of [tok512, tok32k]) {
      assert.deepEqual(t.encode(text), naive(t, text), JSON.stringify(text));
    }
  }
});

test("llama2c: encode is fast on long text (not O(n^3))", () => {
  const text = cases.filter((c) => c.name.startsWith("story/")).map((c) => c.text).join("\n\n")
    .repeat(4);
  const t0 = performance.now();
  const ids = tok512.encode(text);
  const ms = performance.now() - t0;
  assert.ok(ids.length > 3000, `${ids.length} tokens`);
  // A heap does this in tens of ms; run.c's rescanning loop would take minutes here.
  assert.ok(ms < 5000, `encoding ${ids.length} tokens took ${ms.toFixed(0)} ms`);
  assert.equal(tok512.decode([1, ...ids]), text);
});

test("llama2c: decode(encode(x)) gives x back, with the dummy prefix space before BOS", () => {
  for (const t of [tok512, tok32k]) {
    for (const c of cases) {
      const ids = t.encode(c.text);
      assert.equal(t.decode(ids), c.text ? " " + c.text : "", c.name);
      assert.equal(t.decode([1, ...ids, 2]), c.text, c.name);
    }
  }
});

test("llama2c: decodePiece follows run.c and streams to the full decode on ASCII", () => {
  assert.equal(tok32k.decodePiece(1, 3186), "world"); // after BOS the leading space goes
  assert.equal(tok32k.decodePiece(5, 3186), " world");
  assert.equal(tok32k.decodePiece(-1, 3 + 0x41), "A"); // <0x41> is the byte 'A'
  assert.equal(tok32k.decodePiece(1, 3 + 0x20), " "); // a byte piece is not stripped
  assert.equal(tok32k.decodePiece(7, 1), "");
  let ascii = 0;
  for (const t of [tok512, tok32k]) {
    for (const c of cases.filter((c) => [...c.text].every((ch) => ch.charCodeAt(0) < 0x80))) {
      const ids = t.encode(c.text, { bos: true, eos: true });
      let streamed = "";
      for (let i = 1; i < ids.length; i++) streamed += t.decodePiece(ids[i - 1], ids[i]);
      assert.equal(streamed, t.decode(ids), c.name);
      assert.equal(streamed, c.text, c.name);
      ascii++;
    }
  }
  assert.ok(ascii > 40);
});

test("llama2c: decode joins bytes before UTF-8 decoding (byte-fallback emoji)", () => {
  const ids = tok32k.encode("🚀");
  assert.deepEqual(ids.slice(1), [0xf0, 0x9f, 0x9a, 0x80].map((b) => b + 3));
  assert.equal(tok32k.decode(ids), " 🚀");
  assert.equal(tok32k.decodePiece(ids[0], ids[1]), "\ufffd"); // a lone lead byte
});

test("special tokens: ids after the vocabulary, never encoded, decoded as names", () => {
  const t = Llama2cTokenizer.load(TOK512);
  assert.deepEqual(t.specialTokens, []);
  assert.deepEqual(t.addSpecialTokens(["<gem_emb>", "<gem_sep>"]), [512, 513]);
  assert.deepEqual(t.addSpecialTokens(["<gem_x>"]), [514]);
  assert.deepEqual(t.specialTokens, ["<gem_emb>", "<gem_sep>", "<gem_x>"]);
  assert.equal(t.vocabSize, 512);
  assert.throws(() => t.addSpecialTokens(["<gem_emb>"]), TokenizerError);
  assert.throws(() => t.addSpecialTokens(["<a>", "<a>"]), TokenizerError);
  assert.throws(() => t.addSpecialTokens([""]), TokenizerError);
  assert.equal(t.specialTokens.length, 3, "a failed add adds nothing");

  const ids = t.encode("Lily said <gem_emb> and <gem_sep><gem_x>", { bos: true, eos: true });
  assert.ok(ids.every((id) => id < 512), "encode must never produce a special id");
  assert.equal(t.piece(513), "<gem_sep>");
  const withSpecial = [1, ...t.encode("Lily"), 512, ...t.encode(" ran"), 514, 2];
  assert.equal(t.decode(withSpecial), "Lily<gem_emb>  ran<gem_x>");
  assert.equal(t.decodePiece(1, 512), "<gem_emb>");
  assert.throws(
    () => t.decode([515]),
    (e: Error) => e instanceof TokenizerError && /515/.test(e.message),
  );
  assert.throws(() => t.piece(-1), TokenizerError);
  assert.throws(() => t.decode([1.5]), TokenizerError);
});

// ---------------------------------------------------------------------------------------------
// Bad files
// ---------------------------------------------------------------------------------------------

/** A llama2.c tokenizer file from (score, piece) pairs, with a given max_token_length. */
function l2cFile(maxLen: number, tokens: [number, string | number][]): Uint8Array {
  const parts: number[] = [];
  const i32 = (v: number) => parts.push(...new Uint8Array(Int32Array.of(v).buffer));
  i32(maxLen);
  for (const [score, p] of tokens) {
    parts.push(...new Uint8Array(Float32Array.of(score).buffer));
    // A number instead of a piece writes that raw length with no bytes behind it.
    if (typeof p === "number") i32(p);
    else {
      const b = new TextEncoder().encode(p);
      i32(b.length);
      parts.push(...b);
    }
  }
  return Uint8Array.from(parts);
}

function assertFileError(fn: () => unknown, file: string, ...patterns: RegExp[]): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof TokenizerFileError, `${e.name}: ${e.message}`);
    assert.ok(e.message.includes(file), `message should name ${file}: ${e.message}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

test("bad files: truncation, bad lengths and vocab mismatch name the file and field", () => {
  const real = readBytesSync(TOK512);
  assertFileError(
    () => parseLlama2cTokenizer(real.slice(0, 2), "x.bin"),
    "x.bin",
    /max_token_length/,
  );
  // Cut inside token 0's bytes ("<unk>" starts at byte 12).
  assertFileError(
    () => parseLlama2cTokenizer(real.slice(0, 14), "x.bin"),
    "x.bin",
    /bytes of token 0/,
  );
  // Cut inside token 1's length field.
  const tok1 = 4 + 8 + 5;
  assertFileError(
    () => parseLlama2cTokenizer(real.slice(0, tok1 + 6), "x.bin"),
    "x.bin",
    /field length of token 1/,
  );
  assertFileError(
    () => parseLlama2cTokenizer(real.slice(0, tok1 + 2), "x.bin"),
    "x.bin",
    /field score of token 1/,
  );
  // Vocab-size mismatch either way.
  assertFileError(
    () => parseLlama2cTokenizer(real, "tok.bin", 600),
    "tok.bin",
    /holds 512 tokens, fewer than the model.s vocab size 600/,
  );
  assertFileError(() => parseLlama2cTokenizer(real, "tok.bin", 500), "tok.bin", /vocab size 500/);

  const neg = l2cFile(4, [[0, "a"], [0, "bb"], [0, -3]]);
  assertFileError(
    () => parseLlama2cTokenizer(neg, "neg.bin"),
    "neg.bin",
    /length of token 2 is negative/,
  );
  const big = l2cFile(4, [[0, "a"], [0, "toolong"]]);
  assertFileError(
    () => parseLlama2cTokenizer(big, "big.bin"),
    "big.bin",
    /length of token 1 is 7, over max_token_length 4/,
  );
  const nan = l2cFile(4, [[0, "a"], [NaN, "b"]]);
  assertFileError(() => parseLlama2cTokenizer(nan, "nan.bin"), "nan.bin", /score of token 1/);
  const zero = l2cFile(0, [[0, "a"]]);
  assertFileError(
    () => parseLlama2cTokenizer(zero, "zero.bin"),
    "zero.bin",
    /max_token_length is 0/,
  );

  // Through the loader, a real path is named.
  assertFileError(() => loadTokenizer(TOK512, { vocabSize: 32000 }), TOK512, /token 512/);
  assertFileError(
    () => loadTokenizer(`${dataDir()}/README.md`),
    "README.md",
    /unknown tokenizer format \(want tokenizer\.json, llama2\.c's \*\.bin or SentencePiece's/,
  );
  assertFileError(() => loadTokenizer(`${models}/nope.bin`), "nope.bin");
});

test("loadTokenizer: dispatches .bin to llama2.c", () => {
  const t = loadTokenizer(TOK512, { vocabSize: 512 });
  assert.ok(t instanceof Llama2cTokenizer);
  assert.deepEqual(t.encode("Once upon a time"), tok512.encode("Once upon a time"));
});

// ---------------------------------------------------------------------------------------------
// Hugging Face wrapper, on a tiny Llama-style BPE (Metaspace, byte fallback) written here
// ---------------------------------------------------------------------------------------------

const HF_VOCAB = [
  "<unk>",
  "<s>",
  "</s>",
  "<0x21>",
  "▁",
  "h",
  "e",
  "l",
  "o",
  "w",
  "r",
  "d",
  "▁h",
  "▁he",
  "ll",
  "▁hell",
  "▁hello",
  "▁w",
  "or",
  "▁wor",
  "▁worl",
  "▁world",
  "<|end|>",
];
const HF_MERGES = [
  "▁ h",
  "▁h e",
  "l l",
  "▁he ll",
  "▁hell o",
  "▁ w",
  "o r",
  "▁w or",
  "▁wor l",
  "▁worl d",
];
const id = (p: string) => HF_VOCAB.indexOf(p);

function hfJson(): Record<string, unknown> {
  return {
    version: "1.0",
    added_tokens: [
      { id: 0, content: "<unk>", special: true },
      { id: 1, content: "<s>", special: true },
      { id: 2, content: "</s>", special: true },
      { id: 22, content: "<|end|>", special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "always" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      vocab: Object.fromEntries(HF_VOCAB.map((p, i) => [p, i])),
      merges: HF_MERGES,
      unk_token: "<unk>",
      byte_fallback: true,
    },
  };
}

test("hf: encodes, decodes and finds bos/eos on a tiny BPE tokenizer.json", () => {
  const t = new HfTokenizer(hfJson(), { file: "tiny.json" });
  assert.equal(t.vocabSize, 23);
  assert.equal(t.bosId, 1);
  assert.equal(t.eosId, 2);
  assert.deepEqual(t.encode("hello world"), [id("▁hello"), id("▁world")]);
  assert.deepEqual(t.encode("hello world", { bos: true, eos: true }), [1, 16, 21, 2]);
  assert.deepEqual(t.encode("hello!"), [id("▁hello"), id("<0x21>")]);
  assert.deepEqual(t.encode("howl"), [id("▁h"), id("o"), id("w"), id("l")]);
  assert.equal(t.decode([1, 16, 21, 3, 2]), "hello world!");
  assert.equal(t.decode([]), "");
  assert.equal(t.piece(16), "▁hello");
  // Streaming: mid-sequence the space stays; after BOS it goes, as in llama2.c.
  assert.equal(t.decodePiece(16, 21), " world");
  assert.equal(t.decodePiece(1, 16), "hello");
  assert.equal(t.decodePiece(16, 2), "");
  assert.throws(() => t.decode([23]), TokenizerError);
});

test("hf: special tokens are appended, never encoded, decoded by name", () => {
  const t = new HfTokenizer(hfJson(), { file: "tiny.json" });
  assert.deepEqual(t.addSpecialTokens(["<gem>", "<gem2>"]), [23, 24]);
  assert.deepEqual(t.specialTokens, ["<gem>", "<gem2>"]);
  assert.ok(t.encode("hello <gem> world<gem2>").every((i) => i < 23));
  assert.equal(t.decode([1, 16, 23, 21, 24, 2]), "hello<gem>world<gem2>");
  assert.equal(t.piece(24), "<gem2>");
  assert.equal(t.decodePiece(16, 23), "<gem>");
  assert.throws(() => t.addSpecialTokens(["<gem>"]), TokenizerError);
});

test("hf: a GEM checkpoint's tokenizer.json lists the specials for other tools; gemkit keeps them out", () => {
  // A model whose embedding is padded to 32 rows: the specials come after it, at 32 and 33.
  const info = { specialIds: [32, 33], specialNames: ["<gem_0>", "<gem_1>"] };
  const json = withGemTokens(hfJson(), info);
  const added = json.added_tokens as { id: number; content: string; special: boolean }[];
  assert.deepEqual(added.slice(-2).map((t) => [t.id, t.content, t.special]), [
    [32, "<gem_0>", true],
    [33, "<gem_1>", true],
  ]);
  assert.equal(added.length, (hfJson().added_tokens as unknown[]).length + 2);
  assert.deepEqual(withGemTokens(json, info), json, "applying it twice changes nothing");
  const config = withGemConfig({ eos_token: "</s>", additional_special_tokens: ["<x>"] }, info);
  assert.deepEqual(config.additional_special_tokens, ["<x>", "<gem_0>", "<gem_1>"]);
  assert.deepEqual((config.added_tokens_decoder as Record<string, { content: string }>)["33"], {
    content: "<gem_1>",
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  assert.equal(config.eos_token, "</s>");
  // tokenizers.js, as another tool would, reads the specials from the file...
  const core = new HfCore(json, {});
  assert.deepEqual(core.encode("<gem_1>", { add_special_tokens: false }).ids, [33]);
  // ...while gemkit leaves them out of the wrapped tokenizer and appends them by id.
  const t = new HfTokenizer(json, { vocabSize: 32, gemSpecials: info.specialNames });
  assert.ok(t.encode("hello <gem_0> world<gem_1>").every((i) => i < 23));
  assert.deepEqual(t.addSpecialTokens(info.specialNames), [32, 33]);
  assert.equal(t.decode([16, 33, 21]), "hello<gem_1>world");
  // Without naming them, ids past the model's base vocabulary are still an error.
  assert.throws(
    () => new HfTokenizer(json, { vocabSize: 32, file: "gem/tokenizer.json" }),
    /gem\/tokenizer\.json: vocabulary \(model\.vocab \+ added_tokens\) needs 34 ids/,
  );
});

test("hf: loadTokenizer reads tokenizer_config.json beside it; vocab size checks", () => {
  const dir = mkdtempSync(join(tmpdir(), "gemkit_tok_"));
  try {
    writeFileSync(`${dir}/tokenizer.json`, JSON.stringify(hfJson()));
    const plain = loadTokenizer(dir);
    assert.ok(plain instanceof HfTokenizer);
    assert.equal(plain.eosId, 2);

    writeFileSync(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ bos_token: { content: "<s>" }, eos_token: "<|end|>" }),
    );
    const t = loadTokenizer(`${dir}/tokenizer.json`, { vocabSize: 32 });
    assert.equal(t.bosId, 1);
    assert.equal(t.eosId, 22);
    assert.equal(t.vocabSize, 32, "a padded model vocab moves the special tokens up");
    assert.deepEqual(t.addSpecialTokens(["<gem>"]), [32]);
    assert.deepEqual(t.encode("world", { eos: true }), [21, 22]);

    assertFileError(() => loadTokenizer(dir, { vocabSize: 10 }), "tokenizer.json", /vocab size 10/);
    writeFileSync(`${dir}/tokenizer_config.json`, JSON.stringify({ eos_token: "<nope>" }));
    assertFileError(() => loadTokenizer(dir), "tokenizer.json", /eos_token/);
    writeFileSync(`${dir}/tokenizer_config.json`, "{not json");
    assertFileError(() => loadTokenizer(dir), "tokenizer_config.json", /invalid JSON/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("hf: a vocabulary without bos refuses bos and says so", () => {
  const json = hfJson();
  json.model = {
    type: "BPE",
    vocab: { "<unk>": 0, "▁": 1, "h": 2 },
    merges: [],
    unk_token: "<unk>",
  };
  json.added_tokens = [{ id: 0, content: "<unk>", special: true }];
  json.post_processor = null;
  const t = new HfTokenizer(json, { file: "nobos.json" });
  assert.equal(t.bosId, -1);
  assert.equal(t.eosId, -1);
  assert.deepEqual(t.encode("h"), [1, 2]);
  assert.throws(() => t.encode("h", { bos: true }), (e: Error) => {
    assert.ok(e instanceof TokenizerError);
    assert.match(e.message, /nobos\.json.*bos/);
    return true;
  });
});

test("SentencePiece .model: read directly, the same vocabulary and ids as its tokenizer.bin", () => {
  const model = loadTokenizer(`${models}/tokenizer.model`, { vocabSize: 32000 });
  const text = "Hello world! Ünïcödé 你好 🙂\n\ttabs and  two spaces";
  assert.deepEqual(model.encode(text, { bos: true }), tok32k.encode(text, { bos: true }));
  for (const id of [0, 1, 2, 3, 258, 259, 1000, 31999]) {
    assert.equal(model.piece(id), tok32k.piece(id));
  }
  assert.throws(
    () => loadTokenizer(`${models}/tokenizer.model`, { vocabSize: 512 }),
    /tokenizer\.model: 32000 pieces, the model's vocabulary has 512/,
  );
  // Not a protobuf: named, with the offset.
  assert.throws(
    () => parseSentencePieceModel(Uint8Array.of(0x0a, 0x90, 0x01), "bad.model"),
    /bad\.model: not a SentencePiece model \(piece runs past the file at byte 3\)/,
  );
});

test("llama2c vocabulary without byte fallback: unknown characters become <unk>, counted", () => {
  // <unk> <s> </s> " " and the letters a, b, ab: ids 3.. are not byte pieces.
  const texts = ["<unk>", "\n<s>\n", "\n</s>\n", " ", "a", "b", "ab"];
  const enc = new TextEncoder();
  const t = new Llama2cTokenizer({
    maxTokenLength: 5,
    pieces: texts.map((s) => enc.encode(s)),
    scores: Float32Array.from([0, 0, 0, -1, -2, -3, 5]),
  }, "tiny.bin");
  assert.deepEqual(t.encode("ab"), [3, 6]);
  assert.deepEqual(t.encode("a€b", { bos: true }), [1, 3, 4, 0, 5]);
  assert.equal(t.unknownCount, 1);
  assert.deepEqual(t.encode("ää"), [3, 0, 0]);
  assert.equal(t.unknownCount, 3);
  // With byte fallback (the real vocabularies) nothing is unknown.
  tok512.encode("a€b 你好");
  assert.equal((tok512 as Llama2cTokenizer).unknownCount, 0);
});

/** GPT-2's byte-to-character map, which byte-level BPE vocabularies (Llama 3's) are written in. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}

/**
 * A tokenizer.json of the Llama 3 kind, small: the 256 byte symbols, a few merges, Llama 3's
 * pre-tokenizer (its split regex, then byte-level) and decoder, and its special-token names.
 */
function llama3Json(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((c, i) => (vocab[c] = i));
  const merges = [
    ["Ġ", "t"],
    ["h", "e"],
    ["Ġt", "he"],
    ["Ġ", "c"],
    ["a", "t"],
    ["Ġc", "at"],
    ["3", "4"],
  ];
  for (const [a, b] of merges) vocab[a + b] = Object.keys(vocab).length;
  const specials = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
  ];
  const base = Object.keys(vocab).length;
  const split = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|" +
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  return {
    version: "1.0",
    added_tokens: specials.map((content, i) => ({
      id: base + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: split }, behavior: "Isolated", invert: false },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

test("hf: a byte-level BPE tokenizer.json of the Llama 3 kind round-trips any text", () => {
  const t = new HfTokenizer(llama3Json(), { file: "llama3.json" });
  for (
    const text of [
      "the cat sat on the mat",
      "Héllo wörld — 123456 ✓ 🙂\nnew line\r\n\ttab",
      "I'll say THE cat's",
      "",
    ]
  ) {
    assert.equal(t.decode(t.encode(text)), text, JSON.stringify(text));
  }
  // Merges, and the split: words keep their leading space, digits go in threes.
  assert.deepEqual(t.encode(" cat"), [261]);
  assert.deepEqual(t.encode("the"), [116, 257]);
  assert.deepEqual(t.encode("34"), [262]);
  assert.equal(t.encode("123456").length, 6, "123|456: the 3 and the 4 never meet");
  // Llama 3's names: BOS and EOS are found by name, a special's name in text is that special.
  assert.equal(t.bosId, 263);
  assert.equal(t.eosId, 264);
  assert.deepEqual(t.encode(" cat", { bos: true, eos: true }), [263, 261, 264]);
  assert.deepEqual(t.encode("<|eot_id|>"), [267]);
  // BOS and EOS decode to nothing (control, as everywhere in gemkit); other specials by name.
  assert.equal(t.decode([263, 261, 267]), " cat<|eot_id|>");
  // GEM's specials come after the vocabulary and its added tokens.
  assert.deepEqual(t.addSpecialTokens(["<gem_0>", "<gem_1>"]), [268, 269]);
  assert.equal(t.decode([261, 269]), " cat<gem_1>");
});
