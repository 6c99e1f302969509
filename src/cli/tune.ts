/**
 * `deno task tune [--budget-s N] [--space small|full] [--config FILE] [key=value ...]
 *   [--tokens N] [--out FILE]`: searches kernel parameters for this adapter on the shapes of the
 * config's model (src/tune/tune.ts), every candidate checked against a host reference before it is
 * timed, and saves the best as a profile keyed by adapter, driver, runtime and gemkit version in
 * gemkit's cache folder, where later runs on the same key load it (`--out` writes elsewhere; use
 * such a file with `--tuning FILE`). The search starts from the built-in tuning.
 */

import { args, setEnv } from "../platform/platform.ts";
import { initGpu } from "../gpu/device.ts";
import {
  PROFILE_FORMAT,
  profilePath,
  slowCompiler,
  tuningHash,
  writeProfile,
} from "../gpu/tuning.ts";
import { locateModel } from "../io/model.ts";
import { buildConfig, readConfigFile } from "../recipe/config.ts";
import { knobs, tune } from "../tune/tune.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";

const USAGE =
  "usage: deno task tune [--budget-s N] [--space small|full] [--config FILE] [key=value ...] " +
  "[--tokens N] [--out FILE]";
const EXAMPLE = "deno task tune --budget-s 30 --tokens 256 --out /tmp/gemkit-tuning.json";

await runMain(async () => {
  const { flags, overrides } = parseArgs(
    args(),
    {
      "budget-s": { type: "number", help: "seconds the search may take", default: 300 },
      space: { type: "string", help: "small | full search space", default: "small" },
      config: { type: "string", help: "training config whose model and sizes are tuned for" },
      tokens: { type: "number", help: "tokens per workload (default batchSize x maxLen)" },
      out: {
        type: "string",
        help: "profile file (default: the cache folder's, loaded by later runs)",
      },
    },
    USAGE,
    EXAMPLE,
  );
  const space = flags.space as string;
  if (space !== "small" && space !== "full") {
    throw new UsageError(`--space must be small or full, got '${space}'`);
  }
  const budget = flags["budget-s"] as number;
  if (!(budget > 0)) throw new UsageError("--budget-s must be > 0");
  // The search starts from the built-in tuning, never from an earlier profile.
  setEnv("GEMKIT_TUNING", "builtin");
  const file = flags.config ? await readConfigFile(flags.config as string) : null;
  const config = buildConfig(file, overrides, (flags.config as string) ?? "config");
  const { path, format } = await locateModel(config.model);
  const m = await format.readConfig(path);
  const tokens = (flags.tokens as number | undefined) ??
    config.batchSize * Math.min(config.maxLen, m.maxSeqLen);
  if (!(Number.isInteger(tokens) && tokens > 0)) {
    throw new UsageError("--tokens must be a positive integer");
  }
  const g = await initGpu();
  const seq = Math.min(config.maxLen, m.maxSeqLen, tokens);
  const shapes = {
    tokens,
    dim: m.dim,
    hiddenDim: m.hiddenDim,
    vocab: m.vocabSize,
    heads: m.nHeads,
    kvHeads: m.nKvHeads,
    seq,
  };
  console.error(
    `gemkit tune: ${config.model} (T ${tokens}, d ${m.dim}, ff ${m.hiddenDim}, v ${m.vocabSize}, ` +
      `${m.nHeads}/${m.nKvHeads} heads over ${seq}-token sequences), ` +
      `${space} space, budget ${budget} s`,
  );
  const r = await tune(g, shapes, {
    knobs: knobs(space, slowCompiler(g.mesa) ? g.tuning.matmulTileArea : Infinity),
    budgetS: budget,
    log: (l) => console.error(`gemkit tune: ${l}`),
  });
  const total = (ms: Record<string, number>) => Object.values(ms).reduce((a, b) => a + b, 0);
  const gain = total(r.startMs) / total(r.bestMs);
  const out = (flags.out as string | undefined) ?? profilePath(g.profileKey);
  writeProfile(out, {
    format: PROFILE_FORMAT,
    key: g.profileKey,
    tuning: r.tuning,
    search: {
      date: new Date().toISOString(),
      model: config.model,
      shapes,
      space,
      budgetS: budget,
      outOfBudget: r.outOfBudget,
      builtInMs: r.startMs,
      tunedMs: r.bestMs,
      gain,
      reverted: r.reverted,
      trials: r.trials,
    },
  });
  for (const w of Object.keys(r.startMs)) {
    console.error(
      `gemkit tune: ${w}: ${r.startMs[w as keyof typeof r.startMs].toFixed(2)} ms built-in, ` +
        `${r.bestMs[w as keyof typeof r.bestMs].toFixed(2)} ms tuned`,
    );
  }
  console.error(
    `gemkit tune: ${r.trials.length} candidates (${r.trials.filter((t) => !t.ok).length} ` +
      `dropped)${r.outOfBudget ? ", stopped by the budget" : ""}${
        r.reverted.length ? `; no gain held for ${r.reverted.join(", ")}: kept built-in` : ""
      }; workloads ${gain.toFixed(2)}x ` +
      `the built-in tuning; profile ${tuningHash(r.tuning)} written to ${out}`,
  );
  console.log(out);
});
