/** Shared test helpers: GPU set-up, golden loading, and tolerance checks (atol + rtol * |ref|). */

import { initGpu } from "../src/gpu/device.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { type DType, type Tensor, tensor } from "../src/tensor/tensor.ts";

/** The test device. CI always has the llvmpipe adapter; without one this throws, it never skips. */
export function testGpu(): Promise<Gpu> {
  return initGpu({ log: false });
}

export interface GoldenTensor {
  shape: number[];
  dtype: "f32" | "i32";
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
  const json = JSON.parse(Deno.readTextFileSync(url));
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
