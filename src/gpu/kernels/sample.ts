/**
 * Next-token choice on the GPU, so generation feeds tokens back without a readback per step:
 * greedy (temperature 0: first arg-max) or temperature + nucleus (top-p) sampling. One workgroup
 * per sequence. The chosen id goes to NEXT[b] (the next step's input) and HIST[b, step].
 *
 * Top-p without sorting: the kept set {p_i >= theta} with theta the largest threshold whose mass
 * reaches top_p is found by bisection on theta (32 rounds of workgroup sums); the sample is then
 * the first id, in vocabulary order, where the running kept mass passes u * kept mass. Same
 * distribution as llama2.c's sorted sampler, different mapping from u to token.
 *
 * Versions: v1.
 */

import type { Gpu } from "../device.ts";
import { defineKernel, type Kernel, ParamWriter } from "../kernel.ts";
import type { GpuBuffer } from "../pool.ts";
import { rowReduceHelpers } from "./rowwise.ts";

/**
 * WGSL: `choose(base, V, u, temperature, topP, lid) -> u32`, the id picked by the whole workgroup
 * (every invocation gets it) from the V logits at `base` of the storage array named `logits`:
 * greedy when temperature is 0, else temperature + top-p with the uniform `u`. Needs
 * {@link rowReduceHelpers}.
 */
export function chooseSource(wg: number, logits: string): string {
  return `var<workgroup> arg: array<u32, ${wg}>;

fn sumExp(base: u32, V: u32, m: f32, inv: f32, lid: u32) -> f32 {
  var s = 0.0;
  for (var j = lid; j < V; j += ${wg}u) { s += exp((${logits}[base + j] - m) * inv); }
  return s;
}

fn choose(base: u32, V: u32, u: f32, temperature: f32, topP: f32, lid: u32) -> u32 {
  // Arg-max with first-index tie break.
  var best = -3.4028234e38;
  var bi = 0xffffffffu;
  for (var j = lid; j < V; j += ${wg}u) {
    let x = ${logits}[base + j];
    if (x > best) { best = x; bi = j; }
  }
  red[lid] = best;
  arg[lid] = bi;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let o = red[lid + s];
      if (o > red[lid] || (o == red[lid] && arg[lid + s] < arg[lid])) {
        red[lid] = o;
        arg[lid] = arg[lid + s];
      }
    }
    workgroupBarrier();
  }
  let m = red[0];
  var choice = arg[0];
  workgroupBarrier();
  if (temperature > 0.0) {
    let inv = 1.0 / temperature;
    let z = wgSum(sumExp(base, V, m, inv, lid), lid);
    // Bisection for the top-p threshold on normalised probabilities.
    var lo = 0.0;
    var hi = 1.0;
    if (topP < 1.0) {
      for (var it = 0; it < 32; it++) {
        let mid = 0.5 * (lo + hi);
        var part = 0.0;
        for (var j = lid; j < V; j += ${wg}u) {
          let p = exp((${logits}[base + j] - m) * inv) / z;
          if (p >= mid) { part += p; }
        }
        let mass = wgSum(part, lid);
        if (mass >= topP) { lo = mid; } else { hi = mid; }
      }
    }
    let theta = lo;
    // Contiguous chunks per invocation so a prefix over chunks orders ids.
    let chunk = (V + ${wg - 1}u) / ${wg}u;
    let j0 = min(lid * chunk, V);
    let j1 = min(j0 + chunk, V);
    var mine = 0.0;
    for (var j = j0; j < j1; j++) {
      let p = exp((${logits}[base + j] - m) * inv) / z;
      if (p >= theta) { mine += p; }
    }
    red[lid] = mine;
    workgroupBarrier();
    if (lid == 0u) {
      var total = 0.0;
      for (var i = 0u; i < ${wg}u; i++) { total += red[i]; }
      let goal = u * total;
      var acc = 0.0;
      var found = false;
      for (var i = 0u; i < ${wg}u && !found; i++) {
        if (acc + red[i] > goal) {
          let a0 = min(i * chunk, V);
          let a1 = min(a0 + chunk, V);
          for (var j = a0; j < a1; j++) {
            let p = exp((${logits}[base + j] - m) * inv) / z;
            if (p >= theta) {
              acc += p;
              choice = j;
              if (acc > goal) { found = true; break; }
            }
          }
        } else {
          acc += red[i];
        }
      }
      arg[0] = choice;
    }
    workgroupBarrier();
    choice = arg[0];
  }
  return choice;
}`;
}

export function sampleKernel(wg: number): Kernel {
  return defineKernel({
    name: "sample",
    params: `V: u32, rowStride: u32, rowOffset: u32, step: u32,
             maxNew: u32, batch: u32, temperature: f32, topP: f32,`,
    bindings: [
      ["L", "read", "array<f32>"],
      ["U", "read", "array<f32>"],
      ["NEXT", "rw", "array<i32>"],
      ["HIST", "rw", "array<i32>"],
    ],
    body: `${rowReduceHelpers(wg)}
${chooseSource(wg, "L")}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wid.x;
  let u = U[P.step * P.batch + b];
  let choice = choose(b * P.rowStride + P.rowOffset, P.V, u, P.temperature, P.topP, lid);
  if (lid == 0u) {
    NEXT[b] = i32(choice);
    HIST[b * P.maxNew + P.step] = i32(choice);
  }
}`,
  });
}

/** Sampling settings of one generation step. */
export interface SampleStep {
  vocab: number;
  /** Elements between sequences' rows in the logits buffer, and offset of the row to use. */
  rowStride: number;
  rowOffset: number;
  batch: number;
  step: number;
  maxNew: number;
  temperature: number;
  topP: number;
}

export function runSample(
  gpu: Gpu,
  logits: GpuBuffer,
  uniforms: GpuBuffer,
  next: GpuBuffer,
  history: GpuBuffer,
  s: SampleStep,
): void {
  // One invocation loops ~36 times over its share of the vocabulary (the arg-max, the sum, 32
  // bisection steps of top-p, its chunk) plus over the workgroup; llvmpipe stops all of an
  // invocation's loops together at 65,535 iterations (Gpu.loopLimit), silently. Where the
  // vocabulary needs it (Llama 3's 128,256 at 64 lanes) the workgroup grows to keep under half.
  const loops = (w: number) => 36 * Math.ceil(s.vocab / w) + 2 * w + 40 * Math.log2(w);
  let wg = gpu.tuning.rowWorkgroup;
  while (loops(wg) > gpu.loopLimit / 2 && wg < 1024) wg *= 2;
  const p = new ParamWriter().u32(s.vocab).u32(s.rowStride).u32(s.rowOffset).u32(s.step)
    .u32(s.maxNew).u32(s.batch).f32(s.temperature).f32(s.topP);
  gpu.dispatch(sampleKernel(wg), [logits, uniforms, next, history], p, [s.batch, 1, 1]);
}
