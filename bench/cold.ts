/**
 * Cold start: the first `generate` of stories260K (20 greedy tokens) and the first 3-step
 * `train` of the default recipe with an empty Mesa shader cache (MESA_SHADER_CACHE_DISABLE=true),
 * as fresh processes of the real CLIs, on each runtime and Mesa this machine has: Deno on the
 * system's Mesa and on the unpacked Mesa 25, Bun and Node (its bundle in dist/node) on Mesa 25
 * (Dawn). Each row gives the wall time
 * and, from a second process that runs the same work with the kernel profiler on, the compile
 * time per kernel family: llvmpipe compiles a kernel when it first runs it, so its first
 * dispatch's GPU time minus a later one's is the compile.
 *
 * `deno run -A bench/cold.ts` (or `deno task bench cold`) runs every configuration;
 * `bench/cold.ts --child generate|train` is the profiled process, one JSON line on stdout.
 */

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { DAWN_MESA_DIR, runtimeVersion } from "../src/platform/platform.ts";
import type { BenchContext, BenchRecord } from "./common.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MODEL = ["--model", "@data/models/llama2c/stories260K.bin"];
const TOKENIZER = ["--tokenizer", "@data/models/llama2c/tok512.bin"];
const GENERATE = [...MODEL, ...TOKENIZER, "--prompt", "Once upon a time", "--max-tokens", "20"]
  .concat(["--temperature", "0"]);

/** One runtime on one Vulkan driver. */
interface Config {
  runtime: "deno" | "bun" | "node";
  /** VK_ICD_FILENAMES, or undefined for the system's driver. */
  icd?: string;
  mesa: string;
}

function configs(): Config[] {
  const out: Config[] = [{ runtime: "deno", mesa: "system" }];
  const icd = `${DAWN_MESA_DIR}/lvp_icd.json`;
  if (existsSync(icd)) {
    out.push({ runtime: "deno", icd, mesa: "25.0.7" });
    if (existsSync(`${ROOT}node_modules/.bin/bun`)) {
      out.push({ runtime: "bun", icd, mesa: "25.0.7" });
    }
    if (existsSync(`${ROOT}dist/node/generate.js`)) {
      out.push({ runtime: "node", icd, mesa: "25.0.7" });
    }
  }
  return out;
}

/** The command running `script` (src/cli/NAME.ts; Node runs its bundle dist/node/NAME.js). */
function command(c: Config, script: string, args: string[]): [string, string[]] {
  if (c.runtime === "deno") return [process.execPath, ["run", "-A", script, ...args]];
  if (c.runtime === "bun") return [`${ROOT}node_modules/.bin/bun`, ["run", script, ...args]];
  return ["node", [script.replace(/^src\/cli\/(\w+)\.ts$/, "dist/node/$1.js"), ...args]];
}

/** Runs a command cold; resolves with its wall time and output. */
function runCold(
  c: Config,
  script: string,
  args: string[],
): Promise<{ ms: number; stdout: string; stderr: string }> {
  const [cmd, argv] = command(c, script, args);
  const env: Record<string, string> = {
    ...process.env as Record<string, string>,
    MESA_SHADER_CACHE_DISABLE: "true",
    XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? "/tmp",
    GEMKIT_LOG: "0",
  };
  if (c.icd) env.VK_ICD_FILENAMES = c.icd;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile(cmd, argv, { cwd: ROOT, env, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${argv.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve({ ms: performance.now() - t0, stdout, stderr });
    });
  });
}

/**
 * The profiled process: runs `what` with the kernel profiler on and prints its wall time and the
 * compile time per kernel family (src/gpu/device.ts `kernelFamily`) as one JSON line.
 */
async function child(what: string): Promise<void> {
  const { initGpu, kernelFamily } = await import("../src/gpu/device.ts");
  const t0 = performance.now();
  const g = await initGpu({ log: false });
  g.startProfile();
  if (what === "generate") {
    const { openModel } = await import("../src/recipe/open.ts");
    const m = await openModel(MODEL[1], { tokenizer: TOKENIZER[1] });
    await m.generate("Once upon a time", { maxTokens: 20, temperature: 0 });
    m.dispose();
  } else {
    const { buildConfig } = await import("../src/recipe/config.ts");
    const { gemTask, openBase, withSpecials } = await import("../src/recipe/recipe.ts");
    const { train } = await import("../src/train/trainer.ts");
    const config = buildConfig(null, [["steps", "3"]]);
    const gem = await withSpecials(await openBase(config), config);
    const out = await mkdtemp(join(tmpdir(), "gemkit-cold-"));
    await train(gemTask(gem, config), config, { out });
    await rm(out, { recursive: true });
  }
  const prof = await g.stopProfile();
  const families: Record<string, number> = {};
  for (const k of prof) {
    const later = k.calls > 1 ? (k.ms - k.firstMs) / (k.calls - 1) : 0;
    const f = kernelFamily(k.kernel);
    families[f] = (families[f] ?? 0) + Math.max(0, k.firstMs - later);
  }
  console.log(JSON.stringify({
    wall_ms: performance.now() - t0,
    kernels: prof.length,
    compile_ms: Object.fromEntries(
      Object.entries(families).sort((a, b) => b[1] - a[1]).map(([f, ms]) => [f, Math.round(ms)]),
    ),
  }));
  process.exit(0);
}

/** The cold-start benchmark: one record per runtime, driver and workload. */
export async function coldBench(ctx: BenchContext): Promise<BenchRecord[]> {
  const out: BenchRecord[] = [];
  for (const c of configs()) {
    for (const what of ["generate", "train"] as const) {
      ctx.log(`cold ${what} on ${c.runtime}, Mesa ${c.mesa}`);
      const dir = await mkdtemp(join(tmpdir(), "gemkit-cold-"));
      let cli, prof;
      try {
        cli = what === "generate"
          ? await runCold(c, "src/cli/generate.ts", GENERATE)
          : await runCold(c, "src/cli/train.ts", ["--steps", "3", "--no-report", "--out", dir]);
        // Node runs the same Dawn as Bun: its compile profile is Bun's, only the wall is timed.
        prof = c.runtime === "node" ? null : await runCold(c, "bench/cold.ts", ["--child", what]);
      } catch (e) {
        // A runtime that fails here is a row of the table, with the first line of its error.
        const error = (e as Error).message.split("\n").find((l) =>
          /^(panic|error)|Segmentation fault/i.test(l.trim())
        ) ??
          (e as Error).message.split("\n")[0];
        out.push({
          bench: `cold ${what}`,
          impl: c.runtime,
          runtime: c.runtime,
          mesa: c.mesa,
          error,
        });
        continue;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      const row: BenchRecord = {
        bench: `cold ${what}`,
        impl: c.runtime,
        runtime: c.runtime,
        mesa: c.mesa,
        wall_s: cli.ms / 1000,
      };
      if (what === "generate") row.first_text = cli.stdout.trim();
      if (prof) {
        const p = JSON.parse(prof.stdout.trim().split("\n").pop()!);
        const compile = p.compile_ms as Record<string, number>;
        const total = Object.values(compile).reduce((a, b) => a + b, 0);
        Object.assign(row, {
          compile_s: total / 1000,
          kernels: p.kernels,
          slowest: Object.entries(compile).slice(0, 4).map(([f, ms]) => `${f} ${ms}`).join(", "),
          compile_ms: compile,
        });
      }
      out.push(row);
    }
  }
  return out;
}

if (import.meta.main) {
  const i = process.argv.indexOf("--child");
  if (i >= 0) await child(process.argv[i + 1]);
  else {
    console.error(`bench cold: ${runtimeVersion()}`);
    const recs = await coldBench({
      adapter: "llvmpipe",
      quick: false,
      profile: false,
      log: (m) => console.error(`bench: ${m}`),
    });
    for (const r of recs) {
      const { compile_ms: _c, ...rest } = r;
      console.log(JSON.stringify(rest));
    }
  }
}
