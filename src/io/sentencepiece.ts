/**
 * SentencePiece `.model` files (a `ModelProto` protobuf) read directly into the vocabulary
 * llama2.c's tokenizer uses: each piece's text and score, in id order, converted as llama2.c's
 * `tokenizer.py` exports them (U+2581 "▁" becomes a space, BOS and EOS become "\n<s>\n" and
 * "\n</s>\n"), so a `.model` and the `tokenizer.bin` exported from it encode alike.
 *
 * Only what that needs is decoded: `ModelProto.pieces` (field 1), each a `SentencePiece` with
 * `piece` (1, string), `score` (2, float) and `type` (3: 1 normal, 2 unknown, 3 control,
 * 4 user-defined, 5 unused, 6 byte). Other fields are skipped by their wire type.
 */

import type { Llama2cVocab } from "./tokenizer_llama2c.ts";
import { TokenizerFileError } from "./tokenizer_types.ts";

/** Piece types of SentencePiece's proto. */
const CONTROL = 3;

/** A protobuf reader over bytes; errors name the file and the offset. */
class Reader {
  at = 0;
  constructor(readonly b: Uint8Array, readonly end: number, readonly file: string) {}

  fail(what: string): never {
    throw new TokenizerFileError(
      `${this.file}: not a SentencePiece model (${what} at byte ${this.at})`,
    );
  }

  varint(): number {
    let x = 0, mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.at >= this.end) this.fail("truncated varint");
      const byte = this.b[this.at++];
      x += (byte & 0x7f) * mul;
      if (byte < 0x80) return x;
      mul *= 128;
    }
    return this.fail("varint longer than 10 bytes");
  }

  /** Skips a field's value of wire type `wt`. */
  skip(wt: number): void {
    if (wt === 0) this.varint();
    else if (wt === 1) this.at += 8;
    else if (wt === 2) {
      const n = this.varint(); // not `this.at += this.varint()`: that adds to the old offset
      this.at += n;
    } else if (wt === 5) this.at += 4;
    else this.fail(`wire type ${wt}`);
    if (this.at > this.end) this.fail("field runs past its message");
  }
}

/** Parses a SentencePiece `.model` into llama2.c's vocabulary layout (see the module doc). */
export function parseSentencePieceModel(bytes: Uint8Array, file: string): Llama2cVocab {
  const r = new Reader(bytes, bytes.length, file);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const enc = new TextEncoder();
  const pieces: Uint8Array[] = [], scores: number[] = [], types: number[] = [];
  while (r.at < r.end) {
    const key = r.varint(), field = Math.floor(key / 8), wt = key & 7;
    if (field !== 1 || wt !== 2) {
      r.skip(wt);
      continue;
    }
    const len = r.varint(), end = r.at + len;
    if (end > r.end) r.fail("piece runs past the file");
    let text = "", score = 0, type = 1;
    while (r.at < end) {
      const k = r.varint(), f = Math.floor(k / 8), w = k & 7;
      if (f === 1 && w === 2) {
        const n = r.varint();
        if (r.at + n > end) r.fail("piece text runs past its piece");
        try {
          text = dec.decode(bytes.subarray(r.at, r.at + n));
        } catch {
          r.fail("piece text is not UTF-8");
        }
        r.at += n;
      } else if (f === 2 && w === 5) {
        score = view.getFloat32(r.at, true);
        r.at += 4;
      } else if (f === 3 && w === 0) type = r.varint();
      else r.skip(w);
    }
    r.at = end;
    pieces.push(enc.encode(text));
    scores.push(score);
    types.push(type);
  }
  if (!pieces.length) r.fail("no pieces");
  // As llama2.c's tokenizer.py: BOS / EOS (the control pieces <s> and </s>) get newlines around
  // them, and "▁" is a space.
  const out = pieces.map((p, i) => {
    const text = new TextDecoder().decode(p);
    if (types[i] === CONTROL && (text === "<s>" || text === "</s>")) {
      return enc.encode(`\n${text}\n`);
    }
    return enc.encode(text.replaceAll("\u2581", " "));
  });
  return {
    maxTokenLength: Math.max(...out.map((p) => p.length)),
    pieces: out,
    scores: Float32Array.from(scores),
  };
}
