/**
 * LoRA adapters on disk as PEFT writes them: `adapter_config.json` (r, lora_alpha,
 * target_modules) and `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`
 * [r, in] and `...lora_B.weight` [out, r]. q and k rows are in Hugging Face's rotate_half order
 * there, as their base weights are in model.safetensors; gemkit's interleaved order is restored
 * on reading. Errors name the file and the field or tensor.
 */

import { readFile } from "node:fs/promises";
import type { LlamaConfig } from "../nn/llama.ts";
import { headDim } from "../nn/llama.ts";
import {
  LORA_MODULE,
  LORA_TARGETS,
  type LoraOptions,
  loraSlots,
  type LoraTarget,
} from "../nn/lora.ts";
import { writeAtomic } from "./atomic.ts";
import { CheckpointError } from "./checkpoint_error.ts";
import { permuteRope } from "./hf.ts";
import { readSafetensors, writeSafetensors } from "./safetensors.ts";
import { statOrNull } from "./format.ts";

/** PEFT's module name of a target ("q_proj"). */
const peftName = (t: LoraTarget) => LORA_MODULE[t].split(".")[1];

/** Adapter weights by base weight name, in gemkit's row order. */
export type AdapterWeights = Map<string, { a: Float32Array; b: Float32Array }>;

/** q/k adapters' B rows between gemkit's order and HF's (`toHf`). */
function rotateB(c: LlamaConfig, weight: string, b: Float32Array, rank: number, toHf: boolean) {
  const q = weight.endsWith("q_proj.weight"), k = weight.endsWith("k_proj.weight");
  if (!q && !k) return b;
  return permuteRope(b, q ? c.nHeads : c.nKvHeads, headDim(c), rank, toHf);
}

/** Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`. */
export async function writeAdapters(
  dir: string,
  c: LlamaConfig,
  opts: LoraOptions,
  weights: AdapterWeights,
  base = "",
): Promise<void> {
  const tensors = loraSlots(c, opts.targets).flatMap((s) => {
    const w = weights.get(s.weight)!;
    return [
      {
        name: `base_model.model.${s.module}.lora_A.weight`,
        shape: [opts.rank, s.inDim],
        data: w.a,
      },
      {
        name: `base_model.model.${s.module}.lora_B.weight`,
        shape: [s.outDim, opts.rank],
        data: rotateB(c, s.weight, w.b, opts.rank, true),
      },
    ];
  });
  await writeSafetensors(`${dir}/adapter_model.safetensors`, tensors, {
    dtype: "F32",
    metadata: { format: "pt" },
  });
  const config = {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: base,
    r: opts.rank,
    lora_alpha: opts.scale * opts.rank,
    lora_dropout: 0,
    bias: "none",
    target_modules: opts.targets.map(peftName),
  };
  await writeAtomic(`${dir}/adapter_config.json`, JSON.stringify(config, null, 2) + "\n");
}

/** The adapters in `dir`, or null when it has no adapter_config.json. */
export async function readAdapters(
  dir: string,
  c: LlamaConfig,
): Promise<{ opts: LoraOptions; weights: AdapterWeights } | null> {
  const cfgPath = `${dir}/adapter_config.json`;
  if (!await statOrNull(cfgPath)) return null;
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(await readFile(cfgPath, "utf8"));
  } catch (e) {
    throw new CheckpointError(`${cfgPath}: cannot read as JSON (${(e as Error).message})`);
  }
  const bad = (f: string, why: string): never => {
    throw new CheckpointError(`${cfgPath}: field '${f}' ${why}`);
  };
  const rank = j.r as number, alpha = j.lora_alpha as number;
  if (!Number.isInteger(rank) || rank < 1) bad("r", "must be a positive integer");
  if (typeof alpha !== "number") bad("lora_alpha", "must be a number");
  const modules = j.target_modules;
  if (!Array.isArray(modules) || !modules.length) bad("target_modules", "must be a non-empty list");
  const targets = (modules as string[]).map((m) => {
    const t = LORA_TARGETS.find((x) => peftName(x) === m);
    return t ?? bad("target_modules", `names '${m}', not one of ${LORA_TARGETS.map(peftName)}`);
  });
  const opts: LoraOptions = { rank, scale: alpha / rank, targets };
  const file = `${dir}/adapter_model.safetensors`;
  const st = await readSafetensors(file);
  const weights: AdapterWeights = new Map();
  for (const s of loraSlots(c, targets)) {
    const get = (n: string, shape: number[]) => {
      const t = st.tensors.get(`base_model.model.${s.module}.${n}.weight`);
      if (!t || t.shape.join() !== shape.join()) {
        throw new CheckpointError(
          `${file}: tensor '${s.module}.${n}.weight' missing or not [${shape}]`,
        );
      }
      return t.data as Float32Array;
    };
    const a = get("lora_A", [rank, s.inDim]);
    const b = rotateB(c, s.weight, get("lora_B", [s.outDim, rank]), rank, false);
    weights.set(s.weight, { a, b });
  }
  return { opts, weights };
}
