/**
 * Shared test helpers: GPU set-up, golden loading, tolerance checks (atol + rtol * |ref|), and
 * running the CLIs under the runtime running the tests (Deno or Bun).
 */

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import process from "node:process";
import { initGpu } from "../src/gpu/device.ts";
import { exitCode, mesaVersion, RUNTIME, scriptCommand } from "../src/platform/platform.ts";
import { slowCompiler } from "../src/gpu/tuning.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { type DType, type Tensor, tensor } from "../src/tensor/tensor.ts";

// Tests pin the built-in tuning: a profile saved by `deno task tune` on this machine must not
// change what they compute. The CLIs they spawn inherit it.
process.env.GEMKIT_TUNING ??= "builtin";

/** The test device. CI always has the llvmpipe adapter; without one this throws, it never skips. */
export function testGpu(): Promise<Gpu> {
  return initGpu({ log: false });
}

/**
 * Whether the tests that loop over kernel tunings cover every tuning (the default) or, with
 * GEMKIT_TEST_TUNINGS=adapter, only the adapter's own. scripts/test.sh sets it for the Bun run:
 * Dawn there runs on Mesa 25, where each extra kernel variant costs seconds to a minute of cold
 * compile, while the Deno run covers every variant.
 */
export function everyTuning(): boolean {
  return process.env.GEMKIT_TEST_TUNINGS !== "adapter";
}

/**
 * Why a test of the fused inference kernels is skipped, or undefined when it runs: only in an
 * adapter-tuning run (see {@link everyTuning}) on llvmpipe from Mesa 24 on, whose tuning never
 * uses those kernels and where they take minutes to compile from a cold cache. The reason is
 * printed with the skip, and the Deno run covers them.
 */
export function fusedSkip(): string | undefined {
  if (everyTuning() || !slowCompiler(mesaVersion())) return undefined;
  return `fused inference kernels are off on Mesa ${mesaVersion()} (slowCompiler); Deno runs this`;
}

/**
 * Why the paper-shape tests (bf16 checkpoints of GBs, minutes each on llvmpipe, up to ~7 GB of
 * host memory) skip outside Deno, or undefined under Deno, which runs them. They test the same
 * engine paths in any runtime; Bun's garbage collector also holds large host buffers longer.
 */
export function scaleSkip(): string | undefined {
  if (RUNTIME === "deno") return undefined;
  return "paper-shape checkpoints (GBs) run under Deno only; the engine paths are the same";
}

export interface GoldenTensor {
  shape: number[];
  dtype: "f32" | "f16" | "i32";
  data: number[];
}

export interface GoldenCase {
  name: string;
  op: string;
  attrs: Record<string, unknown>;
  inputs: Record<string, GoldenTensor>;
  outputs: Record<string, GoldenTensor>;
  dout?: Record<string, GoldenTensor>;
  grads?: Record<string, GoldenTensor>;
}

export function loadGoldens(file: string): GoldenCase[] {
  const url = new URL(`./goldens/${file}`, import.meta.url);
  const json = JSON.parse(readFileSync(url, "utf8"));
  if (json.version !== 1) throw new Error(`${file}: golden version ${json.version}, want 1`);
  return json.cases as GoldenCase[];
}

/** Uploads a golden tensor. */
export function fromGolden(g: GoldenTensor): Tensor {
  return tensor(g.data, g.shape, g.dtype as DType);
}

export interface Tolerance {
  atol: number;
  rtol: number;
}

/** Forward and backward tolerances for fp32 against a float64 reference. */
export const FWD: Tolerance = { atol: 1e-5, rtol: 1e-4 };
export const BWD: Tolerance = { atol: 2e-5, rtol: 2e-4 };

/**
 * Throws if any |a - e| > atol + rtol * |e|, naming the worst element, or if shapes differ.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tolerance,
  what: string,
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: ${actual.length} values, expected ${expected.length}`);
  }
  let worst = -1, worstExcess = 0, bad = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    const err = Math.abs(a - e);
    const allowed = tol.atol + tol.rtol * Math.abs(e);
    if (!(err <= allowed)) {
      bad++;
      const excess = Number.isNaN(err) ? Infinity : err / allowed;
      if (excess > worstExcess || worst < 0) {
        worst = i;
        worstExcess = excess;
      }
    }
  }
  if (bad) {
    throw new Error(
      `${what}: ${bad}/${actual.length} values off; worst at ${worst}: got ${actual[worst]}, ` +
        `want ${expected[worst]} (atol ${tol.atol}, rtol ${tol.rtol})`,
    );
  }
}

export async function assertTensorClose(
  t: Tensor,
  g: GoldenTensor,
  tol: Tolerance,
  what: string,
): Promise<void> {
  if (t.shape.join() !== g.shape.join()) {
    throw new Error(`${what}: shape [${t.shape}], expected [${g.shape}]`);
  }
  assertClose(await t.toArray(), g.data, tol, what);
}

/** A file's bytes as a plain Uint8Array (not a Buffer, so deepEqual against Uint8Arrays holds). */
export async function readBytes(path: string): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await readFile(path));
}

/** {@link readBytes}, synchronously. */
export function readBytesSync(path: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(readFileSync(path));
}

/**
 * The command line that runs a TypeScript entry point under the runtime running the tests
 * (the platform's {@link scriptCommand}), then `args`.
 */
export function cliCommand(script: string, args: string[]): [string, string[]] {
  const [cmd, ...run] = scriptCommand(script);
  return [cmd, [...run, ...args]];
}

export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/**
 * Runs a CLI entry point (see {@link cliCommand}) to completion, stdout and stderr captured.
 * `env` is added to this process's environment.
 */
export function runCli(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<CliResult> {
  const [cmd, argv] = cliCommand(script, args);
  return runCommand(cmd, argv, env);
}

/** Runs a command to completion, stdout and stderr captured; `env` adds to this process's. */
export function runCommand(
  cmd: string,
  argv: string[],
  env: Record<string, string> = {},
): Promise<CliResult> {
  const child = spawn(cmd, argv, {
    env: { ...process.env, ...env },
    stdio: ["inherit", "pipe", "pipe"],
  });
  const out: Uint8Array[] = [], err: Uint8Array[] = [];
  child.stdout.on("data", (c: Uint8Array) => out.push(c));
  child.stderr.on("data", (c: Uint8Array) => err.push(c));
  const text = (parts: Uint8Array[]) => new TextDecoder().decode(concat(parts));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on(
      "close",
      (code, signal) => resolve({ code: exitCode(code, signal), out: text(out), err: text(err) }),
    );
  });
}

/** The byte arrays joined end to end. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}

/** Peak resident memory of this process (Linux), in bytes; 0 where /proc is missing. */
export function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Per row of [rows, v] logits: log-sum-exp, first arg-max, and the logits at `probes`. */
export function logitRows(
  logits: Float32Array,
  v: number,
  probes: readonly number[],
): { logsumexp: number; argmax: number; probes: number[] }[] {
  return Array.from({ length: logits.length / v }, (_, i) => {
    const row = logits.subarray(i * v, (i + 1) * v);
    let m = -Infinity, arg = -1;
    for (let j = 0; j < v; j++) if (row[j] > m) [m, arg] = [row[j], j];
    let z = 0;
    for (let j = 0; j < v; j++) z += Math.exp(row[j] - m);
    return { logsumexp: m + Math.log(z), argmax: arg, probes: probes.map((j) => row[j]) };
  });
}
