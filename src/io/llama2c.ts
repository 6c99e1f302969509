/**
 * llama2.c checkpoints (Karpathy's `.bin`): a header of 7 int32 (dim, hidden_dim, n_layers,
 * n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier is stored
 * separately at the end), then float32 weights in llama2.c's order, with two legacy RoPE tables
 * (seq_len * head_dim / 2 floats each) before the optional classifier.
 *
 * Weights come out keyed by Hugging Face names; llama2.c's [out, in] layout and interleaved RoPE
 * order are what gemkit's model uses, so nothing is permuted here.
 */

import { open, readFile } from "node:fs/promises";
import type { LlamaConfig } from "../nn/llama.ts";
import { parameterShapes } from "../nn/llama.ts";
import { writeAtomic } from "./atomic.ts";
import { CheckpointError } from "./checkpoint_error.ts";
import type { ModelFormat } from "./format.ts";

export { CheckpointError } from "./checkpoint_error.ts";

const HEADER_BYTES = 28;

/** llama2.c's order of tensors: [llama2c name, HF name pattern (%d = layer), per layer]. */
const ORDER: [string, string, boolean][] = [
  ["token_embedding_table", "model.embed_tokens.weight", false],
  ["rms_att_weight", "model.layers.%d.input_layernorm.weight", true],
  ["wq", "model.layers.%d.self_attn.q_proj.weight", true],
  ["wk", "model.layers.%d.self_attn.k_proj.weight", true],
  ["wv", "model.layers.%d.self_attn.v_proj.weight", true],
  ["wo", "model.layers.%d.self_attn.o_proj.weight", true],
  ["rms_ffn_weight", "model.layers.%d.post_attention_layernorm.weight", true],
  ["w1", "model.layers.%d.mlp.gate_proj.weight", true],
  ["w2", "model.layers.%d.mlp.down_proj.weight", true],
  ["w3", "model.layers.%d.mlp.up_proj.weight", true],
  ["rms_final_weight", "model.norm.weight", false],
];

/** Parses the header; throws naming the file and the field. */
export function parseLlama2cHeader(bytes: Uint8Array, file: string): LlamaConfig {
  if (bytes.byteLength < HEADER_BYTES) {
    throw new CheckpointError(
      `${file}: ${bytes.byteLength} bytes, shorter than the 28-byte llama2.c header`,
    );
  }
  const h = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + HEADER_BYTES));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  const fields = {
    dim,
    hidden_dim: hiddenDim,
    n_layers: nLayers,
    n_heads: nHeads,
    n_kv_heads: nKvHeads,
    seq_len: seqLen,
  };
  for (const [k, v] of Object.entries(fields)) {
    if (v <= 0 || v > 1 << 20) {
      throw new CheckpointError(`${file}: header field ${k} = ${v} is not a plausible size`);
    }
  }
  if (vocab === 0 || Math.abs(vocab) > 1 << 22) {
    throw new CheckpointError(
      `${file}: header field vocab_size = ${vocab} is not a plausible size`,
    );
  }
  if (dim % nHeads !== 0 || nHeads % nKvHeads !== 0) {
    throw new CheckpointError(
      `${file}: header n_heads ${nHeads} / n_kv_heads ${nKvHeads} do not divide dim ${dim}`,
    );
  }
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    maxSeqLen: seqLen,
    ropeTheta: 10000,
    normEps: 1e-5,
    tiedEmbeddings: vocab > 0,
  };
}

/** Number of float32 values the file must hold after the header. */
function expectedFloats(c: LlamaConfig): number {
  const shapes = parameterShapes(c);
  let n = 0;
  for (const [, s] of shapes) n += s.reduce((a, b) => a * b, 1);
  return n + c.maxSeqLen * (c.dim / c.nHeads); // + the two legacy RoPE tables
}

/** Reads a llama2.c checkpoint: its config and weights keyed by Hugging Face names. */
export async function readLlama2c(
  path: string,
): Promise<{ config: LlamaConfig; weights: Map<string, Float32Array> }> {
  let bytes: Uint8Array;
  try {
    const b = await readFile(path);
    bytes = new Uint8Array(b.buffer, b.byteOffset, b.byteLength); // a Uint8Array, not a Buffer
  } catch (e) {
    throw new CheckpointError(`${path}: cannot read (${e instanceof Error ? e.message : e})`);
  }
  return parseLlama2c(bytes, path);
}

/** Parses llama2.c checkpoint bytes; `file` names them in errors. */
export function parseLlama2c(
  bytes: Uint8Array,
  file: string,
): { config: LlamaConfig; weights: Map<string, Float32Array> } {
  const config = parseLlama2cHeader(bytes, file);
  const want = expectedFloats(config);
  const have = (bytes.byteLength - HEADER_BYTES) / 4;
  if (have !== want) {
    throw new CheckpointError(
      `${file}: ${bytes.byteLength - HEADER_BYTES} bytes of weights, header ` +
        `(dim ${config.dim}, hidden_dim ${config.hiddenDim}, n_layers ${config.nLayers}, ` +
        `n_heads ${config.nHeads}, n_kv_heads ${config.nKvHeads}, vocab_size ${config.vocabSize}` +
        `${config.tiedEmbeddings ? "" : " unshared"}, seq_len ${config.maxSeqLen}) needs ${
          want * 4
        }` +
        (have < want ? " (file truncated?)" : ""),
    );
  }
  const floats = new Float32Array(
    bytes.buffer.slice(bytes.byteOffset + HEADER_BYTES, bytes.byteOffset + bytes.byteLength),
  );
  const shapes = new Map(parameterShapes(config));
  const weights = new Map<string, Float32Array>();
  let at = 0;
  const take = (name: string) => {
    const n = shapes.get(name)!.reduce((a, b) => a * b, 1);
    weights.set(name, floats.subarray(at, at + n));
    at += n;
  };
  for (const [, hf, perLayer] of ORDER) {
    if (!perLayer) take(hf);
    else for (let l = 0; l < config.nLayers; l++) take(hf.replace("%d", String(l)));
  }
  at += config.maxSeqLen * (config.dim / config.nHeads);
  if (!config.tiedEmbeddings) take("lm_head.weight");
  return { config, weights };
}

/** Writes a llama2.c checkpoint atomically (temp file, then rename). */
export async function writeLlama2c(
  path: string,
  config: LlamaConfig,
  weights: Map<string, Float32Array>,
): Promise<void> {
  const parts: Uint8Array[] = [];
  const header = new Int32Array([
    config.dim,
    config.hiddenDim,
    config.nLayers,
    config.nHeads,
    config.nKvHeads,
    config.tiedEmbeddings ? config.vocabSize : -config.vocabSize,
    config.maxSeqLen,
  ]);
  parts.push(new Uint8Array(header.buffer));
  const shapes = new Map(parameterShapes(config));
  const put = (name: string) => {
    const w = weights.get(name);
    const n = shapes.get(name)!.reduce((a, b) => a * b, 1);
    if (!w || w.length !== n) {
      throw new CheckpointError(`${path}: weight '${name}' missing or not ${n} values`);
    }
    parts.push(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
  };
  for (const [, hf, perLayer] of ORDER) {
    if (!perLayer) put(hf);
    else for (let l = 0; l < config.nLayers; l++) put(hf.replace("%d", String(l)));
  }
  // The legacy RoPE tables, as llama2.c's export writes them (readers skip them).
  const hd = config.dim / config.nHeads;
  const re = new Float32Array((config.maxSeqLen * hd) / 2), im = new Float32Array(re.length);
  for (let p = 0; p < config.maxSeqLen; p++) {
    for (let i = 0; i < hd / 2; i++) {
      const a = p * Math.pow(config.ropeTheta, (-2 * i) / hd);
      re[p * (hd / 2) + i] = Math.cos(a);
      im[p * (hd / 2) + i] = Math.sin(a);
    }
  }
  parts.push(new Uint8Array(re.buffer), new Uint8Array(im.buffer));
  if (!config.tiedEmbeddings) put("lm_head.weight");
  await writeAtomic(path, parts);
}

/** The llama2.c `.bin` format: one file, no tokenizer inside (tok512.bin and the like beside it). */
export const llama2cFormat: ModelFormat = {
  name: "llama2c",
  detect: (_path, info) => Promise.resolve(info.isFile()),
  read: async (path, opts) => {
    const ckpt = await readLlama2c(path);
    if (opts.maxSeqLen) ckpt.config.maxSeqLen = Math.min(ckpt.config.maxSeqLen, opts.maxSeqLen);
    return ckpt;
  },
  readConfig: async (path) => {
    const header = new Uint8Array(HEADER_BYTES);
    let got = 0;
    try {
      const f = await open(path, "r");
      try {
        got = (await f.read(header, 0, HEADER_BYTES, 0)).bytesRead;
      } finally {
        await f.close();
      }
    } catch (e) {
      throw new CheckpointError(`${path}: cannot read (${e instanceof Error ? e.message : e})`);
    }
    return parseLlama2cHeader(header.subarray(0, got), path);
  },
  write: (path, ckpt) => writeLlama2c(path, ckpt.config, ckpt.weights),
  tokenizerIn: () => Promise.resolve(null),
};
