/**
 * Run records: one JSON line per finished run in `results/ablations/<study>/runs.jsonl`, holding
 * everything needed to trust and reproduce it (resolved config, commit, versions, adapter, Mesa,
 * tuning, data hashes, times) and every metric. Records are the lasting output of a sweep;
 * checkpoints are not.
 */

import { spawn } from "node:child_process";
import { type Dirent, readdirSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import {
  gemkitVersion,
  isNotFound,
  projectRoot,
  RUNTIME,
  runtimeVersion,
} from "../platform/platform.ts";
import { gpu } from "../gpu/device.ts";
import { writeAtomic } from "../io/atomic.ts";
import { sha256Path } from "../io/hash.ts";
import { dataDir } from "../io/paths.ts";
import type { TrainConfig } from "../recipe/config.ts";

/** One finished run (or one reference row of the base model). */
export interface RunRecord {
  /** Study name. */
  study: string;
  /** Variant label, or `base-<pooling>` for a reference row. */
  label: string;
  /** Seed (null for rows that do not depend on one). */
  seed: number | null;
  /** trained, untrained (fresh specials, no steps), or baseline (base model pooling). */
  kind: "trained" | "untrained" | "baseline";
  /** Pooling of the embeddings. */
  pooling: string;
  /** The whole resolved training config (the base model's for baseline rows). */
  config: TrainConfig;
  /** The experiment key ({@link experimentKey}). */
  key: string;
  /** Code and machine. */
  env: RunEnv;
  /** SHA-256 of every data file read, by path relative to the data directory. */
  data: Record<string, string>;
  /** SHA-256 of the trained model.safetensors (trained rows): equal hashes, equal weights. */
  weights?: string;
  /** Training: summed step time (s), wall time (s), and how many times the run was resumed. */
  train: { stepSeconds: number; wallSeconds: number; resumes: number } | null;
  /** Evaluation wall time (s). */
  evalSeconds: number;
  /** Every metric, as `task.metric`. */
  metrics: Record<string, number>;
  /** Notes of the eval tasks (truncation, convergence). */
  notes: string[];
  /** When the record was written (ISO 8601). */
  date: string;
  /** Set when this record copies one of another study (same experiment key). */
  reusedFrom?: { study: string; label: string };
}

/** Code and machine a run ran on. */
export interface RunEnv {
  /** git commit of the code. */
  commit: string;
  /** Whether tracked files differed from the commit (records written by sweeps excepted). */
  dirty: boolean;
  /** gemkit's version (deno.json). */
  gemkit: string;
  /** Deno's version ("2.9.6"); under another runtime, its name and version ("bun 1.4.5"). */
  deno: string;
  /** The runtime's name and version ("deno 2.9.6", "bun 1.4.5"); absent in older records. */
  runtime?: string;
  /** WebGPU adapter description. */
  adapter: string;
  /**
   * The version of the Mesa driver in use, as its library names it ("22.3.6"); older records hold
   * the Debian package's version ("22.3.6-1+deb12u2"). Null on other adapters.
   */
  mesa: string | null;
  /** The kernel tuning in use. */
  tuning: unknown;
  /** Its hash (src/gpu/tuning.ts); absent in records made before profiles existed. */
  tuningHash?: string;
  /** Where it came from: built-in, a saved profile, or a pinned file. */
  tuningSource?: string;
}

/** Runs a command to its end: its stdout when it exits with 0, null when it fails or cannot run. */
function output(cmd: string, args: string[], cwd?: string): Promise<string | null> {
  return new Promise((resolve) => {
    const dec = new TextDecoder();
    let text = "";
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "ignore"] });
    child.stdout.on("data", (c: Uint8Array) => text += dec.decode(c, { stream: true }));
    child.on("error", () => resolve(null));
    child.on("close", (code) => resolve(code === 0 ? text + dec.decode() : null));
  });
}

async function git(args: string[]): Promise<string | null> {
  const out = await output("git", args, projectRoot());
  return out === null ? null : out.trim();
}

/**
 * The runtime's version as records keep it: `deno`, Deno's version as it always was (or, under
 * another runtime, its name and version), and `runtime`, the name and version in every case.
 */
export function runtimeVersions(): { deno: string; runtime: string } {
  const runtime = runtimeVersion();
  return { deno: RUNTIME === "deno" ? runtime.slice("deno ".length) : runtime, runtime };
}

/** The code and machine of this process (the GPU must be initialised). */
export async function runEnv(): Promise<RunEnv> {
  const status = await git(["status", "--porcelain", "--untracked-files=no"]);
  const dirty = (status ?? "").split("\n").filter((l) => l && !l.includes("results/ablations/"));
  return {
    commit: (await git(["rev-parse", "HEAD"])) ?? "unknown",
    dirty: status === null ? true : dirty.length > 0,
    gemkit: gemkitVersion(),
    ...runtimeVersions(),
    adapter: gpu().description,
    mesa: gpu().mesa,
    tuning: gpu().tuning,
    tuningHash: gpu().tuningHash,
    tuningSource: gpu().tuningSource,
  };
}

/**
 * SHA-256 of files and folders: `@data/...` in the data directory (keyed by the path inside it),
 * any other path as given.
 */
export async function hashData(paths: Iterable<string>): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const p of [...new Set(paths)].sort()) {
    const inData = p.startsWith("@data/");
    out[inData ? p.slice(6) : p] = await sha256Path(inData ? `${dataDir()}/${p.slice(6)}` : p);
  }
  return out;
}

/** The records of a runs.jsonl (none when the file does not exist); bad lines are errors. */
export async function readRecords(file: string): Promise<RunRecord[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if (isNotFound(e)) return [];
    throw e;
  }
  return text.split("\n").filter((l) => l.trim()).map((l, i) => {
    try {
      return JSON.parse(l) as RunRecord;
    } catch {
      throw new Error(`${file}: line ${i + 1}: not JSON`);
    }
  });
}

/** Appends a record (the file is rewritten atomically, so a crash never leaves half a line). */
export async function appendRecord(file: string, rec: RunRecord): Promise<void> {
  await mkdir(file.replace(/\/[^/]+$/, ""), { recursive: true });
  let old = "";
  try {
    old = await readFile(file, "utf8");
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  if (old && !old.endsWith("\n")) old += "\n";
  await writeAtomic(file, old + JSON.stringify(rec) + "\n");
}

/** Every record under a results folder (`<dir>/<study>/runs.jsonl`). */
export async function allRecords(dir: string): Promise<RunRecord[]> {
  const out: RunRecord[] = [];
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name)
    );
  } catch {
    return out;
  }
  for (const e of entries) {
    if (e.isDirectory()) out.push(...(await readRecords(`${dir}/${e.name}/runs.jsonl`)));
  }
  return out;
}
