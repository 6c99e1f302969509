/** SHA-256 of files and folders, for records that say exactly which data a result read. */

/** Hex SHA-256 of bytes. */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const h = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(h)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Hex SHA-256 of a file, or of a folder: the hash of its sorted list of "relative/path hash"
 * lines (so renaming, adding or changing any file changes it).
 */
export async function sha256Path(path: string): Promise<string> {
  const info = await Deno.stat(path);
  if (info.isFile) return await sha256Hex(await Deno.readFile(path));
  const parts: string[] = [];
  const walk = async (dir: string, rel: string) => {
    const entries = [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`, `${rel}${e.name}/`);
      else {parts.push(
          `${rel}${e.name} ${await sha256Hex(await Deno.readFile(`${dir}/${e.name}`))}`,
        );}
    }
  };
  await walk(path, "");
  return await sha256Hex(new TextEncoder().encode(parts.join("\n")));
}
