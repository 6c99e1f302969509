/**
 * A Hugging Face `tokenizer.json` behind gemkit's {@link Tokenizer} interface, through
 * `@huggingface/tokenizers` (tokenizers.js: BPE, WordPiece, Unigram; the usual normalizers,
 * pre-tokenizers and decoders). GEM's special tokens are kept out of the wrapped tokenizer, so
 * its encoder can never produce them; decode splices their names between decoded runs.
 *
 * @module
 */

import { statSync } from "node:fs";
import { Tokenizer as HfCore } from "@huggingface/tokenizers";
import type { EncodeOptions, LoadTokenizerOptions, Tokenizer } from "./tokenizer_types.ts";
import { SpecialTokenTable, TokenizerError, TokenizerFileError } from "./tokenizer_types.ts";
import { readBytes } from "./paths.ts";

// Used when neither tokenizer_config.json nor the caller names BOS/EOS: the common spellings,
// looked up among the tokenizer's own tokens, first match wins.
const BOS_NAMES = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]"];
const EOS_NAMES = ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]"];

/** What {@link HfTokenizer}'s constructor needs besides the parsed JSON. */
export interface HfTokenizerOptions extends LoadTokenizerOptions {
  /** Parsed tokenizer_config.json, when there is one (BOS/EOS names, clean-up flag). */
  config?: Record<string, unknown>;
  /** Where the JSON came from, for error messages. */
  file?: string;
}

/**
 * A tokenizer.json wrapper. BOS/EOS come from tokenizer_config.json's `bos_token`/`eos_token`
 * (a string or `{content}`), else from the first of the usual names (`<s>`, `</s>`,
 * `<|endoftext|>`, ...) present in the vocabulary, else -1. `encode` never adds the tokenizer's
 * own template tokens; use `{bos, eos}`. Decoding does not clean up tokenization spaces unless
 * the config sets `clean_up_tokenization_spaces: true` (so decode(encode(x)) keeps "a ." as is).
 */
export class HfTokenizer implements Tokenizer {
  /** Base vocabulary size: the largest id of the vocabulary or its added tokens, plus one; or the model's size when the caller passes a larger one. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, or -1. */
  readonly bosId: number;
  /** End-of-sequence id, or -1. */
  readonly eosId: number;
  /** The tokenizer.json path, for error messages. */
  readonly file: string;
  #core: HfCore;
  #cleanUp: boolean;
  #specials: SpecialTokenTable;

  /** Wraps a parsed tokenizer.json (and, optionally, its tokenizer_config.json). */
  constructor(json: Record<string, unknown>, opts: HfTokenizerOptions = {}) {
    this.file = opts.file ?? "<memory>";
    const config = opts.config ?? {};
    const gem = new Set(opts.gemSpecials ?? []);
    if (gem.size && Array.isArray(json.added_tokens) && opts.vocabSize !== undefined) {
      const from = opts.vocabSize;
      const isGem = (t: { id?: unknown; content?: unknown }) =>
        gem.has(t.content as string) && (t.id as number) >= from;
      json = { ...json, added_tokens: json.added_tokens.filter((t) => !isGem(t)) };
    }
    try {
      this.#core = new HfCore(json, config);
    } catch (e) {
      throw new TokenizerFileError(
        `${this.file}: not a usable tokenizer.json (${(e as Error).message})`,
      );
    }
    let size = 0;
    for (const id of this.#core.get_vocab(true).values()) size = Math.max(size, id + 1);
    if (size === 0) throw new TokenizerFileError(`${this.file}: field model.vocab is empty`);
    if (opts.vocabSize !== undefined) {
      if (!(Number.isInteger(opts.vocabSize) && opts.vocabSize >= size)) {
        throw new TokenizerFileError(
          `${this.file}: vocabulary (model.vocab + added_tokens) needs ${size} ids, ` +
            `over the model's vocab size ${opts.vocabSize}`,
        );
      }
      size = opts.vocabSize;
    }
    this.vocabSize = size;
    this.bosId = this.#controlId(config, "bos_token", BOS_NAMES);
    this.eosId = this.#controlId(config, "eos_token", EOS_NAMES);
    this.#cleanUp = config.clean_up_tokenization_spaces === true;
    this.#specials = new SpecialTokenTable(size);
  }

  /**
   * Reads a tokenizer.json, and tokenizer_config.json from the same directory when present.
   * Throws {@link TokenizerFileError} naming the file on unreadable or invalid JSON.
   */
  static load(path: string, opts: LoadTokenizerOptions = {}): HfTokenizer {
    const json = readJson(path);
    const configPath = path.replace(/[^/]*$/, "tokenizer_config.json");
    let config: Record<string, unknown> | undefined;
    try {
      statSync(configPath);
      config = readJson(configPath);
    } catch (e) {
      if (e instanceof TokenizerFileError) throw e;
    }
    return new HfTokenizer(json, { ...opts, config, file: path });
  }

  /** Names of the GEM special tokens, in id order. */
  get specialTokens(): readonly string[] {
    return this.#specials.names;
  }

  /** See {@link Tokenizer.addSpecialTokens}. */
  addSpecialTokens(names: string[]): number[] {
    return this.#specials.add(names);
  }

  /** See {@link Tokenizer.encode}. Throws when BOS/EOS is asked for and the vocabulary has none. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids = this.#core.encode(text, { add_special_tokens: false }).ids;
    const bad = ids.findIndex((id) => !Number.isInteger(id));
    if (bad >= 0) {
      const tok = this.#core.tokenize(text)[bad];
      throw new TokenizerError(
        `${this.file}: cannot encode ${
          JSON.stringify(tok)
        }: not in the vocabulary and no unk_token`,
      );
    }
    if (opts.bos) ids.unshift(this.#need(this.bosId, "bos"));
    if (opts.eos) ids.push(this.#need(this.eosId, "eos"));
    return ids;
  }

  /**
   * See {@link Tokenizer.decode}. Runs of base ids go through the tokenizer's decoder; special
   * tokens are spliced in by name, and the decoder restarts after each (so a Metaspace decoder
   * drops the leading space of the run that follows one, as it does at the start).
   */
  decode(ids: readonly number[]): string {
    let out = "";
    let run: number[] = [];
    for (const id of ids) {
      this.#check(id);
      const special = this.#specials.name(id);
      if (special === undefined) {
        if (id !== this.bosId && id !== this.eosId) run.push(id);
        continue;
      }
      out += this.#decodeRun(run) + special;
      run = [];
    }
    return out + this.#decodeRun(run);
  }

  /**
   * See {@link Tokenizer.decodePiece}: decode([prev, id]) less decode([prev]), so that decoders
   * that treat the first token specially (Metaspace drops its space) see `id` mid-sequence; after
   * BOS, at the start or after a special token, `id` is decoded on its own, as the first token.
   */
  decodePiece(prev: number, id: number): string {
    this.#check(id);
    const special = this.#specials.name(id);
    if (special !== undefined) return special;
    if (id === this.bosId || id === this.eosId) return "";
    const prevIsText = Number.isInteger(prev) && prev >= 0 && prev < this.vocabSize &&
      prev !== this.bosId && prev !== this.eosId;
    if (prevIsText) {
      const head = this.#decodeRun([prev]), both = this.#decodeRun([prev, id]);
      if (both.startsWith(head)) return both.slice(head.length);
    }
    return this.#decodeRun([id]);
  }

  /** See {@link Tokenizer.piece}: the vocabulary string, e.g. "▁the" or "Ġthe". */
  piece(id: number): string {
    this.#check(id);
    const p = this.#specials.name(id) ?? this.#core.id_to_token(id);
    if (p === undefined) throw new TokenizerError(`${this.file}: token id ${id} has no piece`);
    return p;
  }

  #decodeRun(run: number[]): string {
    if (run.length === 0) return ""; // tokenizers.js throws on an empty list
    return this.#core.decode(run, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: this.#cleanUp,
    });
  }

  #controlId(config: Record<string, unknown>, field: string, names: string[]): number {
    const v = config[field];
    const name = typeof v === "string"
      ? v
      : (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string")
      ? (v as { content: string }).content
      : undefined;
    if (name !== undefined) {
      const id = this.#core.token_to_id(name);
      if (id === undefined) {
        throw new TokenizerFileError(
          `${this.file}: tokenizer_config.json field ${field} is ${JSON.stringify(name)}, ` +
            `which is not in the vocabulary`,
        );
      }
      return id;
    }
    for (const n of names) {
      const id = this.#core.token_to_id(n);
      if (id !== undefined) return id;
    }
    return -1;
  }

  #need(id: number, what: string): number {
    if (id < 0) {
      throw new TokenizerError(
        `${this.file}: ${what} requested but the tokenizer has no ${what} token ` +
          `(set ${what}_token in tokenizer_config.json)`,
      );
    }
    return id;
  }

  #check(id: number): void {
    if (!(Number.isInteger(id) && id >= 0 && id < this.#specials.end)) {
      throw new TokenizerError(
        `${this.file}: token id ${id} outside 0..${this.#specials.end - 1} ` +
          `(${this.vocabSize} base + ${this.#specials.names.length} special)`,
      );
    }
  }
}

function readJson(path: string): Record<string, unknown> {
  const text = new TextDecoder().decode(readBytes(path, (m) => new TokenizerFileError(m)));
  try {
    const v = JSON.parse(text);
    if (v && typeof v === "object" && !Array.isArray(v)) return v;
  } catch (e) {
    throw new TokenizerFileError(`${path}: invalid JSON (${(e as Error).message})`);
  }
  throw new TokenizerFileError(`${path}: top level is not a JSON object`);
}
