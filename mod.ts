/**
 * gemkit: a pure-TypeScript research kit for GEM (arXiv 2506.04344), which turns a decoder-only
 * LLM into one model that both generates text and embeds it. Everything runs on gemkit's own
 * WebGPU tensor engine (WGSL kernels + reverse-mode autograd).
 *
 * ```ts
 * import { backward, initGpu, ops, tensor } from "./mod.ts";
 * await initGpu();
 * const w = ops.parameter(tensor([1, 2, 3, 4], [2, 2]), "w");
 * const loss = ops.sumAll(ops.square(ops.matmul(w, w)));
 * backward(loss);
 * console.log(await w.grad!.toArray());
 * ```
 *
 * @module
 */

/**
 * Acquires the process's WebGPU device (once). Prefers Vulkan on Linux; throws a
 * {@link NoAdapterError} with instructions when no adapter exists.
 */
export { initGpu } from "./src/gpu/device.ts";
/** The device returned by {@link initGpu}; throws before initialisation. */
export { gpu } from "./src/gpu/device.ts";
/** The device wrapper: buffer pool, pipeline cache, command batching, readback. */
export type { Gpu, GpuOptions, KernelTime } from "./src/gpu/device.ts";
/** Pooled buffers and their pool. */
export type {
  BufferPool,
  BufferWindow,
  GpuBuffer,
  GpuTexture,
  TexturePool,
} from "./src/gpu/pool.ts";
/** Kernel descriptions and their uniform writer. */
export type { Access, Kernel, ParamWriter, TextureRead } from "./src/gpu/kernel.ts";
/** Per-adapter kernel parameters (workgroup sizes, matmul tiles) and saved tuning profiles. */
export type { ProfileKey, Tuning, TuningProfile } from "./src/gpu/tuning.ts";
/**
 * Tuning profiles: validation naming the field at fault, the hash runs record, where profiles
 * are saved, and which tuning a process uses (pinned file, built-in, or the saved profile).
 */
export {
  checkTuning,
  profilePath,
  readProfile,
  selectTuning,
  TuningError,
  tuningFor,
  tuningHash,
  writeProfile,
} from "./src/gpu/tuning.ts";
/** The kernel autotuner behind `deno task tune`: checked, timed coordinate search. */
export { knobs, tune } from "./src/tune/tune.ts";
/** The autotuner's search space, trials, result and options. */
export type {
  Knob,
  Trial,
  TuneOptions,
  TuneResult,
  TuneShapes,
  WorkloadName,
} from "./src/tune/tune.ts";
/** Errors raised by the engine; each names the op, file or field at fault. */
export {
  BindingLimitError,
  DisposedError,
  DTypeError,
  IndexError,
  NoAdapterError,
  ShaderError,
  ShapeError,
} from "./src/gpu/errors.ts";

/** A strided view of reference-counted GPU storage; dispose it when done. */
export { Tensor } from "./src/tensor/tensor.ts";
/** Reference-counted storage under tensors. */
export type { Storage } from "./src/tensor/tensor.ts";
/** Autograd graph nodes and op names. */
export type { Node, Op } from "./src/tensor/graph.ts";
/** Element types of tensors. */
export type { DType } from "./src/tensor/tensor.ts";
/** Uploads host numbers as a tensor (f32 by default, i32 for Int32Array). */
export { tensor } from "./src/tensor/tensor.ts";
/** An uninitialised tensor. */
export { empty } from "./src/tensor/tensor.ts";
/** Runs a function with gradient recording off. */
export { noGrad } from "./src/tensor/tensor.ts";
/** Waits for every recorded GPU operation. */
export { synchronize } from "./src/tensor/tensor.ts";
/** Runs a function and disposes the tensors it created but did not return. */
export { scope } from "./src/tensor/tensor.ts";
/** Exempts a tensor from the open scopes. */
export { keep } from "./src/tensor/tensor.ts";
/**
 * Differentiable ops: matmul, elementwise unary/binary with broadcasting, reductions, views,
 * softmax, RMSNorm, RoPE, SwiGLU, embedding, fused cross-entropy (also fused with the classifier
 * over vocabulary chunks: `classifierCrossEntropy`), role-table attention.
 */
export * as ops from "./src/tensor/ops.ts";
/** A role table: table[queryRole][keyRole] is an attention rule. */
export type { ActDType, RoleTable } from "./src/tensor/ops.ts";
/** Attention rule codes of a role table (none, causal, self, all). */
export { RULE } from "./src/tensor/ops.ts";
/** Reverse-mode autodiff from a tensor to every leaf parameter. */
export { backward, freeGraph } from "./src/tensor/backward.ts";
/** Options of {@link backward}. */
export type { BackwardOptions } from "./src/tensor/backward.ts";
/** AdamW with decoupled weight decay, and global-norm gradient clipping, on the GPU. */
export { AdamW, clipGradNorm } from "./src/tensor/optim.ts";
/** Options of {@link AdamW}; what it trains (whole leaves, or rows of one). */
export type { AdamWOptions, ParamRows, Trainable } from "./src/tensor/optim.ts";
/** Seeded random numbers (xoshiro128**), checkpointable. */
export { Rng } from "./src/tensor/random.ts";

/** A Llama-architecture decoder (GQA/MQA/MHA, tied or separate classifier) with a KV cache. */
export {
  CAUSAL,
  CAUSAL_PADDED,
  KVCache,
  Llama,
  padBatch,
  parameterShapes,
  validateConfig,
} from "./src/nn/llama.ts";
/** Model configuration, forward options and results, padded batches. */
export type {
  ForwardOptions,
  ForwardResult,
  LlamaConfig,
  PaddedBatch,
  RopeScaling,
  WeightDType,
} from "./src/nn/llama.ts";
/** LoRA adapters of the decoder's projections: targets, slots, initialisation, merging. */
export { initLora, LORA_TARGETS, loraSlots, mergedWeight } from "./src/nn/lora.ts";
/** LoRA settings and slots. */
export type { LoraModelShape, LoraOptions, LoraSlot, LoraTarget } from "./src/nn/lora.ts";
/** LoRA adapters on disk in PEFT's layout (adapter_config.json, adapter_model.safetensors). */
export { readAdapters, writeAdapters } from "./src/io/peft.ts";
/** Adapter weights by base weight name. */
export type { AdapterWeights } from "./src/io/peft.ts";
/** Generation with on-GPU sampling (greedy, temperature, top-p), by ids or by text. */
export { generate, generateText } from "./src/nn/generate.ts";
/** Options and results of generation. */
export type { GenerateOptions, GenerateResult, TextCodec } from "./src/nn/generate.ts";
/**
 * The fused inference path generate() uses for small models: prompt prefill in 5 dispatches per
 * layer and one dispatch per decoded token (weights packed into one texture).
 */
export { FusedDecoder } from "./src/nn/infer/fused.ts";
/** Settings of {@link FusedDecoder}. */
export type { FusedDecoderOptions } from "./src/nn/infer/fused.ts";
/** The next-token choice {@link FusedDecoder} can make inside its decode step. */
export type { DecodeChoice } from "./src/nn/infer/decode.ts";

/**
 * Plain checkpoints in any registered format (llama2.c file, Hugging Face directory), run
 * directories, hub ids and `@data/...` paths: locate, load, and the format registry.
 */
export {
  dataPath,
  FORMATS,
  loadModel,
  locateModel,
  ModelNotFoundError,
  resolveRunDir,
} from "./src/io/model.ts";
/** What {@link loadModel} returns and accepts. */
export type { LoadedModel, LoadModelOptions, LocatedModel } from "./src/io/model.ts";
/** A checkpoint format of the registry, and what it reads. */
export type { Checkpoint, ModelFormat } from "./src/io/format.ts";
/** The registered formats. */
export { hfFormat } from "./src/io/hf.ts";
/** The llama2.c format. */
export { llama2cFormat } from "./src/io/llama2c.ts";
/** llama2.c checkpoints: read, parse, write. */
export { parseLlama2c, readLlama2c, writeLlama2c } from "./src/io/llama2c.ts";
/** A checkpoint that cannot be read as what it claims to be. */
export { CheckpointError } from "./src/io/checkpoint_error.ts";
/** Hugging Face checkpoints: config mapping, q/k RoPE permutation, read and write. */
export { configFromHf, configToHf, permuteRope, readHfModel, writeHfModel } from "./src/io/hf.ts";
/** Options of {@link readHfModel}. */
export type { ReadHfOptions } from "./src/io/hf.ts";
/** safetensors reader (eager, lazy, sharded) and atomic F32/F16 writer. */
export {
  f16BitsToF32,
  f32ToF16Bits,
  INDEX_FILE,
  MAX_HEADER_BYTES,
  openCheckpoint,
  openSafetensors,
  openSafetensorsIndex,
  parseSafetensors,
  readSafetensors,
  SafetensorsError,
  writeSafetensors,
} from "./src/io/safetensors.ts";
/** safetensors types. */
export type {
  LoadedTensor,
  Safetensors,
  SafetensorsReader,
  TensorData,
  TensorInfo,
  TensorToWrite,
  WriteOptions,
} from "./src/io/safetensors.ts";
/** Hugging Face hub client: `org/name[@rev]` to a snapshot in the Hugging Face cache layout. */
export {
  cachedSnapshot,
  hubCacheDir,
  HubError,
  missingFiles,
  parseModelSpec,
  repoCacheDir,
  resolveModel,
} from "./src/io/hub.ts";
/** Hub client types. */
export type { HubOptions, ModelSpec, Progress } from "./src/io/hub.ts";
/** Tokenizers: interface, loader by file type (.bin llama2.c / .json Hugging Face), errors. */
export {
  loadTokenizer,
  SpecialTokenTable,
  TokenizerError,
  TokenizerFileError,
} from "./src/io/tokenizer.ts";
/** Tokenizer types. */
export type { EncodeOptions, LoadTokenizerOptions, Tokenizer } from "./src/io/tokenizer.ts";
/** llama2.c tokenizer.bin reader and run.c-exact encoder/decoder. */
export { Llama2cTokenizer, parseLlama2cTokenizer } from "./src/io/tokenizer_llama2c.ts";
/** The parsed llama2.c vocabulary. */
export type { Llama2cVocab } from "./src/io/tokenizer_llama2c.ts";
/** Hugging Face tokenizer.json wrapper. */
export { HfTokenizer } from "./src/io/tokenizer_hf.ts";
/** Options of {@link HfTokenizer}. */
export type { HfTokenizerOptions } from "./src/io/tokenizer_hf.ts";
/** Shared data directory ($GEMKIT_DATA or <repo>/../shared/data). */
export { dataDir, DataDirError } from "./src/io/paths.ts";

/** GEM: special tokens, the GEM model, embedding with any pooling, contrastive loss. */
export {
  addSpecialTokens,
  contrastiveLoss,
  embedIds,
  GemModel,
  LOGIT_SCALE_MAX,
  MASK_NAMES,
} from "./src/gem/gem.ts";
/** GEM types. */
export type {
  EmbedOptions,
  EmbedResult,
  GemInfo,
  Pooling,
  SpecialTokenOptions,
} from "./src/gem/gem.ts";
/** Mask designs as role tables, their parsing and drawing. */
export {
  allowed,
  drawMask,
  MASK_DESIGNS,
  parseRoleTable,
  RAW_CAUSAL,
  ROLE,
  ROLE_NAMES,
  RULE_NAMES,
} from "./src/gem/mask.ts";
/** GEM sample builders (raw, random split, reconstruction, dropout and crop positives). */
export {
  cropSample,
  dropoutPositive,
  embedSample,
  gemSample,
  IGNORE,
  nextTokenLabels,
  rawSample,
  splitSample,
} from "./src/gem/sample.ts";
/** Sample types. */
export type { GemSample, SampleOptions } from "./src/gem/sample.ts";
/** Batching: padded and packed batches, poolings. */
export {
  collate,
  disposeBatch,
  disposePacked,
  l2normalize,
  meanRows,
  pack,
  poolRows,
  specialRows,
} from "./src/gem/batch.ts";
/** Batch types. */
export type { Batch, PackedBatch, SpecialPooling } from "./src/gem/batch.ts";
/** GEM's training objective for one micro-batch. */
export { drawSamples, stepLoss } from "./src/gem/objective.ts";
/** Objective types. */
export type {
  ObjectiveOptions,
  PairOptions,
  StepLoss,
  StepSamples,
  TextSource,
} from "./src/gem/objective.ts";
/** Raw texts through a decoder: the packed causal forward and its summed next-token loss. */
export { nextTokenNll, rawForward } from "./src/gem/score.ts";
/** GEM checkpoints (HF layout + tokenizer + gem.json). */
export { GemFileError, isGemDir, loadGem, readGemInfo, saveGem } from "./src/gem/io.ts";
/** The model card (README.md) a GEM checkpoint is saved with. */
export { type CardOptions, modelCard } from "./src/gem/card.ts";
/** The training loop's schedule (warm-up + cosine per phase). */
export { scheduleAt } from "./src/train/schedule.ts";
/** The loop's part of a configuration. */
export type { LoopConfig, Phase } from "./src/train/schedule.ts";
/** The GEM recipe's configuration: defaults, documentation, validation, the parsed mask. */
export {
  buildConfig,
  ConfigError,
  defaultConfig,
  FIELDS,
  maskTable,
  readConfigFile,
} from "./src/recipe/config.ts";
/** Configuration types. */
export type {
  ContrastiveSettings,
  GemSettings,
  LoraSettings,
  TrainConfig,
} from "./src/recipe/config.ts";
/** The memory plan of a training run, made from the model's config before loading. */
export {
  checkPlan,
  formatBytes,
  formatPlan,
  memoryPlan,
  PlanError,
  planRun,
  planTarget,
} from "./src/recipe/plan.ts";
/** Plan types. */
export type { MemoryPlan, PlanBinding, PlanItem, PlanTarget } from "./src/recipe/plan.ts";
/** The GEM recipe: config -> model with specials, objective, trainer task. */
export {
  checkpointConfig,
  encodeAll,
  gemTask,
  objectiveOf,
  openBase,
  prepareRun,
  trainables,
  trainingTexts,
  withSpecials,
} from "./src/recipe/recipe.ts";
/** What prepareRun returns. */
export type { PreparedRun } from "./src/recipe/recipe.ts";
/** One resolver for every model spec (path, run dir, GEM checkpoint, HF dir, hub id, @data/). */
export { openModel } from "./src/recipe/open.ts";
/** What openModel returns. */
export type { EncodeTextOptions, OpenedModel } from "./src/recipe/open.ts";
/** The training loop with exact resume. */
export {
  NonFiniteLossError,
  readTrainerState,
  resolveCheckpoint,
  train,
} from "./src/train/trainer.ts";
/** Training loop types. */
export type {
  MicroLoss,
  StepRecord,
  TrainerState,
  TrainOptions,
  TrainResult,
  TrainTask,
} from "./src/train/trainer.ts";
/** The seeded, resumable text stream. */
export { TextStream } from "./src/train/data.ts";
/** Its state. */
export type { StreamState } from "./src/train/data.ts";
/** Corpora with the held-out rule. */
export {
  CorpusError,
  paragraphs,
  readTexts,
  tinyStories,
  wikitextSentences,
} from "./src/io/corpus.ts";
/** TinyStories splits. */
export type { TinyStoriesSplits } from "./src/io/corpus.ts";
/** Evaluation metrics. */
export {
  averageRanks,
  dot,
  mean,
  mrrAtK,
  ndcgAtK,
  pearson,
  recallAtK,
  spearman,
  topK,
} from "./src/eval/metrics.ts";
/** The quick evaluation (perplexity, in-domain retrieval, STS-B). */
export { inDomainRetrieval, perplexity, stsb, stsbPairs } from "./src/eval/quick.ts";
/** Quick evaluation types. */
export type { Embedder, Perplexity, RetrievalScores } from "./src/eval/quick.ts";
/** The compression demo: decode from the special tokens' KV cache alone (paper appendix B). */
export { compressedCache, reconstruct } from "./src/gem/compress.ts";
/** What reconstruct returns. */
export type { Reconstruction } from "./src/gem/compress.ts";
/** The bottleneck probe: suffix loss with the story's own, another, or no prefix. */
export { bottleneckProbe } from "./src/eval/probe.ts";
/** Probe types. */
export type { ProbeLoss, ProbeOptions, ProbeResult } from "./src/eval/probe.ts";
/** The evaluation task registry. */
export { evalTask, TASK_NAMES, TASKS } from "./src/eval/registry.ts";
/** Registry types. */
export type { EvalContext, EvalTask } from "./src/eval/registry.ts";
/** What an eval task returns, and the embedder embedding tasks use. */
export type { Embedder as TaskEmbedder, TaskResult } from "./src/eval/tasks.ts";
/** A plotly figure (data traces and layout). */
export type { Figure } from "./src/eval/plotly.ts";
/** Studies: study files, experiment keys. */
export {
  canonicalJson,
  DEFAULT_TASKS,
  experimentKey,
  parseStudy,
  readStudy,
  StudyError,
  variantConfig,
} from "./src/study/study.ts";
/** Study types. */
export type { PaperNumbers, Study, Variant } from "./src/study/study.ts";
/** Run records of sweeps. */
export { allRecords, appendRecord, readRecords } from "./src/study/records.ts";
/** Record types. */
export type { RunEnv, RunRecord } from "./src/study/records.ts";
/** Summaries of a study's records: spread over seeds, paired differences, figures. */
export {
  metricValue,
  metricValues,
  paired,
  spread,
  SUMMARY_METRICS,
  summaryFigures,
  summaryMarkdown,
  summarySvg,
  writeSummary,
} from "./src/study/summary.ts";
/** Summary types. */
export type { Paired, Spread, SummaryMetric } from "./src/study/summary.ts";
/** One run of a study (train + evaluate), and evaluating a model on a task list. */
export { evaluateModel, runBaseline, runTrained, runUntrained } from "./src/study/run.ts";
/** Run types. */
export type { Evaluation, RunPlace } from "./src/study/run.ts";
