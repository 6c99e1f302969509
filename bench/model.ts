/**
 * Model benchmarks on stories260K, gemkit beside PyTorch CPU eager (bench/torch_llama.py) in the
 * same run, on the same work:
 *   generate         greedy decoding of 256 tokens from BOS (tokens/s, BOS step included)
 *   prefill          512 prompt tokens with logits at every position, KV cache written, through
 *                    the path generate() takes on this adapter (field `path`: the fused prefill
 *                    kernels, or the general forward; tuning.fusedPrefill) (tokens/s)
 *   prefill_x4       4 such prompts back to back, one readback at the end (tokens/s)
 *   prefill_forward  one prompt as in prefill, through the general forward (training path)
 *   train_step       one GEM step on a synthetic 32 x 256 batch: forward, next-token loss,
 *                    backward, clip, AdamW (ms/step, tokens/s = 32 * 256 / step)
 *   train_step_pair  the same plus the contrastive half (anchors + dropout positives in one
 *                    pass, symmetric InfoNCE; tokens/s = 2 * 32 * 256 / step)
 *   embed            mean-pooled embeddings of the 2,758 STS-B test sentences; each side batches
 *                    as it runs fastest: PyTorch pads 64 texts per batch, gemkit packs texts
 *                    without padding up to its default 8,192 tokens per batch
 * The synthetic batch is rebuilt here exactly as torch_llama.py builds it (same Rng port).
 * gemkit runs its training path: sequences packed without padding.
 */

import { contrastiveLoss, EMBED_BATCH_TOKENS, embedIds, type GemModel } from "../src/gem/gem.ts";
import { buildConfig } from "../src/recipe/config.ts";
import { openBase, withSpecials } from "../src/recipe/recipe.ts";
import { disposePacked, l2normalize, meanRows, pack } from "../src/gem/batch.ts";
import type { GemSample } from "../src/gem/sample.ts";
import { nextTokenLabels } from "../src/gem/sample.ts";
import { execFile } from "node:child_process";
import process from "node:process";
import { gpu, initGpu } from "../src/gpu/device.ts";
import { existsSync } from "node:fs";
import { DAWN_MESA_DIR, isMain, RUNTIME, runtimeVersion } from "../src/platform/platform.ts";
import { loadModel } from "../src/io/model.ts";
import type { Tokenizer } from "../src/io/tokenizer.ts";
import type { Llama } from "../src/nn/llama.ts";
import { dataDir } from "../src/io/paths.ts";
import { FusedDecoder } from "../src/nn/infer/fused.ts";
import { generate, prefillPath, prefillPrompt } from "../src/nn/generate.ts";
import { backward } from "../src/tensor/backward.ts";
import * as T from "../src/tensor/ops.ts";
import { AdamW, clipGradNorm } from "../src/tensor/optim.ts";
import { Rng } from "../src/tensor/random.ts";
import { noGrad, scope, tensor } from "../src/tensor/tensor.ts";
import { stsbPairs } from "../src/eval/quick.ts";
import type { BenchContext, BenchRecord } from "./common.ts";
import { stats } from "./common.ts";
import { torchSetup } from "./competitors.ts";

const D = () => `${dataDir()}/models/llama2c`;

async function load() {
  return await loadModel(`${D()}/stories260K.bin`, { tokenizer: `${D()}/tok512.bin` });
}

/** Runs `run` once more with GPU timestamps on every dispatch and logs the costliest kernels. */
async function profile(ctx: BenchContext, name: string, run: () => Promise<void>): Promise<void> {
  const t0 = performance.now();
  gpu().startProfile();
  await run();
  const kernels = await gpu().stopProfile();
  const wall = performance.now() - t0;
  const total = kernels.reduce((a, k) => a + k.ms, 0);
  ctx.log(
    `${name} profile: wall ${wall.toFixed(0)} ms (one pass per dispatch), GPU ${
      total.toFixed(0)
    } ms in ${kernels.reduce((a, k) => a + k.calls, 0)} dispatches`,
  );
  for (const k of kernels.slice(0, 20)) {
    ctx.log(
      `  ${k.ms.toFixed(1).padStart(8)} ms ${(100 * k.ms / total).toFixed(1).padStart(5)}% ` +
        `${String(k.calls).padStart(5)} x ${k.kernel}`,
    );
  }
}

/** warmup untimed runs, then `repeats` timed ones; seconds of each. */
async function time(warmup: number, repeats: number, run: () => Promise<void>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await run();
  const out: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await run();
    out.push((performance.now() - t0) / 1000);
  }
  return out;
}

/** The implementation name of gemkit's rows: "gemkit" in the bench's own process. */
let impl = "gemkit";

function record(
  bench: string,
  samples: number[],
  fields: (median: number) => Record<string, unknown>,
): BenchRecord {
  const s = stats(samples);
  return {
    bench,
    impl,
    ...fields(s.median),
    median_s: s.median,
    min_s: s.min,
    max_s: s.max,
    samples,
  };
}

/** The synthetic GEM batch of torch_llama.py: 32 anchors (+ positives) of 256 tokens. */
function syntheticBatch(seed = 1234): { anchors: GemSample[]; positives: GemSample[] } {
  const rng = new Rng(seed);
  const rows: { ids: number[]; roles: number[] }[] = [];
  for (let r = 0; r < 32; r++) {
    const n = 256 - (r % 4 === 3 ? 20 : 0);
    const special = r % 5 === 4;
    const m = special ? n - 4 : n;
    const text = [1, ...Array.from({ length: m - 1 }, () => 3 + rng.int(509))];
    if (special) {
      const split = 17 + rng.int(m - 16 - 17 + 1);
      rows.push({
        ids: [...text.slice(0, split), 512, 513, 514, 515, ...text.slice(split)],
        roles: [...Array(split).fill(0), 1, 1, 1, 1, ...Array(m - split).fill(2)],
      });
    } else rows.push({ ids: text, roles: Array(m).fill(0) });
  }
  // Positives: prefix tokens replaced, in row-major order over the padded 256 columns.
  const pos = rows.map((r) => ({ ids: [...r.ids], roles: r.roles }));
  for (const r of pos) {
    for (let p = 1; p < 256; p++) {
      if (p < r.roles.length && r.roles[p] === 0 && rng.uniform() < 0.1) {
        r.ids[p] = 3 + ((r.ids[p] - 3 + 1 + rng.int(508)) % 509);
      } else if (p >= r.roles.length) {
        // Padding: torch's loop tests role first, so no draw happens here either.
      }
    }
  }
  const sample = (r: { ids: number[]; roles: number[] }, labelled: boolean): GemSample => ({
    ids: r.ids,
    roles: r.roles,
    labels: labelled ? nextTokenLabels(r.ids, r.roles) : r.ids.map(() => -1),
    specialPos: r.roles.flatMap((x, i) => (x === 1 ? [i] : [])),
  });
  return { anchors: rows.map((r) => sample(r, true)), positives: pos.map((r) => sample(r, false)) };
}

export async function trainStep(ctx: BenchContext, pair: boolean): Promise<BenchRecord> {
  // The default recipe's model: stories260K with k = 4 specials (seed 0), as torch_llama.py.
  const config = buildConfig(null, []);
  const gem: GemModel = await withSpecials(await openBase(config), config);
  const { anchors, positives } = syntheticBatch();
  const rows = pair ? [...anchors, ...positives] : anchors;
  const batch = pack(rows);
  const nAnchorTokens = anchors.reduce((a, s) => a + s.ids.length, 0);
  const params = gem.parameters();
  const opt = new AdamW(params, { lr: 1e-3, weightDecay: 0.01 });
  let first = NaN;
  const step = async () => {
    const loss = scope(() => {
      const out = gem.model.forward(batch.tokens, {
        roles: batch.roles,
        table: gem.table,
        positions: batch.positions,
        segments: batch.segments,
        logits: false,
      });
      const h = T.slice(T.reshape(out.hidden, [-1, 64]), 0, 0, nAnchorTokens);
      const ntp = T.crossEntropy(
        T.matmul(h, gem.model.classifier, { transB: true }),
        T.slice(batch.labels, 0, 0, nAnchorTokens),
      );
      if (!pair) return ntp;
      // Pooling as torch_llama.py: the specials' mean, else the mean of tokens after BOS.
      const groups = rows.map((s, i) => {
        const at = batch.offsets[i];
        const sp = s.specialPos.map((p) => at + p);
        return sp.length ? sp : Array.from({ length: s.ids.length - 1 }, (_, j) => at + 1 + j);
      });
      const pooled = l2normalize(meanRows(out.hidden, groups));
      const a = T.slice(pooled, 0, 0, 32), b = T.slice(pooled, 0, 32, 64);
      return T.add(
        T.mulScalar(ntp, 0.5),
        T.mulScalar(contrastiveLoss(a, b, gem.logitScale, true), 0.5),
      );
    });
    backward(loss);
    clipGradNorm(params, 1.0).dispose();
    opt.update();
    opt.zeroGrad();
    const v = await loss.item();
    if (Number.isNaN(first)) first = v;
    loss.dispose();
  };
  const samples = await time(2, ctx.quick ? 2 : 5, step);
  if (ctx.profile) await profile(ctx, pair ? "train_step_pair" : "train_step", step);
  opt.dispose();
  disposePacked(batch);
  gem.dispose();
  const tokens = (pair ? 2 : 1) * 32 * 256;
  return record(pair ? "train_step_pair" : "train_step", samples, (m) => ({
    ms_per_step: m * 1000,
    tokens_per_s: tokens / m,
    loss: first,
  }));
}

/**
 * The model benchmarks: gemkit and PyTorch (1 and 2 threads) on the same work, one group of
 * benches at a time, PyTorch's runs right after gemkit's. These machines' speed drifts by 20-40%
 * over minutes; timing both sides of a ratio within the same minute keeps most of that drift
 * out of the ratio (run one after the other, their ratios moved by 0.2-0.5 between runs).
 */
export async function modelBench(ctx: BenchContext): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  const torch = torchSetup();
  // A thread count whose run reports PyTorch missing is not tried again for the later groups.
  const missing = new Set<number>();
  const runs = Math.max(1, ctx.runs ?? 1);
  for (let run = 1; run <= runs; run++) {
    const recs: BenchRecord[] = [];
    if (runs > 1) ctx.log(`run ${run} of ${runs}`);
    for (const group of GROUPS) {
      recs.push(...await gemkitModel(ctx, [group]));
      for (const threads of torch.threads.filter((t) => !missing.has(t))) {
        ctx.log(`PyTorch CPU, ${threads} thread(s): ${group}`);
        const got = await torchModel(torch.python, threads, "cpu", ctx, group);
        if (got.some((r) => r.bench === "model")) missing.add(threads);
        recs.push(...got);
      }
    }
    ctx.log(
      `run ${run}: gemkit / best PyTorch CPU: ${
        Object.entries(ratios(recs)).map(([b, x]) => `${b} ${x.toFixed(2)}`).join(", ")
      }`,
    );
    out.push(...(runs > 1 ? recs.map((r) => ({ ...r, run })) : recs));
  }
  // The same work on Mesa 25 (smaller kernels there, see src/gpu/tuning.ts slowCompiler), under
  // Deno and under Bun (Dawn): the driver's and the runtime's shares of the difference apart.
  if (existsSync(`${DAWN_MESA_DIR}/lvp_icd.json`)) {
    ctx.log("the same under Deno on Mesa 25");
    out.push(...await childModel(ctx, "deno"));
    ctx.log("the same under Bun (Dawn, Mesa 25)");
    out.push(...await childModel(ctx, "bun"));
  }
  if (torch.cuda) {
    ctx.log("PyTorch CUDA");
    out.push(...await torchModel(torch.python, 1, "cuda", ctx));
  }
  return out;
}

/**
 * gemkit's figure over the best of PyTorch CPU's (each thread count that ran) for each bench of
 * one run's records: throughput (tokens or texts per second) where the records have it, else the
 * inverse of the median time. PyTorch has one prefill record (a batch-1, 512-token prompt), which
 * all of gemkit's prefill variants are held against: `prefill_x4`'s ratio includes what running four
 * prompts back to back saves. Records without a median (a PyTorch run that failed) are skipped.
 */
export function ratios(recs: readonly BenchRecord[]): Record<string, number> {
  const speed = (r: BenchRecord) =>
    (r.tokens_per_s ?? r.texts_per_s ?? 1 / (r.median_s as number)) as number;
  const out: Record<string, number> = {};
  for (const g of recs.filter((r) => r.impl === "gemkit" && typeof r.median_s === "number")) {
    const torch = recs.filter((r) =>
      (r.bench === g.bench || (r.bench === "prefill" && g.bench.startsWith("prefill"))) &&
      String(r.impl).startsWith("torch-cpu") && typeof r.median_s === "number"
    );
    if (torch.length) out[g.bench as string] = speed(g) / Math.max(...torch.map(speed));
  }
  return out;
}

/**
 * gemkit's rows from this file run as a child process on Mesa 25 (the driver the set-up unpacks)
 * under Deno or Bun, its records on the last line of its stdout; impl `gemkit-mesa25` or
 * `gemkit-bun`.
 */
function childModel(ctx: BenchContext, runtime: "deno" | "bun"): Promise<BenchRecord[]> {
  const script = new URL(import.meta.url).pathname;
  const impl = runtime === "deno" ? "gemkit-mesa25" : "gemkit-bun";
  const [cmd, ...args] = runtime === "deno"
    ? [process.execPath, "run", "-A", script]
    : [new URL("../node_modules/.bin/bun", import.meta.url).pathname, script];
  args.push("--child", impl, ...(ctx.quick ? ["--quick"] : []));
  const env = { ...process.env, VK_ICD_FILENAMES: `${DAWN_MESA_DIR}/lvp_icd.json` };
  return new Promise((resolve) => {
    execFile(cmd, args, { env, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      const last = stdout.trim().split("\n").at(-1) ?? "";
      if (err || !last.startsWith("[")) {
        const why = (stderr || err?.message || "no output").trim().split("\n").slice(-3).join(" ");
        resolve([{ bench: "model", impl, error: why.slice(0, 300) }]);
      } else resolve(JSON.parse(last) as BenchRecord[]);
    });
  });
}

/**
 * The benches in the groups they are timed in: each group's gemkit rows, then PyTorch's on the
 * same work. The prefill group also times prefill_x4 and prefill_forward, against PyTorch's one
 * prefill row.
 */
const GROUPS = ["generate", "prefill", "embed", "train_step", "train_step_pair"];

/**
 * gemkit's rows on this runtime (of the named groups, default all), each with the runtime, Mesa
 * and tuning that produced it.
 */
async function gemkitModel(
  ctx: BenchContext,
  groups: readonly string[] = GROUPS,
): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  const reps = ctx.quick ? 2 : 5;
  if (groups.some((g) => ["generate", "prefill", "embed"].includes(g))) {
    const { model, tokenizer } = await load();
    try {
      await inferenceBenches(ctx, groups, model, tokenizer, reps, out);
    } finally {
      model.dispose();
    }
  }
  if (groups.includes("train_step")) {
    ctx.log("train_step");
    out.push(await trainStep(ctx, false));
  }
  if (groups.includes("train_step_pair")) {
    ctx.log("train_step_pair");
    out.push(await trainStep(ctx, true));
  }
  const g = gpu();
  const where = {
    runtime: runtimeVersion(),
    mesa: g.mesa,
    tuning:
      `matmul tiles <= ${g.tuning.matmulTileArea}, attention block ${g.tuning.attentionBlock}`,
  };
  return out.map((r) => ({ ...r, ...where }));
}

/** The generate, prefill and embed groups' rows (those of `groups`) on one loaded model. */
async function inferenceBenches(
  ctx: BenchContext,
  groups: readonly string[],
  model: Llama,
  tokenizer: Tokenizer,
  reps: number,
  out: BenchRecord[],
): Promise<void> {
  if (groups.includes("generate")) {
    ctx.log("generate");
    let ids: number[] = [];
    const samples = await time(1, reps, async () => {
      ids =
        (await generate(model, [1], { maxTokens: 256, temperature: 0, stopIds: [], readEvery: 64 }))
          .ids;
    });
    out.push(
      record("generate", samples, (m) => ({ tokens_per_s: 256 / m, first_ids: ids.slice(0, 20) })),
    );
  }
  if (groups.includes("prefill")) {
    ctx.log("prefill");
    const ids512 = Int32Array.from(
      { length: 512 },
      (_, i) => (i === 0 ? 1 : ((i - 1) * 7919 + 13) % 509 + 3),
    );
    const toks = tensor(ids512, [1, 512], "i32");
    // The path generate() takes, writing the KV cache. Packing the weights into the decoder's
    // texture is timed apart (generate() packs once per call).
    const t0 = performance.now();
    const decoder = new FusedDecoder(model);
    await gpu().sync();
    const packMs = performance.now() - t0;
    const path = prefillPath();
    const cache = model.newCache(1, 512);
    const prefill = () => noGrad(() => prefillPrompt(model, decoder, toks, cache));
    const pre = await time(1, reps, async () => {
      cache.length = 0;
      const logits = prefill();
      await gpu().read(logits.buf, 0, 4);
      logits.dispose();
    });
    out.push(
      record("prefill", pre, (m) => ({ tokens_per_s: 512 / m, path, pack_ms_untimed: packMs })),
    );
    // Four prompts back to back and one readback: what a stream of prompts sees once the fixed
    // ~11.5 ms readback (Deno's mapAsync poll interval) is paid once instead of per prompt.
    const four = await time(1, reps, async () => {
      let logits = null;
      for (let i = 0; i < 4; i++) {
        logits?.dispose();
        cache.length = 0;
        logits = prefill();
      }
      await gpu().read(logits!.buf, 0, 4);
      logits!.dispose();
    });
    cache.dispose();
    decoder.dispose();
    out.push(record("prefill_x4", four, (m) => ({ tokens_per_s: (4 * 512) / m, path })));
    // The general forward (training and embedding path) on the same ids, for reference.
    const fwd = await time(1, reps, async () => {
      const o = noGrad(() => model.forward(toks));
      await gpu().read(o.logits!.buf, 0, 4);
      o.logits!.dispose();
      o.hidden.dispose();
    });
    toks.dispose();
    out.push(record("prefill_forward", fwd, (m) => ({ tokens_per_s: 512 / m })));
  }
  if (groups.includes("embed")) {
    ctx.log("embed");
    const texts = stsbPairs("test").flatMap((p) => [p.a, p.b]).map((t) =>
      tokenizer.encode(t, { bos: true })
    );
    const emb = await time(1, ctx.quick ? 1 : 3, async () => {
      await embedIds(model, texts, { pooling: "mean" });
    });
    out.push(
      record("embed", emb, (m) => ({
        texts_per_s: texts.length / m,
        n_texts: texts.length,
        batch_tokens: EMBED_BATCH_TOKENS,
      })),
    );
  }
}

/** PyTorch's rows of one group of benches (PyTorch has one prefill bench), default all. */
async function torchModel(
  python: string,
  threads: number,
  device: "cpu" | "cuda",
  ctx: BenchContext,
  group?: string,
): Promise<BenchRecord[]> {
  const script = new URL("./torch_llama.py", import.meta.url).pathname;
  const arg = {
    benches: group ? [group] : GROUPS,
    threads,
    warmup: 2,
    repeats: ctx.quick ? 2 : 5,
    model: `${D()}/stories260K.bin`,
    stsb: `${dataDir()}/eval/stsb/sts-test.csv`,
    device,
  };
  const impl = device === "cuda" ? "torch-cuda" : `torch-cpu-${threads}t`;
  try {
    const r = await new Deno.Command(python, {
      args: [script, JSON.stringify(arg)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(r.stdout).trim().split("\n").at(-1) ?? "";
    const j = JSON.parse(text || "{}");
    if (!r.success || j.error) {
      const why = j.error ?? new TextDecoder().decode(r.stderr).slice(-300);
      return [{ bench: "model", impl, note: `PyTorch not available: ${why}` }];
    }
    // Debian's torch does its fp32 GEMMs through whatever libblas.so.3 is installed: OpenBLAS
    // (scripts/setup.sh --bench installs it), or the reference BLAS, several times slower.
    if (!j.openblas) {
      ctx.log(
        "PyTorch is not using OpenBLAS (reference BLAS): its figures are no fair baseline; " +
          "scripts/setup.sh --bench installs libopenblas0-pthread",
      );
    }
    return (j.results as BenchRecord[]).map((r) => ({ ...r, openblas: !!j.openblas }));
  } catch (e) {
    return [{
      bench: "model",
      impl,
      note: `PyTorch not available: ${e instanceof Error ? e.message : e}`,
    }];
  }
}

if (isMain(import.meta) && process.argv.includes("--child")) {
  impl = process.argv[process.argv.indexOf("--child") + 1] ?? `gemkit-${RUNTIME}`;
  await initGpu({ log: false });
  const quick = process.argv.includes("--quick");
  const recs = await gemkitModel({
    adapter: gpu().description,
    quick,
    profile: false,
    log: (m) => console.error(`bench (${RUNTIME}): ${m}`),
  });
  console.log(JSON.stringify(recs));
  process.exit(0);
}
