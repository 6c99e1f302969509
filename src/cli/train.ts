/**
 * `deno task train [--config FILE] [--out DIR] [--steps N] [--seed S] [--resume DIR]
 *   [--stop-at K] [--no-report] [key=value ...]`
 *
 * With no arguments: GEM fine-tuning of stories260K on the TinyStories train split with the
 * default recipe (src/train/config.ts), then a report of perplexity and embedding quality before
 * and after on held-out data.
 */

import { addSpecialTokens, type GemModel } from "../gem/gem.ts";
import { loadGem, saveGem } from "../gem/io.ts";
import { drawSamples, type ObjectiveOptions, stepLoss } from "../gem/objective.ts";
import { initGpu } from "../gpu/device.ts";
import { readTexts, tinyStories, wikitextSentences } from "../io/corpus.ts";
import { loadModel } from "../io/model.ts";
import { dataDir } from "../io/paths.ts";
import { Rng } from "../tensor/random.ts";
import { buildConfig, ConfigError, type TrainConfig } from "../train/config.ts";
import { PairStream, readPairs, type StreamState, TextStream } from "../train/data.ts";
import { type StepRecord, train, type TrainTask } from "../train/trainer.ts";
import { readTrainerState, resolveCheckpoint } from "../train/trainer.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";
import { inDomainRetrieval, perplexity } from "../eval/quick.ts";
import { baselineReport, gemReport, printReport } from "./report.ts";

const USAGE = "usage: deno task train [--config FILE] [--out DIR] [--steps N] [--seed S] " +
  "[--resume DIR] [--stop-at K] [--no-report] [key=value ...]";

/** `@data/...` in config paths means the shared data directory. */
function dataPath(p: string): string {
  return p.startsWith("@data/") ? `${dataDir()}/${p.slice(6)}` : p;
}

/** Training texts of the config's `data` field. */
function trainingTexts(data: string): string[] {
  if (data === "tinystories") return tinyStories().train;
  if (data === "wikitext") return wikitextSentences("valid");
  return readTexts(data);
}

function progress(total: number, start: number) {
  const tty = Deno.stderr.isTerminal();
  const t0 = performance.now();
  let lastLine = 0;
  return (r: StepRecord) => {
    const done = r.step - start, left = total - r.step;
    const eta = done > 0 ? ((performance.now() - t0) / done) * left / 1000 : 0;
    const parts = Object.entries(r).filter(([k]) => ["ntp", "contrastive"].includes(k))
      .map(([k, v]) => `${k} ${v.toFixed(3)}`).join(" ");
    const msg =
      `step ${r.step}/${total} loss ${r.loss.toFixed(4)} ${parts} lr ${r.lr.toExponential(2)} ` +
      `|g| ${r.gradNorm.toFixed(2)} ${Math.round(r.tokensPerSec)} tok/s ETA ${Math.round(eta)}s`;
    if (tty) {
      const w = 24, fill = Math.round((r.step / total) * w);
      Deno.stderr.writeSync(
        new TextEncoder().encode(`\r[${"#".repeat(fill)}${".".repeat(w - fill)}] ${msg}\x1b[K`),
      );
      if (r.step === total) console.error();
    } else if (
      r.step === start + 1 || r.step === total ||
      r.step - lastLine >= Math.max(1, Math.round(total / 20))
    ) {
      lastLine = r.step;
      console.error(`gemkit: ${msg}`);
    }
  };
}

await runMain(async () => {
  const { flags, overrides } = parseArgs(Deno.args, {
    config: { type: "string", help: "JSON config file (fields: src/train/config.ts, README)" },
    out: {
      type: "string",
      help: "run directory (default runs/gem; with --resume, the resumed run's)",
    },
    steps: { type: "number", help: "optimizer steps of the whole run (fixes the schedule)" },
    seed: { type: "number", help: "seed" },
    resume: { type: "string", help: "continue a run: its directory or a checkpoint directory" },
    "stop-at": { type: "number", help: "stop after this step, with a checkpoint" },
    report: { type: "boolean", help: "evaluate before/after and print the report", default: true },
    "no-report": { type: "boolean", help: "skip the report", default: false },
  }, USAGE);
  let out = (flags.out as string | undefined) ?? "runs/gem";
  let config: TrainConfig;
  let ckpt: string | undefined;
  if (flags.resume) {
    ckpt = await resolveCheckpoint(flags.resume as string);
    if (flags.out === undefined) out = ckpt.replace(/\/[^/]+\/?$/, "") || ".";
    const state = await readTrainerState(ckpt);
    if (overrides.length || flags.config || flags.steps !== undefined || flags.seed !== undefined) {
      throw new UsageError(
        "--resume continues the saved run exactly: drop --config, --steps, --seed and overrides",
      );
    }
    config = buildConfig(
      state.config as unknown as Record<string, unknown>,
      [],
      `${ckpt}/trainer/state.json`,
    );
  } else {
    let file: Record<string, unknown> | null = null;
    if (flags.config) {
      try {
        file = JSON.parse(await Deno.readTextFile(flags.config as string));
      } catch (e) {
        throw new ConfigError(
          `${flags.config}: cannot read as JSON (${e instanceof Error ? e.message : e})`,
        );
      }
    }
    const extra: [string, string][] = [];
    if (flags.steps !== undefined) extra.push(["steps", String(flags.steps)]);
    if (flags.seed !== undefined) extra.push(["seed", String(flags.seed)]);
    config = buildConfig(file, [...overrides, ...extra], (flags.config as string) ?? "config");
  }
  await initGpu();
  const tokenizerPath = dataPath(config.tokenizer);
  let gem: GemModel;
  let baseline = null;
  const wantReport = (flags.report as boolean) && !(flags["no-report"] as boolean);
  if (ckpt) {
    gem = await loadGem(ckpt);
  } else {
    const loaded = await loadModel(dataPath(config.model), { tokenizer: tokenizerPath });
    if (wantReport) {
      baseline = await baselineReport(loaded.model, loaded.tokenizer, dataPath(config.model));
    }
    gem = await addSpecialTokens(loaded.model, loaded.tokenizer, {
      k: config.gem.k,
      init: { kind: config.gem.init, noise: config.gem.initNoise, seed: config.seed },
      mask: config.gem.mask,
      pooling: config.gem.pooling,
    });
  }
  const texts = trainingTexts(
    config.data === "tinystories" || config.data === "wikitext"
      ? config.data
      : dataPath(config.data),
  )
    .map((t) => gem.tokenizer.encode(t, { bos: true }));
  const stream = new TextStream(texts, config.seed);
  let rng = new Rng(config.seed + 1);
  const obj: ObjectiveOptions = {
    sample: {
      specialIds: gem.info.specialIds,
      insertion: config.gem.insertion,
      minPrefix: config.gem.minPrefix,
      minSuffix: config.gem.minSuffix,
      maxLen: Math.min(config.maxLen, gem.model.config.maxSeqLen),
    },
    rawProb: config.gem.rawProb,
    batchSize: config.batchSize,
    pairs: config.contrastive.pairs,
    pairBatch: config.contrastive.batchSize,
    dropout: config.contrastive.dropout,
    cropFrac: config.contrastive.cropFrac,
    symmetric: config.contrastive.symmetric,
  };
  let streamRef = stream;
  const pairTexts = config.contrastive.pairs === "supervised"
    ? readPairs(dataPath(config.contrastive.pairsFile)).map(([q, p]) =>
      [gem.tokenizer.encode(q, { bos: true }), gem.tokenizer.encode(p, { bos: true })] as [
        number[],
        number[],
      ]
    )
    : null;
  let pairsRef = pairTexts ? new PairStream(pairTexts, config.seed + 2) : null;
  // The objective draws texts from the stream and, for supervised pairs, pairs from the file.
  const source = () => ({
    next: () => streamRef.next(),
    nextPair: pairsRef ? () => pairsRef!.nextPair() : undefined,
  });
  const task: TrainTask = {
    params: gem.parameters(),
    decay: gem.parameters().map((p) => p.rank >= 2),
    micro: (_step, _m, alpha, scale) => {
      const s = drawSamples(source(), rng, obj, alpha);
      const r = stepLoss(gem, s, alpha, scale, obj.symmetric);
      return {
        total: r.total,
        parts: { ntp: r.ntp, contrastive: r.contrastive },
        tokens: r.tokens,
      };
    },
    saveModel: (dir) => saveGem(dir, gem, tokenizerPath),
    dataState: () => ({
      stream: streamRef.state(),
      pairs: pairsRef?.state() ?? null,
      rng: [...rng.state()],
    }),
    restoreData: (st) => {
      const s = st as { stream: StreamState; pairs: StreamState | null; rng: number[] };
      streamRef = new TextStream(texts, config.seed, s.stream);
      if (pairTexts && s.pairs) pairsRef = new PairStream(pairTexts, config.seed + 2, s.pairs);
      rng = new Rng(Uint32Array.from(s.rng));
    },
  };
  const start = ckpt ? (await readTrainerState(ckpt)).step : 0;
  console.error(
    `gemkit: training ${config.steps} steps (from ${start}), k=${config.gem.k}, mask ${
      JSON.stringify(config.gem.mask)
    }, ` +
      `${texts.length} texts, run directory ${out}`,
  );
  // Validation slice of the train part: for choosing recipes, never the held-out paragraphs.
  const evaluate = async () => {
    const val = tinyStories().validation;
    const r = await inDomainRetrieval(
      async (t) => (await gem.embed(t, { batch: 64 })).vectors,
      val,
    );
    const p = await perplexity(gem.model, gem.tokenizer, val);
    return { valRecallAt1: r.recallAt1, valNdcgAt10: r.ndcgAt10, valPerplexity: p.perplexity };
  };
  const result = await train(task, config, {
    out,
    resume: ckpt,
    evaluate,
    stopAt: flags["stop-at"] as number | undefined,
    onStep: progress(Math.min(config.steps, (flags["stop-at"] as number) ?? config.steps), start),
  });
  console.error(
    `gemkit: ${result.stopped} at step ${result.steps}; checkpoint ${result.checkpoint}`,
  );
  if (wantReport && result.stopped === "done") {
    const after = await gemReport(gem);
    printReport(baseline, after, config, result.checkpoint);
  }
  gem.dispose();
  if (result.stopped === "signal") Deno.exit(130);
});
