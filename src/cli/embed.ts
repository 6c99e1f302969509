/**
 * `deno task embed --model PATH --input FILE --output OUT.npy [--pooling P] [--batch B] [--batch-tokens N]`
 *
 * FILE is text (one text per line) or JSONL with a `text` field; OUT.npy is float32 [n, d] in
 * input order. An empty text or bad UTF-8 is an error naming the line; texts longer than the
 * context are cut from the end and counted in a warning.
 */

import { readFileSync } from "node:fs";
import { args, isMain } from "../platform/platform.ts";
import { progressPrinter } from "../platform/progress.ts";
import { badEmbedLimit, EMBED_BATCH_TOKENS, type Pooling } from "../gem/gem.ts";
import { initGpu } from "../gpu/device.ts";
import { writeAtomic } from "../io/atomic.ts";
import { CorpusError, firstBadUtf8Line } from "../io/corpus.ts";
import { openModel } from "../recipe/open.ts";
import { makeEmbedder } from "../eval/tasks.ts";
import { MODEL_FLAGS, modelOptions, parseArgs, runMain, TUNING_FLAG, UsageError } from "./args.ts";

const USAGE =
  "usage: deno task embed --model PATH --input FILE --output OUT.npy [--pooling P] [--batch B] [--batch-tokens N]";
const EXAMPLE =
  'printf "a cat sat\\na dog ran\\n" > /tmp/texts.txt && deno task embed --model @data/models/llama2c/stories260K.bin --tokenizer @data/models/llama2c/tok512.bin --input /tmp/texts.txt --output /tmp/texts.npy --pooling mean';

/** Texts of the input file, one per line (text) or per JSON line; errors name the line. */
export function readInputTexts(path: string): string[] {
  const b = readFileSync(path);
  const raw = new Uint8Array(b.buffer, b.byteOffset, b.byteLength); // a Uint8Array, not a Buffer
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new CorpusError(`${path}: line ${firstBadUtf8Line(raw)}: not valid UTF-8`);
  }
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines.map((line, i) => {
    let t = line.replace(/\r$/, "");
    if (path.endsWith(".jsonl")) {
      try {
        t = (JSON.parse(line) as { text?: unknown }).text as string;
      } catch {
        throw new CorpusError(`${path}: line ${i + 1}: not JSON`);
      }
      if (typeof t !== "string") {
        throw new CorpusError(`${path}: line ${i + 1}: no string field 'text'`);
      }
    }
    if (!t.trim()) throw new CorpusError(`${path}: line ${i + 1}: empty text`);
    return t;
  });
}

/** NumPy .npy (format 1.0) bytes of a float32 [n, d] matrix. */
export function npyBytes(rows: readonly Float32Array[], d: number): Uint8Array {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows.length}, ${d}), }`;
  // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, " ") + "\n";
  const out = new Uint8Array(total + rows.length * d * 4);
  out.set([0x93, ...new TextEncoder().encode("NUMPY"), 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  const body = new Float32Array(out.buffer, total, rows.length * d);
  rows.forEach((r, i) => body.set(r, i * d));
  return out;
}

if (isMain(import.meta)) {
  await runMain(async () => {
    const { flags } = parseArgs(
      args(),
      {
        ...MODEL_FLAGS,
        tuning: TUNING_FLAG,
        input: { type: "string", help: "texts: one per line, or JSONL with a 'text' field" },
        output: { type: "string", help: "where to write float32 [n, d] .npy" },
        pooling: { type: "string", help: "gem (GEM checkpoints) | mean | last | prompt" },
        batch: { type: "number", help: "most texts per forward pass (default: no limit)" },
        "batch-tokens": {
          type: "number",
          help: "most tokens per forward pass",
          default: EMBED_BATCH_TOKENS,
        },
      },
      USAGE,
      EXAMPLE,
    );
    for (const f of ["model", "input", "output"]) {
      if (!flags[f]) throw new UsageError(`--${f} is required\n${USAGE}`);
    }
    const limits = {
      batch: flags.batch as number | undefined,
      batchTokens: flags["batch-tokens"] as number,
    };
    // Checked before the model loads: a typo costs nothing.
    const bad = badEmbedLimit(limits);
    if (bad) {
      const flag = bad[0] === "batch" ? "--batch" : "--batch-tokens";
      throw new UsageError(`${flag} must be a positive integer, got ${bad[1]}\n${USAGE}`);
    }
    const texts = readInputTexts(flags.input as string);
    await initGpu();
    const loaded = await openModel(flags.model as string, modelOptions(flags));
    const gem = loaded.gem ?? undefined;
    const pooling = (flags.pooling as string | undefined) ?? (gem ? "gem" : "mean");
    if (!["gem", "mean", "last", "prompt"].includes(pooling)) {
      throw new UsageError(`unknown pooling '${pooling}'`);
    }
    const t0 = performance.now();
    const e = makeEmbedder(
      loaded.model,
      loaded.tokenizer,
      pooling as Pooling | "prompt",
      gem,
      progressPrinter("gemkit embed:", { unit: "texts" }),
      limits,
    );
    const vectors = await e.embed(texts);
    if (e.truncated) {
      console.error(`gemkit embed: warning: ${e.truncated} texts longer than the context were cut`);
    }
    const d = vectors[0]?.length ?? 0;
    const out = flags.output as string;
    await writeAtomic(out, npyBytes(vectors, d));
    console.error(
      `gemkit embed: ${texts.length} texts -> ${out} [${texts.length}, ${d}] (${pooling} pooling, ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    loaded.dispose();
  });
}
