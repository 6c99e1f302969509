/**
 * The evaluation tasks: MTEB-style embedding tasks (STS, classification, clustering, retrieval)
 * run with any pooling, and language-ability tasks (perplexity, MMLU) on the same weights.
 * Every task returns named metrics; nothing here prints.
 */

import { readFileSync } from "node:fs";
import type { EmbedOptions, GemModel, Pooling } from "../gem/gem.ts";
import { embedIds } from "../gem/gem.ts";
import { disposePacked, pack } from "../gem/batch.ts";
import { rawSample } from "../gem/sample.ts";
import { nextTokenNll, rawForward } from "../gem/score.ts";
import { tinyStories } from "../io/corpus.ts";
import { dataDir } from "../io/paths.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";
import * as T from "../tensor/ops.ts";
import { noGrad, scope, tensor } from "../tensor/tensor.ts";
import { accuracy, fitLogReg, indexLabels, macroF1, predict } from "./classify.ts";
import { kmeans, vMeasure } from "./cluster.ts";
import { banking77, cranfield, mmlu, type MmluItem, sickPairs, trec } from "./datasets.ts";
import { dot, mean, mrrAtK, ndcgAtK, recallAtK, spearman, topK } from "./metrics.ts";
import { inDomainRetrieval, perplexity, stsbPairs } from "./quick.ts";

/** What a task reports. */
export interface TaskResult {
  /** Task name. */
  task: string;
  /** Pooling for embedding tasks; "-" for language tasks. */
  pooling: string;
  /** Metric name -> value. */
  metrics: Record<string, number>;
  /** Texts embedded, questions asked, or tokens scored. */
  n: number;
  /** Things a reader must know (truncation, fewer shots...). */
  notes: string[];
  /** Wall time. */
  seconds: number;
}

/** Embeds texts with a pooling; counts texts cut to fit the context. */
export interface Embedder {
  /** The pooling's name. */
  pooling: string;
  /** L2-normalised vectors of texts, in order. */
  embed(texts: readonly string[]): Promise<Float32Array[]>;
  /** Texts cut to fit the context so far. */
  truncated: number;
}

/** The prompt-based pooling's template (last token of the completed prompt). */
export const PROMPT_TEMPLATE = 'This sentence : "X" means in one word:"';

/**
 * An embedder for a pooling over a model (a GEM model for "gem"); `limits` caps each batch's texts
 * and tokens (default: {@link embedIds}'s token budget).
 */
export function makeEmbedder(
  model: Llama,
  tokenizer: Tokenizer,
  pooling: Pooling | "prompt",
  gem?: GemModel,
  onProgress?: (done: number, total: number) => void,
  limits: Pick<EmbedOptions, "batch" | "batchTokens"> = {},
): Embedder {
  const e: Embedder = {
    pooling,
    truncated: 0,
    embed: async (texts) => {
      const ids = texts.map((t) =>
        tokenizer.encode(pooling === "prompt" ? PROMPT_TEMPLATE.replace("X", t) : t, { bos: true })
      );
      const r = await embedIds(model, ids, {
        pooling: pooling === "prompt" ? "last" : pooling,
        ...limits,
        gem: gem?.info,
        table: gem?.table,
        onProgress: (d) => onProgress?.(d, texts.length),
      });
      e.truncated += r.truncated;
      return r.vectors;
    },
  };
  if (pooling === "gem" && !gem) throw new Error("gem pooling needs a GEM checkpoint (gem.json)");
  return e;
}

async function timed(
  task: string,
  pooling: string,
  run: () => Promise<Omit<TaskResult, "task" | "pooling" | "seconds">>,
): Promise<TaskResult> {
  const t0 = performance.now();
  const r = await run();
  return { task, pooling, ...r, seconds: (performance.now() - t0) / 1000 };
}

/** STS: Spearman between cosine similarity and gold scores (STS-B test or SICK-R test). */
export function stsTask(name: "stsb" | "sick", e: Embedder): Promise<TaskResult> {
  return timed(name, e.pooling, async () => {
    const before = e.truncated;
    const pairs = name === "stsb" ? stsbPairs("test") : sickPairs("test");
    const a = await e.embed(pairs.map((p) => p.a)), b = await e.embed(pairs.map((p) => p.b));
    const sims = pairs.map((_, i) => dot(a[i], b[i]));
    return {
      metrics: { spearman: spearman(sims, pairs.map((p) => p.score)) },
      n: 2 * pairs.length,
      notes: truncNote(e.truncated - before),
    };
  });
}

function truncNote(n: number): string[] {
  return n > 0 ? [`${n} texts longer than the context were cut from the end`] : [];
}

/** Classification: logistic regression on train embeddings; accuracy and macro-F1 on test. */
export function classificationTask(
  name: "banking77" | "trec" | "trec-fine",
  e: Embedder,
): Promise<TaskResult> {
  return timed(name, e.pooling, async () => {
    const before = e.truncated;
    const load = (split: "train" | "test") =>
      name === "banking77"
        ? banking77(split)
        : trec(split, name === "trec-fine" ? "fine" : "coarse");
    const train = load("train"), test = load("test");
    const xTrain = await e.embed(train.map((r) => r.text));
    const xTest = await e.embed(test.map((r) => r.text));
    const yTrain = indexLabels(train.map((r) => r.label));
    // Test labels unseen in training (TREC fine) count as errors.
    const known = new Set(yTrain.names);
    const model = fitLogReg(xTrain, yTrain.ids, { c: 1, numClasses: yTrain.names.length });
    const pred = predict(model, xTest).map((i) => yTrain.names[i]);
    const gold = test.map((r) => r.label);
    const unseen = gold.filter((g) => !known.has(g)).length;
    return {
      metrics: { accuracy: accuracy(gold, pred), macroF1: macroF1(gold, pred) },
      n: train.length + test.length,
      notes: [
        ...truncNote(e.truncated - before),
        ...(unseen ? [`${unseen} test items have labels never seen in training`] : []),
        ...(model.converged
          ? []
          : [`logistic regression stopped at ${model.iterations} iterations`]),
      ],
    };
  });
}

/** Clustering: k-means (k = number of labels, 10 seeded restarts) on test embeddings; V-measure. */
export function clusteringTask(
  name: "banking77" | "trec",
  e: Embedder,
  seed: number,
): Promise<TaskResult> {
  return timed(`${name}-clustering`, e.pooling, async () => {
    const before = e.truncated;
    const test = name === "banking77" ? banking77("test") : trec("test", "coarse");
    const x = await e.embed(test.map((r) => r.text));
    const k = new Set(test.map((r) => r.label)).size;
    const km = kmeans(x, k, { seed, restarts: 10 });
    const v = vMeasure(test.map((r) => r.label), km.labels);
    return {
      metrics: { vMeasure: v.vMeasure, homogeneity: v.homogeneity, completeness: v.completeness },
      n: test.length,
      notes: truncNote(e.truncated - before),
    };
  });
}

/** Cranfield retrieval: nDCG@10, MRR@10 and recall@100 (gain = 5 - grade). */
export function cranfieldTask(e: Embedder): Promise<TaskResult> {
  return timed("cranfield", e.pooling, async () => {
    const before = e.truncated;
    const c = cranfield();
    const docs = await e.embed(c.docs.map((d) => d.text));
    const queries = await e.embed(c.queries.map((q) => q.text));
    const n10: number[] = [], m10: number[] = [], r100: number[] = [];
    queries.forEach((q, qi) => {
      const ranking = topK(docs.map((d) => dot(q, d)), 100).map((i) => c.docs[i].id);
      const gains = c.qrels.get(qi) ?? new Map();
      n10.push(ndcgAtK(ranking, gains, 10));
      m10.push(mrrAtK(ranking, gains, 10));
      r100.push(recallAtK(ranking, gains, 100));
    });
    return {
      metrics: { ndcgAt10: mean(n10), mrrAt10: mean(m10), recallAt100: mean(r100) },
      n: docs.length + queries.length,
      notes: truncNote(e.truncated - before),
    };
  });
}

/** In-domain retrieval on held-out TinyStories paragraphs (first half -> second half). */
export function inDomainTask(e: Embedder): Promise<TaskResult> {
  return timed("indomain", e.pooling, async () => {
    const before = e.truncated;
    const r = await inDomainRetrieval((t) => e.embed(t), tinyStories().heldOut);
    return {
      metrics: { recallAt1: r.recallAt1, ndcgAt10: r.ndcgAt10 },
      n: 2 * r.queries,
      notes: truncNote(e.truncated - before),
    };
  });
}

/** Held-out TinyStories perplexity (each paragraph alone, BOS, <= 256 tokens) and bits per byte. */
export function tinyStoriesPerplexityTask(
  model: Llama,
  tokenizer: Tokenizer,
  onProgress?: (done: number, total: number) => void,
): Promise<TaskResult> {
  return timed("ppl-tinystories", "-", async () => {
    const texts = tinyStories().heldOut;
    const p = await perplexity(model, tokenizer, texts, { onProgress });
    const bytes = texts.reduce((s, t) => s + new TextEncoder().encode(t).length, 0);
    return {
      metrics: { perplexity: p.perplexity, bitsPerByte: (p.nll * p.tokens) / Math.LN2 / bytes },
      n: p.tokens,
      notes: p.truncated ? [`${p.truncated} paragraphs cut to 256 tokens`] : [],
    };
  });
}

/**
 * WikiText-2 test perplexity with a sliding window: windows of `ctx` tokens every `stride`
 * tokens; each token is scored once, with up to ctx - stride tokens of left context (the first
 * window scores all of its tokens). Also bits per byte of the raw text, comparable across
 * tokenizers.
 */
export function wikitextPerplexityTask(
  model: Llama,
  tokenizer: Tokenizer,
  ctx = 256,
  stride = 128,
  onProgress?: (done: number, total: number) => void,
): Promise<TaskResult> {
  return timed("ppl-wikitext", "-", async () => {
    const text = readFileSync(`${dataDir()}/corpus/wikitext2_test.tokens.txt`, "utf8");
    const ids = tokenizer.encode(text, { bos: true });
    const c = Math.min(ctx, model.config.maxSeqLen);
    // Window w covers [start, start + c); it scores the tokens no earlier window scored.
    const windows: { start: number; scoreFrom: number }[] = [];
    for (let start = 0, prevEnd = 0;; start += stride) {
      const end = Math.min(start + c, ids.length);
      windows.push({ start, scoreFrom: prevEnd - start });
      prevEnd = end;
      if (end === ids.length) break;
    }
    let nll = 0, tokens = 0;
    for (let w = 0; w < windows.length; w += 8) {
      const group = windows.slice(w, w + 8).map(({ start, scoreFrom }) => {
        const seg = ids.slice(start, start + c);
        const s = rawSample(seg, c);
        // Tokens already scored by the previous window carry no loss.
        s.labels = s.labels.map((l, i) => (i + 1 < Math.max(scoreFrom, 1) ? -1 : l));
        return s;
      });
      const r = await nextTokenNll(model, group);
      nll += r.nll;
      tokens += r.tokens;
      onProgress?.(Math.min(w + 8, windows.length), windows.length);
    }
    const bytes = new TextEncoder().encode(text).length;
    return {
      metrics: { perplexity: Math.exp(nll / tokens), bitsPerByte: nll / Math.LN2 / bytes },
      n: tokens,
      notes: [`sliding window ${c} tokens, stride ${stride}`],
    };
  });
}

const LETTERS = ["A", "B", "C", "D"];

function mmluBlock(item: MmluItem, withAnswer: boolean): string {
  const opts = item.choices.map((c, i) => `${LETTERS[i]}. ${c}`).join("\n");
  return `${item.question}\n${opts}\nAnswer:${withAnswer ? ` ${LETTERS[item.answer]}\n\n` : ""}`;
}

/**
 * MMLU, 5-shot from the dev split (as the Llama 3.1 model card's protocol): the answer is the
 * letter with the highest log-likelihood after "Answer:"; accuracy per subject and the macro
 * average. When 5 shots do not fit the context, the most that fit are used (reported).
 */
export function mmluTask(
  model: Llama,
  tokenizer: Tokenizer,
  opts: {
    shots?: number;
    limitPerSubject?: number;
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<TaskResult> {
  return timed("mmlu", "-", async () => {
    const dev = mmlu("dev"), test = mmlu("test");
    const maxShots = opts.shots ?? 5;
    const letterIds = LETTERS.map((l) => {
      const ids = tokenizer.encode(` ${l}`, { bos: false });
      // llama2.c-style encoders add a dummy-prefix space: " A" may come out as one or two ids.
      return ids[ids.length - 1];
    });
    const shotsUsed = new Array(maxShots + 1).fill(0);
    let skipped = 0;
    const perSubject: Record<string, number> = {};
    const all = [...test].flatMap(([subject, items]) =>
      items.slice(0, opts.limitPerSubject ?? items.length).map((item) => ({ subject, item }))
    );
    const correct = new Map<string, number[]>();
    const ctx = model.config.maxSeqLen;
    for (let at = 0; at < all.length; at += 16) {
      const group = all.slice(at, at + 16).flatMap(({ subject, item }) => {
        const head = `The following are multiple choice questions (with answers) about ${
          subject.replaceAll("_", " ")
        }.\n\n`;
        for (let s = maxShots; s >= 0; s--) {
          const prompt = head + (dev.get(subject) ?? []).slice(0, s).map((d) =>
            mmluBlock(d, true)
          ).join("") + mmluBlock(item, false);
          const ids = tokenizer.encode(prompt, { bos: true });
          if (ids.length <= ctx) {
            shotsUsed[s]++;
            return [{ subject, item, ids }];
          }
        }
        skipped++;
        return [];
      });
      if (!group.length) continue;
      const samples = group.map((g) => rawSample(g.ids, ctx));
      const batch = pack(samples, 0);
      const logits = noGrad(() =>
        scope(() => {
          const out = rawForward(model, batch, false);
          const last = group.map((g, i) => batch.offsets[i] + g.ids.length - 1);
          const h = T.embedding(
            T.reshape(out.hidden, [-1, out.hidden.shape[2]]),
            tensor(Int32Array.from(last), [last.length], "i32"),
          );
          return T.logSoftmax(T.matmul(h, model.classifier, { transB: true }));
        })
      );
      const lp = (await logits.toArray()) as Float32Array;
      const v = logits.shape[1];
      logits.dispose();
      disposePacked(batch);
      group.forEach((g, i) => {
        const scores = letterIds.map((id) => lp[i * v + id]);
        const choice = scores.indexOf(Math.max(...scores));
        const list = correct.get(g.subject) ?? [];
        list.push(choice === g.item.answer ? 1 : 0);
        correct.set(g.subject, list);
      });
      opts.onProgress?.(Math.min(at + 16, all.length), all.length);
    }
    for (const [s, list] of correct) perSubject[`acc.${s}`] = mean(list);
    const macro = mean([...correct.values()].map(mean));
    const notes: string[] = [];
    if (shotsUsed[maxShots] !== all.length - skipped) {
      notes.push(
        `shots used: ${
          shotsUsed.map((n, s) => `${s}-shot ${n}`).filter((x) => !x.endsWith(" 0")).join(", ")
        } (context ${ctx})`,
      );
    }
    if (skipped) {
      notes.push(`${skipped} questions do not fit the context even 0-shot and are skipped`);
    }
    return { metrics: { accuracy: macro, ...perSubject }, n: all.length - skipped, notes };
  });
}
