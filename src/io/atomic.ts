/**
 * Atomic file writes: the bytes go to `<path>.tmp-<random>` beside the target, are synced, and the
 * file is renamed into place, so a reader (or a crash) sees the old file or the new one, never a
 * part. Every file gemkit writes in place goes through here (the files inside a checkpoint are
 * written into a temporary directory that is renamed into place as a whole).
 */

import { open, rename, rm } from "node:fs/promises";

/**
 * Writes `data` to `path` atomically: a string, bytes, or byte chunks written in order (an
 * iterable, so a generator can encode large files one piece at a time).
 */
export async function writeAtomic(
  path: string,
  data: string | Uint8Array | Iterable<Uint8Array>,
): Promise<void> {
  const chunks = typeof data === "string"
    ? [new TextEncoder().encode(data)]
    : data instanceof Uint8Array
    ? [data]
    : data;
  // "wx" (create, fail if it exists): two writers racing on one target never share a temp file.
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const file = await open(tmp, "wx");
  try {
    try {
      for (const c of chunks) {
        let off = 0;
        while (off < c.byteLength) {
          off += (await file.write(c, off, c.byteLength - off)).bytesWritten;
        }
      }
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp).catch(() => {});
    throw e;
  }
}
