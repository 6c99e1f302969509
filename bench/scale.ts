/**
 * `deno task bench scale`: the Llama-3.2-1B shape (src/io/synthetic.ts weights, bf16 checkpoint
 * written to a temporary folder) on this adapter. Peak device memory (the buffer pool's live
 * bytes) of one next-token training step at maxLen 512, batch 1, beside the memory plan's
 * prediction for the same run: full fine-tuning in f32 and in f16 (f32 master weights, f16
 * activations), LoRA (rank 8, every projection) in f32 and in f16 (f16 base matrices and
 * activations), each with and without activation checkpointing; then greedy generation speed
 * of the LoRA models. llvmpipe runs the model cut
 * to GEMKIT_SCALE_LAYERS layers (default 2: full fine-tuning of all 16 in f32 needs about 20 GB of
 * weights, gradients and AdamW state); a GPU runs it whole with GEMKIT_SCALE_LAYERS=16.
 */

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gpu } from "../src/gpu/device.ts";
import { readHfModel } from "../src/io/hf.ts";
import { LLAMA_3_2_1B, writeSyntheticModel } from "../src/io/synthetic.ts";
import { generate } from "../src/nn/generate.ts";
import { Llama } from "../src/nn/llama.ts";
import { buildConfig } from "../src/recipe/config.ts";
import { memoryPlan } from "../src/recipe/plan.ts";
import { backward } from "../src/tensor/backward.ts";
import * as T from "../src/tensor/ops.ts";
import { AdamW, type Trainable } from "../src/tensor/optim.ts";
import { tensor } from "../src/tensor/tensor.ts";
import type { BenchContext, BenchRecord } from "./common.ts";

const LEN = 512;

export async function scaleBench(ctx: BenchContext): Promise<BenchRecord[]> {
  const g = gpu();
  const layers = Number(Deno.env.get("GEMKIT_SCALE_LAYERS") ?? 2);
  const hf = { ...LLAMA_3_2_1B, num_hidden_layers: layers };
  const dir = await mkdtemp(join(tmpdir(), "gemkit-scale-"));
  const out: BenchRecord[] = [];
  try {
    ctx.log(`writing the Llama-3.2-1B shape with ${layers} layers (bf16) to ${dir}`);
    await writeSyntheticModel(dir, hf);
    const ids = Int32Array.from({ length: LEN }, (_, i) => (i * 7919 + 11) % hf.vocab_size);
    for (const [lora, dtype] of [[0, "f32"], [0, "f16"], [8, "f32"], [8, "f16"]] as const) {
      for (const checkpointing of [false, true]) {
        const { config, weights } = await readHfModel(dir, { maxSeqLen: LEN });
        // As a GEM run stores it: f16 base matrices under LoRA only (full training keeps f32
        // masters), and there the embedding, whose special rows train, stays f32.
        const storage = lora && dtype === "f16" ? "f16" : "f32";
        const model = Llama.fromWeights(config, weights, dir, storage, [
          "model.embed_tokens.weight",
        ]);
        model.activations = dtype;
        weights.clear();
        let params: Trainable[] = model.parameters();
        if (lora) {
          const adapters = model.attachLora({
            rank: lora,
            scale: 2,
            targets: ["q", "k", "v", "o", "gate", "up", "down"],
          });
          // As a GEM run would: the embedding's last rows (4 specials) and the adapters.
          const embed = model.params.get("model.embed_tokens.weight")!;
          params = [{ leaf: embed, from: config.vocabSize - 4, to: config.vocabSize }, ...adapters];
        }
        const opt = new AdamW(params, { lr: 1e-5 });
        const step = async () => {
          const x = tensor(ids, [1, LEN], "i32");
          const targets = tensor(Int32Array.from([...ids.slice(1), -1]), [LEN], "i32");
          const r = model.forward(x, { logits: false, checkpoint: checkpointing });
          const h = T.reshape(r.hidden, [LEN, config.dim]);
          const loss = T.classifierCrossEntropy(h, model.classifier, targets);
          backward(loss);
          opt.update();
          opt.zeroGrad();
          await loss.item();
          for (const t of [x, targets, r.hidden, h, loss]) t.dispose();
        };
        await step(); // AdamW's moments exist from here on, as in every later step
        g.pool.resetPeak();
        const t0 = performance.now();
        await step();
        const ms = performance.now() - t0;
        const peak = g.pool.peakLiveBytes;
        const plan = memoryPlan(
          config,
          buildConfig(null, [
            ["maxLen", String(LEN)],
            ["batchSize", "1"],
            ["phases", JSON.stringify([{ frac: 1, alpha: 0, lr: 1e-5 }])],
            ["checkpointing", String(checkpointing)],
            ["lora.rank", String(lora)],
            ["dtype", dtype],
          ]),
          { bindingLimit: g.bindingLimit, budget: null, budgetSource: "unknown" },
          false,
        );
        const label = `${lora ? `LoRA r${lora}` : "full"}${
          checkpointing ? " + checkpointing" : ""
        }`;
        ctx.log(
          `${dtype} ${label}: peak ${(peak / 2 ** 30).toFixed(2)} GiB, plan ${
            (plan.total / 2 ** 30).toFixed(2)
          } GiB, step ${(ms / 1000).toFixed(1)} s`,
        );
        out.push({
          bench: `train_step_memory_llama1b_${layers}layers`,
          impl: `gemkit ${dtype} ${label}`,
          tokens: LEN,
          peak_gib: peak / 2 ** 30,
          plan_gib: plan.total / 2 ** 30,
          step_s: ms / 1000,
        });
        opt.dispose();
        if (lora === 8 && checkpointing) {
          // Greedy generation of the adapted model runs op by op (a model this wide always does).
          const t1 = performance.now();
          const gen = await generate(model, [1, 2, 3, 4], { maxTokens: 32, temperature: 0 });
          const s = (performance.now() - t1) / 1000;
          out.push({
            bench: `generate_llama1b_${layers}layers`,
            impl: `gemkit ${dtype} op by op`,
            tokens: gen.ids.length,
            tok_per_s: gen.ids.length / s,
          });
        }
        model.dispose();
      }
    }
  } finally {
    await rm(dir, { recursive: true });
  }
  return out;
}
