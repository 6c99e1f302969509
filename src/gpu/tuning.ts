/**
 * Per-adapter kernel parameters. llvmpipe (a CPU rasterizer: each invocation is a SIMD lane, no
 * real shared memory) and a discrete GPU want different shapes, so kernels read their tile sizes
 * and workgroup sizes from here instead of hard-coding them.
 */

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
  /** Matmuls with fewer output tiles than this split K to keep the device busy. */
  matmulMinInvocations: number;
  /** Queries per attention workgroup. */
  attentionWorkgroup: number;
  /** Queries (or keys) per invocation in attention v2/v3; 0 selects v1. */
  attentionBlock: number;
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
  matmulMinInvocations: 1024,
  attentionWorkgroup: 64,
  attentionBlock: 8,
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
  matmulMinInvocations: 16384,
  attentionWorkgroup: 64,
  attentionBlock: 1,
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

/**
 * Picks the profile for an adapter description and, for llvmpipe, its Mesa version;
 * GEMKIT_TUNING=llvmpipe|gpu overrides the profile.
 */
export function tuningFor(description: string, mesa: string | null = null): Tuning {
  const forced = env("GEMKIT_TUNING");
  const llvmpipe = forced === "llvmpipe" || forced === "gpu"
    ? forced === "llvmpipe"
    : /llvmpipe|lavapipe|swiftshader/i.test(description);
  if (!llvmpipe) return { ...GPU };
  // Small matmul tiles and attention blocks where compiling big ones costs minutes.
  return slowCompiler(mesa)
    ? { ...LLVMPIPE, matmulTileArea: 64, attentionBlock: 2 }
    : { ...LLVMPIPE };
}
