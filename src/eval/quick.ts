/**
 * The quick evaluation `deno task train` reports: held-out perplexity, in-domain retrieval on
 * held-out TinyStories paragraphs (first half -> second half), and STS-B test. The full
 * MTEB-style harness builds on the same pieces.
 */

import { readFileSync } from "node:fs";
import { rawSample } from "../gem/sample.ts";
import { nextTokenNll } from "../gem/score.ts";
import { dataDir } from "../io/paths.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";
import { dot, mean, ndcgAtK, recallAtK, spearman, topK } from "./metrics.ts";

/** Maps texts to L2-normalised vectors, in order. */
export type Embedder = (texts: readonly string[]) => Promise<Float32Array[]>;

/** Perplexity and its parts. */
export interface Perplexity {
  /** exp(mean NLL per token). */
  perplexity: number;
  /** Mean negative log-likelihood per token, nats. */
  nll: number;
  /** Tokens scored. */
  tokens: number;
  /** Texts longer than `maxLen` that were cut. */
  truncated: number;
}

/**
 * Token-weighted perplexity of texts, each scored alone: BOS prepended, at most `maxLen` tokens,
 * loss on every token after BOS, no EOS.
 */
export async function perplexity(
  model: Llama,
  tokenizer: Tokenizer,
  texts: readonly string[],
  opts: {
    maxLen?: number;
    batch?: number;
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<Perplexity> {
  const maxLen = Math.min(opts.maxLen ?? 256, model.config.maxSeqLen);
  const bs = opts.batch ?? 16;
  let nll = 0, tokens = 0, truncated = 0;
  const samples = texts.map((t) => {
    const ids = tokenizer.encode(t, { bos: true });
    if (ids.length > maxLen) truncated++;
    return rawSample(ids, maxLen);
  });
  for (let at = 0; at < samples.length; at += bs) {
    const r = await nextTokenNll(model, samples.slice(at, at + bs));
    nll += r.nll;
    tokens += r.tokens;
    opts.onProgress?.(Math.min(at + bs, samples.length), samples.length);
  }
  return { perplexity: Math.exp(nll / tokens), nll: nll / tokens, tokens, truncated };
}

/** Retrieval scores. */
export interface RetrievalScores {
  /** Mean recall@1 over queries. */
  recallAt1: number;
  /** Mean nDCG@10 over queries. */
  ndcgAt10: number;
  /** Queries evaluated. */
  queries: number;
}

/**
 * In-domain retrieval: for each paragraph of at least `minWords` words, the first half (by
 * words) is a query and the second half its only relevant document, among all second halves.
 */
export async function inDomainRetrieval(
  embed: Embedder,
  paras: readonly string[],
  minWords = 20,
): Promise<RetrievalScores> {
  const kept = paras.map((p) => p.split(/\s+/).filter(Boolean)).filter((w) => w.length >= minWords);
  const queries = kept.map((w) => w.slice(0, Math.floor(w.length / 2)).join(" "));
  const docs = kept.map((w) => w.slice(Math.floor(w.length / 2)).join(" "));
  const q = await embed(queries), d = await embed(docs);
  const r1: number[] = [], n10: number[] = [];
  for (let i = 0; i < q.length; i++) {
    const scores = d.map((v) => dot(q[i], v));
    const ranking = topK(scores, 10);
    const gains = new Map([[i, 1]]);
    r1.push(recallAtK(ranking, gains, 1));
    n10.push(ndcgAtK(ranking, gains, 10));
  }
  return { recallAt1: mean(r1), ndcgAt10: mean(n10), queries: q.length };
}

/** STS-B pairs of a split: sentence1, sentence2, gold score 0-5. */
export function stsbPairs(
  split: "train" | "dev" | "test" = "test",
): { a: string; b: string; score: number }[] {
  const path = `${dataDir()}/eval/stsb/sts-${split}.csv`;
  // Tab-separated, no quoting; some lines carry extra trailing columns.
  return readFileSync(path, "utf8").split("\n").filter((l) => l.trim()).map((line, i) => {
    const c = line.split("\t");
    const score = Number(c[4]);
    if (c.length < 7 || !Number.isFinite(score)) {
      throw new Error(`${path}: line ${i + 1}: not an STS-B row`);
    }
    return { a: c[5], b: c[6], score };
  });
}

/** Spearman correlation between cosine similarity and gold scores on STS-B. */
export async function stsb(
  embed: Embedder,
  split: "train" | "dev" | "test" = "test",
): Promise<number> {
  const pairs = stsbPairs(split);
  const a = await embed(pairs.map((p) => p.a)), b = await embed(pairs.map((p) => p.b));
  return spearman(pairs.map((_, i) => dot(a[i], b[i])), pairs.map((p) => p.score));
}
