/**
 * The evaluation tasks, one entry each: its name, kind, the data files it reads (hashed into
 * results), its headline metric, and how to run it. A new task is one entry here plus its loader.
 * Kinds: `embedding` tasks run once per pooling through an {@link Embedder}; `language` tasks
 * once per model; `gem` tasks once per GEM model (they need its special tokens and mask).
 */

import type { GemModel } from "../gem/gem.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";
import { bottleneckProbe } from "./probe.ts";
import {
  classificationTask,
  clusteringTask,
  cranfieldTask,
  type Embedder,
  inDomainTask,
  mmluTask,
  stsTask,
  type TaskResult,
  tinyStoriesPerplexityTask,
  wikitextPerplexityTask,
} from "./tasks.ts";

/** What a task may use; embedding tasks get `embedder`, gem tasks `gem`. */
export interface EvalContext {
  /** The decoder. */
  model: Llama;
  /** Its tokenizer. */
  tokenizer: Tokenizer;
  /** The GEM model, when the checkpoint is one. */
  gem?: GemModel;
  /** The pooling under test (embedding tasks). */
  embedder?: Embedder;
  /** Seed of randomised metrics (k-means restarts). */
  seed: number;
  /** MMLU questions per subject at most. */
  mmluLimit?: number;
  /** Progress of long tasks. */
  onProgress?: (done: number, total: number) => void;
}

/** One evaluation task. */
export interface EvalTask {
  /** Name on the command line and in results. */
  name: string;
  /** When it runs: per pooling, per model, or per GEM model. */
  kind: "embedding" | "language" | "gem";
  /** Data files or folders it reads, relative to the data directory. */
  files: string[];
  /** The metric tables and charts show. */
  headline: string;
  /** Runs the task. */
  run(ctx: EvalContext): Promise<TaskResult>;
}

function embedder(ctx: EvalContext): Embedder {
  if (!ctx.embedder) throw new Error("an embedding task needs an embedder");
  return ctx.embedder;
}

const TINYSTORIES = "corpus/tinystories_valid_head.txt";

/** An embedding task: it runs once per pooling on the context's embedder. */
function embedding(
  name: string,
  files: string[],
  headline: string,
  run: (e: Embedder, c: EvalContext) => Promise<TaskResult>,
): EvalTask {
  return { name, kind: "embedding", files, headline, run: (c) => run(embedder(c), c) };
}

/** Every task `deno task eval` and the sweep runner know, embedding tasks first. */
export const TASKS: readonly EvalTask[] = [
  embedding("stsb", ["eval/stsb/sts-test.csv"], "spearman", (e) => stsTask("stsb", e)),
  embedding("sick", ["eval/sick"], "spearman", (e) => stsTask("sick", e)),
  embedding("banking77", ["eval/banking77"], "accuracy", (e) => classificationTask("banking77", e)),
  embedding("trec", ["eval/trec_qc"], "accuracy", (e) => classificationTask("trec", e)),
  embedding("trec-fine", ["eval/trec_qc"], "accuracy", (e) => classificationTask("trec-fine", e)),
  embedding(
    "banking77-clustering",
    ["eval/banking77"],
    "vMeasure",
    (e, c) => clusteringTask("banking77", e, c.seed),
  ),
  embedding(
    "trec-clustering",
    ["eval/trec_qc"],
    "vMeasure",
    (e, c) => clusteringTask("trec", e, c.seed),
  ),
  embedding("cranfield", ["eval/cranfield"], "ndcgAt10", (e) => cranfieldTask(e)),
  embedding("indomain", [TINYSTORIES], "ndcgAt10", (e) => inDomainTask(e)),
  {
    name: "ppl-tinystories",
    kind: "language",
    files: [TINYSTORIES],
    headline: "perplexity",
    run: (c) => tinyStoriesPerplexityTask(c.model, c.tokenizer, c.onProgress),
  },
  {
    name: "ppl-wikitext",
    kind: "language",
    files: ["corpus/wikitext2_test.tokens.txt"],
    headline: "perplexity",
    run: (c) => wikitextPerplexityTask(c.model, c.tokenizer, 256, 128, c.onProgress),
  },
  {
    name: "mmlu",
    kind: "language",
    files: ["eval/mmlu"],
    headline: "accuracy",
    run: (c) =>
      mmluTask(c.model, c.tokenizer, { limitPerSubject: c.mmluLimit, onProgress: c.onProgress }),
  },
  {
    name: "probe",
    kind: "gem",
    files: [TINYSTORIES],
    headline: "gapFirst8",
    run: async (c) => {
      if (!c.gem) throw new Error("the bottleneck probe needs a GEM model");
      const t0 = performance.now();
      const r = await bottleneckProbe(c.gem);
      return {
        task: "probe",
        pooling: "-",
        metrics: {
          ownFirst8: r.own.first8,
          otherFirst8: r.other.first8,
          noneFirst8: r.none.first8,
          ownAll: r.own.all,
          otherAll: r.other.all,
          noneAll: r.none.all,
          gapFirst8: r.other.first8 - r.own.first8,
          gapAll: r.other.all - r.own.all,
        },
        n: r.stories,
        notes: [],
        seconds: (performance.now() - t0) / 1000,
      };
    },
  },
];

/** Task names, in registry order. */
export const TASK_NAMES: string[] = TASKS.map((t) => t.name);

/** The task called `name`; an unknown name is an error listing the known ones. */
export function evalTask(name: string): EvalTask {
  const t = TASKS.find((x) => x.name === name);
  if (!t) throw new Error(`unknown task '${name}'; known: ${TASK_NAMES.join(", ")}`);
  return t;
}
