/**
 * One resumable HTTP download, shared by the hub client and the data fetcher: bytes stream into a
 * partial file that a later attempt (a retry, or a new run) continues with `Range: bytes=<have>-`.
 * The response status is checked, so a server that ignores `Range` and answers 200 starts the file
 * over instead of being appended after the partial bytes, and a file longer than announced, a
 * wrong `Content-Range` or a body that ends early is an error, never a silently wrong file.
 */

import { open, rm, stat } from "node:fs/promises";
import { isNotFound } from "../platform/platform.ts";

/** The network failed (connection refused or reset, body dropped): worth another attempt. */
export class NetworkFailure extends Error {
  /** Error class name. */
  override name = "NetworkFailure";
}

/** The server answered with an HTTP status other than 200 or 206. */
export class HttpStatusError extends Error {
  /** Error class name. */
  override name = "HttpStatusError";
  /** Builds "HTTP <status> for <url>". */
  constructor(readonly url: string, readonly status: number) {
    super(`HTTP ${status} for ${url}`);
  }
}

/** The server's answer cannot be right (wrong range, more bytes than announced). */
export class TransferError extends Error {
  /** Error class name. */
  override name = "TransferError";
}

/** Size of a file, or -1 when it does not exist. */
export async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (e) {
    if (isNotFound(e)) return -1;
    throw e;
  }
}

/**
 * A fetch whose transport failures (as opposed to HTTP answers) become {@link NetworkFailure}.
 */
export function networkFetch(inner: typeof fetch = fetch): typeof fetch {
  return async (input, init) => {
    try {
      return await inner(input, init);
    } catch (e) {
      throw new NetworkFailure(`${String(input)}: ${(e as Error).message}`, { cause: e });
    }
  };
}

/**
 * Brings `part` up to `total` bytes from `url`, continuing what is there with a Range request.
 * Throws {@link NetworkFailure} (retryable) when the transfer breaks, leaving the bytes received;
 * {@link HttpStatusError} for an unexpected status; {@link TransferError} for an answer that
 * cannot be the file (the partial file is then removed, so the next attempt starts afresh).
 * `onBytes` hears the bytes on disk after each chunk.
 */
export async function fetchInto(
  url: string,
  part: string,
  total: number,
  fetcher: typeof fetch,
  onBytes?: (bytes: number) => void,
): Promise<void> {
  let have = await sizeOf(part);
  if (have > total) have = -1; // longer than the file: not a prefix of it
  if (have === total) return;
  const headers: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
  const resp = await fetcher(url, { headers });
  let append = false;
  if (resp.status === 206 && have > 0) {
    const range = resp.headers.get("content-range");
    const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(range ?? "");
    if (!m || Number(m[1]) !== have || (m[2] !== "*" && Number(m[2]) !== total)) {
      await resp.body?.cancel();
      await rm(part); // the next attempt starts from scratch
      throw new TransferError(
        `bad Content-Range ${range} for a resume at byte ${have} of ${total}`,
      );
    }
    append = true;
  } else if (resp.status !== 200) {
    await resp.body?.cancel();
    throw new HttpStatusError(url, resp.status);
  }
  // 200: the server sent the whole file (no partial, or it ignored Range): start over.
  let bytes = append ? have : 0;
  // "a": create or continue; "w": create or truncate.
  const out = await open(part, append ? "a" : "w");
  try {
    const reader = resp.body!.getReader();
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new NetworkFailure(
          `download broke at byte ${bytes} of ${total}: ${(e as Error).message}`,
          { cause: e },
        );
      }
      if (chunk.done) break;
      bytes += chunk.value.length;
      if (bytes > total) {
        await reader.cancel();
        await out.close();
        await rm(part);
        throw new TransferError(`server sent more than the ${total} bytes announced`);
      }
      for (let off = 0; off < chunk.value.length;) {
        off += (await out.write(chunk.value, off, chunk.value.length - off)).bytesWritten;
      }
      onBytes?.(bytes);
    }
    await out.sync();
  } finally {
    await out.close().catch(() => {});
  }
  if (bytes !== total) {
    throw new NetworkFailure(`download ended at byte ${bytes} of ${total}`);
  }
}
