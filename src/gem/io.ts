/**
 * Saving and loading GEM models: a Hugging Face layout directory (config.json, model.safetensors)
 * plus the tokenizer file it was trained with and gem.json (k, special ids and names, mask
 * design, pooling, lambda). Each file is written atomically.
 */

import { type CardOptions, modelCard } from "./card.ts";
import { mkdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { writeAtomic } from "../io/atomic.ts";
import { readHfModel, writeHfModel } from "../io/hf.ts";
import { type AdapterWeights, readAdapters, writeAdapters } from "../io/peft.ts";
import { loadTokenizer } from "../io/tokenizer.ts";
import { resolveRunDir } from "../io/model.ts";
import { Llama, type WeightDType } from "../nn/llama.ts";
import { type GemInfo, GemModel } from "./gem.ts";
import { parseRoleTable } from "./mask.ts";

/** A directory that is not a GEM checkpoint; the message names the file and field. */
export class GemFileError extends Error {
  /** Error class name. */
  override name = "GemFileError";
}

/** Name of the tokenizer file inside a checkpoint, by the source file's kind. */
function tokenizerName(src: string): string {
  if (src.endsWith(".json")) return "tokenizer.json";
  return src.endsWith(".model") ? "tokenizer.model" : "tokenizer.bin";
}

/** The tokenizer files a checkpoint may hold, in the order they are looked for. */
const TOKENIZER_FILES = ["tokenizer.json", "tokenizer.bin", "tokenizer.model"];

/**
 * Writes `gem` (weights, config, tokenizer copy, gem.json) into `dir`, and with `card` its model
 * card README.md (see {@link modelCard}).
 */
export async function saveGem(
  dir: string,
  gem: GemModel,
  tokenizerPath: string,
  card?: CardOptions,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const weights = new Map<string, Float32Array>();
  for (const [name, t] of gem.model.params) weights.set(name, (await t.toArray()) as Float32Array);
  await writeHfModel(dir, gem.model.config, weights);
  const lora = gem.model.loraOptions;
  if (lora) {
    const adapters: AdapterWeights = new Map();
    for (const [name, { a, b }] of gem.model.lora) {
      adapters.set(name, {
        a: (await a.toArray()) as Float32Array,
        b: (await b.toArray()) as Float32Array,
      });
    }
    await writeAdapters(dir, gem.model.config, lora, adapters, card?.base ?? "");
  }
  const info: GemInfo = { ...gem.info, logitScale: await gem.currentLogitScale() };
  await writeAtomic(`${dir}/gem.json`, JSON.stringify(info, null, 2) + "\n");
  // For other tools the specials are listed as Hugging Face lists added tokens: in
  // special_tokens_map.json and added_tokens.json always, and for a tokenizer.json inside it and
  // its tokenizer_config.json too (so transformers and tokenizers.js load them with it). gemkit
  // leaves them out of the wrapped tokenizer on load and appends them by id from gem.json.
  const src = dirname(tokenizerPath);
  let map: Record<string, unknown> = {};
  if (tokenizerPath.endsWith(".json")) {
    const json = JSON.parse(await readFile(tokenizerPath, "utf8"));
    await writeAtomic(`${dir}/tokenizer.json`, JSON.stringify(withGemTokens(json, info)) + "\n");
    const config = await readFile(join(src, "tokenizer_config.json"), "utf8").catch(() => "{}");
    await writeAtomic(
      `${dir}/tokenizer_config.json`,
      JSON.stringify(withGemConfig(JSON.parse(config), info), null, 2) + "\n",
    );
    const text = await readFile(join(src, "special_tokens_map.json"), "utf8").catch(() => null);
    if (text !== null) map = JSON.parse(text);
  } else {
    await writeAtomic(`${dir}/${tokenizerName(tokenizerPath)}`, await readFile(tokenizerPath));
  }
  map.additional_special_tokens = info.specialNames;
  await writeAtomic(`${dir}/special_tokens_map.json`, JSON.stringify(map, null, 2) + "\n");
  const added = Object.fromEntries(info.specialNames.map((n, i) => [n, info.specialIds[i]]));
  await writeAtomic(`${dir}/added_tokens.json`, JSON.stringify(added, null, 2) + "\n");
  if (card) await writeAtomic(`${dir}/README.md`, modelCard(info, card));
}

/** A GEM special token as a Hugging Face added token (tokenizer.json's `added_tokens`). */
function addedToken(id: number, content: string) {
  return {
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  };
}

/** A tokenizer.json with GEM's specials appended to its `added_tokens` (entries of the same name
 * or id are replaced). */
export function withGemTokens(
  json: Record<string, unknown>,
  info: Pick<GemInfo, "specialIds" | "specialNames">,
): Record<string, unknown> {
  const ids = new Set(info.specialIds), names = new Set(info.specialNames);
  const old = (Array.isArray(json.added_tokens) ? json.added_tokens : []) as {
    id: number;
    content: string;
  }[];
  const kept = old.filter((t) => !ids.has(t.id) && !names.has(t.content));
  const added = info.specialIds.map((id, i) => addedToken(id, info.specialNames[i]));
  return { ...json, added_tokens: [...kept, ...added] };
}

/** A tokenizer_config.json that declares GEM's specials (`added_tokens_decoder`,
 * `additional_special_tokens`), as transformers writes them. */
export function withGemConfig(
  config: Record<string, unknown>,
  info: Pick<GemInfo, "specialIds" | "specialNames">,
): Record<string, unknown> {
  const decoder = { ...(config.added_tokens_decoder as Record<string, unknown> ?? {}) };
  info.specialIds.forEach((id, i) => {
    const { id: _, ...props } = addedToken(id, info.specialNames[i]);
    decoder[String(id)] = props;
  });
  const extra = (config.additional_special_tokens as string[] | undefined) ?? [];
  return {
    ...config,
    added_tokens_decoder: decoder,
    additional_special_tokens: [
      ...extra.filter((n) => !info.specialNames.includes(n)),
      ...info.specialNames,
    ],
  };
}

/** Reads gem.json, checking every field. */
export async function readGemInfo(dir: string): Promise<GemInfo> {
  const path = `${dir}/gem.json`;
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new GemFileError(`${path}: cannot read as JSON (${e instanceof Error ? e.message : e})`);
  }
  const bad = (f: string, why: string): never => {
    throw new GemFileError(`${path}: field '${f}' ${why}`);
  };
  const k = j.k;
  if (!Number.isInteger(k) || (k as number) < 1) bad("k", "must be a positive integer");
  const ids = j.specialIds, names = j.specialNames;
  if (!Array.isArray(ids) || ids.length !== k || !ids.every(Number.isInteger)) {
    bad("specialIds", `must be ${k} integers`);
  }
  if (!Array.isArray(names) || names.length !== k || !names.every((n) => typeof n === "string")) {
    bad("specialNames", `must be ${k} strings`);
  }
  if (!["mean", "concat", "last"].includes(j.pooling as string)) {
    bad("pooling", "must be mean, concat or last");
  }
  if (typeof j.logitScale !== "number") bad("logitScale", "must be a number");
  try {
    parseRoleTable(j.mask, "mask");
  } catch (e) {
    bad("mask", (e as Error).message);
  }
  return j as unknown as GemInfo;
}

/** Loads a GEM checkpoint directory written by {@link saveGem} (or a run directory's latest). */
export async function loadGem(
  path: string,
  opts: { dtype?: WeightDType } = {},
): Promise<GemModel> {
  const dir = await resolveRunDir(path);
  const info = await readGemInfo(dir);
  const { config, weights } = await readHfModel(dir);
  const base = config.vocabSize - info.k;
  if (info.specialIds.some((id, i) => id !== base + i)) {
    throw new GemFileError(
      `${dir}/gem.json: field 'specialIds' must be the last ${info.k} ids (${base}..)`,
    );
  }
  let tokPath = "";
  for (const f of TOKENIZER_FILES) {
    if (await stat(`${dir}/${f}`).then(() => true, () => false)) {
      tokPath = `${dir}/${f}`;
      break;
    }
  }
  if (!tokPath) throw new GemFileError(`${dir}: no tokenizer (${TOKENIZER_FILES.join(", ")})`);
  const tokenizer = loadTokenizer(tokPath, { vocabSize: base, gemSpecials: info.specialNames });
  tokenizer.addSpecialTokens(info.specialNames);
  // LoRA adapters stay attached (a resumed run trains them on); `deno task convert --merge`
  // folds them into the weights. Under adapters the embedding stays f32: its special rows train.
  const adapters = await readAdapters(dir, config);
  const keepF32 = adapters ? ["model.embed_tokens.weight"] : [];
  const model = Llama.fromWeights(config, weights, dir, opts.dtype, keepF32);
  if (adapters) model.attachLora(adapters.opts, adapters.weights);
  return new GemModel(model, tokenizer, info);
}

/** Whether a directory (or a run directory's latest checkpoint) holds a GEM checkpoint. */
export async function isGemDir(path: string): Promise<boolean> {
  try {
    return (await stat(`${await resolveRunDir(path)}/gem.json`)).isFile();
  } catch {
    return false;
  }
}
