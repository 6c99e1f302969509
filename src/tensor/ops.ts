/**
 * Differentiable tensor ops. Each op checks its operands (errors name the op and the shapes),
 * records its kernels, and records a graph node when gradients are needed. Every op returns a
 * new Tensor that the caller owns, views included.
 */

import { gpu } from "../gpu/device.ts";
import { DTypeError, IndexError, ShapeError } from "../gpu/errors.ts";
import { checkRoleTable, runAttention } from "../gpu/kernels/attention.ts";
import {
  runCrossEntropy,
  runCrossEntropyChunk,
  runCrossEntropyFinish,
} from "../gpu/kernels/cross_entropy.ts";
import {
  BINARY,
  type BinaryFn,
  runElementwise,
  type StridedInput,
  UNARY,
  type UnaryFn,
} from "../gpu/kernels/elementwise.ts";
import { gatherVec4Fits, runGather } from "../gpu/kernels/embedding.ts";
import { runMatmul } from "../gpu/kernels/matmul.ts";
import { runAccumulate } from "../gpu/kernels/optim.ts";
import { bindRange, paged } from "../gpu/pages.ts";
import { runReduce } from "../gpu/kernels/reduce.ts";
import { type RopeScaling, ropeTable as hostRopeTable, runRope } from "../gpu/kernels/rope.ts";
import { rmsnormKernel, runRowKernel, softmaxKernel } from "../gpu/kernels/rowwise.ts";
import { type CheckpointFn, needsGrad, record } from "./graph.ts";
import {
  contiguousStrides,
  type DType,
  DTYPE_BYTES,
  empty,
  noGrad,
  numel,
  scope,
  Tensor,
  tensor,
} from "./tensor.ts";

function fail(op: string, msg: string): never {
  throw new ShapeError(`${op}: ${msg}`);
}

function shapeStr(t: Tensor): string {
  return `[${t.shape.join(",")}]`;
}

function wantDType(op: string, t: Tensor, dtype: DType, what: string): void {
  if (t.dtype !== dtype) {
    throw new DTypeError(`${op}: ${what} must be ${dtype}, got ${t.describe()}`);
  }
}

/** f32, or f16 where an op reads it as storage (widened to f32 as it loads). */
function wantFloat(op: string, t: Tensor, what: string): void {
  if (t.dtype !== "f32" && t.dtype !== "f16") {
    throw new DTypeError(`${op}: ${what} must be f32 or f16, got ${t.describe()}`);
  }
}

/** The storage dtype of an activation an op writes: f32 (the default) or f16. */
export type ActDType = "f32" | "f16";

function wantAct(op: string, dtype: string): void {
  if (dtype !== "f32" && dtype !== "f16") {
    throw new DTypeError(`${op}: dtype must be 'f32' or 'f16', got '${dtype}'`);
  }
}

/**
 * `t` as a contiguous f32 tensor for a kernel that reads f32 (a widened copy when it is f16, no
 * autograd); the caller disposes it.
 */
export function widened(t: Tensor): Tensor {
  if (t.dtype !== "f16") return contiguous(t);
  return noGrad(() => mapExpr("a", { a: t }, t.shape));
}

/**
 * `c` (f32, computed by an op) stored as `dtype`: f16 rounds it to nearest even into a new
 * tensor and releases `c`. An op computes in f32 and rounds once, on the way out.
 */
function stored(c: Tensor, dtype: ActDType, what: string): Tensor {
  if (dtype === "f32") return c;
  const out = empty(c.shape, "f16", what);
  runElementwise(gpu(), "a", [input(c, "a", c.shape)], outOf(out), c.shape);
  c.dispose();
  return out;
}

/** f16 when every one of `xs` is f16, else f32: elementwise ops keep half precision. */
function joint(xs: readonly Tensor[]): ActDType {
  return xs.every((x) => x.dtype === "f16") ? "f16" : "f32";
}

function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= Math.max(rank, 1)) {
    fail(op, `axis ${axis} out of range for rank ${rank}`);
  }
  return a;
}

/** Strides of `t` as seen from `outShape` (numpy broadcasting: stride 0 on broadcast dims). */
function broadcastStrides(t: Tensor, outShape: readonly number[]): number[] {
  const lead = outShape.length - t.rank;
  return outShape.map((s, d) => {
    const td = d - lead;
    if (td < 0) return 0;
    return t.shape[td] === 1 && s !== 1 ? 0 : t.strides[td];
  });
}

function input(t: Tensor, name: string, outShape: readonly number[]): StridedInput {
  return {
    name,
    buf: t.buf,
    offset: t.offset,
    strides: broadcastStrides(t, outShape),
    type: t.dtype,
  };
}

function outOf(t: Tensor) {
  return { buf: t.buf, offset: t.offset, strides: t.strides, type: t.dtype };
}

/** Broadcast shape of two shapes, or an error naming the op. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1, y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      fail(op, `shapes [${a.join(",")}] and [${b.join(",")}] do not broadcast`);
    }
    out.push(x === 1 ? y : x);
  }
  return out;
}

// ---------------------------------------------------------------- creation

/** A tensor filled with `value`. */
export function full(shape: readonly number[], value: number, dtype: DType = "f32"): Tensor {
  const out = empty(shape, dtype, "full");
  runElementwise(gpu(), "P.c", [], outOf(out), shape, value);
  return out;
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return full(shape, 0, dtype);
}

/** Normal(0, std^2) values drawn on the host from `rng`. */
export function randn(
  shape: readonly number[],
  rng: { normal(): number },
  std = 1,
): Tensor {
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
  return tensor(data, shape, "f32");
}

/** A leaf parameter: a tensor that requires gradients. */
export function parameter(t: Tensor, label = ""): Tensor {
  t.requiresGrad = true;
  t.label = label;
  return t;
}

// ---------------------------------------------------------------- views

function view(
  x: Tensor,
  shape: readonly number[],
  strides: readonly number[],
  offset: number,
): Tensor {
  return new Tensor(x.storage, shape, strides, offset, x.dtype);
}

/** Same elements, new shape (one dim may be -1). Copies only when `x` is not contiguous. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const n = x.size;
  const known = shape.filter((s) => s !== -1).reduce((p, q) => p * q, 1);
  const free = shape.filter((s) => s === -1).length;
  if (free > 1 || (free === 1 && (known === 0 || n % known !== 0))) {
    fail("reshape", `cannot reshape ${x.describe()} to [${shape}]`);
  }
  const to = shape.map((s) => (s === -1 ? n / known : s));
  if (numel(to) !== n) fail("reshape", `cannot reshape ${x.describe()} to [${shape}]`);
  if (!x.contiguous) {
    const c = contiguous(x);
    const r = reshape(c, to);
    c.dispose();
    return r;
  }
  const out = view(x, to, contiguousStrides(to), x.offset);
  return record(out, "reshape", [x], [], { from: x.shape });
}

/** Reorders dims: out dim i is x dim `dims[i]`. A view. */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  if (dims.length !== x.rank || [...dims].sort((a, b) => a - b).some((d, i) => d !== i)) {
    fail("permute", `dims [${dims}] are not a permutation for ${x.describe()}`);
  }
  const out = view(x, dims.map((d) => x.shape[d]), dims.map((d) => x.strides[d]), x.offset);
  return record(out, "permute", [x], [], { dims });
}

/** Swaps two dims (default: the last two). A view. */
export function transpose(x: Tensor, d0 = -2, d1 = -1): Tensor {
  const a = normAxis("transpose", d0, x.rank), b = normAxis("transpose", d1, x.rank);
  const dims = x.shape.map((_, i) => i);
  [dims[a], dims[b]] = [dims[b], dims[a]];
  return permute(x, dims);
}

/** Elements [start, end) along `axis`. A view. */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const a = normAxis("slice", axis, x.rank);
  if (!(0 <= start && start <= end && end <= x.shape[a])) {
    fail("slice", `range [${start}, ${end}) out of bounds for dim ${a} of ${x.describe()}`);
  }
  const shape = [...x.shape];
  shape[a] = end - start;
  const out = view(x, shape, x.strides, x.offset + start * x.strides[a]);
  return record(out, "slice", [x], [], { axis: a, start, from: x.shape });
}

/** Broadcasts `x` to `shape` (stride 0 on expanded dims). A view. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const b = broadcastShapes("expand", x.shape, shape);
  if (b.some((s, i) => s !== shape[i])) {
    fail("expand", `cannot expand ${x.describe()} to [${shape}]`);
  }
  const out = view(x, [...shape], broadcastStrides(x, shape), x.offset);
  return record(out, "expand", [x], [], { from: x.shape });
}

/** A contiguous copy starting at offset 0, or an alias when `x` already is one. */
export function contiguous(x: Tensor): Tensor {
  let out: Tensor;
  if (x.contiguous && x.offset === 0) out = x.alias(true);
  else {
    out = empty(x.shape, x.dtype, "contiguous");
    runElementwise(gpu(), "a", [input(x, "a", x.shape)], outOf(out), x.shape);
  }
  return record(out, "copy", [x]);
}

/**
 * `x` stored as `dtype` (f32 or f16): to f16 rounds to nearest even (beyond 65504 gives
 * infinity), to f32 is exact. The gradient stays f32 whichever way the cast goes: f16 is a
 * storage format here, never the arithmetic of a backward pass.
 */
export function cast(x: Tensor, dtype: "f32" | "f16"): Tensor {
  if (x.dtype === "i32") throw new DTypeError(`cast: input ${x.describe()} must be f32 or f16`);
  if (dtype !== "f32" && dtype !== "f16") {
    throw new DTypeError(`cast: dtype must be 'f32' or 'f16', got '${dtype}'`);
  }
  const out = empty(x.shape, dtype, "cast");
  runElementwise(gpu(), "a", [input(x, "a", x.shape)], outOf(out), x.shape);
  return record(out, "cast", [x]);
}

/** Joins tensors along `axis`. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) fail("concat", "no tensors");
  const a = normAxis("concat", axis, xs[0].rank);
  for (const x of xs) {
    if (
      x.rank !== xs[0].rank || x.dtype !== xs[0].dtype ||
      x.shape.some((s, d) => d !== a && s !== xs[0].shape[d])
    ) {
      fail("concat", `shapes ${xs.map(shapeStr).join(" ")} differ off axis ${a}`);
    }
  }
  const shape = [...xs[0].shape];
  shape[a] = xs.reduce((s, x) => s + x.shape[a], 0);
  const out = empty(shape, xs[0].dtype, "concat");
  let at = 0;
  for (const x of xs) {
    runElementwise(gpu(), "a", [input(x, "a", x.shape)], {
      buf: out.buf,
      offset: at * out.strides[a],
      strides: out.strides,
      type: out.dtype,
    }, x.shape);
    at += x.shape[a];
  }
  return record(out, "concat", xs, [], { axis: a, sizes: xs.map((x) => x.shape[a]) });
}

// ---------------------------------------------------------------- elementwise

/** f(x) elementwise; `c` is the scalar of addScalar/mulScalar/powScalar. */
export function unary(fn: UnaryFn, x: Tensor, c = 0): Tensor {
  if (!(fn in UNARY) || fn === "fill") throw new Error(`unary: unknown fn '${fn}'`);
  wantFloat(`unary(${fn})`, x, "input");
  const out = empty(x.shape, joint([x]), fn);
  runElementwise(gpu(), UNARY[fn], [input(x, "a", x.shape)], outOf(out), x.shape, c);
  return record(out, "unary", [x], [x], { fn, c });
}

/** f(a, b) elementwise with numpy broadcasting. */
export function binary(fn: BinaryFn, a: Tensor, b: Tensor): Tensor {
  if (!(fn in BINARY)) throw new Error(`binary: unknown fn '${fn}'`);
  wantFloat(`binary(${fn})`, a, "a");
  wantFloat(`binary(${fn})`, b, "b");
  const shape = broadcastShapes(`binary(${fn})`, a.shape, b.shape);
  const out = empty(shape, joint([a, b]), fn);
  runElementwise(
    gpu(),
    BINARY[fn],
    [input(a, "a", shape), input(b, "b", shape)],
    outOf(out),
    shape,
  );
  return record(out, "binary", [a, b], [a, b], { fn });
}

/** a + b (broadcasting). */
export const add = (a: Tensor, b: Tensor): Tensor => binary("add", a, b);
/** a - b (broadcasting). */
export const sub = (a: Tensor, b: Tensor): Tensor => binary("sub", a, b);
/** a * b (broadcasting). */
export const mul = (a: Tensor, b: Tensor): Tensor => binary("mul", a, b);
/** a / b (broadcasting). */
export const div = (a: Tensor, b: Tensor): Tensor => binary("div", a, b);
/** max(a, b) elementwise (broadcasting). */
export const maximum = (a: Tensor, b: Tensor): Tensor => binary("maximum", a, b);
/** min(a, b) elementwise (broadcasting). */
export const minimum = (a: Tensor, b: Tensor): Tensor => binary("minimum", a, b);
/** a ** b (broadcasting). */
export const pow = (a: Tensor, b: Tensor): Tensor => binary("pow", a, b);
/** -x. */
export const neg = (x: Tensor): Tensor => unary("neg", x);
/** e ** x. */
export const exp = (x: Tensor): Tensor => unary("exp", x);
/** natural log. */
export const log = (x: Tensor): Tensor => unary("log", x);
/** square root. */
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
/** 1 / (1 + e^-x). */
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
/** x * sigmoid(x). */
export const silu = (x: Tensor): Tensor => unary("silu", x);
/** x * x. */
export const square = (x: Tensor): Tensor => unary("square", x);
/** x * c. */
export const mulScalar = (x: Tensor, c: number): Tensor => unary("mulScalar", x, c);
/** x + c. */
export const addScalar = (x: Tensor, c: number): Tensor => unary("addScalar", x, c);

/** silu(a) * b, the gate of a SwiGLU MLP, in one kernel. */
export function swiglu(a: Tensor, b: Tensor): Tensor {
  wantFloat("swiglu", a, "a");
  wantFloat("swiglu", b, "b");
  if (a.shape.join() !== b.shape.join()) {
    fail("swiglu", `a ${shapeStr(a)} and b ${shapeStr(b)} differ`);
  }
  const out = empty(a.shape, joint([a, b]), "swiglu");
  runElementwise(
    gpu(),
    "a * sigmoid(a) * b",
    [input(a, "a", a.shape), input(b, "b", a.shape)],
    outOf(out),
    a.shape,
  );
  return record(out, "swiglu", [a, b], [a, b]);
}

// ---------------------------------------------------------------- reductions

function reduceDims(x: Tensor, axis: number) {
  const outer = numel(x.shape.slice(0, axis));
  const inner = numel(x.shape.slice(axis + 1));
  return { outer, r: x.shape[axis], inner };
}

function reducedShape(shape: readonly number[], axis: number, keepdim: boolean): number[] {
  return keepdim ? shape.map((s, d) => (d === axis ? 1 : s)) : shape.filter((_, d) => d !== axis);
}

function sumImpl(x: Tensor, axis: number, keepdim: boolean, scale: number, op: string): Tensor {
  wantDType(op, x, "f32", "input");
  const a = normAxis(op, axis, x.rank);
  if (x.rank === 0) return mulScalar(x, scale);
  const xc = x.contiguous ? x : contiguous(x);
  const out = empty(reducedShape(x.shape, a, keepdim), "f32", op);
  runReduce(gpu(), "sum", xc.buf, xc.offset, reduceDims(x, a), out.buf, 0, null, scale);
  if (xc !== x) xc.dispose();
  return record(out, "sum", [x], [], { axis: a, keepdim, scale, from: x.shape });
}

/** Sum over `axis`. */
export function sum(x: Tensor, axis = -1, keepdim = false): Tensor {
  return sumImpl(x, axis, keepdim, 1, "sum");
}

/** Mean over `axis`. */
export function mean(x: Tensor, axis = -1, keepdim = false): Tensor {
  const a = normAxis("mean", axis, x.rank);
  return sumImpl(x, a, keepdim, x.rank ? 1 / x.shape[a] : 1, "mean");
}

/** Sum of all elements, shape []. */
export function sumAll(x: Tensor): Tensor {
  const flat = reshape(x, [x.size]);
  const s = sum(flat, 0);
  flat.dispose();
  return s;
}

/** Max over `axis`; the gradient flows to the first maximal element. */
export function max(x: Tensor, axis = -1, keepdim = false): Tensor {
  wantDType("max", x, "f32", "input");
  const a = normAxis("max", axis, x.rank);
  const xc = x.contiguous ? x : contiguous(x);
  const shape = reducedShape(x.shape, a, keepdim);
  const out = empty(shape, "f32", "max");
  const arg = empty(shape, "i32", "argmax");
  runReduce(gpu(), "max", xc.buf, xc.offset, reduceDims(x, a), out.buf, 0, arg.buf);
  if (xc !== x) xc.dispose();
  record(out, "max", [x], [arg], { axis: a, from: x.shape });
  arg.dispose();
  return out;
}

// ---------------------------------------------------------------- matmul

/** Transposes of {@link matmul}'s operands. */
export interface MatmulOptions {
  /** Use a's last two dims transposed. */
  transA?: boolean;
  /** Use b's last two dims transposed. */
  transB?: boolean;
  /** Storage of the product: f32 (default), or f16 (accumulated in f32, rounded once). */
  dtype?: ActDType;
}

/** Batch dims of a matmul operand as one (count, stride), or null if they cannot merge. */
function batchOf(t: Tensor): { count: number; stride: number } | null {
  let count = 1, stride = 0;
  for (let d = t.rank - 3; d >= 0; d--) {
    if (t.shape[d] === 1) continue;
    if (count === 1) stride = t.strides[d];
    else if (t.strides[d] !== stride * count) return null;
    count *= t.shape[d];
  }
  return { count, stride };
}

/**
 * op(a) @ op(b) for 2-D operands or a result past one binding, as products that each fit one:
 * rows of the result in turn when it is the large one, else the large operand's rows in turn
 * (a slice of the result's columns, or of the inner dimension whose products are summed).
 */
function matmulPieces(
  a: Tensor,
  b: Tensor,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  limit: number,
): Tensor {
  return noGrad(() => {
    const out = empty([m, n], "f32", "matmul");
    const opts = { transA, transB };
    // Rows of a (columns when transposed) give rows of the result.
    const rowsOfA = (m0: number, m1: number) => slice(a, transA ? 1 : 0, m0, m1);
    const fits = (rows: number, cols: number) => 4 * rows * cols <= limit;
    if (!fits(m, n) || (transA ? !fits(k, m) : !fits(m, k))) {
      const per = Math.max(1, Math.floor(limit / (4 * Math.max(n, k))));
      for (let m0 = 0; m0 < m; m0 += per) {
        const m1 = Math.min(m, m0 + per);
        const piece = scope(() => matmul(rowsOfA(m0, m1), b, opts));
        const dst = slice(out, 0, m0, m1);
        copyInto(dst, piece);
        dst.dispose();
        piece.dispose();
      }
      return out;
    }
    const per = Math.max(1, Math.floor(limit / (4 * (transB ? k : n))));
    if (transB) {
      // b is [n, k]: its rows are the result's columns.
      for (let n0 = 0; n0 < n; n0 += per) {
        const n1 = Math.min(n, n0 + per);
        const piece = scope(() => matmul(a, slice(b, 0, n0, n1), opts));
        const dst = slice(out, 1, n0, n1);
        copyInto(dst, piece);
        dst.dispose();
        piece.dispose();
      }
      return out;
    }
    // b is [k, n]: its rows are the inner dimension, whose partial products add up.
    let acc: Tensor | null = null;
    for (let k0 = 0; k0 < k; k0 += per) {
      const k1 = Math.min(k, k0 + per);
      const part = scope(() => matmul(slice(a, transA ? 0 : 1, k0, k1), slice(b, 0, k0, k1), opts));
      if (acc) {
        const sum = add(acc, part);
        acc.dispose();
        part.dispose();
        acc = sum;
      } else acc = part;
    }
    copyInto(out, acc!);
    acc!.dispose();
    return out;
  });
}

/**
 * Batched matrix product op(a) @ op(b). a is [..., M, K] ([..., K, M] with transA), b is
 * [..., K, N] ([..., N, K] with transB); batch dims must match, or b may be 2-D.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  if (opts.dtype !== undefined && opts.dtype !== "f32") {
    wantAct("matmul", opts.dtype);
    // The f32 product is computed unrecorded, then rounded: one node whose saved operands are
    // a and b, as for an f32 product (its gradient never reads the product).
    const c = stored(noGrad(() => matmul(a, b, { transA, transB })), opts.dtype, "matmul");
    return record(c, "matmul", [a, b], [a, b], { transA, transB });
  }
  return product(a, b, transA, transB, null)!;
}

/**
 * dst += op(a) @ op(b), in place and unrecorded: for gradient rules, which accumulate into a
 * gradient they own. Bitwise dst + matmul(a, b) (the product is summed as it would be alone);
 * where the kernel allows it the sum is added as it is stored, without a buffer of its own.
 */
export function matmulAccumulate(
  dst: Tensor,
  a: Tensor,
  b: Tensor,
  opts: MatmulOptions = {},
): void {
  if (dst.dtype !== "f32" || !dst.contiguous) {
    throw new DTypeError(`matmulAccumulate: dst ${dst.describe()} must be contiguous f32`);
  }
  noGrad(() => product(a, b, opts.transA ?? false, opts.transB ?? false, dst));
}

/** op(a) @ op(b) as a new tensor, or (`into` given) added into `into`, returning null. */
function product(
  a: Tensor,
  b: Tensor,
  transA: boolean,
  transB: boolean,
  into: Tensor | null,
): Tensor | null {
  const opts = { transA, transB };
  wantFloat("matmul", a, "a");
  wantFloat("matmul", b, "b");
  const desc = () =>
    `a ${shapeStr(a)}${transA ? "^T" : ""} @ b ${shapeStr(b)}${transB ? "^T" : ""}`;
  if (a.rank < 2 || b.rank < 2) fail("matmul", `${desc()}: operands need at least 2 dims`);
  const [m, k] = transA ? [a.shape[a.rank - 1], a.shape[a.rank - 2]] : a.shape.slice(-2);
  const [k2, n] = transB ? [b.shape[b.rank - 1], b.shape[b.rank - 2]] : b.shape.slice(-2);
  if (k !== k2) fail("matmul", `${desc()}: inner dims ${k} != ${k2}`);
  const batchA = a.shape.slice(0, -2), batchB = b.shape.slice(0, -2);
  if (b.rank > 2 && batchA.join() !== batchB.join()) {
    fail("matmul", `${desc()}: batch dims [${batchA}] and [${batchB}] differ`);
  }
  if (into && into.shape.join() !== [...batchA, m, n].join()) {
    fail("matmul", `${desc()}: cannot accumulate into ${into.describe()}`);
  }
  // A batched a against a 2-D b is one big 2-D product when a's rows merge. The node is a's
  // own (no reshape nodes between), so its rule sees what a's gradient has gathered.
  if (a.rank > 2 && b.rank === 2 && !transA) {
    const c2 = noGrad(() => {
      const a2 = reshape(a, [-1, k]), d2 = into ? reshape(into, [-1, n]) : null;
      const c2 = product(a2, b, transA, transB, d2);
      a2.dispose();
      d2?.dispose();
      return c2;
    });
    if (!c2) return null;
    const c = noGrad(() => reshape(c2, [...batchA, m, n]));
    c2.dispose();
    return record(c, "matmul", [a, b], [a, b], opts);
  }
  const ba = batchOf(a), bb = batchOf(b);
  if (!ba || !bb) {
    const ac = ba ? a : contiguous(a), bc = bb ? b : contiguous(b);
    const c = product(ac, bc, transA, transB, into);
    if (ac !== a) ac.dispose();
    if (bc !== b) bc.dispose();
    return c;
  }
  // A 2-D product whose weight or result is more than one binding runs in pieces that fit.
  const extent = (t: Tensor) =>
    DTYPE_BYTES[t.dtype] * (t.shape.reduce((e, s, d) => e + (s - 1) * t.strides[d], 0) + 1);
  const limit = gpu().bindingLimit - 256;
  if (
    a.rank === 2 && b.rank === 2 && k > 0 &&
    (extent(b) > limit || 4 * m * n > limit || extent(a) > limit)
  ) {
    const c = matmulPieces(a, b, m, n, k, transA, transB, limit);
    if (!into) return record(c, "matmul", [a, b], [a, b], opts);
    runAccumulate(gpu(), c.buf, c.offset, into.buf, into.offset, c.size);
    c.dispose();
    return null;
  }
  const out = into ?? empty([...batchA, m, n], "f32", "matmul");
  const rs = (t: Tensor, tr: boolean) =>
    tr
      ? { rowStride: t.strides[t.rank - 1], colStride: t.strides[t.rank - 2] }
      : { rowStride: t.strides[t.rank - 2], colStride: t.strides[t.rank - 1] };
  if (k === 0) {
    // An empty sum: zeros, or nothing to add.
    if (!into) runElementwise(gpu(), "P.c", [], outOf(out), out.shape, 0);
  } else {
    // An operand past one binding (a large embedding, a row chunk of it) is bound as a window
    // over the elements it spans.
    const span = (t: Tensor, what: string) =>
      bindRange(
        gpu(),
        t.buf,
        t.offset,
        t.offset + t.shape.reduce((e, s, d) => e + (s - 1) * t.strides[d], 0) + 1,
        `matmul ${desc()}: ${what}`,
        DTYPE_BYTES[t.dtype],
      );
    const ra = span(a, "a"), rb = span(b, "b"), rc = span(out, "the product");
    runMatmul(
      gpu(),
      {
        buf: ra.bind,
        offset: a.offset - ra.base,
        batchStride: ba.stride,
        ...rs(a, transA),
        f16: a.dtype === "f16",
      },
      {
        buf: rb.bind,
        offset: b.offset - rb.base,
        batchStride: b.rank > 2 ? bb.stride : 0,
        ...rs(b, transB),
        f16: b.dtype === "f16",
      },
      rc.bind,
      out.offset - rc.base,
      { batch: ba.count, m, n, k },
      !!into,
    );
  }
  return into ? null : record(out, "matmul", [a, b], [a, b], opts);
}

// ---------------------------------------------------------------- row ops

/** softmax over the last axis. */
export function softmax(x: Tensor): Tensor {
  return softmaxImpl(x, false);
}

/** log-softmax over the last axis. */
export function logSoftmax(x: Tensor): Tensor {
  return softmaxImpl(x, true);
}

function softmaxImpl(x: Tensor, log: boolean): Tensor {
  const op = log ? "logSoftmax" : "softmax";
  wantDType(op, x, "f32", "input");
  if (x.rank === 0) fail(op, "needs at least one dim");
  const xc = contiguous(x);
  const n = x.shape[x.rank - 1];
  const out = empty(x.shape, "f32", op);
  const g = gpu();
  runRowKernel(g, (wg, mode) => softmaxKernel(log, wg, mode), [xc.buf, out.buf], x.size / n, n);
  xc.dispose();
  return record(out, log ? "logSoftmax" : "softmax", [x], [out]);
}

/**
 * RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w, computed in f32 and stored as
 * `dtype`.
 */
export function rmsnorm(x: Tensor, w: Tensor, eps = 1e-5, dtype: ActDType = "f32"): Tensor {
  wantDType("rmsnorm", x, "f32", "x");
  wantAct("rmsnorm", dtype);
  wantDType("rmsnorm", w, "f32", "w");
  const d = x.shape[x.rank - 1];
  if (w.rank !== 1 || w.shape[0] !== d) {
    fail("rmsnorm", `weight ${shapeStr(w)} does not match last dim of x ${shapeStr(x)}`);
  }
  const xc = contiguous(x), wc = contiguous(w);
  const rows = x.size / d;
  const out = empty(x.shape, "f32", "rmsnorm");
  const rstd = empty([rows], "f32", "rmsnorm.rstd");
  const g = gpu();
  runRowKernel(
    g,
    (wg, mode) => rmsnormKernel(wg, mode, d % 4 === 0),
    [xc.buf, wc.buf, out.buf, rstd.buf],
    rows,
    d,
    eps,
  );
  const res = stored(out, dtype, "rmsnorm");
  record(res, "rmsnorm", [x, w], [xc, wc, rstd], { eps });
  xc.dispose();
  wc.dispose();
  rstd.dispose();
  return res;
}

/** A (cos, sin) table for {@link rope}: [maxPos, headDim/2, 2], computed in float64. */
export function ropeTable(
  headDim: number,
  maxPos: number,
  theta = 10000,
  scaling?: RopeScaling,
): Tensor {
  if (headDim % 2 !== 0) fail("ropeTable", `head dim ${headDim} is odd`);
  return tensor(hostRopeTable(headDim, maxPos, theta, scaling), [maxPos, headDim / 2, 2], "f32");
}

/**
 * Rotary embedding of x [B, T, H, D] on interleaved pairs. `pos` [B, T] (i32) gives each token's
 * position; by default token t has position t. The result has x's dtype (f16 is rotated in f32).
 */
export function rope(x: Tensor, table: Tensor, pos: Tensor | null = null): Tensor {
  wantFloat("rope", x, "x");
  if (x.rank !== 4) fail("rope", `x ${shapeStr(x)} must be [B, T, H, D]`);
  const [b, t, h, d] = x.shape;
  if (table.rank !== 3 || table.shape[1] * 2 !== d || table.shape[2] !== 2) {
    fail("rope", `table ${shapeStr(table)} does not fit head dim ${d} of x ${shapeStr(x)}`);
  }
  const maxPos = table.shape[0];
  if (pos) {
    wantDType("rope", pos, "i32", "pos");
    if (pos.size !== b * t) fail("rope", `pos ${shapeStr(pos)} does not match x ${shapeStr(x)}`);
    const host = pos.storage.host;
    if (host && pos.contiguous) {
      for (let i = 0; i < pos.size; i++) {
        const p = host[pos.offset + i];
        if (p < 0 || p >= maxPos) {
          throw new IndexError(`rope: position ${p} at ${i} outside table of ${maxPos} positions`);
        }
      }
    }
  } else if (t > maxPos) {
    throw new IndexError(`rope: ${t} positions exceed table of ${maxPos}`);
  }
  const xc = widened(x), tc = contiguous(table), pc = pos ? contiguous(pos) : null;
  const f32 = empty(x.shape, "f32", "rope");
  runRope(gpu(), xc.buf, tc.buf, pc?.buf ?? null, f32.buf, { b, t, h, d, maxPos }, 1);
  const out = stored(f32, x.dtype === "f16" ? "f16" : "f32", "rope");
  record(out, "rope", [x], pc ? [tc, pc] : [tc], { dims: { b, t, h, d, maxPos } });
  xc.dispose();
  tc.dispose();
  pc?.dispose();
  return out;
}

// ---------------------------------------------------------------- gather and losses

/** Checks i32 indices that have a host copy lie in [lo, hi) (or equal `allowed`). */
function checkIndices(
  op: string,
  ids: Tensor,
  lo: number,
  hi: number,
  what: string,
  allowed?: number,
): void {
  const host = ids.storage.host;
  if (!host || !ids.contiguous) return;
  for (let i = 0; i < ids.size; i++) {
    const v = host[ids.offset + i];
    if ((v < lo || v >= hi) && v !== allowed) {
      throw new IndexError(
        `${op}: ${what} ${v} at flat position ${i} of ${ids.describe()} is outside [${lo}, ${hi})`,
      );
    }
  }
}

/** Rows of `w` [V, D] picked by `ids` (i32, any shape): out [...ids.shape, D]. */
export function embedding(w: Tensor, ids: Tensor): Tensor {
  const { out, ic } = gather("embedding", w, ids, null);
  record(out, "embedding", [w, ids], [ic], { v: w.shape[0], d: w.shape[1] });
  ic.dispose();
  return out;
}

/**
 * Rows of `w` [V, D] picked by `ids` (i32, any shape), each times its `scale` (f32, ids' shape):
 * [...ids.shape, D], without autograd. Bitwise `mul(embedding(w, ids), scale[..., None])` (one
 * product per element), in one pass where the kernel allows it (f32 w in one binding, D % 4 ==
 * 0): the weights of a mean over gathered rows.
 */
export function gatherScaled(w: Tensor, ids: Tensor, scale: Tensor): Tensor {
  wantDType("gatherScaled", scale, "f32", "scale");
  if (scale.shape.join() !== ids.shape.join()) {
    fail("gatherScaled", `scale ${shapeStr(scale)} does not match ids ${shapeStr(ids)}`);
  }
  return noGrad(() => {
    if (!gatherVec4Fits(gpu(), w.buf, w.shape[w.rank - 1], w.dtype !== "f32")) {
      const rows = embedding(w, ids), s = reshape(scale, [...scale.shape, 1]);
      const out = mul(rows, s);
      rows.dispose();
      s.dispose();
      return out;
    }
    const sc = contiguous(scale);
    const { out, ic } = gather("gatherScaled", w, ids, sc);
    sc.dispose();
    ic.dispose();
    return out;
  });
}

/**
 * The gather `op` runs, its operands checked by name: rows of `w` picked by `ids`, times `scale`
 * when given; with the contiguous ids (a gradient rule keeps them), which the caller releases.
 */
function gather(
  op: string,
  w: Tensor,
  ids: Tensor,
  scale: Tensor | null,
): { out: Tensor; ic: Tensor } {
  wantFloat(op, w, "weight");
  wantDType(op, ids, "i32", "ids");
  if (w.rank !== 2) fail(op, `weight ${shapeStr(w)} must be [V, D]`);
  const [v, d] = w.shape;
  checkIndices(op, ids, 0, v, `id (weight ${shapeStr(w)})`);
  const wc = contiguous(w), ic = contiguous(ids);
  const out = empty([...ids.shape, d], "f32", op);
  runGather(gpu(), wc.buf, ic.buf, out.buf, ids.size, d, v, w.dtype === "f16", scale?.buf ?? null);
  wc.dispose();
  return { out, ic };
}

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** Targets equal to this carry no loss (default -1). */
  ignoreIndex?: number;
}

/**
 * Mean cross-entropy of logits [N, V] against i32 targets [N], over rows whose target is not
 * `ignoreIndex` (0 when every row is ignored). Returns a scalar tensor.
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  const ignore = opts.ignoreIndex ?? -1;
  wantDType("crossEntropy", logits, "f32", "logits");
  wantDType("crossEntropy", targets, "i32", "targets");
  if (logits.rank !== 2 || targets.rank !== 1 || targets.shape[0] !== logits.shape[0]) {
    fail(
      "crossEntropy",
      `logits ${shapeStr(logits)} must be [N, V] and targets ${shapeStr(targets)} [N]`,
    );
  }
  const [n, v] = logits.shape;
  checkIndices("crossEntropy", targets, 0, v, "target", ignore);
  const lc = contiguous(logits), tc = contiguous(targets);
  const lse = empty([n], "f32", "ce.lse");
  const rowLoss = empty([n], "f32", "ce.rows");
  const stats = empty([2], "f32", "ce.stats");
  runCrossEntropy(gpu(), lc.buf, tc.buf, lse.buf, rowLoss.buf, stats.buf, n, v, ignore);
  const out = new Tensor(stats.storage, [], [], 0, "f32");
  record(out, "crossEntropy", [logits, targets], [lc, tc, lse, stats], { n, v, ignore });
  for (const t of [lc, tc, lse, rowLoss, stats]) t.dispose();
  return out;
}

/** Options of {@link classifierCrossEntropy}. */
export interface ClassifierCrossEntropyOptions extends CrossEntropyOptions {
  /**
   * Vocabulary columns per chunk. Default: the whole vocabulary when the [N, V] logits fit in
   * {@link LOGITS_CHUNK_BYTES}, else as many columns as fit.
   */
  chunk?: number;
}

/** Default size of one chunk of logits in {@link classifierCrossEntropy}: 64 MiB. */
export const LOGITS_CHUNK_BYTES = 64 * 2 ** 20;

/** The vocabulary chunk {@link classifierCrossEntropy} uses for n rows of v logits. */
export function logitsChunk(n: number, v: number, chunk?: number): number {
  if (chunk !== undefined) {
    if (!Number.isInteger(chunk) || chunk < 1) {
      fail("classifierCrossEntropy", `chunk must be a positive integer, got ${chunk}`);
    }
    return Math.min(chunk, v);
  }
  return Math.max(1, Math.min(v, Math.floor(LOGITS_CHUNK_BYTES / (4 * Math.max(1, n)))));
}

/**
 * Mean cross-entropy of the logits `h @ w^T` (h [N, D], w [V, D]: the classifier) against i32
 * targets [N], without an [N, V] buffer when the vocabulary is large: the logits are made
 * `chunk` columns at a time, the log-sum-exp kept running across chunks, and in backward each
 * chunk's logits are made again, so peak memory grows with N x chunk, not N x V. With one chunk
 * (stories260K's vocabulary always fits) the kernels, their order and the results are bitwise
 * those of `crossEntropy(matmul(h, w, {transB: true}), targets)`, which this replaces in training
 * and scoring.
 */
export function classifierCrossEntropy(
  h: Tensor,
  w: Tensor,
  targets: Tensor,
  opts: ClassifierCrossEntropyOptions = {},
): Tensor {
  const ignore = opts.ignoreIndex ?? -1;
  wantDType("classifierCrossEntropy", targets, "i32", "targets");
  if (
    h.rank !== 2 || w.rank !== 2 || targets.rank !== 1 || h.shape[1] !== w.shape[1] ||
    targets.shape[0] !== h.shape[0]
  ) {
    fail(
      "classifierCrossEntropy",
      `h ${shapeStr(h)} must be [N, D], w ${shapeStr(w)} [V, D] and targets ${
        shapeStr(targets)
      } [N]`,
    );
  }
  const [n, v] = [h.shape[0], w.shape[0]];
  let chunk = logitsChunk(n, v, opts.chunk);
  // A classifier past one binding is read a window of rows at a time.
  if (paged(gpu(), w.buf)) {
    chunk = Math.min(
      chunk,
      Math.floor((gpu().bindingLimit - 256) / (DTYPE_BYTES[w.dtype] * w.shape[1])),
    );
  }
  if (chunk >= v) {
    // One chunk: exactly the unfused ops, the logits saved for backward as matmul's would be.
    const logits = noGrad(() => matmul(h, w, { transB: true }));
    checkIndices("classifierCrossEntropy", targets, 0, v, "target", ignore);
    const tc = contiguous(targets);
    const lse = empty([n], "f32", "ce.lse");
    const rowLoss = empty([n], "f32", "ce.rows");
    const stats = empty([2], "f32", "ce.stats");
    runCrossEntropy(gpu(), logits.buf, tc.buf, lse.buf, rowLoss.buf, stats.buf, n, v, ignore);
    const out = new Tensor(stats.storage, [], [], 0, "f32");
    record(out, "classifierCrossEntropy", [h, w, targets], [h, w, tc, lse, stats, logits], {
      n,
      v,
      ignore,
      chunk: v,
    });
    for (const t of [logits, tc, lse, rowLoss, stats]) t.dispose();
    return out;
  }
  checkIndices("classifierCrossEntropy", targets, 0, v, "target", ignore);
  const tc = contiguous(targets);
  const state = {
    m: full([n], -3.4028234e38),
    s: full([n], 0),
    tl: full([n], 0),
  };
  for (let c0 = 0; c0 < v; c0 += chunk) {
    const width = Math.min(chunk, v - c0);
    const logits = noGrad(() => {
      const wc = slice(w, 0, c0, c0 + width);
      const l = matmul(h, wc, { transB: true });
      wc.dispose();
      return l;
    });
    const buf = { m: state.m.buf, s: state.s.buf, tl: state.tl.buf };
    runCrossEntropyChunk(gpu(), logits.buf, tc.buf, buf, n, width, c0, ignore);
    logits.dispose();
  }
  const lse = empty([n], "f32", "ce.lse");
  const rowLoss = empty([n], "f32", "ce.rows");
  const stats = empty([2], "f32", "ce.stats");
  const buf = { m: state.m.buf, s: state.s.buf, tl: state.tl.buf };
  runCrossEntropyFinish(gpu(), buf, tc.buf, lse.buf, rowLoss.buf, stats.buf, n, v, ignore);
  const out = new Tensor(stats.storage, [], [], 0, "f32");
  record(out, "classifierCrossEntropy", [h, w, targets], [h, w, tc, lse, stats], {
    n,
    v,
    ignore,
    chunk,
  });
  for (const t of [tc, lse, rowLoss, stats, state.m, state.s, state.tl]) t.dispose();
  return out;
}

/**
 * Activation checkpointing: `fn(x, kept)` runs without recording, and one node stands for it,
 * holding only `x` and `kept`; backward runs `fn` again with recording on and walks that graph,
 * so the block's activations exist during its own backward only. `params` are the parameters
 * `fn` reads: their gradients accumulate into them during that walk, exactly as without the
 * checkpoint (each is read once per block). The gradients are bitwise those of `fn` unwrapped:
 * the recompute runs the same kernels on the same values.
 */
export function checkpoint(
  fn: CheckpointFn,
  x: Tensor,
  params: readonly Tensor[],
  kept: readonly Tensor[] = [],
): Tensor {
  if (!needsGrad([x, ...params])) return fn(x, kept);
  const out = noGrad(() => scope(() => fn(x, kept)));
  return record(out, "checkpoint", [x, ...params], [x, ...kept], { fn });
}

/**
 * Attention rules of a role table: `none` (never), `causal` (key position <= query position),
 * `self` (the same position only), `all` (every key of the sequence).
 */
export const RULE = { none: 0, causal: 1, self: 2, all: 3 } as const;

/** A role table: table[queryRole][keyRole] is a rule from {@link RULE}. */
export type RoleTable = readonly (readonly number[])[];

/** Options of {@link attention}. */
export interface AttentionOptions {
  /**
   * Valid keys when k/v are a KV cache [B, capacity, Hkv, D]: the queries are the last of these
   * (no autograd in this mode). Default: all of k's rows.
   */
  keys?: number;
  /** Score scale; default 1/sqrt(head dim). */
  scale?: number;
  /**
   * Packed sequences: i32 [B, T, 2], each token's (start, end) key range within its row. A
   * token sees only keys in its range, so several sequences share a row without padding.
   */
  segments?: Tensor;
  /**
   * The same as `segments`, prepared once by {@link packedTokens} (a model's layers share it):
   * saves each layer building and checking its token records.
   */
  packed?: Tensor;
}

/**
 * Per-token records (role, start, end, 0) [B, T, 4] of packed sequences, for attention's
 * `packed` option: `segments` [B, T, 2] checked (each token's range holds its position) and
 * joined with `roles` [B, T] once, where every layer's attention would otherwise do it.
 */
export function packedTokens(roles: Tensor, segments: Tensor): Tensor {
  wantDType("packedTokens", roles, "i32", "roles");
  wantDType("packedTokens", segments, "i32", "segments");
  if (roles.rank !== 2 || segments.size !== 2 * roles.size) {
    fail(
      "packedTokens",
      `roles ${shapeStr(roles)} [B, T] and segments ${shapeStr(segments)} [B, T, 2]`,
    );
  }
  const [b, t] = roles.shape;
  checkSegments(segments, t);
  const rh = roles.storage.host, sh = segments.storage.host;
  if (rh && sh && roles.contiguous && segments.contiguous) {
    // Both still on the host (a batch just packed): one upload instead of four kernels.
    const out = new Int32Array(4 * b * t);
    for (let i = 0; i < b * t; i++) {
      out[4 * i] = rh[roles.offset + i];
      out[4 * i + 1] = sh[segments.offset + 2 * i];
      out[4 * i + 2] = sh[segments.offset + 2 * i + 1];
    }
    return tensor(out, [b, t, 4], "i32");
  }
  return noGrad(() => {
    const parts = [
      reshape(roles, [b, t, 1]),
      reshape(segments, [b, t, 2]),
      zeros([b, t, 1], "i32"),
    ];
    const out = concat(parts, 2);
    for (const x of parts) x.dispose();
    return out;
  });
}

/**
 * Masked attention. q [B, T, Hq, D], k and v [B, T, Hkv, D] (Hq a multiple of Hkv), roles [B, T]
 * i32 in [0, R), table R x R. Returns [B, T, Hq, D]; rows that may see no key are 0.
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  roles: Tensor,
  table: RoleTable,
  opts: AttentionOptions = {},
): Tensor {
  for (const [t, name] of [[q, "q"], [k, "k"], [v, "v"]] as const) wantFloat("attention", t, name);
  wantDType("attention", roles, "i32", "roles");
  const seg = opts.segments ?? null, pk = opts.packed ?? null;
  const shapes = () =>
    `q ${shapeStr(q)}, k ${shapeStr(k)}, v ${shapeStr(v)}, roles ${shapeStr(roles)}` +
    (seg ? `, segments ${shapeStr(seg)}` : "") + (pk ? `, packed ${shapeStr(pk)}` : "");
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4) fail("attention", `${shapes()}: want rank 4`);
  const [b, t, hq, d] = q.shape, [, tcap, hkv] = k.shape;
  if (k.shape.join() !== v.shape.join() || k.shape[0] !== b || k.shape[3] !== d) {
    fail("attention", `${shapes()}: k and v must be [B, Tk, Hkv, D] matching q`);
  }
  const tk = opts.keys ?? tcap;
  if (tk < t || tk > tcap || (tk !== t && needsGrad([q, k, v]))) {
    fail(
      "attention",
      `${shapes()}: ${tk} keys for ${t} queries (fewer keys than queries, more than k holds, or a KV cache under autograd)`,
    );
  }
  if (hq % hkv !== 0) fail("attention", `${shapes()}: ${hq} query heads not a multiple of ${hkv}`);
  if (roles.size !== b * tcap) fail("attention", `${shapes()}: roles must be [B, Tk]`);
  if (seg) {
    wantDType("attention", seg, "i32", "segments");
    if (seg.size !== b * tcap * 2 || tk !== tcap) {
      fail("attention", `${shapes()}: segments must be [B, T, 2]`);
    }
  }
  if (pk) {
    wantDType("attention", pk, "i32", "packed");
    if (seg || pk.size !== b * tcap * 4 || tk !== tcap) {
      fail(
        "attention",
        `${shapes()}: packed must be [B, T, 4] (from packedTokens), without segments`,
      );
    }
  }
  const bad = checkRoleTable(table);
  if (bad) fail("attention", bad);
  checkIndices("attention", roles, 0, table.length, "role");
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  // f16 operands are widened for the kernels, which compute in f32; the node keeps the f16
  // tensors (and the output, rounded to q's dtype) and its backward widens them again.
  const qc = widened(q), kc = widened(k), vc = widened(v);
  // Packed sequences: one (role, start, end, 0) record per token, read with a single load.
  const rc = pk ? contiguous(pk) : seg
    ? noGrad(() => {
      const r = reshape(roles, [b, tcap]), out = packedTokens(r, seg);
      r.dispose();
      return out;
    })
    : contiguous(roles);
  const out = empty(q.shape, "f32", "attention");
  const stats = empty([2, b * hq * t], "f32", "attention.stats");
  const dims = { b, t, hq, hkv, d, scale, tk, tcap };
  runAttention(
    gpu(),
    {
      q: qc.buf,
      k: kc.buf,
      v: vc.buf,
      roles: rc.buf,
      meta: seg || pk ? rc.buf : null,
      o: out.buf,
      stats: stats.buf,
    },
    dims,
    table,
  );
  const inputs = seg ? [q, k, v, roles, seg] : pk ? [q, k, v, roles, pk] : [q, k, v, roles];
  const res = stored(out, q.dtype === "f16" ? "f16" : "f32", "attention");
  if (needsGrad(inputs)) {
    const kept = [[q, qc], [k, kc], [v, vc]].map(([x, c]) => x.dtype === "f16" ? contiguous(x) : c);
    record(res, "attention", inputs, [...kept, rc, res, stats], {
      dims,
      table,
      packed: !!(seg || pk),
    });
    for (const x of kept) if (x.dtype === "f16") x.dispose();
  }
  for (const x of [qc, kc, vc, rc, stats]) x.dispose();
  return res;
}

/** Segments (start, end) with a host copy must satisfy 0 <= start <= position < end <= T. */
function checkSegments(seg: Tensor, t: number): void {
  const host = seg.storage.host;
  if (!host || !seg.contiguous) return;
  for (let i = 0; i < seg.size / 2; i++) {
    const s = host[seg.offset + 2 * i], e = host[seg.offset + 2 * i + 1], pos = i % t;
    if (!(s >= 0 && s <= pos && pos < e && e <= t)) {
      throw new IndexError(
        `attention: segment (${s}, ${e}) of token ${i} does not contain its position ${pos} within [0, ${t}]`,
      );
    }
  }
}

/** Wraps host data as a scalar f32 tensor. */
export function scalar(value: number): Tensor {
  return tensor([value], [], "f32");
}

/**
 * Evaluates a WGSL expression over named tensors broadcast to `shape` (no autograd). Gradient
 * rules use it to fuse their arithmetic into one kernel.
 */
export function mapExpr(
  expr: string,
  inputs: Record<string, Tensor>,
  shape: readonly number[],
  c = 0,
): Tensor {
  return mapExprs([expr], inputs, shape, c)[0];
}

/**
 * Several WGSL expressions over the same named inputs, one new tensor each, in one kernel that
 * loads each input once. No autograd.
 */
export function mapExprs(
  exprs: readonly string[],
  inputs: Record<string, Tensor>,
  shape: readonly number[],
  c = 0,
): Tensor[] {
  const outs = exprs.map(() => empty(shape, "f32", "expr"));
  const ins = Object.entries(inputs).map(([name, t]) => input(t, name, shape));
  runElementwise(gpu(), exprs, ins, outs.map(outOf), shape, c);
  return outs;
}

/** Copies `src` into the view `dst` (same shape) in place, no autograd. */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (dst.shape.join() !== src.shape.join()) {
    fail("copyInto", `${dst.describe()} <- ${src.describe()}`);
  }
  runElementwise(gpu(), "a", [input(src, "a", src.shape)], outOf(dst), dst.shape);
}
