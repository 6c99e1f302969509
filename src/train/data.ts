/**
 * The training text stream: tokenized texts visited in a seeded random order, epoch after epoch.
 * Its state (epoch, position) is two integers, so a resumed run sees the same texts.
 */

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
