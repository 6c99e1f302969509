/**
 * Text corpora from ../shared/data and user files, with the project's held-out rule:
 * TinyStories paragraphs (split on the exact two characters "\n\n") are 90% train, 10% held out
 * (the last 430), and the last 5% of the train part is a validation slice for choosing recipes.
 */

import { readFileSync } from "node:fs";
import { dataDir, readBytes } from "./paths.ts";

/** A corpus in a file that cannot be used; the message names the file and line. */
export class CorpusError extends Error {
  /** Error class name. */
  override name = "CorpusError";
}

/** TinyStories paragraphs by split. */
export interface TinyStoriesSplits {
  /** Training paragraphs (train part minus the validation slice). */
  train: string[];
  /** Last 5% of the train part: for choosing recipes. */
  validation: string[];
  /** Last 10% of all paragraphs: evaluation only, never trained on. */
  heldOut: string[];
}

/** Paragraphs of a text: split on "\n\n", trimmed, empty ones dropped. */
export function paragraphs(text: string): string[] {
  return text.split("\n\n").map((p) => p.trim()).filter((p) => p.length > 0);
}

/** The TinyStories head file's splits (`path` overrides the shared data file). */
export function tinyStories(
  path = `${dataDir()}/corpus/tinystories_valid_head.txt`,
): TinyStoriesSplits {
  const all = paragraphs(readFileSync(path, "utf8"));
  const nTrain = Math.round(all.length * 0.9);
  const trainPart = all.slice(0, nTrain);
  const nVal = Math.round(trainPart.length * 0.05);
  return {
    train: trainPart.slice(0, trainPart.length - nVal),
    validation: trainPart.slice(trainPart.length - nVal),
    heldOut: all.slice(nTrain),
  };
}

/**
 * WikiText-2 sentences (the nearest data here to the paper's SimCSE Wikipedia sentences): article
 * lines of the tokenized file, headings dropped, split at " . ", at least `minWords` words.
 */
export function wikitextSentences(split: "valid" | "test" = "valid", minWords = 8): string[] {
  const text = readFileSync(`${dataDir()}/corpus/wikitext2_${split}.tokens.txt`, "utf8");
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const l = line.trim();
    if (!l || l.startsWith("=")) continue;
    for (const s of l.split(" . ")) {
      const sent = s.trim().replace(/ @(.)@ /g, "$1").replace(/ ([,;:'])/g, "$1");
      if (sent.split(/\s+/).length >= minWords) out.push(sent.endsWith(".") ? sent : sent + ".");
    }
  }
  return out;
}

/**
 * Texts from a user file: JSONL with a `text` field, or plain text (one paragraph per blank-line
 * block, or one per line with `perLine`). Bad lines are errors naming the file and line.
 */
export function readTexts(path: string, opts: { perLine?: boolean } = {}): string[] {
  const raw = readBytes(path, (m) => new CorpusError(m));
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    const bad = firstBadUtf8Line(raw);
    throw new CorpusError(`${path}: line ${bad}: not valid UTF-8`);
  }
  if (path.endsWith(".jsonl")) {
    const out: string[] = [];
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch {
        throw new CorpusError(`${path}: line ${i + 1}: not JSON`);
      }
      const t = (obj as Record<string, unknown>)?.text;
      if (typeof t !== "string") {
        throw new CorpusError(`${path}: line ${i + 1}: no string field 'text'`);
      }
      if (!t.trim()) throw new CorpusError(`${path}: line ${i + 1}: empty text`);
      out.push(t);
    });
    return out;
  }
  return opts.perLine ? text.split("\n").filter((l) => l.trim()) : paragraphs(text);
}

/** 1-based line of the first invalid UTF-8 sequence. */
export function firstBadUtf8Line(bytes: Uint8Array): number {
  const dec = new TextDecoder("utf-8", { fatal: true });
  let line = 1, start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i === bytes.length || bytes[i] === 10) {
      try {
        dec.decode(bytes.subarray(start, i));
      } catch {
        return line;
      }
      line++;
      start = i + 1;
    }
  }
  return line;
}
