/**
 * Reads a zip archive held in memory: the end-of-central-directory record, the central directory
 * (the member names), and one member's local header and data, stored (method 0) or
 * deflated (method 8, inflated with node:zlib). Enough for the data sets gemkit derives from zip
 * archives; no zip64, no encryption. Errors name the archive and the member.
 */

import { inflateRawSync } from "node:zlib";

/** A zip archive is malformed or lacks a member; the message names both. */
export class ZipError extends Error {
  /** Error class name. */
  override name = "ZipError";
}

/** One central directory entry: where a member's local header is and how it is stored. */
interface Entry {
  name: string;
  method: number;
  compressed: number;
  size: number;
  local: number;
}

/** The central directory of `zip`, in archive order; `fail` raises the caller's error. */
function entries(zip: Uint8Array, fail: (why: string) => never): Entry[] {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  // The end-of-central-directory record sits in the last 22 + 65535 (comment) bytes.
  let eocd = -1;
  for (let at = zip.length - 22; at >= Math.max(0, zip.length - 22 - 65535); at--) {
    if (v.getUint32(at, true) === 0x06054b50) {
      eocd = at;
      break;
    }
  }
  if (eocd < 0) fail("not a zip archive (no end of central directory)");
  const count = v.getUint16(eocd + 10, true);
  let at = v.getUint32(eocd + 16, true);
  const dec = new TextDecoder();
  const out: Entry[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 46 > zip.length || v.getUint32(at, true) !== 0x02014b50) {
      fail(`central directory entry ${i} is damaged`);
    }
    const nameLen = v.getUint16(at + 28, true);
    out.push({
      name: dec.decode(zip.subarray(at + 46, at + 46 + nameLen)),
      method: v.getUint16(at + 10, true),
      compressed: v.getUint32(at + 20, true),
      size: v.getUint32(at + 24, true),
      local: v.getUint32(at + 42, true),
    });
    at += 46 + nameLen + v.getUint16(at + 30, true) + v.getUint16(at + 32, true);
  }
  return out;
}

/** Names of every member of the zip archive `zip` (named `label` in errors), in archive order. */
export function zipMembers(zip: Uint8Array, label: string): string[] {
  return entries(zip, (why) => {
    throw new ZipError(`${label}: ${why}`);
  }).map((e) => e.name);
}

/** The bytes of `member` ("dir/file.txt") of the zip archive `zip` (named `label` in errors). */
export function zipMember(zip: Uint8Array, member: string, label: string): Uint8Array {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const fail = (why: string): never => {
    throw new ZipError(`${label}: ${member}: ${why}`);
  };
  const e = entries(zip, fail).find((e) => e.name === member) ?? fail("no such member");
  if (v.getUint32(e.local, true) !== 0x04034b50) fail("local header is damaged");
  const start = e.local + 30 + v.getUint16(e.local + 26, true) + v.getUint16(e.local + 28, true);
  const data = zip.subarray(start, start + e.compressed);
  if (data.length !== e.compressed) fail("data runs past the archive");
  let out: Uint8Array;
  if (e.method === 0) out = data.slice();
  else if (e.method === 8) out = new Uint8Array(inflateRawSync(data));
  else return fail(`compression method ${e.method} is not supported`);
  if (out.length !== e.size) {
    fail(`${out.length} bytes after inflating, the directory says ${e.size}`);
  }
  return out;
}
