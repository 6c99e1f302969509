/** SHA-256 of files and folders, for records that say exactly which data a result read. */

import { createHash } from "node:crypto";
import { readdirSync } from "node:fs";
import { open, readFile, stat } from "node:fs/promises";

/** Hex SHA-256 of bytes. */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const h = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(h)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A file's bytes (readFile never returns shared memory, whatever its declared type allows). */
async function fileBytes(path: string): Promise<Uint8Array<ArrayBuffer>> {
  return await readFile(path) as Uint8Array<ArrayBuffer>;
}

/**
 * Hex digest of a file read in 1 MiB pieces (so a checkpoint of many GB never sits in memory),
 * with `prefix` hashed first: git names a blob by `sha1("blob <size>\0" + bytes)`.
 */
export async function fileDigest(
  path: string,
  algorithm: "sha1" | "sha256",
  prefix = "",
): Promise<string> {
  const hash = createHash(algorithm);
  if (prefix) hash.update(prefix);
  const file = await open(path, "r");
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const { bytesRead } = await file.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await file.close();
  }
  return hash.digest("hex");
}

/**
 * Hex SHA-256 of a file, or of a folder: the hash of its sorted list of "relative/path hash"
 * lines (so renaming, adding or changing any file changes it).
 */
export async function sha256Path(path: string): Promise<string> {
  const info = await stat(path);
  if (info.isFile()) return await fileDigest(path, "sha256");
  const parts: string[] = [];
  const walk = async (dir: string, rel: string) => {
    const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name)
    );
    for (const e of entries) {
      if (e.isDirectory()) await walk(`${dir}/${e.name}`, `${rel}${e.name}/`);
      else {parts.push(
          `${rel}${e.name} ${await sha256Hex(await fileBytes(`${dir}/${e.name}`))}`,
        );}
    }
  };
  await walk(path, "");
  return await sha256Hex(new TextEncoder().encode(parts.join("\n")));
}
