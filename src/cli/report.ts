/**
 * The short report `deno task train` prints: held-out perplexity, and embedding quality on the
 * in-domain retrieval task and STS-B test, for the base model (mean and last-token pooling) and
 * the trained GEM model (GEM pooling). Baseline numbers are cached per base checkpoint (sha256).
 */

import { progressPrinter } from "../platform/progress.ts";
import { mkdir, readFile, stat } from "node:fs/promises";
import { embedIds, type GemModel } from "../gem/gem.ts";
import { writeAtomic } from "../io/atomic.ts";
import { sha256Path } from "../io/hash.ts";
import { tinyStories } from "../io/corpus.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import type { Llama } from "../nn/llama.ts";
import { type Embedder, inDomainRetrieval, perplexity, stsb } from "../eval/quick.ts";
import type { TrainConfig } from "../recipe/config.ts";

/** Embedding scores of one pooling. */
export interface EmbedScores {
  recallAt1: number;
  ndcgAt10: number;
  stsb: number;
}

/** Perplexity plus scores per pooling. */
export interface ModelReport {
  perplexity: number;
  poolings: Record<string, EmbedScores>;
  seconds: number;
}

async function scores(embed: Embedder): Promise<EmbedScores> {
  const r = await inDomainRetrieval(embed, tinyStories().heldOut);
  return { recallAt1: r.recallAt1, ndcgAt10: r.ndcgAt10, stsb: await stsb(embed) };
}

/** The base model's report (mean and last pooling), from the cache when the file is known. */
export async function baselineReport(
  model: Llama,
  tokenizer: Tokenizer,
  modelPath: string,
): Promise<ModelReport> {
  let cacheFile: string | null = null;
  try {
    if ((await stat(modelPath)).isFile()) {
      cacheFile = `runs/.cache/baseline-${(await sha256Path(modelPath)).slice(0, 16)}.json`;
      return JSON.parse(await readFile(cacheFile, "utf8"));
    }
  } catch {
    // not cached yet
  }
  console.error("gemkit: evaluating the base model (perplexity, mean and last-token pooling)...");
  const t0 = performance.now();
  const heldOut = tinyStories().heldOut;
  const ppl = await perplexity(model, tokenizer, heldOut, {
    onProgress: progressPrinter("gemkit report: base model perplexity", { unit: "texts" }),
  });
  const poolings: Record<string, EmbedScores> = {};
  for (const pooling of ["mean", "last"] as const) {
    console.error(`gemkit report: base model, ${pooling} pooling: in-domain retrieval, STS-B`);
    poolings[pooling] = await scores(async (texts) =>
      (await embedIds(model, texts.map((t) => tokenizer.encode(t, { bos: true })), { pooling }))
        .vectors
    );
  }
  const rep = { perplexity: ppl.perplexity, poolings, seconds: (performance.now() - t0) / 1000 };
  if (cacheFile) {
    await mkdir("runs/.cache", { recursive: true });
    await writeAtomic(cacheFile, JSON.stringify(rep, null, 1));
  }
  return rep;
}

/** The trained model's report (GEM pooling). */
export async function gemReport(gem: GemModel): Promise<ModelReport> {
  console.error("gemkit: evaluating the trained model (perplexity, GEM pooling)...");
  const t0 = performance.now();
  const ppl = await perplexity(gem.model, gem.tokenizer, tinyStories().heldOut, {
    onProgress: progressPrinter("gemkit report: trained model perplexity", { unit: "texts" }),
  });
  console.error("gemkit report: trained model, GEM pooling: in-domain retrieval, STS-B");
  const poolings = {
    gem: await scores(async (texts) => (await gem.embed(texts)).vectors),
  };
  return { perplexity: ppl.perplexity, poolings, seconds: (performance.now() - t0) / 1000 };
}

/** Prints the before/after table to stdout and saves report.json beside the checkpoint. */
export async function printReport(
  before: ModelReport | null,
  after: ModelReport,
  config: TrainConfig,
  ckpt: string,
): Promise<void> {
  const f = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(3));
  const best = before
    ? Object.entries(before.poolings).sort((a, b) => b[1].ndcgAt10 - a[1].ndcgAt10)[0]
    : undefined;
  const lines = [
    "",
    "## gemkit train report",
    `run: ${config.steps} steps, k=${config.gem.k}, mask ${
      JSON.stringify(config.gem.mask)
    }, checkpoint ${ckpt}`,
    "",
    "| model | pooling | held-out ppl | in-domain R@1 | in-domain nDCG@10 | STS-B test Spearman |",
    "|---|---|---|---|---|---|",
  ];
  if (before) {
    for (const [p, s] of Object.entries(before.poolings)) {
      lines.push(
        `| base${best && best[0] === p ? " (best)" : ""} | ${p} | ${f(before.perplexity)} | ${
          f(s.recallAt1)
        } | ${f(s.ndcgAt10)} | ${f(s.stsb)} |`,
      );
    }
  }
  for (const [p, s] of Object.entries(after.poolings)) {
    lines.push(
      `| GEM | ${p} | ${f(after.perplexity)} | ${f(s.recallAt1)} | ${f(s.ndcgAt10)} | ${
        f(s.stsb)
      } |`,
    );
  }
  if (before && best) {
    const g = after.poolings.gem;
    lines.push(
      "",
      `in-domain nDCG@10: GEM ${f(g.ndcgAt10)} vs best baseline (${best[0]}) ${
        f(best[1].ndcgAt10)
      } ` +
        `(${g.ndcgAt10 > best[1].ndcgAt10 ? "GEM better" : "GEM NOT better"}); ` +
        `perplexity ${f(after.perplexity)} vs base ${f(before.perplexity)} ` +
        `(${after.perplexity <= before.perplexity ? "no worse" : "WORSE"})`,
    );
  }
  console.log(lines.join("\n"));
  await writeAtomic(`${ckpt}/report.json`, JSON.stringify({ before, after }, null, 1) + "\n");
  // The model card gains the report (held-out data only; report.json has every number).
  const card = `${ckpt}/README.md`;
  const text = await readFile(card, "utf8").catch(() => null);
  if (text !== null) {
    const section = ["## Evaluation (gemkit's train report)", ...lines.slice(3)].join("\n");
    await writeAtomic(card, `${text.trimEnd()}\n\n${section}\n`);
  }
}
