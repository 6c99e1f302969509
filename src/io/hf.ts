/**
 * Hugging Face Llama checkpoints: a directory with `config.json` and `model.safetensors` (or an
 * index with shards). Converts between HF's layout and gemkit's: HF applies RoPE with rotate_half
 * (pairs (j, j + d/2)), so its q_proj/k_proj rows are a permutation of the interleaved order
 * llama2.c and gemkit use; we undo it on read and redo it on write.
 */

import { mkdir, readFile } from "node:fs/promises";
import type { LlamaConfig, RopeScaling } from "../nn/llama.ts";
import { parameterShapes, validateConfig } from "../nn/llama.ts";
import { writeAtomic } from "./atomic.ts";
import { type ModelFormat, statOrNull } from "./format.ts";
import { CheckpointError } from "./checkpoint_error.ts";
import { openCheckpoint, writeSafetensors } from "./safetensors.ts";

/**
 * Reorders the rows of a q or k projection [heads * hd, in] from interleaved pairs to HF's
 * rotate_half halves (`toHf`), or back.
 */
export function permuteRope(
  w: Float32Array,
  heads: number,
  hd: number,
  dimIn: number,
  toHf: boolean,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const inter = h * hd + 2 * i + j, hf = h * hd + j * half + i;
        const [from, to] = toHf ? [inter, hf] : [hf, inter];
        out.set(w.subarray(from * dimIn, (from + 1) * dimIn), to * dimIn);
      }
    }
  }
  return out;
}

/** Options for reading an HF checkpoint. */
export interface ReadHfOptions {
  /** Cap on the context (RoPE table, KV cache), for models with very long max_position_embeddings. */
  maxSeqLen?: number;
}

/** Maps an HF config.json object to a LlamaConfig; errors name the file and the field. */
export function configFromHf(
  j: Record<string, unknown>,
  file: string,
  opts: ReadHfOptions = {},
): LlamaConfig {
  const num = (field: string, fallback?: number): number => {
    const v = j[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new CheckpointError(
        `${file}: field '${field}' ${
          v === undefined ? "is missing" : `is not a number (${JSON.stringify(v)})`
        }`,
      );
    }
    return v;
  };
  const type = j.model_type;
  if (type !== undefined && type !== "llama" && type !== "mistral") {
    throw new CheckpointError(
      `${file}: field 'model_type' is '${type}'; gemkit loads llama and mistral`,
    );
  }
  for (const f of ["attention_bias", "mlp_bias"]) {
    if (j[f] === true) throw new CheckpointError(`${file}: field '${f}' = true is not supported`);
  }
  const dim = num("hidden_size"), heads = num("num_attention_heads");
  if (j.head_dim !== undefined && j.head_dim !== dim / heads) {
    throw new CheckpointError(
      `${file}: field 'head_dim' ${j.head_dim} differs from hidden_size / num_attention_heads`,
    );
  }
  const maxPos = num("max_position_embeddings");
  const config: LlamaConfig = {
    dim,
    hiddenDim: num("intermediate_size"),
    nLayers: num("num_hidden_layers"),
    nHeads: heads,
    nKvHeads: num("num_key_value_heads", heads),
    vocabSize: num("vocab_size"),
    maxSeqLen: Math.min(maxPos, opts.maxSeqLen ?? maxPos),
    ropeTheta: num("rope_theta", 10000),
    normEps: num("rms_norm_eps", 1e-6),
    tiedEmbeddings: j.tie_word_embeddings === true,
  };
  const rs = j.rope_scaling as Record<string, unknown> | null | undefined;
  if (rs) {
    const kind = rs.rope_type ?? rs.type;
    if (kind !== "llama3") {
      throw new CheckpointError(
        `${file}: field 'rope_scaling' type '${kind}' is not supported (llama3 is)`,
      );
    }
    const f = (k: string) => {
      if (typeof rs[k] !== "number") {
        throw new CheckpointError(`${file}: field 'rope_scaling.${k}' is missing`);
      }
      return rs[k] as number;
    };
    config.ropeScaling = {
      type: "llama3",
      factor: f("factor"),
      lowFreqFactor: f("low_freq_factor"),
      highFreqFactor: f("high_freq_factor"),
      originalMaxPositionEmbeddings: f("original_max_position_embeddings"),
    } satisfies RopeScaling;
  }
  validateConfig(config, file);
  return config;
}

/** The HF config.json object for a LlamaConfig. */
export function configToHf(c: LlamaConfig): Record<string, unknown> {
  const j: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: "silu",
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float32",
  };
  if (c.ropeScaling) {
    j.rope_scaling = {
      rope_type: "llama3",
      factor: c.ropeScaling.factor,
      low_freq_factor: c.ropeScaling.lowFreqFactor,
      high_freq_factor: c.ropeScaling.highFreqFactor,
      original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
    };
  }
  return j;
}

function isQk(name: string): "q" | "k" | null {
  if (name.endsWith("self_attn.q_proj.weight")) return "q";
  if (name.endsWith("self_attn.k_proj.weight")) return "k";
  return null;
}

/** Reads an HF Llama directory: config and weights (gemkit layout) keyed by HF names. */
export async function readHfModel(
  dir: string,
  opts: ReadHfOptions = {},
): Promise<{ config: LlamaConfig; weights: Map<string, Float32Array> }> {
  const config = await readHfConfig(dir, opts);
  const reader = await openCheckpoint(dir);
  const weights = new Map<string, Float32Array>();
  try {
    const hd = config.dim / config.nHeads;
    const names = new Set(reader.names);
    for (const [name, shape] of parameterShapes(config)) {
      if (!names.has(name)) throw new CheckpointError(`${dir}: tensor '${name}' is missing`);
      const info = reader.info(name);
      if (info.shape.join() !== shape.join()) {
        throw new CheckpointError(
          `${dir}: tensor '${name}' has shape [${info.shape}], config.json implies [${shape}]`,
        );
      }
      let w = await reader.readF32(name);
      const qk = isQk(name);
      if (qk) {
        w = permuteRope(w, qk === "q" ? config.nHeads : config.nKvHeads, hd, config.dim, false);
      }
      weights.set(name, w);
      names.delete(name);
    }
    // Tied checkpoints sometimes still carry lm_head; anything else unknown is an error.
    names.delete("lm_head.weight");
    for (const n of names) {
      if (!n.endsWith("rotary_emb.inv_freq")) {
        throw new CheckpointError(`${dir}: unexpected tensor '${n}'`);
      }
    }
  } finally {
    reader.close();
  }
  return { config, weights };
}

/** The config.json of an HF directory, as a {@link LlamaConfig}; errors name the file. */
export async function readHfConfig(dir: string, opts: ReadHfOptions = {}): Promise<LlamaConfig> {
  const cfgPath = `${dir}/config.json`;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(cfgPath, "utf8"));
  } catch (e) {
    throw new CheckpointError(
      `${cfgPath}: cannot read as JSON (${e instanceof Error ? e.message : e})`,
    );
  }
  return configFromHf(raw, cfgPath, opts);
}

/** Writes an HF Llama directory (config.json + model.safetensors), each file atomically. */
export async function writeHfModel(
  dir: string,
  config: LlamaConfig,
  weights: Map<string, Float32Array>,
  opts: { dtype?: "F32" | "F16" } = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const hd = config.dim / config.nHeads;
  const tensors = parameterShapes(config).map(([name, shape]) => {
    const w = weights.get(name);
    if (!w) throw new CheckpointError(`${dir}: weight '${name}' missing`);
    const qk = isQk(name);
    const data = qk
      ? permuteRope(w, qk === "q" ? config.nHeads : config.nKvHeads, hd, config.dim, true)
      : w;
    return { name, shape, data };
  });
  await writeSafetensors(`${dir}/model.safetensors`, tensors, {
    dtype: opts.dtype ?? "F32",
    metadata: { format: "pt" },
  });
  await writeAtomic(`${dir}/config.json`, JSON.stringify(configToHf(config), null, 2) + "\n");
}

/**
 * The Hugging Face directory format: config.json, model.safetensors (or shards with an index),
 * and tokenizer.json (or gemkit's tokenizer.bin for llama2.c vocabularies) beside them.
 */
export const hfFormat: ModelFormat = {
  name: "hf",
  detect: async (path, info) =>
    info.isDirectory() && (await statOrNull(`${path}/config.json`))?.isFile() === true,
  read: (path, opts) => readHfModel(path, { maxSeqLen: opts.maxSeqLen }),
  readConfig: (path) => readHfConfig(path),
  write: (path, ckpt, opts) => writeHfModel(path, ckpt.config, ckpt.weights, opts),
  tokenizerIn: async (path) => {
    for (const f of ["tokenizer.json", "tokenizer.bin", "tokenizer.model"]) {
      if (await statOrNull(`${path}/${f}`)) return `${path}/${f}`;
    }
    return null;
  },
};
