/**
 * What every tokenizer shares: the {@link Tokenizer} interface, its errors and options, and the
 * GEM special-token table. The implementations (tokenizer_llama2c.ts, tokenizer_hf.ts) build on
 * this module; tokenizer.ts picks one by file type.
 *
 * @module
 */

/** Options of {@link Tokenizer.encode}. Both default to false. */
export interface EncodeOptions {
  /** Prepend the BOS id. */
  bos?: boolean;
  /** Append the EOS id. */
  eos?: boolean;
}

/**
 * A tokenizer. Ids are plain numbers; `decode` and `decodePiece` accept base ids and special-token
 * ids and throw {@link TokenizerError} for anything else. BOS and EOS decode to nothing (they are
 * control tokens, as in SentencePiece), though `piece()` still returns their raw strings.
 */
export interface Tokenizer {
  /** Size of the base vocabulary; special tokens start at this id. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, or -1 when the vocabulary has none. */
  readonly bosId: number;
  /** End-of-sequence id, or -1 when the vocabulary has none. */
  readonly eosId: number;
  /** Text to ids. Never produces a special-token id, whatever the text holds. */
  encode(text: string, opts?: EncodeOptions): number[];
  /** Ids to text, decoded as a whole (multi-byte characters split over tokens come out right). */
  decode(ids: readonly number[]): string;
  /**
   * Streaming decode of one token given the one before it (-1 at the start), with llama2.c's
   * rules: after BOS a leading space is dropped. A piece holding part of a multi-byte character
   * yields U+FFFD; use `decode` on the whole sequence where that matters.
   */
  decodePiece(prev: number, id: number): string;
  /** The raw vocabulary string of an id (a special token's name for special ids). */
  piece(id: number): string;
  /**
   * GEM adds k special tokens: appended at ids vocabSize..vocabSize+k-1 (after any added
   * earlier), never produced by encode(), decoded as their names. Returns their ids.
   */
  addSpecialTokens(names: string[]): number[];
  /** Names of the special tokens added so far, in id order. */
  readonly specialTokens: readonly string[];
  /** The file it was read from ("<memory>" when built from bytes). */
  readonly file: string;
}

/** A tokenizer file is malformed or unsupported; the message names the file, field and token. */
export class TokenizerFileError extends Error {
  /** Error class name. */
  override name = "TokenizerFileError";
}

/** A tokenizer was misused: an id out of range, a repeated special-token name, a missing BOS. */
export class TokenizerError extends Error {
  /** Error class name. */
  override name = "TokenizerError";
}

/** Options of {@link loadTokenizer}. */
export interface LoadTokenizerOptions {
  /**
   * The model's vocabulary size. A llama2.c file must hold exactly this many tokens (the format
   * stores no count, so without it the whole file is read); a Hugging Face vocabulary may be
   * smaller (models pad their embedding) but not larger.
   */
  vocabSize?: number;
  /**
   * Names of GEM special tokens the file may list as added tokens at ids from `vocabSize` on (a
   * GEM checkpoint's tokenizer.json does, for other tools). They are left out of the wrapped
   * tokenizer, so its encoder never produces them; `addSpecialTokens` adds them back.
   */
  gemSpecials?: readonly string[];
}

/**
 * GEM's special tokens: names appended after a base vocabulary. Shared by the implementations so
 * that numbering, validation and lookup are the same everywhere.
 */
export class SpecialTokenTable {
  /** Names in id order; names[i] has id base + i. */
  readonly names: string[] = [];
  #ids = new Map<string, number>();

  /** A table whose first token gets id `base` (the base vocabulary size). */
  constructor(readonly base: number) {}

  /** Appends names, returning their ids. Throws on an empty or repeated name, before adding any. */
  add(names: readonly string[]): number[] {
    const seen = new Set<string>();
    for (const n of names) {
      if (typeof n !== "string" || n.length === 0) {
        throw new TokenizerError(`special token name ${JSON.stringify(n)} is empty`);
      }
      if (this.#ids.has(n) || seen.has(n)) {
        throw new TokenizerError(`special token ${JSON.stringify(n)} added twice`);
      }
      seen.add(n);
    }
    return names.map((n) => {
      const id = this.base + this.names.length;
      this.names.push(n);
      this.#ids.set(n, id);
      return id;
    });
  }

  /** The name of a special id, or undefined when `id` is not one. */
  name(id: number): string | undefined {
    return this.names[id - this.base];
  }

  /** One past the last valid id (base vocabulary plus special tokens). */
  get end(): number {
    return this.base + this.names.length;
  }
}
