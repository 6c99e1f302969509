/**
 * LoRA adapters for the decoder's projections: W x becomes W x + scale * B (A x), with A [r, in]
 * and B [out, r] trained and W frozen. A starts uniform in +-1/sqrt(in) (PyTorch's default for a
 * linear layer, as PEFT), B at zero, so an attached adapter leaves the model's outputs exactly as
 * they were until it is trained. Names follow PEFT (`...q_proj.lora_A.weight`), so adapter files
 * load in Python as they do here.
 */

import { Rng } from "../tensor/random.ts";

/** The shape fields of a decoder config that adapters depend on (a LlamaConfig has them). */
export interface LoraModelShape {
  /** Model width. */
  dim: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads. */
  nKvHeads: number;
  /** Width of the SwiGLU MLP. */
  hiddenDim: number;
  /** Number of blocks. */
  nLayers: number;
}

/** Projections an adapter can target. */
export const LORA_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"] as const;
/** One of {@link LORA_TARGETS}. */
export type LoraTarget = typeof LORA_TARGETS[number];

/** The module of each target inside a layer (PEFT names it by the part after the dot). */
export const LORA_MODULE: Record<LoraTarget, string> = {
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  gate: "mlp.gate_proj",
  up: "mlp.up_proj",
  down: "mlp.down_proj",
};

/** What to adapt and how. */
export interface LoraOptions {
  /** Rank r of A and B. */
  rank: number;
  /** Multiplier of B A (PEFT's lora_alpha / r). */
  scale: number;
  /** Projections that get an adapter. */
  targets: readonly LoraTarget[];
  /** Seed of A's initialisation. */
  seed?: number;
}

/** One adapter's place: the base weight it adapts and the shapes of A and B. */
export interface LoraSlot {
  /** Base weight name ("model.layers.0.self_attn.q_proj.weight"). */
  weight: string;
  /** PEFT name prefix ("model.layers.0.self_attn.q_proj"). */
  module: string;
  /** Input width. */
  inDim: number;
  /** Output width. */
  outDim: number;
}

/** The adapters `opts` puts on a model of config `c`, in layer order. */
export function loraSlots(c: LoraModelShape, targets: readonly LoraTarget[]): LoraSlot[] {
  for (const t of targets) {
    if (!LORA_TARGETS.includes(t)) {
      throw new RangeError(`lora.targets: '${t}' is not one of ${LORA_TARGETS.join(", ")}`);
    }
  }
  // [out, in] of each projection, as parameterShapes in llama.ts gives them.
  const kv = (c.dim / c.nHeads) * c.nKvHeads;
  const shape: Record<LoraTarget, [number, number]> = {
    q: [c.dim, c.dim],
    k: [kv, c.dim],
    v: [kv, c.dim],
    o: [c.dim, c.dim],
    gate: [c.hiddenDim, c.dim],
    up: [c.hiddenDim, c.dim],
    down: [c.dim, c.hiddenDim],
  };
  const out: LoraSlot[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    for (const t of LORA_TARGETS) {
      if (!targets.includes(t)) continue;
      const module = `model.layers.${l}.${LORA_MODULE[t]}`;
      const [outDim, inDim] = shape[t];
      out.push({ weight: `${module}.weight`, module, inDim, outDim });
    }
  }
  return out;
}

/** Fresh A (uniform in +-1/sqrt(in)) and B (zeros) for each slot, from one seeded generator. */
export function initLora(
  slots: readonly LoraSlot[],
  rank: number,
  seed = 0,
): Map<string, { a: Float32Array; b: Float32Array }> {
  const rng = new Rng(seed);
  const out = new Map<string, { a: Float32Array; b: Float32Array }>();
  for (const s of slots) {
    const bound = 1 / Math.sqrt(s.inDim);
    const a = new Float32Array(rank * s.inDim);
    for (let i = 0; i < a.length; i++) a[i] = (rng.uniform() * 2 - 1) * bound;
    out.set(s.weight, { a, b: new Float32Array(s.outDim * rank) });
  }
  return out;
}

/** W + scale * B A on the host (W [out, in], B [out, r], A [r, in]), for merging. */
export function mergedWeight(
  w: Float32Array,
  a: Float32Array,
  b: Float32Array,
  rank: number,
  scale: number,
): Float32Array {
  const inDim = a.length / rank, outDim = b.length / rank;
  const out = Float32Array.from(w);
  for (let o = 0; o < outDim; o++) {
    for (let r = 0; r < rank; r++) {
      const f = scale * b[o * rank + r];
      if (f === 0) continue;
      for (let i = 0; i < inDim; i++) out[o * inDim + i] += f * a[r * inDim + i];
    }
  }
  return out;
}
