/**
 * Hugging Face hub client: turns `--model org/name[@revision]` into a local checkpoint directory.
 *
 * Files land in `<cache>/<org>/<name>/<revision>/` (cache: the `cacheDir` option, else
 * `$GEMKIT_CACHE/hub`, else `~/.cache/gemkit/hub`). A checkpoint is `config.json`,
 * `tokenizer.json`, the optional tokenizer/generation configs, and `model.safetensors` or
 * `model.safetensors.index.json` plus every shard it names.
 *
 * Listing and per-file metadata (size, final URL) come from `@huggingface/hub` (`listFiles`,
 * `fileDownloadInfo`). The byte transfer is our own ranged `fetch` of that URL (`transfer.ts`):
 * the library's blob hides the response status, so a server that ignores `Range` and answers 200
 * would be appended after the partial bytes unnoticed. Here each file streams into `<file>.incomplete`; a later
 * attempt (a retry in the same call, or a new run) continues it with `Range: bytes=<have>-`, and
 * the result is checked against the server's size before an atomic rename into place.
 *
 * Offline: with `HF_HUB_OFFLINE=1` (or `offline: true`) the hub is never contacted; when the hub
 * is unreachable the cache is used as is. Either way a complete cached checkpoint is returned
 * without error, and an incomplete one raises a {@link HubError} naming the repo and the first
 * missing file.
 *
 * Environment: `HF_TOKEN` (sent as a bearer token to the endpoint only), `HF_ENDPOINT`
 * (default https://huggingface.co), `HF_HUB_OFFLINE`, `GEMKIT_CACHE`.
 */

import { mkdir, readFile, rename } from "node:fs/promises";
import { fileDownloadInfo, HubApiError, listFiles } from "@huggingface/hub";
import { env } from "../platform/platform.ts";
import { progressPrinter } from "../platform/progress.ts";
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
  /** Root of the hub cache (default `$GEMKIT_CACHE/hub` or `~/.cache/gemkit/hub`). */
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

/** The hub cache root for these options. */
export function hubCacheDir(opts: HubOptions = {}): string {
  if (opts.cacheDir) return opts.cacheDir;
  const gemkit = env("GEMKIT_CACHE");
  if (gemkit) return `${gemkit}/hub`;
  const xdg = env("XDG_CACHE_HOME");
  const home = env("HOME");
  if (!xdg && !home) {
    throw new Error("hub.ts: set HOME, XDG_CACHE_HOME or GEMKIT_CACHE for the model cache");
  }
  return `${xdg || `${home}/.cache`}/gemkit/hub`;
}

/** The directory a model's files are cached in (the revision is URI-encoded: it may hold "/"). */
export function modelCacheDir(spec: ModelSpec, opts: HubOptions = {}): string {
  return `${hubCacheDir(opts)}/${spec.repo}/${encodeURIComponent(spec.revision)}`;
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
  dir: string;
  endpoint: string;
  fetch: typeof fetch;
  attempts: number;
  retryDelayMs: number;
  progress: ((p: Progress) => void) | null;
  progressMinBytes: number;
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
 * `org/name[@revision]` is downloaded into (or found in) the cache. Throws {@link HubError} when
 * the spec is neither, or when neither the hub nor the cache can supply a file.
 */
export async function resolveModel(spec: string, opts: HubOptions = {}): Promise<string> {
  if (await sizeOf(spec) >= 0) return spec;
  const parsed = parseModelSpec(spec);
  if (!parsed) {
    throw new HubError(spec, "", "not an existing local path, nor a hub id org/name[@revision]");
  }
  const label = `${parsed.repo}@${parsed.revision}`;
  const dir = modelCacheDir(parsed, opts);
  const offline = opts.offline ?? envFlag("HF_HUB_OFFLINE");
  if (offline) {
    const missing = await missingFiles(dir);
    if (missing.length) {
      throw new HubError(
        label,
        missing[0],
        `not in the cache at ${dir}, and HF_HUB_OFFLINE forbids downloading it`,
      );
    }
    return dir;
  }
  const endpoint = (opts.endpoint ?? env("HF_ENDPOINT") ?? "https://huggingface.co")
    .replace(/\/+$/, "");
  const onProgress = opts.onProgress ?? stderrProgress();
  const ctx: Ctx = {
    spec: parsed,
    label,
    dir,
    endpoint,
    fetch: hubFetch(endpoint, opts.token ?? env("HF_TOKEN")),
    attempts: Math.max(1, opts.attempts ?? 3),
    retryDelayMs: opts.retryDelayMs ?? 1000,
    progress: onProgress === false ? null : onProgress,
    progressMinBytes: opts.progressMinBytes ?? 16 * 2 ** 20,
  };
  try {
    await downloadCheckpoint(ctx);
    return dir;
  } catch (e) {
    if (!unreachable(e)) throw e;
    const missing = await missingFiles(dir);
    if (missing.length) {
      throw new HubError(
        label,
        missing[0],
        `the hub at ${endpoint} is unreachable or failing (${
          (e as Error).message
        }), and the file is not in the cache at ${dir}`,
        { cause: e },
      );
    }
    console.warn(
      `gemkit: ${endpoint} unreachable (${(e as Error).message}); using the cache at ${dir}`,
    );
    return dir;
  }
}

/** Lists the repo and fetches every checkpoint file that is not already complete in the cache. */
async function downloadCheckpoint(ctx: Ctx): Promise<void> {
  const sizes = new Map<string, number>();
  try {
    const entries = listFiles({
      repo: { type: "model", name: ctx.spec.repo },
      revision: ctx.spec.revision,
      hubUrl: ctx.endpoint,
      fetch: ctx.fetch,
    });
    for await (const e of entries) if (e.type === "file") sizes.set(e.path, e.size);
  } catch (e) {
    if (e instanceof HubApiError && e.statusCode < 500) {
      const hint = e.statusCode === 401 || e.statusCode === 403 || e.statusCode === 404
        ? " (check the name and revision; a private or gated repo needs HF_TOKEN)"
        : "";
      throw new HubError(
        ctx.label,
        "",
        `listing failed at ${ctx.endpoint}: HTTP ${e.statusCode}${hint}`,
        { cause: e },
      );
    }
    throw e;
  }
  const need = (file: string) => {
    if (!sizes.has(file)) throw new HubError(ctx.label, file, `not in the repo at ${ctx.endpoint}`);
    return file;
  };
  const tokenizer = TOKENIZERS.find((f) => sizes.has(f)) ?? TOKENIZERS[0];
  const files = [...REQUIRED.map(need), need(tokenizer), ...OPTIONAL.filter((f) => sizes.has(f))];
  if (sizes.has(INDEX)) {
    await fetchFile(ctx, INDEX, sizes.get(INDEX)!);
    let shards: string[];
    try {
      shards = shardsOf(await readFile(`${ctx.dir}/${INDEX}`, "utf8"));
    } catch (e) {
      throw new HubError(ctx.label, INDEX, (e as Error).message, { cause: e });
    }
    files.push(...shards.map(need));
  } else {
    files.push(need(SINGLE));
  }
  for (const f of files) await fetchFile(ctx, f, sizes.get(f)!);
}

/** Downloads one file into the cache unless it is already there at the listed size. */
async function fetchFile(ctx: Ctx, file: string, listedSize: number): Promise<void> {
  if (!isSafeRelative(file)) {
    throw new HubError(ctx.label, file, "path escapes the checkpoint directory");
  }
  const final = `${ctx.dir}/${file}`;
  if (await sizeOf(final) === listedSize) return;
  await mkdir(final.slice(0, final.lastIndexOf("/")), { recursive: true });
  const part = `${final}.incomplete`;
  for (let attempt = 1;; attempt++) {
    try {
      // Asked again on each attempt: the URL may be a short-lived signed CDN link.
      const info = await fileDownloadInfo({
        repo: { type: "model", name: ctx.spec.repo },
        path: file,
        revision: ctx.spec.revision,
        hubUrl: ctx.endpoint,
        fetch: ctx.fetch,
      });
      if (!info) throw new HubError(ctx.label, file, `not found at ${ctx.endpoint} (HTTP 404)`);
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
  await rename(part, final);
}
