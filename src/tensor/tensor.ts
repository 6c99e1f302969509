/**
 * Tensor: a strided view (shape, strides, element offset, dtype) of a reference-counted GPU
 * storage. Views share storage; each Tensor object holds one reference and gives it back in
 * `dispose()`. Nothing is freed by the garbage collector.
 *
 * Also here: the engine state (grad mode and disposal scopes), the only global state besides the
 * device, and tensor creation from host data.
 */

import { gpu } from "../gpu/device.ts";
import { DisposedError, DTypeError, ShapeError } from "../gpu/errors.ts";
import { contiguousStrides, runElementwise } from "../gpu/kernels/elementwise.ts";
import type { GpuBuffer } from "../gpu/pool.ts";

/**
 * Element types. f16 is storage only (half the bytes of a weight or an activation): every kernel
 * that reads an f16 operand converts it to f32 and computes in f32; ops produce f32 unless asked
 * for f16 (`cast`, matmul's and rmsnorm's `dtype`) or, for elementwise ops, RoPE and attention,
 * given only f16 inputs. Gradients are f32. It needs the adapter's `shader-f16` feature.
 */
export type DType = "f32" | "i32" | "f16";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, i32: 4, f16: 2 };

/** Bytes a buffer of `n` elements of `dtype` takes: a multiple of 4, as WebGPU copies want. */
export function bufferBytes(n: number, dtype: DType): number {
  return Math.max(4, Math.ceil((n * DTYPE_BYTES[dtype]) / 4) * 4);
}

/** Throws naming `what` when the device cannot store f16 (no `shader-f16`). */
export function checkF16(what: string): void {
  if (!gpu().features.has("shader-f16")) {
    throw new DTypeError(
      `${what}: f16 needs the adapter's shader-f16 feature, which ${gpu().description} lacks`,
    );
  }
}

/** A GPU buffer plus the number of Tensor objects viewing it; `host` keeps uploaded int data. */
export class Storage {
  /** Number of Tensor objects holding this storage. */
  refs = 0;
  /** Storage over a pooled buffer; `host` keeps uploaded integer data. */
  constructor(readonly buf: GpuBuffer, readonly host: Int32Array | null = null) {}

  /** Drops one reference; the last one returns the buffer to the pool. */
  release(): void {
    if (--this.refs === 0) gpu().pool.release(this.buf);
  }
}

/**
 * Names of the differentiable ops; gradients.ts has one rule per name; graph.ts records them
 * with the ctx its `OpCtx` gives each (tsc checks).
 */
export type Op =
  | "reshape"
  | "permute"
  | "slice"
  | "expand"
  | "copy"
  | "cast"
  | "unary"
  | "binary"
  | "sum"
  | "max"
  | "matmul"
  | "softmax"
  | "logSoftmax"
  | "rmsnorm"
  | "rope"
  | "swiglu"
  | "embedding"
  | "crossEntropy"
  | "classifierCrossEntropy"
  | "checkpoint"
  | "attention"
  | "concat";

/** A recorded op: what produced a tensor, for the backward pass. */
export interface Node {
  /** Which rule of gradients.ts applies. */
  readonly op: Op;
  /** The op's inputs, in order. */
  readonly inputs: readonly Tensor[];
  /** References owned by the node (aliases), released once backward has used them. */
  saved: Tensor[];
  /**
   * Op attributes the rule needs (axis, fn name, shapes...); graph.ts's `OpCtx` gives their
   * type for each op.
   */
  readonly ctx: Record<string, unknown>;
}

/** Grad mode and the stack of disposal scopes. */
export const engine = {
  gradEnabled: true,
  scopes: [] as Set<Tensor>[],
};

let nextId = 0;

/** A strided view of reference-counted GPU storage; see the module comment. */
export class Tensor {
  /** Unique id, in creation order. */
  readonly id = nextId++;
  #storage: Storage | null;
  /** Set when this tensor takes part in autograd: a leaf parameter or an op's output. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after `backward`; owned by this tensor. */
  grad: Tensor | null = null;
  /** The op that produced this tensor, while its graph is alive. */
  node: Node | null = null;
  /** Optional name, used in error messages and parameter listings. */
  label = "";

  /** A view of `storage`; ops and {@link tensor} create tensors, rarely user code. */
  constructor(
    storage: Storage,
    readonly shape: readonly number[],
    readonly strides: readonly number[],
    readonly offset: number,
    readonly dtype: DType,
    track = true,
  ) {
    storage.refs++;
    this.#storage = storage;
    if (track) engine.scopes.at(-1)?.add(this);
  }

  /** The storage this view reads; throws after dispose. */
  get storage(): Storage {
    if (!this.#storage) {
      throw new DisposedError(`tensor ${this.describe()} used after dispose()`);
    }
    return this.#storage;
  }

  /** The pooled buffer under this tensor. */
  get buf(): GpuBuffer {
    return this.storage.buf;
  }

  /** True after dispose(). */
  get disposed(): boolean {
    return this.#storage === null;
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Number of dims. */
  get rank(): number {
    return this.shape.length;
  }

  /** True when elements are laid out row-major with no gaps (any offset). */
  get contiguous(): boolean {
    return isContiguous(this.shape, this.strides);
  }

  /** "f32[2,3]" plus the label, for messages. */
  describe(): string {
    return `${this.label ? this.label + " " : ""}${this.dtype}[${this.shape.join(",")}]`;
  }

  /** A new Tensor object on the same storage (one more reference), not tracked by scopes. */
  alias(track = false): Tensor {
    return new Tensor(this.storage, this.shape, this.strides, this.offset, this.dtype, track);
  }

  /** Releases this tensor's storage reference and its gradient. Safe to call twice. */
  dispose(): void {
    if (!this.#storage) return;
    this.#storage.release();
    this.#storage = null;
    this.grad?.dispose();
    this.grad = null;
  }

  /** For `using` declarations. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Copies the elements to the host, in row-major order of the shape. Waits for the GPU. f16
   * values come back widened to a Float32Array (exactly: every f16 is an f32).
   */
  async toArray(): Promise<Float32Array | Int32Array> {
    const g = gpu();
    const bytes = DTYPE_BYTES[this.dtype];
    if (this.dtype === "f16") {
      // Widened on the device: f16 ranges need not be 4-byte aligned for the readback copy.
      const tmp = g.pool.acquire(bufferBytes(this.size, "f32"), "toArray");
      try {
        runElementwise(g, "a", [{ name: "a", ...this.#operand() }], {
          buf: tmp,
          offset: 0,
          strides: contiguousStrides(this.shape),
          type: "f32",
        }, this.shape);
        return new Float32Array(await g.read(tmp, 0, this.size * 4));
      } finally {
        g.pool.release(tmp);
      }
    }
    if (!this.contiguous) {
      // Gather the view into a scratch buffer first; readback wants one contiguous range.
      const tmp = g.pool.acquire(this.size * bytes, "toArray");
      try {
        runElementwise(g, "a", [{ name: "a", ...this.#operand() }], {
          buf: tmp,
          offset: 0,
          strides: contiguousStrides(this.shape),
          type: this.dtype,
        }, this.shape);
        const raw = await g.read(tmp, 0, this.size * bytes);
        return this.dtype === "i32" ? new Int32Array(raw) : new Float32Array(raw);
      } finally {
        g.pool.release(tmp);
      }
    }
    const raw = await g.read(this.buf, this.offset * bytes, this.size * bytes);
    return this.dtype === "i32" ? new Int32Array(raw) : new Float32Array(raw);
  }

  #operand() {
    return { buf: this.buf, offset: this.offset, strides: this.strides, type: this.dtype };
  }

  /** The value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new ShapeError(`item() on ${this.describe()}: not one element`);
    return (await this.toArray())[0];
  }
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Row-major strides of a shape. */
export { contiguousStrides };

/** True when strides describe a row-major layout without gaps. */
export function isContiguous(shape: readonly number[], strides: readonly number[]): boolean {
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && strides[d] !== acc) return false;
    acc *= shape[d];
  }
  return true;
}

function checkShape(shape: readonly number[], what: string): void {
  for (const s of shape) {
    if (!Number.isInteger(s) || s < 0) throw new ShapeError(`${what}: bad shape [${shape}]`);
  }
}

/** An uninitialised contiguous tensor; `owner` labels its buffer for leak reports. */
export function empty(shape: readonly number[], dtype: DType = "f32", owner = "tensor"): Tensor {
  checkShape(shape, "empty");
  if (dtype === "f16") checkF16("empty");
  const buf = gpu().pool.acquire(bufferBytes(numel(shape), dtype), owner);
  return new Tensor(new Storage(buf), [...shape], contiguousStrides(shape), 0, dtype);
}

/**
 * Uploads host data. Integer tensors keep a host copy (index checks, grouped scatter plans); f16
 * rounds each value to nearest even on the host.
 */
export function tensor(
  data: ArrayLike<number>,
  shape: readonly number[] = [data.length],
  dtype: DType = data instanceof Int32Array ? "i32" : "f32",
): Tensor {
  checkShape(shape, "tensor");
  if (numel(shape) !== data.length) {
    throw new ShapeError(`tensor: ${data.length} values do not fill shape [${shape}]`);
  }
  let host: Float32Array<ArrayBuffer> | Int32Array<ArrayBuffer> | Uint16Array<ArrayBuffer>;
  if (dtype === "f16") {
    checkF16("tensor");
    // Padded to a whole number of 4-byte words, as writeBuffer wants.
    host = new Uint16Array(Math.ceil(data.length / 2) * 2);
    new Float16Array(host.buffer, 0, data.length).set(data);
  } else if (dtype === "i32") {
    host = Int32Array.from(data);
    for (let i = 0; i < data.length; i++) {
      if (host[i] !== data[i]) {
        throw new DTypeError(`tensor: value ${data[i]} at ${i} is not an i32`);
      }
    }
  } else if (dtype === "f32") {
    // A float32 array is uploaded as it is (writeBuffer copies it): no second copy of a large
    // weight on the host.
    host = data instanceof Float32Array && data.buffer instanceof ArrayBuffer
      ? data as Float32Array<ArrayBuffer>
      : Float32Array.from(data);
  } else throw new DTypeError(`tensor: unknown dtype '${dtype}'`);
  const g = gpu();
  const buf = g.pool.acquire(Math.max(host.byteLength, 4), "upload", g.epoch);
  if (host.byteLength) g.write(buf, host);
  const storage = new Storage(buf, dtype === "i32" ? host as Int32Array : null);
  return new Tensor(storage, [...shape], contiguousStrides(shape), 0, dtype);
}

/**
 * Waits until every operation recorded so far has run on the device (results written, buffers
 * free to reuse). Reads (`toArray`, `item`) wait by themselves; this is for work with no read.
 */
export async function synchronize(): Promise<void> {
  await gpu().sync();
}

/** Runs `fn` with gradient recording off (inference). Works for sync and async functions. */
export function noGrad<T>(fn: () => T): T {
  const prev = engine.gradEnabled;
  engine.gradEnabled = false;
  let result: T;
  try {
    result = fn();
  } catch (e) {
    engine.gradEnabled = prev;
    throw e;
  }
  if (result instanceof Promise) {
    return result.finally(() => (engine.gradEnabled = prev)) as T;
  }
  engine.gradEnabled = prev;
  return result;
}

/** Runs a synchronous `fn` with gradient recording on (a checkpoint's recompute in backward). */
export function enableGrad<T>(fn: () => T): T {
  const prev = engine.gradEnabled;
  engine.gradEnabled = true;
  try {
    return fn();
  } finally {
    engine.gradEnabled = prev;
  }
}

/** Tensors reachable from a value: a tensor, or arrays/objects holding tensors. */
function collect(v: unknown, out: Set<Tensor>): void {
  if (v instanceof Tensor) out.add(v);
  else if (Array.isArray(v)) { for (const x of v) collect(x, out); }
  else if (v && typeof v === "object" && !(v instanceof Promise)) {
    for (const x of Object.values(v)) collect(x, out);
  }
}

/**
 * Runs a synchronous `fn` and disposes every tensor created inside it that is not part of its
 * result (tensors in the returned value, arrays or plain objects survive into the outer scope).
 */
export function scope<T>(fn: () => T): T {
  const mine = new Set<Tensor>();
  engine.scopes.push(mine);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    engine.scopes.pop();
    for (const t of mine) t.dispose();
    throw e;
  }
  engine.scopes.pop();
  if (result instanceof Promise) {
    throw new Error("scope(fn): fn must be synchronous; await outside the scope");
  }
  const kept = new Set<Tensor>();
  collect(result, kept);
  for (const t of mine) {
    if (kept.has(t)) engine.scopes.at(-1)?.add(t);
    else t.dispose();
  }
  return result;
}

/** Removes a tensor from every open scope, so it outlives them (parameters, gradients). */
export function keep<T extends Tensor>(t: T): T {
  for (const s of engine.scopes) s.delete(t);
  return t;
}
