/**
 * Per-adapter kernel parameters. llvmpipe (a CPU rasterizer: each invocation is a SIMD lane, no
 * real shared memory) and a discrete GPU want different shapes, so kernels read their tile sizes
 * and workgroup sizes from here instead of hard-coding them.
 */

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { canonicalJson } from "../platform/json.ts";
import { env } from "../platform/platform.ts";

/** The kernel parameters of one adapter profile (see the module comment). */
export interface Tuning {
  /** Name of the profile, logged with the adapter. */
  profile: "llvmpipe" | "gpu";
  /** Workgroup size of elementwise kernels. */
  elementwiseWorkgroup: number;
  /** Elementwise v2: four contiguous elements per invocation through vec4 loads. */
  elementwiseVec4: boolean;
  /** Workgroup size of row kernels (softmax, RMSNorm, reductions with one group per row). */
  rowWorkgroup: number;
  /** Matmul output tile per invocation (rows x cols) and invocations per workgroup. */
  matmul: { tileM: number; tileN: number; workgroup: number };
  /**
   * Largest output tile (rows x cols per invocation) of matmul v3. Its kernels are fully
   * unrolled, so compile time grows with the tile's area (see {@link slowCompiler}).
   */
  matmulTileArea: number;
  /** Highest matmul kernel version to use (1 = general strides only). */
  matmulVersion: number;
  /**
   * Matmul v3 shares A's rows between lanes through subgroup broadcasts where the device has
   * them. Its products are bitwise those of the plain kernel (same tiles' sums, same split-K),
   * so this field alone does not change a tuning's hash ({@link tuningHash}).
   */
  matmulSubgroups: boolean;
  /**
   * Matmul v3 (its operands, or a model's packed weights in its fused products) and attention
   * (K and V) bind the textures they read as read-only storage textures where the device takes
   * them. They load the same texels, so this field does not change a tuning's hash either.
   */
  storageTextureReads: boolean;
  /** Matmuls with fewer output tiles than this split K to keep the device busy. */
  matmulMinInvocations: number;
  /** Queries per attention workgroup. */
  attentionWorkgroup: number;
  /** Queries (or keys) per invocation in attention v2/v3; 0 selects v1. */
  attentionBlock: number;
  /**
   * The same for packed sequences (training, embedding): each key's loads and mask serve more
   * queries (llvmpipe: 16 against 8 made stories260K's attention forward and backward 15%
   * faster, 32 made them slower).
   */
  attentionBlockPacked: number;
  /** Highest attention version with blocks: 2 (block in private arrays) or 3 (unrolled). */
  attentionVersion: number;
  /** Attention v3 reads K and V from textures they are copied into. */
  attentionKvTextures: boolean;
  /** Row kernels use one invocation per row up to this row length, else a workgroup per row. */
  threadRowMaxLen: number;
  /** Reductions over at most this many elements run serially per output, else as a tree. */
  serialReduceMax: number;
}

const LLVMPIPE: Tuning = {
  profile: "llvmpipe",
  elementwiseWorkgroup: 64,
  elementwiseVec4: true,
  rowWorkgroup: 64,
  matmul: { tileM: 8, tileN: 8, workgroup: 64 },
  matmulTileArea: 1024,
  // Texture operands: a texel load is 2-3x cheaper than a storage load on llvmpipe.
  matmulVersion: 3,
  matmulSubgroups: true,
  // A storage texture's load skips the sampler's per-lane level and size clamps: a 16-lane texel
  // load took 22 ns against 49, and the square n = 1024 product 21.2 ms against 25.8.
  storageTextureReads: true,
  matmulMinInvocations: 1024,
  attentionWorkgroup: 64,
  // A 512-token prompt of stories260K (head dim 8): 16 queries per invocation took its causal
  // attention from 9.0-11.4 to 7.2-7.8 ms against 8.
  attentionBlock: 16,
  attentionBlockPacked: 16,
  attentionVersion: 3,
  attentionKvTextures: true,
  // A workgroup barrier costs more than a short row's arithmetic on a CPU rasterizer. Rows of
  // 32,768 elements in one invocation came out wrong (log-softmax 0, cross-entropy off) on
  // llvmpipe (Mesa 22.3.6) while 20,000 were right: longer rows take a workgroup.
  threadRowMaxLen: 8192,
  serialReduceMax: 1024,
};

const GPU: Tuning = {
  profile: "gpu",
  elementwiseWorkgroup: 256,
  elementwiseVec4: true,
  rowWorkgroup: 256,
  matmul: { tileM: 4, tileN: 4, workgroup: 64 },
  matmulTileArea: 1024,
  matmulVersion: 2,
  matmulSubgroups: false,
  storageTextureReads: false,
  matmulMinInvocations: 16384,
  attentionWorkgroup: 64,
  attentionBlock: 1,
  attentionBlockPacked: 1,
  attentionVersion: 3,
  attentionKvTextures: false,
  threadRowMaxLen: 128,
  serialReduceMax: 256,
};

/**
 * Whether the adapter is llvmpipe from Mesa 24 on. Its compiler runs shaders as LLVM coroutines
 * and spends time about quadratic in a kernel's size building their frames: a 16 x 32 matmul v3
 * tile took 96 s to compile from a cold cache on Mesa 25.0.7 (10 s on 22.3.6), an 8 x 8 one 3.8 s.
 */
export function slowCompiler(mesa: string | null): boolean {
  return mesa !== null && Number(mesa.split(".")[0]) >= 24;
}

/** Whether an adapter is Mesa's llvmpipe (lavapipe under Vulkan): its loop cap and Mesa version. */
export function isLlvmpipe(description: string): boolean {
  return /llvmpipe|lavapipe/i.test(description);
}

/** Whether an adapter runs shaders on the CPU (llvmpipe, SwiftShader): the llvmpipe profile. */
export function isCpuAdapter(description: string): boolean {
  return isLlvmpipe(description) || /swiftshader/i.test(description);
}

/**
 * Picks the built-in profile for an adapter description and, for llvmpipe, its Mesa version;
 * GEMKIT_TUNING=llvmpipe|gpu overrides the profile (`builtin` keeps the adapter's).
 */
export function tuningFor(description: string, mesa: string | null = null): Tuning {
  const forced = env("GEMKIT_TUNING");
  const llvmpipe = forced === "llvmpipe" || forced === "gpu"
    ? forced === "llvmpipe"
    : isCpuAdapter(description);
  if (!llvmpipe) return { ...GPU };
  // Small matmul tiles and attention blocks where compiling big ones costs minutes.
  return slowCompiler(mesa)
    ? { ...LLVMPIPE, matmulTileArea: 64, attentionBlock: 2, attentionBlockPacked: 2 }
    : { ...LLVMPIPE };
}

// ---------------------------------------------------------------------------------------------
// Saved profiles: what `deno task tune` found for one adapter, driver, runtime and gemkit version.

/** What a saved profile is valid for; a profile made under another key is foreign. */
export interface ProfileKey {
  /** Adapter description, e.g. "llvmpipe (LLVM 15.0.6, 512 bits)". */
  adapter: string;
  /** Mesa version for llvmpipe, else the adapter's driver description, or "unknown". */
  driver: string;
  /** "deno 2.9.6" (wgpu) or "bun 1.4.5" (Dawn): the WebGPU implementations differ. */
  runtime: string;
  /** gemkit's version (deno.json): kernels change between versions. */
  gemkit: string;
}

/** A tuning profile file, as `deno task tune` writes it. */
export interface TuningProfile {
  /** Always "gemkit-tuning/1". */
  format: string;
  /** What it is valid for. */
  key: ProfileKey;
  /** The kernel parameters. */
  tuning: Tuning;
  /** What the search measured (free-form, for the reader). */
  search?: unknown;
}

/** Format tag of {@link TuningProfile} files. */
export const PROFILE_FORMAT = "gemkit-tuning/1";

/** A tuning file or value that cannot be used; the message names the file and field. */
export class TuningError extends Error {
  /** Error class name. */
  override name = "TuningError";
}

/**
 * Integer fields of {@link Tuning}: positive, except where 0 has a meaning (an attention block of
 * 0 selects v1, a thread-row length of 0 gives every row a workgroup, a serial-reduce bound of 0
 * makes every reduction a tree).
 */
const INT_FIELDS = [
  "elementwiseWorkgroup",
  "rowWorkgroup",
  "matmulTileArea",
  "matmulVersion",
  "matmulMinInvocations",
  "attentionWorkgroup",
  "attentionBlock",
  "attentionBlockPacked",
  "attentionVersion",
  "threadRowMaxLen",
  "serialReduceMax",
] as const;

/** The {@link INT_FIELDS} where 0 is a setting. */
const ZERO_OK = new Set<string>([
  "attentionBlock",
  "attentionBlockPacked",
  "threadRowMaxLen",
  "serialReduceMax",
]);

/**
 * `raw` as a {@link Tuning}, every field checked (present, of its type, in range); throws a
 * {@link TuningError} naming `source` and the field at fault. Unknown fields are refused too: a
 * profile from another gemkit version must not half-apply.
 */
export function checkTuning(raw: unknown, source: string): Tuning {
  const bad = (field: string, why: string): never => {
    throw new TuningError(`${source}: tuning field '${field}' ${why}`);
  };
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    bad("(root)", "is not an object");
  }
  const r = raw as Record<string, unknown>;
  const known = new Set<string>([
    "profile",
    "elementwiseVec4",
    "matmul",
    "matmulSubgroups",
    "storageTextureReads",
    "attentionKvTextures",
    ...INT_FIELDS,
  ]);
  for (const k of Object.keys(r)) if (!known.has(k)) bad(k, "is not a tuning field");
  if (r.profile !== "llvmpipe" && r.profile !== "gpu") bad("profile", "must be llvmpipe or gpu");
  for (
    const f of ["elementwiseVec4", "matmulSubgroups", "storageTextureReads", "attentionKvTextures"]
  ) {
    if (typeof r[f] !== "boolean") bad(f, "must be true or false");
  }
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  for (const f of INT_FIELDS) {
    if (ZERO_OK.has(f)) {
      if (!(Number.isInteger(r[f]) && (r[f] as number) >= 0)) {
        bad(f, `must be a non-negative integer, got ${JSON.stringify(r[f])}`);
      }
    } else if (!posInt(r[f])) bad(f, `must be a positive integer, got ${JSON.stringify(r[f])}`);
  }
  const m = r.matmul as Record<string, unknown> | undefined;
  if (typeof m !== "object" || m === null) bad("matmul", "must be {tileM, tileN, workgroup}");
  for (const f of ["tileM", "tileN", "workgroup"]) {
    if (!posInt(m![f])) {
      bad(`matmul.${f}`, `must be a positive integer, got ${JSON.stringify(m![f])}`);
    }
  }
  if (Object.keys(m!).length !== 3) bad("matmul", "must hold exactly tileM, tileN, workgroup");
  if ((r.matmulVersion as number) > 3) bad("matmulVersion", "must be 1, 2 or 3");
  if (![2, 3].includes(r.attentionVersion as number)) bad("attentionVersion", "must be 2 or 3");
  for (const f of ["elementwiseWorkgroup", "rowWorkgroup", "attentionWorkgroup"]) {
    if ((r[f] as number) > 1024) {
      bad(f, "must be at most 1024 (WebGPU's invocations per workgroup)");
    }
  }
  if ((m!.workgroup as number) > 1024) bad("matmul.workgroup", "must be at most 1024");
  return structuredClone(r) as unknown as Tuning;
}

/**
 * Fields that only choose between kernels giving bitwise the same results: left out of
 * {@link tuningHash}, so records and checkpoints made before such a field existed keep theirs.
 */
const HASH_FREE = ["matmulSubgroups", "storageTextureReads"] as const;

/**
 * A short hash of a tuning's values (16 hex digits of SHA-256 over its canonical JSON, less the
 * {@link HASH_FREE} fields). Kernel parameters change float summation order, so training state
 * and study records keep it and a resumed run refuses another.
 */
export function tuningHash(t: Tuning): string {
  const values: Record<string, unknown> = { ...t };
  for (const f of HASH_FREE) delete values[f];
  return createHash("sha256").update(canonicalJson(values)).digest("hex").slice(0, 16);
}

/** gemkit's cache folder: GEMKIT_CACHE, else $XDG_CACHE_HOME/gemkit, else ~/.cache/gemkit. */
export function cacheDir(): string {
  return env("GEMKIT_CACHE") ?? join(env("XDG_CACHE_HOME") ?? join(homedir(), ".cache"), "gemkit");
}

/** Where `deno task tune` saves the profile of `key`, and where later runs look for it. */
export function profilePath(key: ProfileKey): string {
  const id = createHash("sha256").update(canonicalJson(key)).digest("hex").slice(0, 16);
  return join(cacheDir(), "tuning", `${id}.json`);
}

/**
 * Reads a profile file: its tuning, and a warning when its key differs from `key` (foreign).
 * Throws a {@link TuningError} naming the file when it is unreadable, not JSON, of another
 * format, or holds a bad tuning.
 */
export function readProfile(
  path: string,
  key: ProfileKey,
): { tuning: Tuning; warning: string | null } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new TuningError(`${path}: not a readable JSON tuning profile (${(e as Error).message})`);
  }
  const p = raw as Partial<TuningProfile>;
  if (p?.format !== PROFILE_FORMAT) {
    throw new TuningError(
      `${path}: field 'format' is ${JSON.stringify(p?.format)}, not ${PROFILE_FORMAT}`,
    );
  }
  const tuning = checkTuning(p.tuning, path);
  const diff = (Object.keys(key) as (keyof ProfileKey)[]).filter((k) => p.key?.[k] !== key[k]);
  const warning = diff.length
    ? `${path}: made for another ${diff.join(", ")} (${
      diff.map((k) => `${k} ${JSON.stringify(p.key?.[k])}, here ${JSON.stringify(key[k])}`).join(
        "; ",
      )
    })`
    : null;
  return { tuning, warning };
}

/** Writes a profile (through a temporary file, so a reader never sees half of one). */
export function writeProfile(path: string, profile: TuningProfile): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(profile, null, 1) + "\n");
  renameSync(tmp, path);
}

/**
 * The tuning a process uses, and where it came from:
 * - GEMKIT_TUNING_FILE (what `--tuning FILE` sets): that profile, pinned; an unusable file is an
 *   error, a foreign one a warning;
 * - GEMKIT_TUNING=llvmpipe|gpu|builtin: the built-in profile (the adapter's for `builtin`);
 * - else the saved profile of this key, when there is one; a corrupt or foreign one is ignored
 *   with a warning;
 * - else the built-in profile of the adapter.
 */
export function selectTuning(
  builtIn: Tuning,
  key: ProfileKey,
): { tuning: Tuning; source: string; warning: string | null } {
  const pinned = env("GEMKIT_TUNING_FILE");
  if (pinned) {
    const { tuning, warning } = readProfile(pinned, key);
    return { tuning, source: `file ${pinned}`, warning };
  }
  if (env("GEMKIT_TUNING")) return { tuning: builtIn, source: "built-in", warning: null };
  const path = profilePath(key);
  if (!existsSync(path)) return { tuning: builtIn, source: "built-in", warning: null };
  try {
    const { tuning, warning } = readProfile(path, key);
    if (warning) return { tuning: builtIn, source: "built-in", warning: `ignored ${warning}` };
    return { tuning, source: `tuned ${path}`, warning: null };
  } catch (e) {
    return { tuning: builtIn, source: "built-in", warning: `ignored ${(e as Error).message}` };
  }
}
