/**
 * `deno task data [--dest DIR] [--only GROUP,...] [--mirror URL] [--list]`: downloads the data
 * files of data/manifest.json that are missing from the data folder, resumably, each checked
 * against its SHA-256 (src/io/data.ts); files made from another (zip members, the movie-review
 * JSON lines) are made from their downloaded source and checked the same way. Idempotent: a
 * second run downloads nothing. Exits non-zero when a file fails its check or cannot be fetched,
 * naming it.
 */

import { existsSync } from "node:fs";
import { args, exit, stderrIsTerminal, writeStderr } from "../platform/platform.ts";
import { progressPrinter } from "../platform/progress.ts";
import { type DataFile, fetchData, readManifest } from "../io/data.ts";
import { dataDirCandidates } from "../io/paths.ts";
import { parseArgs, runMain, UsageError } from "./args.ts";

const USAGE = "usage: deno task data [--dest DIR] [--only GROUP,...] [--mirror URL] [--list]";
const EXAMPLE = "deno task data --only stsb";

await runMain(async () => {
  const { flags } = parseArgs(
    args(),
    {
      dest: { type: "string", help: "data folder to fill (default: the one gemkit reads)" },
      only: { type: "string", help: "comma-separated groups (see --list)" },
      mirror: { type: "string", help: "fetch MIRROR/<path> instead of each file's origin" },
      list: { type: "boolean", help: "print the groups, their files and sizes, and exit" },
    },
    USAGE,
    EXAMPLE,
  );
  const manifest = await readManifest();
  const groups = new Map<string, DataFile[]>();
  for (const f of manifest.files) groups.set(f.group, [...groups.get(f.group) ?? [], f]);
  if (flags.list) {
    for (const [g, fs] of groups) {
      const mb = fs.reduce((n, f) => n + f.bytes, 0) / 1e6;
      const derived = fs.filter((f) => f.derived).length;
      console.log(
        `${g.padEnd(18)} ${String(fs.length).padStart(4)} files ${mb.toFixed(2).padStart(7)} MB${
          derived ? ` (${derived} derived)` : ""
        }  ${fs[0].licence}`,
      );
    }
    return;
  }
  let files = manifest.files;
  if (flags.only) {
    const want = (flags.only as string).split(",").map((s) => s.trim()).filter(Boolean);
    for (const g of want) {
      if (!groups.has(g)) {
        throw new UsageError(`--only: no group '${g}'; groups: ${[...groups.keys()].join(", ")}`);
      }
    }
    files = files.filter((f) => want.includes(f.group));
  }
  // The folder gemkit reads: the first candidate that exists, else the user cache.
  const candidates = dataDirCandidates();
  const dest = (flags.dest as string | undefined) ??
    (candidates.find((c) => existsSync(c.dir)) ?? candidates[candidates.length - 1]).dir;
  const total = files.reduce((n, f) => n + f.bytes, 0);
  console.error(`gemkit data: ${files.length} files (${(total / 1e6).toFixed(1)} MB) in ${dest}`);
  // One progress line over all the bytes (files already present count as done).
  const print = progressPrinter("gemkit data:", { unit: "MB", scale: 1e6, decimals: 1 });
  let done = 0;
  const res = await fetchData(dest, files, {
    mirror: flags.mirror as string | undefined,
    onProgress: (f, state, bytes) => {
      if (state === "fetching") print(done + bytes, total);
      else {
        done += f.bytes;
        print(done, total);
      }
    },
  });
  if (stderrIsTerminal()) writeStderr("\r\x1b[K");
  console.error(
    `gemkit data: ${res.fetched.length} fetched, ${res.present.length} already present, ` +
      `${res.failed.length} failed`,
  );
  for (const f of res.failed) console.error(`gemkit data: ${f.path}: ${f.reason}`);
  if (res.failed.length) exit(1);
});
