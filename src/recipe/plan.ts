/**
 * The memory plan of a training run, made from the model's config before any weight is loaded:
 * parameters, gradients, optimizer state, activations and logits in bytes, the largest single
 * storage binding, and a check of both against the adapter. A binding over the adapter's
 * `maxStorageBufferBindingSize` fails every kernel that binds it, so the run is refused with
 * the item named and what would make it fit; a total over the memory budget is a warning
 * (WebGPU does not report device memory, so the budget is the caller's, or on llvmpipe the
 * host's available memory).
 *
 * Activations are counted from the engine's own forward (src/nn/llama.ts): what the graph keeps
 * for backward per token and layer (the block's input, both norms' outputs, q, k and v after
 * RoPE, attention's output and log-sum-exp, the residual, gate, up and their SwiGLU product),
 * plus the outputs the forward's scope holds until it returns (the projections before RoPE and
 * the two outputs added to the residual), plus one layer's gradients during backward; with
 * checkpointing, each layer's input and one layer's activations (recomputed in backward). All rows
 * of a micro-batch are packed into one sequence, so tokens are counted, never padding. The
 * counts are an upper bound: every text is taken at `maxLen` tokens.
 */

import { freemem } from "node:os";
import { gpu } from "../gpu/device.ts";
import { sizeClass } from "../gpu/pool.ts";
import { readHfConfig } from "../io/hf.ts";
import { locateModel } from "../io/model.ts";
import type { LlamaConfig } from "../nn/llama.ts";
import { headDim, isMatrix, parameterShapes } from "../nn/llama.ts";
import { logitsChunk } from "../tensor/ops.ts";
import { loraSlots } from "../nn/lora.ts";
import type { TrainConfig } from "./config.ts";

/** A run the plan refuses; the message names the item and what would make it fit. */
export class PlanError extends Error {
  /** Error class name. */
  override name = "PlanError";
}

/** One line of the plan. */
export interface PlanItem {
  /** What it is ("parameters", "activations", ...). */
  name: string;
  /** Bytes. */
  bytes: number;
  /** How it was counted. */
  detail: string;
}

/** The largest single buffer the run binds to a kernel. */
export interface PlanBinding {
  /** What it holds ("embedding [516, 64]", ...). */
  name: string;
  /** Bytes. */
  bytes: number;
  /** What would make it smaller, for the refusal message. */
  remedy: string;
}

/** The memory plan of one training run on one adapter. */
export interface MemoryPlan {
  /** Parameters, gradients, optimizer state, activations, logits. */
  items: PlanItem[];
  /** Sum of the items. */
  total: number;
  /** Tokens of one micro-batch at most (packed, all rows at `maxLen`). */
  tokens: number;
  /** The largest single binding. */
  largest: PlanBinding;
  /** The adapter's `maxStorageBufferBindingSize`. */
  bindingLimit: number;
  /** Memory budget in bytes, or null when unknown. */
  budget: number | null;
  /** Where the budget comes from ("--memory-gb", "host memory available (llvmpipe)"). */
  budgetSource: string;
}

/** The adapter facts and budget a plan is checked against. */
export interface PlanTarget {
  /** `maxStorageBufferBindingSize` of the device. */
  bindingLimit: number;
  /** Bytes the run may use, or null when unknown. */
  budget: number | null;
  /** Where the budget comes from. */
  budgetSource: string;
}

const F32 = 4;
const MB = 2 ** 20;

/** Bytes as MiB, or GiB from 1 GiB on, for plan lines. */
export function formatBytes(b: number): string {
  return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(1)} GiB` : `${(b / MB).toFixed(1)} MiB`;
}

/**
 * The plan of training `model` (its config as loaded, before special tokens are added when
 * `addSpecials` is set) under `config`, against `target`.
 */
export function memoryPlan(
  model: LlamaConfig,
  config: TrainConfig,
  target: PlanTarget,
  addSpecials = true,
): MemoryPlan {
  const c = { ...model, vocabSize: model.vocabSize + (addSpecials ? config.gem.k : 0) };
  const d = c.dim, h = c.nHeads, kv = headDim(c) * c.nKvHeads, ff = c.hiddenDim, v = c.vocabSize;
  const params = parameterShapes(c).reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0);
  // f16 storage of a LoRA base: every matrix but the (trained) embedding at 2 bytes, norms at 4.
  // Full training with dtype f16 keeps f32 master weights.
  const half = config.dtype === "f16" && config.lora.rank > 0
    ? parameterShapes(c).filter(([n]) => isMatrix(n) && n !== "model.embed_tokens.weight")
      .reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0)
    : 0;
  // With LoRA only the adapters, the special rows and lambda train; the embedding (whose rows
  // are trained) is the one frozen weight that still gets a whole gradient.
  const r = config.lora.rank;
  const slots = r > 0 ? loraSlots(c, config.lora.targets) : [];
  const adapters = slots.reduce((n, s) => n + r * (s.inDim + s.outDim), 0);
  const trained = r > 0 ? adapters + config.gem.k * d + 1 : params;
  // A tied embedding's two gradients (the classifier's and the lookup's) exist at once before
  // they are summed into it: one embedding-sized gradient more is in flight (1 GB for Llama 3's).
  const tiedExtra = c.tiedEmbeddings ? v * d : 0;
  const withGrad = (r > 0 ? adapters + v * d + 1 : params) + tiedExtra;
  const len = Math.min(config.maxLen, c.maxSeqLen);
  const ntpRows = config.phases.some((p) => p.alpha < 1) ? config.batchSize : 0;
  const pairRows = config.phases.some((p) => p.alpha > 0) ? 2 * config.contrastive.batchSize : 0;
  const ntp = ntpRows * len, tokens = ntp + pairRows * len;
  // Activations are [tokens, width] buffers, each rounded up to the pool's size class (up to a
  // quarter more when tokens is just over a power of two), so they are counted buffer by buffer.
  // dtype f16 stores the activations the layers write in f16; the residual stream, the 1/rms
  // and attention statistics and every gradient stay f32.
  const act = config.dtype === "f16" ? 2 : F32;
  const buffers = (widths: number[], bytes = F32) =>
    widths.reduce((n, w) => n + sizeClass(tokens * w * bytes), 0);
  // Per adapted projection: x A^T, then B's product, its scaled copy and the sum with the base
  // projection (which the scope holds as well).
  const loraKept = slots.flatMap((s) => [r, s.outDim, s.outDim, s.outDim]);
  const perLayer = (all: number[]) => all.slice(0, all.length / Math.max(1, c.nLayers));
  // Per layer, kept for backward: in f32 the block's input, the residual after attention,
  // attention's statistics and both norms' 1/rms; as activations are stored, both norms'
  // outputs, q, attention's output, k and v, gate, up and their product. Then held by the
  // forward's scope: q and k before RoPE, the two outputs added to the residual.
  const kept = buffers([d, d, h, 1, 1]) +
    buffers([d, d, d, d, kv, kv, ff, ff, ff, ...perLayer(loraKept)], act);
  const scoped = buffers([d, d, d, kv], act);
  // With checkpointing each layer keeps its input only, and one layer's kept activations exist
  // again while it is recomputed in backward (its scope frees the rest).
  const layers = config.checkpointing
    ? c.nLayers * buffers([d]) + kept
    : c.nLayers * (kept + scoped);
  // The embedding's output, the final norm's output and its 1/rms; one layer's activation
  // gradients in flight, and its adapters' output gradients.
  const backward = [d, d, d, ff, ...perLayer(slots.map((s) => s.outDim))];
  const activations = layers + buffers([d, d, 1]) + buffers(backward);
  // Under f16 activations each f32 matrix a layer reads (a trainable master weight) is rounded
  // to an f16 copy per forward, which its product keeps for backward: every layer's copies, or
  // with checkpointing the one layer being recomputed.
  const layerCopies = config.dtype !== "f16"
    ? 0
    : r > 0
    ? perLayer(slots.map((s) => 2 * r * (s.inDim + s.outDim))).reduce((a, b) => a + b, 0)
    : parameterShapes(c).filter(([n]) => n.startsWith("model.layers.0.") && isMatrix(n))
      .reduce((n, [, s]) => n + sizeClass(2 * s[0] * s[1]), 0);
  const copies = layerCopies * (config.checkpointing ? 1 : c.nLayers);
  const chunk = logitsChunk(ntp, v);
  const items: PlanItem[] = [
    {
      name: "parameters",
      bytes: (params + adapters) * F32 - half * 2,
      detail:
        (half
          ? `${half.toLocaleString("en")} f16 + ${(params - half).toLocaleString("en")} f32`
          : `${params.toLocaleString("en")} f32`) +
        (r > 0 ? ` + ${adapters.toLocaleString("en")} in LoRA adapters of rank ${r}` : ""),
    },
    {
      name: "gradients",
      bytes: withGrad * F32,
      detail: (r > 0 ? "adapters, the whole embedding, lambda" : "one f32 per parameter") +
        (tiedExtra ? ", and the tied embedding's second gradient in flight" : ""),
    },
    {
      name: "optimizer state",
      bytes: 2 * trained * F32,
      detail: `AdamW m and v, f32, for ${trained.toLocaleString("en")} trained values`,
    },
    {
      name: "activations",
      bytes: activations,
      detail: `${tokens.toLocaleString("en")} tokens x ${
        Math.round(activations / tokens).toLocaleString("en")
      } bytes (${ntpRows} + ${pairRows} rows of ${len}${
        config.dtype === "f16" ? ", f16 activations" : ""
      }${config.checkpointing ? ", checkpointing" : ""})`,
    },
    ...(copies
      ? [{
        name: "f16 weight copies",
        bytes: copies,
        detail: `f32 matrices rounded to f16 for the forward, ${
          config.checkpointing ? "one layer at a time (checkpointing)" : "every layer's"
        }`,
      }]
      : []),
    {
      name: "logits",
      bytes: 2 * ntp * chunk * F32,
      detail: `${ntp.toLocaleString("en")} next-token positions x ${chunk} vocabulary columns, ` +
        "forward and backward",
    },
  ];
  const total = items.reduce((n, i) => n + i.bytes, 0);
  const shorter =
    "a shorter maxLen or fewer texts per micro-batch (batchSize, contrastive.batchSize)";
  // Weights are paged: kernels bind windows of them (src/gpu/pages.ts), products with them run
  // in pieces, so no weight is one binding. Activations are.
  const bindings: PlanBinding[] = [
    { name: `MLP activations [${tokens}, ${ff}]`, bytes: tokens * ff * act, remedy: shorter },
    { name: `hidden states [${tokens}, ${d}]`, bytes: tokens * d * F32, remedy: shorter },
    {
      name: `logits [${ntp}, ${chunk}]`,
      bytes: ntp * chunk * F32,
      remedy: "a smaller vocabulary chunk",
    },
  ];
  const largest = bindings.reduce((a, b) => (b.bytes > a.bytes ? b : a));
  return { items, total, tokens, largest, ...target };
}

/** The plan as aligned lines for the terminal. */
export function formatPlan(plan: MemoryPlan): string {
  const rows = plan.items.map((i) =>
    `  ${i.name.padEnd(16)} ${formatBytes(i.bytes).padStart(11)}  ${i.detail}`
  );
  const budget = plan.budget === null
    ? "unknown (WebGPU does not report device memory; pass --memory-gb)"
    : `${formatBytes(plan.budget)} (${plan.budgetSource})`;
  return [
    "memory plan (upper bound: every text at maxLen):",
    ...rows,
    `  ${"total".padEnd(16)} ${formatBytes(plan.total).padStart(11)}  budget ${budget}`,
    `  largest binding: ${plan.largest.name}, ${formatBytes(plan.largest.bytes)} ` +
    `(adapter limit ${formatBytes(plan.bindingLimit)})`,
  ].join("\n");
}

/** What the plan says of the run: an error refuses it, a warning does not. */
export function checkPlan(plan: MemoryPlan): { error: string | null; warning: string | null } {
  const b = plan.largest;
  const error = b.bytes > plan.bindingLimit
    ? `${b.name} needs one binding of ${formatBytes(b.bytes)}, over this adapter's ` +
      `maxStorageBufferBindingSize of ${formatBytes(plan.bindingLimit)}; what would make it ` +
      `fit: ${b.remedy}`
    : null;
  const warning = plan.budget === null
    ? `the plan needs up to ${formatBytes(plan.total)}; the device's memory is unknown ` +
      "(WebGPU does not report it): pass --memory-gb to check"
    : plan.total > plan.budget
    ? `the plan needs up to ${formatBytes(plan.total)}, over the budget of ` +
      `${formatBytes(plan.budget)} (${plan.budgetSource}): the run may fail to allocate ` +
      "(less: lora.rank > 0, with dtype f16; checkpointing; a shorter maxLen)"
    : null;
  return { error, warning };
}

/**
 * What the current device offers a plan: its binding limit, and a budget of `memoryGb` GiB when
 * given, else on llvmpipe (which allocates from host memory) the host's available memory, else
 * unknown.
 */
export function planTarget(memoryGb?: number): PlanTarget {
  const g = gpu();
  const bindingLimit = g.device.limits.maxStorageBufferBindingSize;
  if (memoryGb !== undefined) {
    if (!(memoryGb > 0)) throw new RangeError(`--memory-gb must be positive, got ${memoryGb}`);
    return { bindingLimit, budget: memoryGb * 2 ** 30, budgetSource: "--memory-gb" };
  }
  if (/llvmpipe|lavapipe/i.test(g.description)) {
    return { bindingLimit, budget: freemem(), budgetSource: "host memory available, llvmpipe" };
  }
  return { bindingLimit, budget: null, budgetSource: "unknown" };
}

/**
 * The plan of a run of `config`, read from the model's config file alone: the base model's
 * (special tokens still to be added), or with `resume` the GEM checkpoint's.
 */
export async function planRun(
  config: TrainConfig,
  target: PlanTarget,
  resume?: string,
): Promise<MemoryPlan> {
  if (resume) return memoryPlan(await readHfConfig(resume), config, target, false);
  const { path, format } = await locateModel(config.model);
  return memoryPlan(await format.readConfig(path), config, target, true);
}
