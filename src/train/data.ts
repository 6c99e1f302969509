/**
 * The training text stream: tokenized texts visited in a seeded random order, epoch after epoch.
 * Its state (epoch, position) is two integers, so a resumed run sees the same texts.
 */

import { readFileSync } from "node:fs";
import { Rng } from "../tensor/random.ts";

/** Where a stream is: which epoch and how far into it. */
export interface StreamState {
  /** Passes over the texts completed. */
  epoch: number;
  /** Texts taken in this epoch. */
  pos: number;
}

/** Texts (token ids, BOS first) in a reshuffled order per epoch. */
export class TextStream {
  #order: number[] = [];
  #state: StreamState;

  /** A stream over `texts`, from `state` or the start. */
  constructor(
    readonly texts: readonly (readonly number[])[],
    readonly seed: number,
    state?: StreamState,
  ) {
    if (texts.length === 0) throw new Error("TextStream: no texts");
    this.#state = state ? { ...state } : { epoch: 0, pos: 0 };
    this.#shuffle();
  }

  #shuffle(): void {
    // Each epoch's order depends only on (seed, epoch): nothing else to checkpoint.
    const rng = new Rng((this.seed * 0x9e3779b1 + this.#state.epoch) >>> 0);
    this.#order = rng.shuffle(this.texts.map((_, i) => i));
  }

  /** The next text. */
  next(): readonly number[] {
    if (this.#state.pos >= this.#order.length) {
      this.#state = { epoch: this.#state.epoch + 1, pos: 0 };
      this.#shuffle();
    }
    return this.texts[this.#order[this.#state.pos++]];
  }

  /** A copy of the position, for checkpoints. */
  state(): StreamState {
    return { ...this.#state };
  }
}

/** Supervised (query, positive) pairs, visited like {@link TextStream}. */
export class PairStream {
  #inner: TextStream;

  /** Pairs of token-id sequences (BOS first), from `state` or the start. */
  constructor(
    readonly pairs: readonly [readonly number[], readonly number[]][],
    seed: number,
    state?: StreamState,
  ) {
    // The stream runs over pair indices; index i stands for pairs[i].
    this.#inner = new TextStream(pairs.map((_, i) => [i]), seed, state);
  }

  /** The next pair. */
  nextPair(): [readonly number[], readonly number[]] {
    return this.pairs[this.#inner.next()[0]];
  }

  /** A copy of the position, for checkpoints. */
  state(): StreamState {
    return this.#inner.state();
  }
}

/**
 * Supervised pairs from a JSONL file: one {"query": ..., "positive": ...} per line (also accepted:
 * "anchor"/"text" for the first). Errors name the file and line.
 */
export function readPairs(path: string): [string, string][] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`${path}: cannot read (${e instanceof Error ? e.message : e})`);
  }
  const out: [string, string][] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch {
      throw new Error(`${path}: line ${i + 1}: not JSON`);
    }
    const q = o.query ?? o.anchor ?? o.text, p = o.positive;
    if (typeof q !== "string" || typeof p !== "string" || !q.trim() || !p.trim()) {
      throw new Error(
        `${path}: line ${i + 1}: needs non-empty string fields 'query' and 'positive'`,
      );
    }
    out.push([q, p]);
  });
  if (!out.length) throw new Error(`${path}: no pairs`);
  return out;
}
