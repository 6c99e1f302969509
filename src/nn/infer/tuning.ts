/**
 * Per-adapter choices of the fused inference path, keyed by the gpu layer's tuning profile (so
 * GEMKIT_TUNING=llvmpipe|gpu overrides them too).
 */

import { gpu } from "../../gpu/device.ts";
import { slowCompiler } from "../../gpu/tuning.ts";

/** How generate() and FusedDecoder run on an adapter. */
export interface InferTuning {
  /**
   * generate() decodes small models through the fused kernels ({@link FusedDecoder}). Off on
   * llvmpipe from Mesa 24 on: its compiler takes time that grows with the square of a kernel's
   * size, and the fused decode kernel of stories260K took 370 s to compile from a cold cache on
   * Mesa 25.0.7 (5.5 s on 22.3.6), against ~19 s for all kernels of the general path.
   */
  fusedDecode: boolean;
  /**
   * Fused decode kernel version: 2 (a dispatch per layer) or 3 (one dispatch per token, weights
   * in a texture; on llvmpipe each dispatch costs ~90 us whatever it does).
   */
  decodeVersion: 2 | 3;
  /**
   * generate() runs the prompt through the fused prefill kernels (5 dispatches per layer) rather
   * than the general forward. On llvmpipe fewer dispatches win; on an H100 the general forward
   * was faster (512 tokens: 15.6 against 24.8 ms, both with the ~11.2 ms readback).
   */
  fusedPrefill: boolean;
  /**
   * Lanes of the fused decoder's one workgroup (raised for a model with more heads, or on
   * llvmpipe until each lane's share of the work stays under the loop cap). On llvmpipe a
   * workgroup runs on one core as fibers of 16 lanes (512-bit vectors) that switch at every
   * barrier, and a token takes ~60 barriers: 16 lanes decode stories260K 1.48x faster than 64
   * (1,785 against 1,209 tokens/s, one process). A GPU runs wider workgroups in parallel.
   */
  decodeWorkgroup: number;
}

const BY_PROFILE: Record<string, InferTuning> = {
  llvmpipe: { fusedDecode: true, decodeVersion: 3, fusedPrefill: true, decodeWorkgroup: 16 },
  gpu: { fusedDecode: true, decodeVersion: 3, fusedPrefill: false, decodeWorkgroup: 64 },
};

/** The inference choices for the current adapter's tuning profile and driver. */
export function inferTuning(): InferTuning {
  const g = gpu(), t = { ...BY_PROFILE[g.tuning.profile] };
  if (g.tuning.profile === "llvmpipe" && slowCompiler(g.mesa)) {
    t.fusedDecode = false;
    t.fusedPrefill = false;
  }
  return t;
}
