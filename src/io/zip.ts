/**
 * Reads one member out of a zip archive held in memory: the end-of-central-directory record, the
 * central directory entry of the member, then its local header and data, stored (method 0) or
 * deflated (method 8, inflated with node:zlib). Enough for the data sets gemkit derives from zip
 * archives; no zip64, no encryption. Errors name the archive and the member.
 */

import { inflateRawSync } from "node:zlib";

/** A zip archive is malformed or lacks a member; the message names both. */
export class ZipError extends Error {
  /** Error class name. */
  override name = "ZipError";
}

/** The bytes of `member` ("dir/file.txt") of the zip archive `zip` (named `label` in errors). */
export function zipMember(zip: Uint8Array, member: string, label: string): Uint8Array {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const fail = (why: string): never => {
    throw new ZipError(`${label}: ${member}: ${why}`);
  };
  // The end-of-central-directory record sits in the last 22 + 65535 (comment) bytes.
  let eocd = -1;
  for (let at = zip.length - 22; at >= Math.max(0, zip.length - 22 - 65535); at--) {
    if (v.getUint32(at, true) === 0x06054b50) {
      eocd = at;
      break;
    }
  }
  if (eocd < 0) fail("not a zip archive (no end of central directory)");
  const entries = v.getUint16(eocd + 10, true);
  let at = v.getUint32(eocd + 16, true);
  const dec = new TextDecoder();
  for (let i = 0; i < entries; i++) {
    if (at + 46 > zip.length || v.getUint32(at, true) !== 0x02014b50) {
      fail(`central directory entry ${i} is damaged`);
    }
    const method = v.getUint16(at + 10, true);
    const compressed = v.getUint32(at + 20, true), size = v.getUint32(at + 24, true);
    const nameLen = v.getUint16(at + 28, true);
    const extraLen = v.getUint16(at + 30, true), commentLen = v.getUint16(at + 32, true);
    const local = v.getUint32(at + 42, true);
    const name = dec.decode(zip.subarray(at + 46, at + 46 + nameLen));
    at += 46 + nameLen + extraLen + commentLen;
    if (name !== member) continue;
    if (v.getUint32(local, true) !== 0x04034b50) fail("local header is damaged");
    const start = local + 30 + v.getUint16(local + 26, true) + v.getUint16(local + 28, true);
    const data = zip.subarray(start, start + compressed);
    if (data.length !== compressed) fail("data runs past the archive");
    let out: Uint8Array;
    if (method === 0) out = data.slice();
    else if (method === 8) out = new Uint8Array(inflateRawSync(data));
    else return fail(`compression method ${method} is not supported`);
    if (out.length !== size) {
      fail(`${out.length} bytes after inflating, the directory says ${size}`);
    }
    return out;
  }
  return fail("no such member");
}
