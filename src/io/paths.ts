/** Where gemkit finds the shared, read-only data (models, corpora, evaluation sets). */

import { readFileSync, type Stats, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { env, projectRoot } from "../platform/platform.ts";

/** The data directory is missing; the message names the path that was tried and how it was chosen. */
export class DataDirError extends Error {
  /** Error class name. */
  override name = "DataDirError";
}

/** Where the data folder may be, in the order searched, each with how it was chosen. */
export function dataDirCandidates(): { dir: string; how: string }[] {
  const fromEnv = env("GEMKIT_DATA");
  if (fromEnv) return [{ dir: fromEnv, how: "from $GEMKIT_DATA" }];
  return [
    { dir: join(projectRoot(), "..", "shared", "data"), how: "beside the checkout" },
    { dir: join(homedir(), ".cache", "gemkit", "data"), how: "the user cache" },
  ];
}

/**
 * The data directory: `$GEMKIT_DATA` when set, else `<repo>/../shared/data` (computed from this
 * module's location, so it does not depend on the working directory), else
 * `~/.cache/gemkit/data`, where `deno task data` puts it. The data is never copied into the
 * repository. Throws {@link DataDirError} naming the paths tried when none is a directory.
 */
export function dataDir(): string {
  const tried = dataDirCandidates();
  for (const { dir, how } of tried) {
    let info: Stats;
    try {
      info = statSync(dir);
    } catch {
      continue;
    }
    if (!info.isDirectory()) {
      throw new DataDirError(`data directory ${dir} (${how}) is not a directory`);
    }
    return dir;
  }
  throw new DataDirError(
    `no data directory: tried ${tried.map((t) => `${t.dir} (${t.how})`).join(", ")}; ` +
      "`deno task data` downloads it into the last one (or --dest DIR with GEMKIT_DATA=DIR)",
  );
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
