/**
 * Tensors larger than one storage binding may be (`maxStorageBufferBindingSize`: 128 MiB on
 * llvmpipe, 1-4 GiB on most GPUs) live in one buffer (up to `maxBufferSize`) and are reached
 * through windows: byte ranges bound on their own. An op binds the window over the elements it
 * touches, with element offsets rebased to the window's start, and an op that touches more than
 * one binding's worth runs in spans. A buffer that fits one binding is bound whole, exactly as
 * without paging, so nothing changes for tensors below the limit.
 */

import type { Gpu } from "./device.ts";
import { BindingLimitError } from "./errors.ts";
import { BufferWindow, type GpuBuffer } from "./pool.ts";

/** What a kernel binds: a whole buffer, or a window of one. */
export type Binding = GpuBuffer | BufferWindow;

/** A buffer's binding for elements [first, end), and the element the binding starts at. */
export interface BoundRange {
  /** The buffer, or a window of it. */
  bind: Binding;
  /** Element index where the binding starts: subtract it from offsets. */
  base: number;
}

/** Whether `buf` needs windows on this device. */
export function paged(gpu: Gpu, buf: GpuBuffer): boolean {
  return buf.capacity > gpu.bindingLimit;
}

/**
 * The binding of elements [first, end) of `buf` (elements of `elemBytes`: 4, or 2 for f16): the
 * buffer itself when it fits one binding, else a window starting at `first` rounded down to the
 * offset alignment. Throws naming `what` when the range itself is more than one binding.
 */
export function bindRange(
  gpu: Gpu,
  buf: GpuBuffer,
  first: number,
  end: number,
  what: string,
  elemBytes = 4,
): BoundRange {
  if (!paged(gpu, buf)) return { bind: buf, base: 0 };
  const align = gpu.device.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor((first * elemBytes) / align) * align;
  const size = Math.ceil((end * elemBytes - start) / 4) * 4;
  if (size > gpu.bindingLimit) {
    throw new BindingLimitError(
      `${what}: ${size} bytes of buffer '${buf.owner}' in one binding, over this device's ` +
        `maxStorageBufferBindingSize of ${gpu.bindingLimit}`,
    );
  }
  return { bind: new BufferWindow(buf, start, Math.max(4, size)), base: start / elemBytes };
}

/**
 * Splits `n` elements into spans [start, count) that each fit one binding with room for an
 * unaligned start (one span when none of `bufs` is paged). Span starts are multiples of 64
 * elements, so an operand read from element 0 gets windows at aligned offsets.
 */
export function spans(gpu: Gpu, n: number, bufs: readonly GpuBuffer[]): [number, number][] {
  if (!bufs.some((b) => paged(gpu, b))) return [[0, n]];
  const align = gpu.device.limits.minStorageBufferOffsetAlignment;
  const per = Math.floor((gpu.bindingLimit - align) / 4 / 64) * 64;
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += per) out.push([s, Math.min(per, n - s)]);
  return out;
}
