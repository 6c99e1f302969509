/**
 * The GEM training recipe: from a training config to a model with special tokens, the samples and
 * pairs of each step, the step's loss, and the task the trainer runs. `deno task train`, the
 * sweep runner, the benchmark and the notebooks all build training from these pieces, so the
 * config's field names reach the objective unchanged.
 */

import { addSpecialTokens, type GemModel } from "../gem/gem.ts";
import { loadGem, saveGem } from "../gem/io.ts";
import { drawSamples, type ObjectiveOptions, stepLoss, type TextSource } from "../gem/objective.ts";
import { readTexts, tinyStories, wikitextSentences } from "../io/corpus.ts";
import { dataPath, type LoadedModel, loadModel, locateModel } from "../io/model.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import { Rng } from "../tensor/random.ts";
import { PairStream, readPairs, type StreamState, TextStream } from "../train/data.ts";
import { readTrainerState, type TrainTask } from "../train/trainer.ts";
import type { WeightDType } from "../nn/llama.ts";
import { buildConfig, ConfigError, FIELDS, maskTable, type TrainConfig } from "./config.ts";
import type { Trainable } from "../tensor/optim.ts";

/** The config's base model and tokenizer (before special tokens are added). */
export async function openBase(config: TrainConfig): Promise<LoadedModel> {
  // A model that carries its own tokenizer (an HF directory or hub id) uses it unless the config
  // names another one than the default (which is the llama2.c stories260K's).
  const located = await locateModel(config.model);
  if (config.tokenizer === FIELDS.tokenizer[0] && await located.format.tokenizerIn(located.path)) {
    return await loadModel(located);
  }
  return await loadModel(located, { tokenizer: config.tokenizer });
}

/**
 * Adds the config's special tokens to a base model (which is consumed), and with `lora.rank` > 0
 * its LoRA adapters (the base weights then frozen).
 */
export async function withSpecials(base: LoadedModel, config: TrainConfig): Promise<GemModel> {
  const gem = await addSpecialTokens(base.model, base.tokenizer, {
    k: config.gem.k,
    init: config.gem.init,
    initNoise: config.gem.initNoise,
    seed: config.seed,
    mask: config.gem.mask,
    table: maskTable(config),
    pooling: config.gem.pooling,
  });
  // f16 base matrices are frozen; the embedding stays f32, since its special rows train.
  if (weightDType(config) === "f16") gem.model.storeAs("f16", ["model.embed_tokens.weight"]);
  if (config.lora.rank > 0) gem.model.attachLora({ ...config.lora, seed: config.seed + 3 });
  gem.model.activations = config.dtype;
  return gem;
}

/**
 * How a run stores its weights. dtype f16 runs the forward on f16 activations; under LoRA the
 * frozen base matrices are then stored in f16 as well, while full training keeps f32 master
 * weights (and f32 gradients and optimizer state), rounded to f16 copies for each forward.
 */
export function weightDType(config: TrainConfig): WeightDType {
  return config.dtype === "f16" && config.lora.rank > 0 ? "f16" : "f32";
}

/** A run's checkpoint loaded to train on, stored and computing as `config` says. */
export async function loadRunGem(checkpoint: string, config: TrainConfig): Promise<GemModel> {
  const gem = await loadGem(checkpoint, { dtype: weightDType(config) });
  gem.model.activations = config.dtype;
  return gem;
}

/**
 * What a run trains, with weight decay on matrices: every parameter, or with adapters attached
 * the adapters, the special tokens' embedding rows (the base rows stay frozen) and lambda.
 */
export function trainables(
  gem: GemModel,
  config: TrainConfig,
): { params: Trainable[]; decay: boolean[] } {
  const lora = gem.model.loraOptions;
  const want = config.lora.rank > 0;
  if (!lora || !want) {
    if (lora || want) {
      throw new ConfigError(
        `field 'lora.rank' is ${config.lora.rank}, but the model ${
          lora ? "has" : "has no"
        } adapters`,
      );
    }
    const params = gem.parameters();
    return { params, decay: params.map((p) => p.rank >= 2) };
  }
  const same = lora.rank === config.lora.rank && lora.scale === config.lora.scale &&
    lora.targets.join() === config.lora.targets.join();
  if (!same) {
    throw new ConfigError(
      `field 'lora' is ${JSON.stringify(config.lora)}, but the model's adapters are ` +
        JSON.stringify({ rank: lora.rank, scale: lora.scale, targets: lora.targets }),
    );
  }
  const embed = gem.model.params.get("model.embed_tokens.weight")!;
  const rows: Trainable = { leaf: embed, from: gem.info.specialIds[0], to: embed.shape[0] };
  const adapters = gem.model.loraParameters();
  return {
    params: [rows, ...adapters, gem.logitScale],
    decay: [true, ...adapters.map(() => true), false],
  };
}

/** The objective's settings for `gem` under `config`. */
export function objectiveOf(config: TrainConfig, gem: GemModel): ObjectiveOptions {
  return {
    sample: {
      specialIds: gem.info.specialIds,
      insertion: config.gem.insertion,
      minPrefix: config.gem.minPrefix,
      minSuffix: config.gem.minSuffix,
      maxLen: Math.min(config.maxLen, gem.model.config.maxSeqLen),
    },
    rawProb: config.gem.rawProb,
    batchSize: config.batchSize,
    contrastive: config.contrastive,
    checkpointing: config.checkpointing,
  };
}

/** Training texts of the config's `data` field: tinystories, wikitext, or a file. */
export function trainingTexts(config: TrainConfig): string[] {
  if (config.data === "tinystories") return tinyStories().train;
  if (config.data === "wikitext") return wikitextSentences("valid");
  return readTexts(dataPath(config.data));
}

/**
 * Files a run of `config` reads: base model, tokenizer, training texts and pairs (data-directory
 * paths as `@data/...`, others as given), for records that hash them.
 */
export function configFiles(config: TrainConfig): string[] {
  const data = config.data === "tinystories"
    ? "@data/corpus/tinystories_valid_head.txt"
    : config.data === "wikitext"
    ? "@data/corpus/wikitext2_valid.tokens.txt"
    : config.data;
  const pairs = config.contrastive.pairs === "supervised" ? [config.contrastive.pairsFile] : [];
  return [config.model, config.tokenizer, data, ...pairs];
}

/** Data state saved in each checkpoint: stream positions and the sample RNG. */
interface DataState {
  stream: StreamState;
  pairs: StreamState | null;
  rng: number[];
}

/**
 * The trainer's task for GEM: each micro-batch draws its samples (texts from a seeded stream,
 * supervised pairs from the pairs file) and returns the step loss; checkpoints save the GEM model
 * and the data position. `texts` (token ids, BOS first) defaults to the config's data.
 */
export function gemTask(
  gem: GemModel,
  config: TrainConfig,
  texts: readonly (readonly number[])[] = encodeAll(gem.tokenizer, trainingTexts(config)),
): TrainTask {
  const objective = objectiveOf(config, gem);
  const pairTexts = config.contrastive.pairs === "supervised"
    ? readPairs(dataPath(config.contrastive.pairsFile)).map(([q, p]) =>
      [gem.tokenizer.encode(q, { bos: true }), gem.tokenizer.encode(p, { bos: true })] as [
        number[],
        number[],
      ]
    )
    : null;
  let stream = new TextStream(texts, config.seed);
  let pairs = pairTexts ? new PairStream(pairTexts, config.seed + 2) : null;
  let rng = new Rng(config.seed + 1);
  const source: TextSource = {
    next: () => stream.next(),
    nextPair: pairTexts ? () => pairs!.nextPair() : undefined,
  };
  // The file the model's tokenizer was read from (a checkpoint keeps a copy of it).
  const tokenizerPath = gem.tokenizer.file === "<memory>"
    ? dataPath(config.tokenizer)
    : gem.tokenizer.file;
  const { params, decay } = trainables(gem, config);
  return {
    params,
    decay,
    micro: (_step, _m, alpha, scale) => {
      const s = drawSamples(source, rng, objective, alpha);
      const r = stepLoss(gem, s, alpha, scale, objective);
      return {
        total: r.total,
        parts: { ntp: r.ntp, contrastive: r.contrastive },
        tokens: r.tokens,
      };
    },
    saveModel: (dir) => saveGem(dir, gem, tokenizerPath, { base: config.model, config }),
    dataState: (): DataState => ({
      stream: stream.state(),
      pairs: pairs?.state() ?? null,
      rng: [...rng.state()],
    }),
    restoreData: (st) => {
      const s = st as DataState;
      stream = new TextStream(texts, config.seed, s.stream);
      if (pairTexts && s.pairs) pairs = new PairStream(pairTexts, config.seed + 2, s.pairs);
      rng = new Rng(Uint32Array.from(s.rng));
    },
  };
}

/** Token ids (BOS first) of texts. */
export function encodeAll(tokenizer: Tokenizer, texts: readonly string[]): number[][] {
  return texts.map((t) => tokenizer.encode(t, { bos: true }));
}

/** A checkpoint's saved config, rebuilt (and validated) exactly as the run used it. */
export async function checkpointConfig(ckpt: string): Promise<TrainConfig> {
  const state = await readTrainerState<TrainConfig>(ckpt);
  return buildConfig(
    state.config as unknown as Record<string, unknown>,
    [],
    `${ckpt}/trainer/state.json`,
  );
}

/** What {@link prepareRun} gives: the model, its task, and the step it starts from. */
export interface PreparedRun {
  /** The GEM model being trained. */
  gem: GemModel;
  /** The trainer's task. */
  task: TrainTask;
  /** Steps already done (0 for a fresh run). */
  start: number;
}

/**
 * A fresh run (base model + specials) or a resumed one (`resume` is a checkpoint directory; the
 * trainer then restores the optimizer and data position from it).
 */
export async function prepareRun(config: TrainConfig, resume?: string): Promise<PreparedRun> {
  const gem = resume
    ? await loadRunGem(resume, config)
    : await withSpecials(await openBase(config), config);
  const start = resume ? (await readTrainerState(resume)).step : 0;
  return { gem, task: gemTask(gem, config), start };
}
