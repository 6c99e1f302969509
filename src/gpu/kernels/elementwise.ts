/**
 * Elementwise kernels: out[i] = expr(x0[...], x1[...], x2[...]) over a contiguous output, with each
 * input read through its own strides (stride 0 = broadcast), so transposed or broadcast views need
 * no copy. One generator serves unary ops, binary ops, their gradients and copies.
 *
 * Versions: v1 one element per invocation, strided index math unrolled for the rank; a contiguous
 * fast path when every input is laid out exactly like the output. v2 (contiguous, every offset
 * and the length multiples of 4): four elements per invocation through vec4 loads and stores,
 * the expression still evaluated per component. On llvmpipe a load costs about the same per lane
 * whatever its width, so this does a quarter of the loads.
 *
 * Several expressions over the same inputs write one output each in one kernel that loads every
 * input once: a gradient rule with two results then reads its operands once, not twice.
 */

import type { Gpu } from "../device.ts";
import { cachedKernel, defineKernel, grid, gridMain, type Kernel, ParamWriter } from "../kernel.ts";
import { BufferWindow } from "../pool.ts";
import { type Binding, bindRange, paged, spans } from "../pages.ts";
import { BindingLimitError } from "../errors.ts";

/**
 * WGSL element type names for the storage dtypes the engine knows. An f16 operand is widened to
 * f32 as it is loaded, so expressions always compute in f32 (or i32); an f16 output is rounded
 * once, at the store.
 */
export type WgslType = "f32" | "i32" | "f16";

/**
 * An operand of an elementwise kernel: its buffer, element offset, strides (one per output dim)
 * and the name the expression uses for its value.
 */
export interface StridedInput {
  name: string;
  buf: Binding;
  offset: number;
  strides: readonly number[];
  type: WgslType;
}

/** Where an elementwise kernel writes: contiguous unless strides are given (a view). */
export interface StridedOutput {
  buf: Binding;
  offset: number;
  strides: readonly number[];
  type: WgslType;
}

/** Most output dims an elementwise kernel indexes (shapes are padded up to this). */
export const MAX_RANK = 8;

/**
 * Unary expressions over `a` (the input value) and `c` (a scalar f32 parameter). Extreme inputs are
 * handled without relying on inf behaviour, which WGSL leaves to the implementation.
 */
export const UNARY = {
  copy: "a",
  neg: "-a",
  exp: "exp(a)",
  log: "log(a)",
  sqrt: "sqrt(a)",
  rsqrt: "inverseSqrt(a)",
  sigmoid: "sigmoid(a)",
  silu: "a * sigmoid(a)",
  tanh: "tanh(clamp(a, -15.0, 15.0))",
  relu: "max(a, 0.0)",
  square: "a * a",
  abs: "abs(a)",
  recip: "1.0 / a",
  addScalar: "a + P.c",
  mulScalar: "a * P.c",
  powScalar: "pow(a, P.c)",
  fill: "P.c",
} as const;
export type UnaryFn = keyof typeof UNARY;

export const BINARY = {
  add: "a + b",
  sub: "a - b",
  mul: "a * b",
  div: "a / b",
  maximum: "max(a, b)",
  minimum: "min(a, b)",
  pow: "pow(a, b)",
  gt: "select(0.0, 1.0, a > b)",
  eq: "select(0.0, 1.0, a == b)",
} as const;
export type BinaryFn = keyof typeof BINARY;

/** WGSL `sigmoid(x)`, shared by every kernel that computes it so results agree bitwise. */
export const SIGMOID_WGSL = `
fn sigmoid(x: f32) -> f32 {
  // Two branches so exp never sees a large positive argument.
  let e = exp(-abs(x));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}`;

/**
 * Generates the kernel for `expr` over inputs with the given names and types. Operand 0..n-1 are
 * the inputs, operand n is the output; `contiguous` means every operand is laid out like a
 * contiguous output, so index math is skipped. Several expressions write one output each
 * (operands n, n + 1, ...), every input loaded once: a gradient rule with two results in one pass.
 */
export function elementwiseKernel(
  expr: string | readonly string[],
  names: readonly string[],
  types: readonly WgslType[],
  outType: WgslType,
  rank: number,
  contiguous: boolean,
  workgroup: number,
  vec4 = false,
): Kernel {
  if (vec4 && !contiguous) throw new Error("elementwise: vec4 needs contiguous operands");
  const exprs = typeof expr === "string" ? [expr] : expr;
  const m = exprs.length, o = names.length;
  // One output keeps the names it always had (`out`, `at`, `r`), so its kernels stay the same.
  const sfx = (j: number) => (m === 1 ? "" : String(j));
  const ops = [...names.map((_, i) => i), ...exprs.map((_, j) => o + j)];
  const params = [
    "n: u32,",
    "c: f32,",
    ...ops.map((i) => `off${i}: u32,`),
    "shape: array<vec4<u32>, 2>,",
    ...ops.map((i) => `st${i}: array<vec4<u32>, 2>,`),
  ].join("\n");
  const array = (t: WgslType) => `array<${vec4 ? `vec4<${t}>` : t}>`;
  const load = (i: number, at: string) =>
    types[i] !== "f16" ? `x${i}[${at}]` : vec4 ? `vec4<f32>(x${i}[${at}])` : `f32(x${i}[${at}])`;
  const index: string[] = [];
  let store = exprs.map((e, j) => `  out${sfx(j)}[at${sfx(j)}] = ${outType}(${e});`).join("\n");
  if (vec4) {
    // Offsets and n are in vec4 units here.
    names.forEach((_, i) => index.push(`  let v${i} = ${load(i, `P.off${i} + i`)};`));
    exprs.forEach((_, j) => index.push(`  var r${sfx(j)}: vec4<${outType}>;`));
    for (const c of "xyzw") {
      const lets = names.map((n, i) => `let ${n} = v${i}.${c};`).join(" ");
      const sets = exprs.map((e, j) => `r${sfx(j)}.${c} = ${outType}(${e});`).join(" ");
      index.push(`  { ${lets} ${sets} }`);
    }
    store = exprs.map((_, j) => `  out${sfx(j)}[P.off${o + j} + i] = r${sfx(j)};`).join("\n");
  } else if (contiguous) {
    names.forEach((n, i) => index.push(`  let ${n} = ${load(i, `P.off${i} + i`)};`));
    exprs.forEach((_, j) => index.push(`  let at${sfx(j)} = P.off${o + j} + i;`));
  } else {
    index.push("  var rem = i;");
    ops.forEach((i) => index.push(`  var o${i} = P.off${i};`));
    for (let d = rank - 1; d >= 0; d--) {
      const s = `[${d >> 2}][${d & 3}]`;
      index.push(`  { let c = rem % P.shape${s}; rem = rem / P.shape${s};`);
      ops.forEach((i) => index.push(`    o${i} += c * P.st${i}${s};`));
      index.push("  }");
    }
    names.forEach((n, i) => index.push(`  let ${n} = ${load(i, `o${i}`)};`));
    exprs.forEach((_, j) => index.push(`  let at${sfx(j)} = o${o + j};`));
  }
  return defineKernel({
    name: `elementwise${vec4 ? "4" : ""}(${exprs.join(" ; ").slice(0, 40)})`,
    params,
    bindings: [
      ...types.map((t, i) => [`x${i}`, "read", array(t)] as const),
      ...exprs.map((_, j) => [`out${sfx(j)}`, "rw", array(outType)] as const),
    ],
    body: `${SIGMOID_WGSL}
${gridMain(workgroup, "i", "i >= P.n", `${index.join("\n")}\n${store}`)}`,
  });
}

/**
 * Dispatches `expr` over `inputs` into `out`, all indexed over `shape`. `c` is the scalar
 * parameter some expressions use (P.c). Several expressions take one output each, in order (of
 * one element type), and read the inputs once.
 */
export function runElementwise(
  gpu: Gpu,
  expr: string | readonly string[],
  inputs: readonly StridedInput[],
  out: StridedOutput | readonly StridedOutput[],
  shape: readonly number[],
  c = 0,
): void {
  const exprs = typeof expr === "string" ? [expr] : expr;
  const outs = "buf" in out ? [out as StridedOutput] : out as readonly StridedOutput[];
  const what = exprs.join("; ");
  if (
    !exprs.length || outs.length !== exprs.length || outs.some((x) => x.type !== outs[0].type)
  ) {
    throw new Error(
      `elementwise '${what}': ${exprs.length} expressions need as many outputs (got ${outs.length}), all of one element type`,
    );
  }
  const n = shape.reduce((p, q) => p * q, 1);
  if (n === 0) return;
  if (shape.length > MAX_RANK) throw new Error(`elementwise: rank ${shape.length} > ${MAX_RANK}`);
  const contig = contiguousStrides(shape);
  const operands = [...inputs, ...outs];
  const contiguous = operands.every((x) =>
    x.strides.every((s, d) => shape[d] === 1 || s === contig[d])
  );
  // Operands past one binding: contiguous ones run in spans over windows.
  const whole = operands.flatMap((x) => (x.buf instanceof BufferWindow ? [] : [x.buf]));
  if (whole.some((b) => paged(gpu, b))) {
    if (!contiguous) {
      throw new BindingLimitError(
        `elementwise '${what}': a strided or broadcast operand of a tensor past one binding`,
      );
    }
    for (const [s, count] of spans(gpu, n, whole)) {
      const win = <T extends StridedInput | StridedOutput>(x: T): T => {
        if (x.buf instanceof BufferWindow) return { ...x, offset: x.offset + s, strides: [1] };
        const r = bindRange(
          gpu,
          x.buf,
          x.offset + s,
          x.offset + s + count,
          `elementwise '${what}'`,
          x.type === "f16" ? 2 : 4,
        );
        return { ...x, buf: r.bind, offset: x.offset + s - r.base, strides: [1] };
      };
      runElementwise(gpu, exprs, inputs.map(win), outs.map(win), [count], c);
    }
    return;
  }
  // Drop unit dims: they never move the index.
  const keep = shape.map((s, d) => (s !== 1 ? d : -1)).filter((d) => d >= 0);
  const wg = gpu.tuning.elementwiseWorkgroup;
  const vec4 = contiguous && gpu.tuning.elementwiseVec4 && n % 4 === 0 &&
    operands.every((x) => x.offset % 4 === 0);
  const names = inputs.map((x) => x.name);
  const types = inputs.map((x) => x.type);
  const outType = outs[0].type;
  const key = exprs.length === 1 ? exprs[0] : JSON.stringify(exprs);
  const kernel = cachedKernel(
    `elementwise:${key}|${names}|${types}|${outType}|${keep.length}|${contiguous}|${wg}|${vec4}`,
    () => elementwiseKernel(exprs, names, types, outType, keep.length, contiguous, wg, vec4),
  );
  const per = vec4 ? 4 : 1;
  const p = new ParamWriter().u32(n / per).f32(c);
  for (const x of operands) p.u32(x.offset / per);
  p.vec4u(keep.map((d) => shape[d]), 2);
  for (const x of operands) p.vec4u(keep.map((d) => x.strides[d]), 2);
  gpu.dispatch(kernel, operands.map((x) => x.buf), p, grid(Math.ceil(n / per / wg)));
}

/** Row-major strides of a shape. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}
