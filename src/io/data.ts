/**
 * The data gemkit reads (models, evaluation sets, corpora), as a committed manifest
 * (`data/manifest.json`), and the fetcher behind `deno task data`. Each file has its path inside
 * the data folder, size, SHA-256, licence and group, and either the URL it is downloaded from as
 * it is (a raw file of a public repository at a pinned commit) or, for a file made from another
 * (unzipped, reformatted), its source and the transform: members of zip archives are extracted,
 * and the named transforms of `derive.ts` run on their source (each source downloaded once per
 * run). A fetch downloads what is missing into
 * `<path>.part`, resumes a broken transfer with a Range request, checks size and SHA-256, and only
 * then renames the file into place: a file that fails its check is removed and named, and no good
 * file is ever touched. A second run downloads nothing.
 */

import { mkdir, readFile, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { projectRoot } from "../platform/platform.ts";
import { sha256Hex, sha256Path } from "./hash.ts";
import { writeAtomic } from "./atomic.ts";
import { ZipError, zipMember } from "./zip.ts";
import { make, MAKE_STEPS, type MakeStep } from "./derive.ts";
import {
  fetchInto,
  HttpStatusError,
  NetworkFailure,
  networkFetch,
  sizeOf,
  TransferError,
} from "./transfer.ts";

/** A file made from another one. */
export interface DerivedFrom {
  /** Where the source is: a raw URL at a pinned commit. */
  url: string;
  /** What was done to it ("member qc/train.txt of the zip archive", ...). */
  transform: string;
  /** Set when the file is that member of the zip archive at `url`: the fetcher extracts it. */
  member?: string;
  /** Set when the fetcher makes the file from the source with this transform (derive.ts). */
  make?: MakeStep;
  /**
   * SHA-256 of the source, checked before any member is extracted or transform run. Absent when
   * the manifest was made without access to the origin (the result's SHA-256 is always checked).
   */
  sourceSha256?: string;
}

/** One file of the data folder. */
export interface DataFile {
  /** Path inside the data folder, "/"-separated. */
  path: string;
  /** What `--only` selects it by ("stories260k", "stsb", "tinystories", ...). */
  group: string;
  bytes: number;
  sha256: string;
  licence: string;
  /** Download URL of the file as it is; absent for derived files. */
  url?: string;
  derived?: DerivedFrom;
}

/** The manifest: every file gemkit reads from the data folder. */
export interface DataManifest {
  about: string;
  files: DataFile[];
}

/** A fetch failed; the message names the file and what was wrong. */
export class DataError extends Error {
  /** Error class name. */
  override name = "DataError";
}

/** The committed manifest, `data/manifest.json` of this checkout. */
export async function readManifest(path = join(projectRoot(), "data", "manifest.json")) {
  const m = JSON.parse(await readFile(path, "utf8")) as DataManifest;
  if (!Array.isArray(m.files)) throw new DataError(`${path}: no "files" list`);
  for (const [i, f] of m.files.entries()) {
    for (const k of ["path", "group", "sha256", "licence"] as const) {
      if (typeof f[k] !== "string") throw new DataError(`${path}: files[${i}].${k} is missing`);
    }
    if (!Number.isInteger(f.bytes)) throw new DataError(`${path}: files[${i}].bytes is missing`);
    if (!f.url && !f.derived?.member && !f.derived?.make) {
      throw new DataError(
        `${path}: files[${i}] (${f.path}) has neither a url nor a way to make it ` +
          "(derived.member or derived.make)",
      );
    }
    if (f.derived?.make && !MAKE_STEPS.includes(f.derived.make)) {
      throw new DataError(
        `${path}: files[${i}].derived.make '${f.derived.make}' is not one of ${
          MAKE_STEPS.join(", ")
        }`,
      );
    }
    if (f.path.split("/").some((p) => p === ".." || p === "") || f.path.startsWith("/")) {
      throw new DataError(`${path}: files[${i}].path '${f.path}' leaves the data folder`);
    }
  }
  return m;
}

/** Options of {@link fetchData}. */
export interface FetchDataOptions {
  /** Fetch `<mirror>/<path>` instead of each file's own URL (mirrors, proxies, tests). */
  mirror?: string;
  /** Attempts per file when the connection breaks or the server fails (default 3). */
  attempts?: number;
  /** Wait before retry k is `retryDelayMs * k` (default 1000). */
  retryDelayMs?: number;
  /** Replaces `fetch` (tests). */
  fetch?: typeof fetch;
  /** Hears each file's state and, while it downloads, its bytes on disk. */
  onProgress?: (file: DataFile, state: "present" | "fetching" | "done", bytes: number) => void;
}

/** What {@link fetchData} did. */
export interface FetchDataResult {
  /** Files already present with the right size and SHA-256. */
  present: string[];
  /** Files downloaded and verified. */
  fetched: string[];
  /** Files that could not be fetched, each with its reason. */
  failed: { path: string; reason: string }[];
}

/** Whether `dest/<path>` is there with the manifest's size and SHA-256. */
export async function hasFile(dest: string, f: DataFile): Promise<boolean> {
  const p = join(dest, f.path);
  return await sizeOf(p) === f.bytes && await sha256Path(p) === f.sha256;
}

/**
 * Brings every file of `files` into `dest`: present ones are checked and left alone, missing ones
 * downloaded and verified. Never throws for one file's failure: each lands in `failed` with its
 * reason, and the others go on.
 */
export async function fetchData(
  dest: string,
  files: readonly DataFile[],
  opts: FetchDataOptions = {},
): Promise<FetchDataResult> {
  const out: FetchDataResult = { present: [], fetched: [], failed: [] };
  const fetcher = networkFetch(opts.fetch ?? fetch);
  const attempts = opts.attempts ?? 3, delay = opts.retryDelayMs ?? 1000;
  const archives = new Map<string, Promise<Uint8Array>>();
  // Runs one transfer, again after a broken connection or a server-side failure.
  const retrying = async <T>(transfer: () => Promise<T>): Promise<T> => {
    for (let attempt = 1;; attempt++) {
      try {
        return await transfer();
      } catch (e) {
        const retry = e instanceof NetworkFailure ||
          (e instanceof HttpStatusError && (e.status >= 500 || e.status === 429));
        if (!retry || attempt >= attempts) throw e;
        await new Promise((r) => setTimeout(r, delay * attempt));
      }
    }
  };
  // A whole file whose size the manifest does not give (an archive).
  const fetchWhole = (url: string) =>
    retrying(async () => {
      const resp = await fetcher(url);
      if (resp.status !== 200) {
        await resp.body?.cancel();
        throw new HttpStatusError(url, resp.status);
      }
      try {
        return new Uint8Array(await resp.arrayBuffer());
      } catch (e) {
        throw new NetworkFailure(`download broke: ${(e as Error).message}`, { cause: e });
      }
    });
  for (const f of files) {
    const final = join(dest, f.path);
    if (await hasFile(dest, f)) {
      out.present.push(f.path);
      opts.onProgress?.(f, "present", f.bytes);
      continue;
    }
    if (!opts.mirror && (f.derived?.member || f.derived?.make)) {
      // Made from a source (a zip member, or a named transform): the source is downloaded once
      // per run, the result checked.
      try {
        const { url, member, make: step, sourceSha256 } = f.derived;
        archives.set(url, archives.get(url) ?? fetchWhole(url));
        const source = await archives.get(url)!;
        if (sourceSha256) {
          const got = await sha256Hex(source.slice());
          if (got !== sourceSha256) {
            throw new DataError(`source SHA-256 ${got}, expected ${sourceSha256}`);
          }
        }
        const bytes = member ? zipMember(source, member, url) : make(step!, source, url);
        const got = await sha256Hex(bytes.slice());
        if (got !== f.sha256) throw new DataError(`SHA-256 ${got}, expected ${f.sha256}`);
        await mkdir(dirname(final), { recursive: true });
        await writeAtomic(final, bytes);
        out.fetched.push(f.path);
        opts.onProgress?.(f, "done", f.bytes);
      } catch (e) {
        const why = (e as Error).message;
        // A zip error already names the archive.
        out.failed.push({
          path: f.path,
          reason: e instanceof ZipError ? why : `${f.derived.url}: ${why}`,
        });
      }
      continue;
    }
    const url = opts.mirror ? `${opts.mirror.replace(/\/+$/, "")}/${f.path}` : f.url!;
    await mkdir(dirname(final), { recursive: true });
    const part = `${final}.part`;
    opts.onProgress?.(f, "fetching", Math.max(0, await sizeOf(part)));
    try {
      await retrying(() =>
        fetchInto(url, part, f.bytes, fetcher, (b) => opts.onProgress?.(f, "fetching", b))
      );
      const got = await sha256Path(part);
      if (got !== f.sha256) {
        await rm(part);
        throw new DataError(`SHA-256 ${got}, expected ${f.sha256} (the download was removed)`);
      }
      await rename(part, final);
      out.fetched.push(f.path);
      opts.onProgress?.(f, "done", f.bytes);
    } catch (e) {
      const known = e instanceof DataError || e instanceof TransferError ||
        e instanceof HttpStatusError || e instanceof NetworkFailure;
      if (!known) throw e;
      out.failed.push({ path: f.path, reason: `${url}: ${(e as Error).message}` });
    }
  }
  return out;
}
