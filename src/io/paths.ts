/** Where gemkit finds the shared, read-only data (models, corpora, evaluation sets). */

import { readFileSync, type Stats, statSync } from "node:fs";
import { join } from "node:path";
import { env, projectRoot } from "../platform/platform.ts";

/** The data directory is missing; the message names the path that was tried and how it was chosen. */
export class DataDirError extends Error {
  /** Error class name. */
  override name = "DataDirError";
}

/**
 * The data directory: `$GEMKIT_DATA` when set, else `<repo>/../shared/data` (absolute, computed
 * from this module's location, so it does not depend on the working directory). The data is never
 * copied into the repository, so tests read it from here. Throws {@link DataDirError} naming the
 * path when it does not exist or is not a directory.
 */
export function dataDir(): string {
  const fromEnv = env("GEMKIT_DATA");
  const dir = fromEnv ?? join(projectRoot(), "..", "shared", "data");
  const how = fromEnv ? "from $GEMKIT_DATA" : "default <repo>/../shared/data; set $GEMKIT_DATA";
  let info: Stats;
  try {
    info = statSync(dir);
  } catch {
    throw new DataDirError(`data directory ${dir} does not exist (${how})`);
  }
  if (!info.isDirectory()) {
    throw new DataDirError(`data directory ${dir} is not a directory (${how})`);
  }
  return dir;
}

/**
 * A file's bytes; a file that cannot be read becomes the caller's error class, with the path and
 * the reason in its message (`${path}: cannot read (...)`).
 */
export function readBytes(path: string, error: (message: string) => Error): Uint8Array {
  try {
    const b = readFileSync(path);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength); // a Uint8Array, not a Buffer
  } catch (e) {
    throw error(`${path}: cannot read (${(e as Error).message})`);
  }
}
