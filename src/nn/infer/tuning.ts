/**
 * Per-adapter choices of the fused inference path, keyed by the gpu layer's tuning profile (so
 * GEMKIT_TUNING=llvmpipe|gpu overrides them too).
 */

import { gpu } from "../../gpu/device.ts";

/** How generate() and FusedDecoder run on an adapter. */
export interface InferTuning {
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
}

const BY_PROFILE: Record<string, InferTuning> = {
  llvmpipe: { decodeVersion: 3, fusedPrefill: true },
  gpu: { decodeVersion: 3, fusedPrefill: false },
};

/** The inference choices for the current adapter's tuning profile. */
export function inferTuning(): InferTuning {
  return { ...BY_PROFILE[gpu().tuning.profile] };
}
