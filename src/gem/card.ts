/**
 * The model card (`README.md`) of a GEM checkpoint: what the checkpoint is (base model, recipe,
 * special tokens, mask, pooling), how to embed with it (gemkit, or numpy alone), and, once the
 * trainer's report has run, its evaluation. Other tools and people read this; gemkit reads
 * `gem.json`.
 */

import type { GemInfo } from "./gem.ts";

/** What the card says beyond gem.json. */
export interface CardOptions {
  /** The base model as given to training (path, `@data/...` or hub id). */
  base: string;
  /** The training configuration, shown as JSON. */
  config?: unknown;
  /** A markdown section with evaluation results. */
  results?: string;
}

/** The card's markdown. */
export function modelCard(info: GemInfo, opts: CardOptions): string {
  const mask = typeof info.mask === "string" ? `\`${info.mask}\`` : JSON.stringify(info.mask);
  const lines = [
    "---",
    "library_name: gemkit",
    "tags: [gem, text-embeddings, text-generation, llama]",
    `base_model: ${opts.base}`,
    "---",
    "",
    "# GEM checkpoint",
    "",
    `A decoder-only Llama fine-tuned with GEM (arXiv 2506.04344) from \`${opts.base}\` by gemkit: it`,
    "still generates text, and it embeds a text as the pooled last-layer states of special tokens",
    "appended after it.",
    "",
    "| | |",
    "|---|---|",
    `| special tokens | ${info.k}: ${info.specialNames.map((n) => `\`${n}\``).join(" ")} (ids ${
      info.specialIds.join(", ")
    }) |`,
    `| attention mask (training) | ${mask} |`,
    `| pooling of the specials | ${info.pooling}, then L2-normalised |`,
    `| contrastive scale | e^${info.logitScale.toFixed(4)} |`,
    "",
    "Files: `config.json` and `model.safetensors` (a Hugging Face Llama whose vocabulary ends with",
    "the special tokens), the tokenizer (without the specials: they are appended by id), the",
    "specials' names and ids in `special_tokens_map.json` and `added_tokens.json`, and `gem.json`",
    "(the table above, as gemkit reads it).",
    "",
    "## Embedding texts",
    "",
    "Tokenize the text with BOS, append the special ids, run the model with GEM's mask (text tokens",
    "causal; each special sees the text and itself, not the other specials), take the final-normed",
    "last-layer states of the specials, pool them and L2-normalise.",
    "",
    "```sh",
    "deno task embed --model THIS_DIR --input texts.txt --output vectors.npy --pooling gem",
    "/usr/bin/python3 examples/embed_numpy.py THIS_DIR texts.txt vectors.npy   # numpy alone",
    "```",
    "",
    "```ts",
    'import { initGpu, openModel } from "./mod.ts"; // gemkit',
    "await initGpu();",
    'const m = await openModel("THIS_DIR");',
    'const vectors = await m.encode(["a text", "another"]); // Float32Array per text',
    "```",
  ];
  if (opts.config !== undefined) {
    lines.push(
      "",
      "## Training configuration",
      "",
      "```json",
      JSON.stringify(opts.config, null, 2),
      "```",
    );
  }
  if (opts.results) lines.push("", opts.results.trim());
  return lines.join("\n") + "\n";
}
