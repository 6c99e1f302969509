/**
 * Checkpoints in real models' shapes with deterministic weights, for tests and benchmarks where
 * the real weights are out of reach: the generator of tests/goldens/make_scale_goldens.py,
 * defined identically (an integer hash per element, seeded by the tensor's place in name
 * order), and a writer of the bf16 Hugging Face checkpoint, one tensor at a time. Checkpoints of
 * hundreds of MB to GBs: made where they are used, never committed.
 */

import { mkdir, open, writeFile } from "node:fs/promises";
import { f32BitsToBf16 } from "./safetensors.ts";

/** A config.json of the golden file, as the reference used it. */
export type HfConfig = Record<string, unknown> & {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  tie_word_embeddings: boolean;
};

/** Llama-3.2-1B's config.json (the shape, not the weights), as Hugging Face publishes it. */
export const LLAMA_3_2_1B: HfConfig = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 16,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  rope_scaling: {
    rope_type: "llama3",
    factor: 32,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  },
  tie_word_embeddings: true,
  bos_token_id: 128000,
  eos_token_id: 128001,
  torch_dtype: "bfloat16",
};

/** Every weight's HF name and shape, sorted by name (the generator's seed order). */
export function namesAndShapes(c: HfConfig): [string, number[]][] {
  const d = c.hidden_size, ff = c.intermediate_size, v = c.vocab_size;
  const kv = (d / c.num_attention_heads) * c.num_key_value_heads;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [v, d]]];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [d]],
      [`${p}self_attn.q_proj.weight`, [d, d]],
      [`${p}self_attn.k_proj.weight`, [kv, d]],
      [`${p}self_attn.v_proj.weight`, [kv, d]],
      [`${p}self_attn.o_proj.weight`, [d, d]],
      [`${p}post_attention_layernorm.weight`, [d]],
      [`${p}mlp.gate_proj.weight`, [ff, d]],
      [`${p}mlp.up_proj.weight`, [ff, d]],
      [`${p}mlp.down_proj.weight`, [d, ff]],
    );
  }
  out.push(["model.norm.weight", [d]]);
  if (!c.tie_word_embeddings) out.push(["lm_head.weight", [v, d]]);
  // Python's sorted() on str: code-unit order, as JavaScript's default sort.
  return out.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** n values of tensor `seed` (float32; the writer rounds them to bf16 as the reference does). */
export function synthetic(seed: number, n: number, norm: boolean): Float32Array {
  const out = new Float32Array(n);
  const add = Math.imul(0x9e3779b9, seed) >>> 0;
  for (let i = 0; i < n; i++) {
    let x = (i + add) >>> 0;
    x ^= x >>> 16;
    x = Math.imul(x, 0x85ebca6b) >>> 0;
    x ^= x >>> 13;
    x = Math.imul(x, 0xc2b2ae35) >>> 0;
    x ^= x >>> 16;
    const u = (x >>> 8) / 2 ** 24 * 2 - 1;
    out[i] = norm ? 1 + u * 0.1 : u * 0.02;
  }
  return out;
}

/** float32 values as bfloat16 bytes, rounded as the safetensors writer and the reference do. */
function toBf16(x: Float32Array): Uint8Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = f32BitsToBf16(bits[i]);
  return new Uint8Array(out.buffer);
}

/**
 * Writes `config` and its synthetic bf16 weights as an HF checkpoint directory, one tensor at a
 * time (a model of several GB never sits in memory whole). The file is safetensors as
 * gemkit's writer lays it out: header padded to 8 bytes, tensors sorted by name, back to back.
 */
export async function writeSyntheticModel(dir: string, config: HfConfig): Promise<void> {
  await mkdir(dir, { recursive: true });
  const list = namesAndShapes(config);
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const [name, shape] of list) {
    const bytes = 2 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: "BF16", shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const file = await open(`${dir}/model.safetensors`, "w");
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
    await file.write(len);
    await file.write(new TextEncoder().encode(json));
    for (const [i, [name, shape]] of list.entries()) {
      const n = shape.reduce((a, b) => a * b, 1);
      await file.write(toBf16(synthetic(i + 1, n, name.endsWith("norm.weight"))));
    }
  } finally {
    await file.close();
  }
  await writeFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
}
