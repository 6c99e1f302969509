/**
 * The tokenizer interface used across gemkit, its errors, the GEM special-token table, and
 * {@link loadTokenizer}, which picks an implementation by file type:
 *
 * - llama2.c `tokenizer.bin` → {@link Llama2cTokenizer} (src/io/tokenizer_llama2c.ts), the
 *   reference: a line-by-line port of run.c's `encode()`/`decode()`.
 * - Hugging Face `tokenizer.json` → {@link HfTokenizer} (src/io/tokenizer_hf.ts), a wrapper of
 *   `@huggingface/tokenizers`.
 *
 * Id layout: `0..vocabSize-1` is the base vocabulary; GEM's special tokens are appended after it
 * at `vocabSize..vocabSize+k-1`, so the model's embedding grows by k rows and no base id moves.
 *
 * @module
 */

import { statSync } from "node:fs";
import type { LoadTokenizerOptions, Tokenizer } from "./tokenizer_types.ts";
import { TokenizerFileError } from "./tokenizer_types.ts";
import { Llama2cTokenizer } from "./tokenizer_llama2c.ts";
import { HfTokenizer } from "./tokenizer_hf.ts";
import { readBytes } from "./paths.ts";
import { parseSentencePieceModel } from "./sentencepiece.ts";

export * from "./tokenizer_types.ts";

/**
 * Loads a tokenizer, choosing the reader by file name: `*.json` (or a directory holding
 * `tokenizer.json`) is a Hugging Face tokenizer, `*.bin` a llama2.c one. Anything else, a
 * SentencePiece `.model` included, throws {@link TokenizerFileError}.
 */
export function loadTokenizer(path: string, opts: LoadTokenizerOptions = {}): Tokenizer {
  let file = path;
  try {
    if (statSync(path).isDirectory()) file = `${path.replace(/\/+$/, "")}/tokenizer.json`;
  } catch {
    throw new TokenizerFileError(`${path}: no such tokenizer file`);
  }
  if (file.endsWith(".json")) return HfTokenizer.load(file, opts);
  if (file.endsWith(".bin")) return Llama2cTokenizer.load(file, opts);
  if (file.endsWith(".model")) {
    const vocab = parseSentencePieceModel(readBytes(file, (m) => new TokenizerFileError(m)), file);
    if (opts.vocabSize !== undefined && vocab.pieces.length !== opts.vocabSize) {
      throw new TokenizerFileError(
        `${file}: ${vocab.pieces.length} pieces, the model's vocabulary has ${opts.vocabSize}`,
      );
    }
    return new Llama2cTokenizer(vocab, file);
  }
  throw new TokenizerFileError(
    `${file}: unknown tokenizer format (want tokenizer.json, llama2.c's *.bin or SentencePiece's *.model)`,
  );
}
