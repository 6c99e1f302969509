/** Errors raised by the GPU and tensor layers. Each names what was at fault. */

/**
 * A base class for an error whose `name` is `name` (so messages and stack traces show it);
 * `class ShapeError extends errorClass("ShapeError") {}` declares one.
 */
export function errorClass(name: string): new (message?: string, options?: ErrorOptions) => Error {
  return class extends Error {
    override name = name;
  };
}

/** No WebGPU adapter could be obtained on this machine. */
export class NoAdapterError extends errorClass("NoAdapterError") {}

/** A WGSL kernel failed to compile or validate; the message carries the shader with line numbers. */
export class ShaderError extends errorClass("ShaderError") {}

/** An operation received operands whose shapes do not fit together. */
export class ShapeError extends errorClass("ShapeError") {}

/** An operation received an operand of the wrong element type. */
export class DTypeError extends errorClass("DTypeError") {}

/** An index (gather id, target class, role id) lies outside the range it indexes. */
export class IndexError extends errorClass("IndexError") {}

/** A tensor or buffer was used after it was disposed. */
export class DisposedError extends errorClass("DisposedError") {}

/** Formats a shader with line numbers, for error messages. */
export function numberLines(source: string): string {
  return source.split("\n").map((l, i) => `${String(i + 1).padStart(4)}| ${l}`).join("\n");
}
