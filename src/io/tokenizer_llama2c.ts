/**
 * llama2.c's tokenizer: the reader of its `tokenizer.bin` and a port of run.c's `encode()` and
 * `decode()` (karpathy/llama2.c). The gemkit reference tokenizer: tests check it against
 * SentencePiece on the Llama-2 vocabulary and against a Python transcription of run.c
 * (tests/goldens/make_tokenizer_goldens.py).
 *
 * File layout (little-endian): int32 max_token_length, then per token float32 score, int32 length
 * and `length` bytes of UTF-8. The token count is not stored; the model header gives it.
 *
 * Strings are handled as bytes, as in C: the vocabulary is keyed by "byte strings" (one char per
 * byte, codes 0..255), so concatenating two keys concatenates the bytes, exactly like run.c's
 * `sprintf("%s%s")`.
 *
 * @module
 */

import { readBytes } from "./paths.ts";
import type { EncodeOptions, LoadTokenizerOptions, Tokenizer } from "./tokenizer_types.ts";
import { SpecialTokenTable, TokenizerError, TokenizerFileError } from "./tokenizer_types.ts";

/** A parsed llama2.c tokenizer file. */
export interface Llama2cVocab {
  /** The longest piece in bytes, as the header says. */
  maxTokenLength: number;
  /** Raw bytes of each piece, in id order. */
  pieces: Uint8Array[];
  /** Merge score of each piece (higher merges first). */
  scores: Float32Array;
}

/**
 * Parses a llama2.c tokenizer.bin. With `vocabSize`, the file must hold exactly that many tokens;
 * without it, tokens are read to the end of the file. Throws {@link TokenizerFileError} naming
 * `file`, the field and the token index on a truncated file, a negative or oversized length, a
 * non-finite score or a count mismatch.
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  file: string,
  vocabSize?: number,
): Llama2cVocab {
  const fail = (msg: string) => new TokenizerFileError(`${file}: ${msg}`);
  if (vocabSize !== undefined && !(Number.isInteger(vocabSize) && vocabSize > 0)) {
    throw new TokenizerError(`${file}: vocabSize ${vocabSize} is not a positive integer`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) {
    throw fail(`truncated in header field max_token_length (${bytes.length} bytes)`);
  }
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0) {
    throw fail(`header field max_token_length is ${maxTokenLength}, want > 0`);
  }

  const pieces: Uint8Array[] = [], scores: number[] = [];
  let off = 4;
  // Without a count, stop at the end of the file; a partial entry there is still truncation.
  while (vocabSize === undefined ? off < bytes.length : pieces.length < vocabSize) {
    const i = pieces.length;
    if (off === bytes.length) {
      // Only reachable with a count: the file ended cleanly between two tokens.
      throw fail(
        `holds ${i} tokens, fewer than the model's vocab size ${vocabSize} ` +
          `(ends before field score of token ${i})`,
      );
    }
    if (off + 4 > bytes.length) {
      throw fail(`truncated in field score of token ${i} (at byte ${off})`);
    }
    const score = view.getFloat32(off, true);
    if (!Number.isFinite(score)) throw fail(`field score of token ${i} is ${score}`);
    if (off + 8 > bytes.length) {
      throw fail(`truncated in field length of token ${i} (at byte ${off + 4})`);
    }
    const len = view.getInt32(off + 4, true);
    if (len < 0) throw fail(`field length of token ${i} is negative (${len})`);
    if (len > maxTokenLength) {
      throw fail(`field length of token ${i} is ${len}, over max_token_length ${maxTokenLength}`);
    }
    off += 8;
    if (off + len > bytes.length) {
      throw fail(`truncated in the bytes of token ${i}: length ${len}, ${bytes.length - off} left`);
    }
    pieces.push(bytes.slice(off, off + len));
    scores.push(score);
    off += len;
  }
  if (vocabSize !== undefined && off !== bytes.length) {
    throw fail(
      `holds more than the model's vocab size ${vocabSize} tokens (${bytes.length - off} bytes ` +
        `left after token ${vocabSize - 1})`,
    );
  }
  if (pieces.length === 0) throw fail(`holds no tokens`);
  return { maxTokenLength, pieces, scores: new Float32Array(scores) };
}

// A run.c-style byte string: one UTF-16 code unit per byte.
function byteString(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return s;
}

const utf8Encoder = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF (the default decoder drops it, which would lose text).
const utf8Decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

// llama2.c hard-codes these ids (run.c: "the first 3 vocab elements are <unk>, <s>, </s>").
const UNK = 0, BOS = 1, EOS = 2, BYTE_OFFSET = 3;
// run.c starts the best merge score at -1e10, so a merge must score strictly more.
const MIN_MERGE_SCORE = -1e10;

/**
 * llama2.c's tokenizer. `encode` follows run.c's `encode()`: optional BOS, a dummy-prefix " "
 * token when the text is non-empty, one token per UTF-8 codepoint with byte fallback to
 * `<0xNN>` (id byte + 3), then repeated merging of the adjacent pair whose concatenation is in
 * the vocabulary with the highest score (leftmost on ties), then optional EOS. run.c rescans all
 * pairs per merge (O(n²) per merge); this keeps candidates in a heap, O(n log n), same result.
 */
export class Llama2cTokenizer implements Tokenizer {
  /** Number of base tokens. */
  readonly vocabSize: number;
  /** Always 1, as in run.c. */
  readonly bosId: number = BOS;
  /** Always 2, as in run.c. */
  readonly eosId: number = EOS;
  /** The file this vocabulary came from, for error messages. */
  readonly file: string;
  /** Merge scores, by id. */
  readonly scores: Float32Array;

  #keys: string[]; // byte string of each piece
  #lookup = new Map<string, number>(); // byte string -> id (first id wins on a repeat)
  #text: string[]; // each piece decoded as UTF-8, for piece()
  #decoded: Uint8Array[]; // bytes run.c's decode() emits for each id (byte pieces -> the byte)
  #spaceId: number;
  #specials: SpecialTokenTable;

  /** Wraps a parsed vocabulary; `file` is used in error messages. */
  constructor(vocab: Llama2cVocab, file = "<memory>") {
    this.file = file;
    this.vocabSize = vocab.pieces.length;
    this.scores = vocab.scores;
    this.#keys = vocab.pieces.map(byteString);
    this.#keys.forEach((k, id) => {
      if (!this.#lookup.has(k)) this.#lookup.set(k, id);
    });
    this.#text = vocab.pieces.map((p) => utf8Decoder.decode(p));
    this.#decoded = vocab.pieces.map((p, id) => {
      const m = BYTE_PIECE.exec(this.#text[id]);
      return m ? Uint8Array.of(parseInt(m[1], 16)) : p;
    });
    this.#spaceId = this.#lookup.get(" ") ?? -1;
    this.#specials = new SpecialTokenTable(this.vocabSize);
    // Byte fallback needs <0x00>..<0xFF> at ids 3..258 (run.c's `byte + 3`).
    this.#byteFallback = this.vocabSize >= 256 + BYTE_OFFSET &&
      Array.from({ length: 256 }, (_, b) => b).every((b) => {
        const m = BYTE_PIECE.exec(this.#text[b + BYTE_OFFSET]);
        return m !== null && parseInt(m[1], 16) === b;
      });
  }

  #byteFallback: boolean;
  /** Characters encoded as `<unk>` so far (a vocabulary without byte fallback lacked them). */
  unknownCount = 0;

  /** Reads and parses a tokenizer.bin (see {@link parseLlama2cTokenizer} for the checks). */
  static load(path: string, opts: LoadTokenizerOptions = {}): Llama2cTokenizer {
    const bytes = readBytes(path, (m) => new TokenizerFileError(m));
    return new Llama2cTokenizer(parseLlama2cTokenizer(bytes, path, opts.vocabSize), path);
  }

  /** Names of the GEM special tokens, in id order. */
  get specialTokens(): readonly string[] {
    return this.#specials.names;
  }

  /** See {@link Tokenizer.addSpecialTokens}. */
  addSpecialTokens(names: string[]): number[] {
    return this.#specials.add(names);
  }

  /** See {@link Tokenizer.encode}; the merge rules are run.c's (class doc). */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const bytes = utf8Encoder.encode(text);
    const ids: number[] = [];
    if (opts.bos) ids.push(BOS);
    if (bytes.length > 0) {
      // add_dummy_prefix: SentencePiece prepends a space to non-empty text.
      if (this.#spaceId < 0) {
        throw new TokenizerError(`${this.file}: vocabulary has no " " piece for the dummy prefix`);
      }
      ids.push(this.#spaceId);
    }
    // One lookup per codepoint: a lead byte plus up to 3 continuation bytes (10xxxxxx), as run.c.
    for (let i = 0; i < bytes.length;) {
      let j = i + 1;
      while (j < bytes.length && (bytes[j] & 0xc0) === 0x80 && j - i < 4) j++;
      const cp = bytes.subarray(i, j);
      const id = this.#lookup.get(byteString(cp));
      if (id !== undefined) ids.push(id);
      else if (this.#byteFallback) { for (const b of cp) ids.push(b + BYTE_OFFSET); }
      else {
        // As SentencePiece does without byte fallback: the character becomes <unk> (id 0).
        ids.push(UNK);
        this.#unknown(utf8Decoder.decode(cp));
      }
      i = j;
    }
    const out = this.#merge(ids);
    if (opts.eos) out.push(EOS);
    return out;
  }

  // Counts a character encoded as <unk>; says so on stderr at the 1st, 10th, 100th, ... one.
  #unknown(ch: string): void {
    const n = ++this.unknownCount;
    if (/^10*$/.test(String(n))) {
      console.error(
        `gemkit: ${this.file}: ${n} character${n > 1 ? "s" : ""} not in the vocabulary ` +
          `(which has no byte fallback) encoded as <unk> so far, e.g. ${JSON.stringify(ch)}`,
      );
    }
  }

  // Merges the best-scoring adjacent pair until none is in the vocabulary. Tokens form a linked
  // list over their starting positions; a merge keeps the left node, so position order is
  // sequence order and "leftmost on ties" is "smallest left position". Heap entries go stale when
  // either node changes; a version per node detects that.
  #merge(ids: number[]): number[] {
    const n = ids.length;
    if (n < 2) return ids;
    const tok = Int32Array.from(ids);
    const next = new Int32Array(n), prev = new Int32Array(n), ver = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const consider = (l: number) => {
      const r = next[l];
      if (l < 0 || r < 0) return;
      const id = this.#lookup.get(this.#keys[tok[l]] + this.#keys[tok[r]]);
      if (id === undefined) return;
      const score = this.scores[id];
      if (score > MIN_MERGE_SCORE) {
        heap.push({ score, left: l, right: r, id, vl: ver[l], vr: ver[r] });
      }
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.size > 0) {
      const c = heap.pop();
      if (next[c.left] !== c.right || ver[c.left] !== c.vl || ver[c.right] !== c.vr) continue;
      tok[c.left] = c.id;
      ver[c.left]++;
      ver[c.right]++; // the right node is gone; its remaining entries are stale
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      next[c.right] = -2; // marks a removed node (no entry can match it)
      consider(prev[c.left]);
      consider(c.left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(tok[i]);
    return out;
  }

  /** See {@link Tokenizer.piece}: the raw string, e.g. " the", "<0x0A>", "\n<s>\n". */
  piece(id: number): string {
    this.#check(id);
    return this.#specials.name(id) ?? this.#text[id];
  }

  /**
   * The bytes run.c's `decode(prev, id)` gives: after BOS a leading space is dropped, `<0xNN>`
   * becomes the byte. BOS and EOS give no bytes; a special token gives its name's UTF-8.
   */
  pieceBytes(prev: number, id: number): Uint8Array {
    this.#check(id);
    const special = this.#specials.name(id);
    if (special !== undefined) return utf8Encoder.encode(special);
    if (id === BOS || id === EOS) return new Uint8Array(0);
    const raw = this.#text[id];
    // run.c strips the space before parsing "<0xNN>", so a stripped piece is never a byte piece.
    if (prev === BOS && raw.startsWith(" ")) return this.#decoded[id].subarray(1);
    return this.#decoded[id];
  }

  /** See {@link Tokenizer.decodePiece}. */
  decodePiece(prev: number, id: number): string {
    return utf8Decoder.decode(this.pieceBytes(prev, id));
  }

  /** See {@link Tokenizer.decode}: the pieces' bytes are joined, then decoded as UTF-8 once. */
  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = [];
    let total = 0, prev = -1;
    for (const id of ids) {
      const b = this.pieceBytes(prev, id);
      parts.push(b);
      total += b.length;
      prev = id;
    }
    const all = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    return utf8Decoder.decode(all);
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

interface PairCandidate {
  score: number;
  left: number;
  right: number;
  id: number;
  vl: number;
  vr: number;
}

// A binary max-heap of merge candidates: higher score first, then smaller left position.
class PairHeap {
  #a: PairCandidate[] = [];

  get size(): number {
    return this.#a.length;
  }

  #before(x: PairCandidate, y: PairCandidate): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }

  push(c: PairCandidate): void {
    const a = this.#a;
    a.push(c);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#before(a[i], a[p])) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }

  pop(): PairCandidate {
    const a = this.#a;
    const top = a[0], last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && this.#before(a[l], a[m])) m = l;
        if (r < a.length && this.#before(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}
