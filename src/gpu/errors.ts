/** Errors raised by the GPU and tensor layers. Each names what was at fault. */

/** No WebGPU adapter could be obtained on this machine. */
export class NoAdapterError extends Error {
  /** Error class name. */
  override name = "NoAdapterError";
}

/** A WGSL kernel failed to compile or validate; the message carries the shader with line numbers. */
export class ShaderError extends Error {
  /** Error class name. */
  override name = "ShaderError";
}

/** An operation received operands whose shapes do not fit together. */
export class ShapeError extends Error {
  /** Error class name. */
  override name = "ShapeError";
}

/** An operation received an operand of the wrong element type. */
export class DTypeError extends Error {
  /** Error class name. */
  override name = "DTypeError";
}

/** An index (gather id, target class, role id) lies outside the range it indexes. */
export class IndexError extends Error {
  /** Error class name. */
  override name = "IndexError";
}

/** A kernel would bind more bytes than the device allows in one binding; names kernel and buffer. */
export class BindingLimitError extends Error {
  /** Error class name. */
  override name = "BindingLimitError";
}

/** A tensor or buffer was used after it was disposed. */
export class DisposedError extends Error {
  /** Error class name. */
  override name = "DisposedError";
}

/** Formats a shader with line numbers, for error messages. */
export function numberLines(source: string): string {
  return source.split("\n").map((l, i) => `${String(i + 1).padStart(4)}| ${l}`).join("\n");
}
