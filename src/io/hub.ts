/**
 * Hugging Face hub client: turns `--model org/name[@revision]` into a local checkpoint directory.
 *
 * Files are stored in the Hugging Face cache layout, so a model downloaded by Python tools is
 * reused here and the reverse. Under the cache root, `models--org--name/` holds:
 * - `blobs/<etag>`: file contents, named by their SHA-256 (LFS files) or git blob SHA-1 (others);
 * - `refs/<revision>`: the commit a branch or tag pointed to when last fetched;
 * - `snapshots/<commit>/<file>`: relative symbolic links to the blobs (a copy where the file
 *   system refuses links). The snapshot folder is the checkpoint directory returned.
 * The root is the `cacheDir` option, else `HF_HUB_CACHE`, else `HF_HOME/hub`, else
 * `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, as in huggingface_hub.
 *
 * A checkpoint is `config.json`, a tokenizer, the optional configs and model card, and
 * `model.safetensors` or `model.safetensors.index.json` plus every shard it names. The revision
 * is first pinned to its commit, and every file is listed and fetched at that commit, so a push
 * during a download cannot mix two versions.
 *
 * Listing and per-file metadata come from `@huggingface/hub` (`modelInfo`, `listFiles`,
 * `fileDownloadInfo`). The byte transfer is our own ranged `fetch` of that URL (`transfer.ts`):
 * the library's blob hides the response status, so a server that ignores `Range` and answers 200
 * would be appended after the partial bytes unnoticed. Each file streams into
 * `blobs/<etag>.incomplete` (where huggingface_hub leaves its own partial downloads, so either
 * tool continues the other's); a later attempt continues it with `Range: bytes=<have>-`. A
 * finished blob is checked against its name (SHA-256 or git SHA-1) before it is linked: a
 * mismatch removes the download, names the file and fails.
 *
 * Offline: with `HF_HUB_OFFLINE=1` (or `offline: true`) the hub is never contacted; when the hub
 * is unreachable the cache is used as is. Either way the snapshot `refs/<revision>` names (or the
 * revision itself, when it is a commit) is returned when complete, and otherwise a
 * {@link HubError} names the repo and the first missing file.
 *
 * Environment: `HF_TOKEN` (sent as a bearer token to the endpoint only), `HF_ENDPOINT`
 * (default https://huggingface.co), `HF_HUB_OFFLINE`, `HF_HUB_CACHE`, `HF_HOME`.
 */

import { copyFile, mkdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { dirname, relative } from "node:path";
import { fileDownloadInfo, HubApiError, listFiles, modelInfo } from "@huggingface/hub";
import { env, isNotFound } from "../platform/platform.ts";
import { progressPrinter } from "../platform/progress.ts";
import { fileDigest } from "./hash.ts";
import { fetchInto, HttpStatusError, NetworkFailure, sizeOf, TransferError } from "./transfer.ts";

/** A model could not be resolved; the message names the repo (with revision) and the file. */
export class HubError extends Error {
  /** Error class name. */
  override name = "HubError";
  /** Builds `"<repo>@<revision>: <file>: <problem>"`; `file` may be empty. */
  constructor(
    readonly repo: string,
    readonly file: string,
    problem: string,
    options?: ErrorOptions,
  ) {
    super(file ? `${repo}: ${file}: ${problem}` : `${repo}: ${problem}`, options);
  }
}

/** Download progress of one file. */
export interface Progress {
  /** `org/name@revision`. */
  repo: string;
  /** File path inside the repo. */
  file: string;
  /** Bytes on disk so far, resumed bytes included. */
  bytes: number;
  /** Final size. */
  total: number;
}

/** Options of {@link resolveModel}; each overrides the environment variable it names. */
export interface HubOptions {
  /** Root of the hub cache (default `HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`). */
  cacheDir?: string;
  /** Hub URL (default `HF_ENDPOINT` or https://huggingface.co). */
  endpoint?: string;
  /** Access token (default `HF_TOKEN`). */
  token?: string;
  /** Never contact the hub (default: `HF_HUB_OFFLINE` is 1/true/yes/on). */
  offline?: boolean;
  /** Attempts per file when the connection fails or the hub answers 5xx/429 (default 3). */
  attempts?: number;
  /** Wait before retry k is `retryDelayMs * k` (default 1000). */
  retryDelayMs?: number;
  /** Receives progress instead of the stderr printer; `false` silences progress. */
  onProgress?: ((p: Progress) => void) | false;
  /** Files at least this large get progress reports (default 16 MiB). */
  progressMinBytes?: number;
}

/** Files every checkpoint must have, and those fetched when the repo has them. */
const REQUIRED = ["config.json"];
/** One of these is required: Hugging Face's tokenizer, or llama2.c's (GEM checkpoints of it). */
const TOKENIZERS = ["tokenizer.json", "tokenizer.bin", "tokenizer.model"];
/** With `gem.json` a GEM checkpoint (src/gem/io.ts); README.md is its model card. */
const OPTIONAL = [
  "tokenizer_config.json",
  "generation_config.json",
  "special_tokens_map.json",
  "gem.json",
  "added_tokens.json",
  "README.md",
];
const SINGLE = "model.safetensors";
const INDEX = "model.safetensors.index.json";

/** A parsed `org/name[@revision]`. */
export interface ModelSpec {
  /** `org/name`. */
  repo: string;
  /** Branch, tag or commit; "main" when absent. */
  revision: string;
}

/** Parses `org/name[@revision]`; returns null for anything else. */
export function parseModelSpec(spec: string): ModelSpec | null {
  const m = /^([\w.-]+)\/([\w.-]+)(?:@([\w./-]+))?$/.exec(spec);
  if (!m || [m[1], m[2]].some((p) => p === "." || p === "..")) return null;
  const revision = m[3] ?? "main";
  if (revision.split("/").some((p) => p === "" || p === "." || p === "..")) return null;
  return { repo: `${m[1]}/${m[2]}`, revision };
}

/** True for the values huggingface_hub accepts as "on". */
function envFlag(name: string): boolean {
  return ["1", "true", "yes", "on"].includes((env(name) ?? "").toLowerCase());
}

/** The hub cache root for these options (huggingface_hub's order of variables). */
export function hubCacheDir(opts: HubOptions = {}): string {
  if (opts.cacheDir) return opts.cacheDir;
  const hub = env("HF_HUB_CACHE") ?? env("HUGGINGFACE_HUB_CACHE");
  if (hub) return hub;
  const hfHome = env("HF_HOME");
  if (hfHome) return `${hfHome}/hub`;
  const xdg = env("XDG_CACHE_HOME");
  const home = env("HOME");
  if (!xdg && !home) {
    throw new Error("hub.ts: set HF_HUB_CACHE, HF_HOME or HOME for the model cache");
  }
  return `${xdg || `${home}/.cache`}/huggingface/hub`;
}

/** The folder of one model repo in the cache: `<root>/models--org--name`. */
export function repoCacheDir(repo: string, opts: HubOptions = {}): string {
  return `${hubCacheDir(opts)}/models--${repo.split("/").join("--")}`;
}

/** A full 40-digit commit id (lowercase hex, as the hub writes them). */
const COMMIT = /^[0-9a-f]{40}$/;

/**
 * The cached snapshot folder of `spec`'s revision: the revision itself when it is a commit, else
 * the commit `refs/<revision>` records; null when the cache has no record of the revision.
 */
export async function cachedSnapshot(
  spec: ModelSpec,
  opts: HubOptions = {},
): Promise<string | null> {
  const repoDir = repoCacheDir(spec.repo, opts);
  let commit = spec.revision;
  if (!COMMIT.test(commit)) {
    try {
      commit = (await readFile(`${repoDir}/refs/${spec.revision}`, "utf8")).trim();
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
    if (!COMMIT.test(commit)) return null;
  }
  return `${repoDir}/snapshots/${commit}`;
}

/** Shard names of an index file's `weight_map`, in first-use order; throws when malformed. */
function shardsOf(indexText: string): string[] {
  const map = JSON.parse(indexText)?.weight_map;
  if (typeof map !== "object" || map === null) throw new Error("no weight_map object");
  const files = [...new Set(Object.values(map))];
  if (!files.every((f) => typeof f === "string" && isSafeRelative(f))) {
    throw new Error("weight_map names a file outside the checkpoint");
  }
  return files as string[];
}

/** A repo path we may join onto the cache dir: relative, no "..", no empty parts. */
function isSafeRelative(path: string): boolean {
  return path !== "" && !path.startsWith("/") &&
    path.split("/").every((p) => p !== "" && p !== "." && p !== "..");
}

/** Files a complete cached checkpoint in `dir` lacks (empty when complete). */
export async function missingFiles(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (const f of REQUIRED) if (await sizeOf(`${dir}/${f}`) < 0) missing.push(f);
  let tokenizer = false;
  for (const f of TOKENIZERS) tokenizer ||= await sizeOf(`${dir}/${f}`) >= 0;
  if (!tokenizer) missing.push(TOKENIZERS[0]);
  if (await sizeOf(`${dir}/${INDEX}`) >= 0) {
    let shards: string[];
    try {
      shards = shardsOf(await readFile(`${dir}/${INDEX}`, "utf8"));
    } catch (e) {
      return [...missing, `${INDEX} (unreadable: ${(e as Error).message})`];
    }
    for (const s of shards) if (await sizeOf(`${dir}/${s}`) < 0) missing.push(s);
  } else if (await sizeOf(`${dir}/${SINGLE}`) < 0) {
    missing.push(SINGLE);
  }
  return missing;
}

/** Settings shared by the steps of one {@link resolveModel} call. */
interface Ctx {
  spec: ModelSpec;
  /** `org/name@revision`, for messages. */
  label: string;
  /** `<root>/models--org--name`. */
  repoDir: string;
  endpoint: string;
  fetch: typeof fetch;
  attempts: number;
  retryDelayMs: number;
  progress: ((p: Progress) => void) | null;
  progressMinBytes: number;
  /** The commit the revision was pinned to, once known. */
  commit?: string;
}

/** A file as the hub lists it: its size, and the hash that names its blob. */
interface Listed {
  size: number;
  /** SHA-256 of an LFS file, git blob SHA-1 of any other (huggingface_hub's etag). */
  etag: string;
  algorithm: "sha256" | "sha1";
}

/**
 * A fetch that adds the bearer token to requests for the endpoint's own origin (never to a CDN
 * the hub redirects to), and turns transport failures into {@link NetworkFailure}. The token goes
 * in as a header rather than the library's `accessToken`, which rejects tokens not starting "hf_"
 * (private endpoints issue other kinds).
 */
function hubFetch(endpoint: string, token: string | undefined): typeof fetch {
  const origin = new URL(endpoint).origin;
  return async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : input);
    const headers = new Headers(init?.headers);
    if (token && url.origin === origin && !headers.has("authorization")) {
      headers.set("authorization", `Bearer ${token}`);
    }
    try {
      return await fetch(url, { ...init, headers });
    } catch (e) {
      throw new NetworkFailure(`${url}: ${(e as Error).message}`, { cause: e });
    }
  };
}

/** True when the hub could not be reached or failed on its side, so the cache may stand in. */
function unreachable(e: unknown): boolean {
  if (e instanceof NetworkFailure) return true;
  return (e instanceof HubApiError && e.statusCode >= 500) ||
    (e instanceof HttpStatusError && e.status >= 500);
}

/** Prints each file's download progress to stderr (see platform/progress.ts), in MB. */
function stderrProgress(): (p: Progress) => void {
  let current = "", print = (_d: number, _t: number) => {};
  return ({ repo, file, bytes, total }) => {
    if (file !== current) {
      current = file;
      print = progressPrinter(`gemkit: ${repo} ${file}`, { unit: "MB", scale: 1e6, decimals: 1 });
    }
    print(bytes, total);
  };
}

/**
 * Returns a local checkpoint directory for `spec`: a path that exists is returned as is;
 * `org/name[@revision]` is downloaded into (or found in) the cache, and its snapshot folder
 * returned. Throws {@link HubError} when the spec is neither, or when neither the hub nor the
 * cache can supply a file.
 */
export async function resolveModel(spec: string, opts: HubOptions = {}): Promise<string> {
  if (await sizeOf(spec) >= 0) return spec;
  const parsed = parseModelSpec(spec);
  if (!parsed) {
    throw new HubError(spec, "", "not an existing local path, nor a hub id org/name[@revision]");
  }
  const label = `${parsed.repo}@${parsed.revision}`;
  const repoDir = repoCacheDir(parsed.repo, opts);
  const offline = opts.offline ?? envFlag("HF_HUB_OFFLINE");
  if (offline) return await fromCache(parsed, label, opts, "HF_HUB_OFFLINE forbids downloading it");
  const endpoint = (opts.endpoint ?? env("HF_ENDPOINT") ?? "https://huggingface.co")
    .replace(/\/+$/, "");
  const onProgress = opts.onProgress ?? stderrProgress();
  const ctx: Ctx = {
    spec: parsed,
    label,
    repoDir,
    endpoint,
    fetch: hubFetch(endpoint, opts.token ?? env("HF_TOKEN")),
    attempts: Math.max(1, opts.attempts ?? 3),
    retryDelayMs: opts.retryDelayMs ?? 1000,
    progress: onProgress === false ? null : onProgress,
    progressMinBytes: opts.progressMinBytes ?? 16 * 2 ** 20,
  };
  try {
    return await downloadCheckpoint(ctx);
  } catch (e) {
    if (!unreachable(e)) throw e;
    const why = `the hub at ${endpoint} is unreachable or failing (${(e as Error).message})`;
    const dir = await fromCache(parsed, label, opts, why, e, ctx.commit);
    console.warn(
      `gemkit: ${endpoint} unreachable (${(e as Error).message}); using the cache at ${dir}`,
    );
    return dir;
  }
}

/**
 * The complete cached snapshot of `spec`, or a {@link HubError} saying what is missing and why.
 * `pinned` is the commit a download had pinned before the hub failed: its snapshot is preferred,
 * then the one `refs/` records, and the error names what the pinned one lacks.
 */
async function fromCache(
  spec: ModelSpec,
  label: string,
  opts: HubOptions,
  why: string,
  cause?: unknown,
  pinned?: string,
): Promise<string> {
  const recorded = await cachedSnapshot(spec, opts);
  const dirs = [pinned && `${repoCacheDir(spec.repo, opts)}/snapshots/${pinned}`, recorded]
    .filter((d): d is string => !!d);
  if (!dirs.length) {
    const where = repoCacheDir(spec.repo, opts);
    throw new HubError(
      label,
      "",
      `${why}, and the cache at ${where} has no snapshot of revision ${spec.revision}`,
      { cause },
    );
  }
  const missing = await Promise.all(dirs.map(missingFiles));
  const complete = dirs.find((_, i) => missing[i].length === 0);
  if (complete) return complete;
  throw new HubError(
    label,
    missing[0][0],
    `${why}, and the file is not in the cache at ${dirs[0]}`,
    {
      cause,
    },
  );
}

/** Maps a failed listing or revision lookup to a {@link HubError}; other errors pass through. */
function listingError(ctx: Ctx, e: unknown): unknown {
  if (e instanceof HubApiError && e.statusCode < 500) {
    const hint = e.statusCode === 401 || e.statusCode === 403 || e.statusCode === 404
      ? " (check the name and revision; a private or gated repo needs HF_TOKEN)"
      : "";
    return new HubError(
      ctx.label,
      "",
      `listing failed at ${ctx.endpoint}: HTTP ${e.statusCode}${hint}`,
      { cause: e },
    );
  }
  return e;
}

/** The commit the revision points to now (no request when it already is one). */
async function pinCommit(ctx: Ctx): Promise<string> {
  if (COMMIT.test(ctx.spec.revision)) return ctx.spec.revision;
  const info = await modelInfo({
    name: ctx.spec.repo,
    revision: ctx.spec.revision,
    additionalFields: ["sha"],
    hubUrl: ctx.endpoint,
    fetch: ctx.fetch,
  });
  const sha = (info as { sha?: unknown }).sha;
  if (typeof sha !== "string" || !COMMIT.test(sha)) {
    throw new HubError(ctx.label, "", `the hub at ${ctx.endpoint} gave no commit id for it`);
  }
  return sha;
}

/** The repo's top-level files at `commit`, with the hashes that name their blobs. */
async function listCommit(ctx: Ctx, commit: string): Promise<Map<string, Listed>> {
  const files = new Map<string, Listed>();
  const entries = listFiles({
    repo: { type: "model", name: ctx.spec.repo },
    revision: commit,
    hubUrl: ctx.endpoint,
    fetch: ctx.fetch,
  });
  for await (const e of entries) {
    if (e.type !== "file") continue;
    const listed: Listed | null = e.lfs && /^[0-9a-f]{64}$/.test(e.lfs.oid)
      ? { size: e.size, etag: e.lfs.oid, algorithm: "sha256" }
      : !e.lfs && e.oid && /^[0-9a-f]{40}$/.test(e.oid)
      ? { size: e.size, etag: e.oid, algorithm: "sha1" }
      : null;
    if (listed) files.set(e.path, listed);
    else files.set(e.path, { size: e.size, etag: "", algorithm: "sha1" });
  }
  return files;
}

/**
 * Pins the revision to a commit, lists it, fetches every checkpoint file the snapshot lacks, and
 * records the commit in `refs/<revision>`. Returns the snapshot folder.
 */
async function downloadCheckpoint(ctx: Ctx): Promise<string> {
  let commit: string;
  let listed: Map<string, Listed>;
  try {
    commit = ctx.commit = await pinCommit(ctx);
    listed = await listCommit(ctx, commit);
  } catch (e) {
    throw listingError(ctx, e);
  }
  const snapshot = `${ctx.repoDir}/snapshots/${commit}`;
  const need = (file: string) => {
    if (!listed.has(file)) {
      throw new HubError(ctx.label, file, `not in the repo at ${ctx.endpoint}`);
    }
    return file;
  };
  const tokenizer = TOKENIZERS.find((f) => listed.has(f)) ?? TOKENIZERS[0];
  const files = [...REQUIRED.map(need), need(tokenizer), ...OPTIONAL.filter((f) => listed.has(f))];
  if (listed.has(INDEX)) {
    await fetchFile(ctx, commit, INDEX, listed.get(INDEX)!);
    let shards: string[];
    try {
      shards = shardsOf(await readFile(`${snapshot}/${INDEX}`, "utf8"));
    } catch (e) {
      throw new HubError(ctx.label, INDEX, (e as Error).message, { cause: e });
    }
    files.push(...shards.map(need));
  } else {
    files.push(need(SINGLE));
  }
  for (const f of files) await fetchFile(ctx, commit, f, listed.get(f)!);
  if (ctx.spec.revision !== commit) {
    const ref = `${ctx.repoDir}/refs/${ctx.spec.revision}`;
    await mkdir(dirname(ref), { recursive: true });
    await writeFile(ref, commit); // no newline, as huggingface_hub writes it
  }
  return snapshot;
}

/**
 * Makes `snapshots/<commit>/<file>` point at its blob, downloading and checking the blob unless
 * the cache already has it (from any revision, or from another tool).
 */
async function fetchFile(ctx: Ctx, commit: string, file: string, listed: Listed): Promise<void> {
  if (!isSafeRelative(file)) {
    throw new HubError(ctx.label, file, "path escapes the checkpoint directory");
  }
  if (!listed.etag) {
    throw new HubError(ctx.label, file, `the listing at ${ctx.endpoint} gives no hash for it`);
  }
  const link = `${ctx.repoDir}/snapshots/${commit}/${file}`;
  const blob = `${ctx.repoDir}/blobs/${listed.etag}`;
  if (await sizeOf(link) === listed.size) return;
  if (await sizeOf(blob) !== listed.size) await downloadBlob(ctx, commit, file, listed, blob);
  await mkdir(dirname(link), { recursive: true });
  await rm(link, { force: true }); // a stale or dangling link
  try {
    await symlink(relative(dirname(link), blob), link);
  } catch {
    await copyFile(blob, link); // file systems without symbolic links, as huggingface_hub does
  }
}

/** Downloads one blob through `<blob>.incomplete`, checks its hash, and renames it into place. */
async function downloadBlob(
  ctx: Ctx,
  commit: string,
  file: string,
  listed: Listed,
  blob: string,
): Promise<void> {
  await mkdir(dirname(blob), { recursive: true });
  const part = `${blob}.incomplete`;
  for (let attempt = 1;; attempt++) {
    try {
      // Asked again on each attempt: the URL may be a short-lived signed CDN link.
      const info = await fileDownloadInfo({
        repo: { type: "model", name: ctx.spec.repo },
        path: file,
        revision: commit,
        hubUrl: ctx.endpoint,
        fetch: ctx.fetch,
      });
      if (!info) throw new HubError(ctx.label, file, `not found at ${ctx.endpoint} (HTTP 404)`);
      if (info.size !== listed.size) {
        throw new HubError(
          ctx.label,
          file,
          `the hub lists ${listed.size} bytes but serves ${info.size}`,
        );
      }
      const report = ctx.progress && info.size >= ctx.progressMinBytes ? ctx.progress : null;
      await fetchInto(
        info.url,
        part,
        info.size,
        ctx.fetch,
        report ? (bytes) => report({ repo: ctx.label, file, bytes, total: info.size }) : undefined,
      );
      break;
    } catch (e) {
      const status = e instanceof HubApiError
        ? e.statusCode
        : e instanceof HttpStatusError
        ? e.status
        : 0;
      const retry = unreachable(e) || status === 429;
      if (!retry || attempt >= ctx.attempts) {
        if (status) {
          throw new HubError(ctx.label, file, `HTTP ${status} from ${ctx.endpoint}`, { cause: e });
        }
        if (e instanceof TransferError) {
          throw new HubError(ctx.label, file, e.message, { cause: e });
        }
        throw e;
      }
      console.warn(
        `gemkit: ${ctx.label} ${file}: ${(e as Error).message}; retrying (${attempt}/${
          ctx.attempts - 1
        })`,
      );
      await new Promise((r) => setTimeout(r, ctx.retryDelayMs * attempt));
    }
  }
  const got = await fileDigest(
    part,
    listed.algorithm,
    listed.algorithm === "sha1" ? `blob ${listed.size}\0` : "",
  );
  if (got !== listed.etag) {
    await rm(part);
    throw new HubError(
      ctx.label,
      file,
      `downloaded bytes hash to ${got}, but the hub lists ${listed.etag} ` +
        `(${listed.algorithm === "sha1" ? "git blob SHA-1" : "SHA-256"}); the download was removed`,
    );
  }
  await rename(part, blob);
}
