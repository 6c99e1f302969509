/**
 * safetensors: gemkit's own reader and writer of the format Hugging Face checkpoints ship in.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of JSON header, then the data buffer.
 *
 * ```
 * {"__metadata__": {"format": "pt"},
 *  "model.embed_tokens.weight": {"dtype": "BF16", "shape": [32000, 4096], "data_offsets": [0, 262144000]}}
 * ```
 *
 * `data_offsets` are `[begin, end)` byte offsets relative to the start of the data buffer. All
 * values are little-endian. Readers convert F32/F16/BF16 to Float32Array and I32/I64 to Int32Array.
 *
 * Three ways in:
 * - {@link readSafetensors} / {@link parseSafetensors}: whole file in memory (tests, small files);
 * - {@link openSafetensors}: header first, each tensor read on demand with a positioned read
 *   (real checkpoints are many GB);
 * - {@link openCheckpoint}: a directory, a single file or a `model.safetensors.index.json` whose
 *   shards are opened lazily behind the same interface.
 *
 * {@link writeSafetensors} writes F32 or F16 files the way the reference (Rust) implementation does:
 * header padded with spaces to a multiple of 8 bytes, tensors sorted by name and packed without
 * gaps, so every tensor starts at a multiple of its element size.
 */

import { closeSync, fstatSync, openSync, read } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { isNotFound } from "../platform/platform.ts";
import { writeAtomic } from "./atomic.ts";

/** A safetensors file or index is malformed; the message names the file and the field at fault. */
export class SafetensorsError extends Error {
  /** Error class name. */
  override name = "SafetensorsError";
  /** Builds `"<file>: <field>: <problem>"`; `field` is a tensor name, a header key or empty. */
  constructor(readonly file: string, readonly field: string, problem: string) {
    super(field ? `${file}: ${field}: ${problem}` : `${file}: ${problem}`);
  }
}

/** The reference implementation's cap on the header (MAX_HEADER_SIZE in safetensors' Rust crate). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bytes per element of every dtype the format defines; sub-byte types (F4, F6) are not handled. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/** Dtypes gemkit converts: these three become Float32Array, the other two Int32Array. */
const READABLE = new Set(["F32", "F16", "BF16", "I32", "I64"]);

/** Header entry of one tensor, after validation. */
export interface TensorInfo {
  /** The dtype as written in the file, e.g. "BF16". */
  dtype: string;
  /** Dimensions; `[]` is a scalar holding one element. */
  shape: number[];
  /** `[begin, end)` in bytes, relative to the start of the data buffer. */
  dataOffsets: [number, number];
}

/** Converted tensor values: Float32Array for float dtypes, Int32Array for I32/I64. */
export type TensorData = Float32Array | Int32Array;

/** One tensor read in full. */
export interface LoadedTensor {
  /** The dtype as stored in the file (the data is converted). */
  dtype: string;
  /** Dimensions. */
  shape: number[];
  /** The values, row-major. */
  data: TensorData;
}

/** A whole file read into memory. */
export interface Safetensors {
  /** The `__metadata__` map (string to string), empty when absent. */
  metadata: Record<string, string>;
  /** Tensors in header order. */
  tensors: Map<string, LoadedTensor>;
}

/** A validated header. */
interface Header {
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
}

/** Number of elements of a shape (1 for a scalar). */
function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// Typed-array views read the host's byte order; the format is little-endian, and so is every
// platform gemkit runs on. Fail loudly rather than return byte-swapped weights.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("safetensors.ts assumes a little-endian host");
}

/**
 * Parses and validates the JSON header. `dataBytes` is the size of the data buffer (file size
 * minus 8 minus N), so offsets past it are reported as truncation.
 */
function parseHeader(file: string, json: Uint8Array, dataBytes: number): Header {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    throw new SafetensorsError(file, "header", `not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SafetensorsError(file, "header", "not a JSON object");
  }
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
        throw new SafetensorsError(file, "__metadata__", "not an object");
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") {
          throw new SafetensorsError(file, `__metadata__.${k}`, "value is not a string");
        }
        metadata[k] = v;
      }
      continue;
    }
    tensors.set(name, parseEntry(file, name, entry, dataBytes));
  }
  checkOverlap(file, tensors);
  return { metadata, tensors };
}

/** Validates one tensor entry of the header. */
function parseEntry(file: string, name: string, entry: unknown, dataBytes: number): TensorInfo {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw new SafetensorsError(file, name, "entry is not an object");
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
    throw new SafetensorsError(file, `${name}.dtype`, `unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(
      file,
      `${name}.shape`,
      `${JSON.stringify(shape)} is not an array of non-negative integers`,
    );
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]
  ) {
    throw new SafetensorsError(
      file,
      `${name}.data_offsets`,
      `${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`,
    );
  }
  const [begin, end] = offsets as [number, number];
  const want = numel(shape) * DTYPE_BYTES[dtype];
  if (end - begin !== want) {
    throw new SafetensorsError(
      file,
      `${name}.data_offsets`,
      `[${begin}, ${end}] holds ${end - begin} bytes but ${dtype} ${
        JSON.stringify(shape)
      } needs ${want}`,
    );
  }
  if (end > dataBytes) {
    throw new SafetensorsError(
      file,
      `${name}.data_offsets`,
      `file truncated: tensor ends at data byte ${end} but the data holds only ${dataBytes} bytes`,
    );
  }
  return { dtype, shape: shape as number[], dataOffsets: [begin, end] };
}

/** Rejects tensors whose byte ranges overlap (empty tensors overlap nothing). */
function checkOverlap(file: string, tensors: Map<string, TensorInfo>): void {
  const ranges = [...tensors].filter(([, t]) => t.dataOffsets[1] > t.dataOffsets[0])
    .sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
  for (let i = 1; i < ranges.length; i++) {
    const [prevName, prev] = ranges[i - 1];
    const [name, cur] = ranges[i];
    if (cur.dataOffsets[0] < prev.dataOffsets[1]) {
      throw new SafetensorsError(
        file,
        `${name}.data_offsets`,
        `[${cur.dataOffsets}] overlaps ${prevName} [${prev.dataOffsets}]`,
      );
    }
  }
}

/** Reads and checks N from the first 8 bytes; `fileBytes` is the total file size. */
function headerLength(file: string, prefix: Uint8Array, fileBytes: number): number {
  if (fileBytes < 8) {
    throw new SafetensorsError(
      file,
      "",
      `file truncated: ${fileBytes} bytes, less than the 8-byte header length`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(
      file,
      "header length",
      `${n} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  if (n > BigInt(fileBytes - 8)) {
    throw new SafetensorsError(
      file,
      "header length",
      `${n} bytes exceeds the ${fileBytes - 8} bytes after the length (file truncated?)`,
    );
  }
  return Number(n);
}

// ---- dtype conversion ----------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Decodes IEEE binary16 bits exactly (subnormals, ±0, ±inf, NaN). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal: mant * 2^-14 * 2^-10
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * Encodes a float32 value as binary16 bits, rounding to nearest, ties to even, as IEEE 754 and
 * numpy do: overflow goes to ±inf, tiny values to subnormals or ±0, NaN stays a (quiet) NaN.
 */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15; // rebiased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal result: shift the significand (with its implicit 1) right by 14 - e bits.
    if (e < -10) return sign; // below half the smallest subnormal: rounds to ±0
    const m = mant | 0x800000;
    const shift = 14 - e;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    let h = m >>> shift;
    if (rem > half || (rem === half && (h & 1))) h++; // a carry into bit 10 gives the smallest normal
    return sign | h;
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // carries may reach the exponent or inf
  return h;
}

let f16Table: Float32Array | null = null;

/** All 65536 binary16 values as float32, built on first use (256 KiB) so F16 loads are a lookup. */
function f16Lookup(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** Converts the raw bytes of one tensor; `bytes` must start at a fresh buffer or aligned offset. */
function decode(file: string, name: string, dtype: string, bytes: Uint8Array): TensorData {
  if (!READABLE.has(dtype)) {
    throw new SafetensorsError(
      file,
      `${name}.dtype`,
      `${dtype} is not supported (gemkit reads F32, F16, BF16, I32, I64)`,
    );
  }
  // Copy once into a buffer of our own: it is aligned, and results never alias the caller's bytes.
  const buf = bytes.slice().buffer;
  switch (dtype) {
    case "F32":
      return new Float32Array(buf);
    case "I32":
      return new Int32Array(buf);
    case "BF16": {
      // bfloat16 is the top half of a float32, so widening is exact.
      const src = new Uint16Array(buf);
      const out = new Float32Array(src.length);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
      return out;
    }
    case "F16": {
      const src = new Uint16Array(buf);
      const table = f16Lookup();
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    default: { // I64
      const src = new BigInt64Array(buf);
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i];
        if (v < -2147483648n || v > 2147483647n) {
          throw new SafetensorsError(
            file,
            name,
            `I64 value ${v} at index ${i} does not fit in int32`,
          );
        }
        out[i] = Number(v);
      }
      return out;
    }
  }
}

// ---- whole-file reader ---------------------------------------------------------------------

/**
 * Parses a safetensors file held in memory. `name` (usually the path) is used in error messages.
 * Throws {@link SafetensorsError} on any malformed or unsupported content.
 */
export function parseSafetensors(bytes: Uint8Array, name: string): Safetensors {
  const n = headerLength(name, bytes, bytes.length);
  const header = parseHeader(name, bytes.subarray(8, 8 + n), bytes.length - 8 - n);
  const tensors = new Map<string, LoadedTensor>();
  const dataStart = 8 + n;
  for (const [tname, info] of header.tensors) {
    const [begin, end] = info.dataOffsets;
    const data = decode(
      name,
      tname,
      info.dtype,
      bytes.subarray(dataStart + begin, dataStart + end),
    );
    tensors.set(tname, { dtype: info.dtype, shape: info.shape, data });
  }
  return { metadata: header.metadata, tensors };
}

/** Reads a whole safetensors file into memory; see {@link openSafetensors} for large files. */
export async function readSafetensors(path: string): Promise<Safetensors> {
  const b = await readFile(path);
  // A Uint8Array, not a Buffer (whose slice() would share memory instead of copying).
  return parseSafetensors(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), path);
}

// ---- lazy reader ---------------------------------------------------------------------------

/** Lazy access to the tensors of one file or of a sharded checkpoint. */
export interface SafetensorsReader {
  /** Tensor names, in header (or index) order. */
  readonly names: string[];
  /** `__metadata__` of the file (of the index for a sharded checkpoint). */
  readonly metadata: Record<string, string>;
  /** Header entry of a tensor; throws for an unknown name. */
  info(name: string): TensorInfo;
  /** Reads and converts one tensor (Float32Array for floats, Int32Array for I32/I64). */
  read(name: string): Promise<TensorData>;
  /** Reads one float tensor; throws if its dtype is an integer type. */
  readF32(name: string): Promise<Float32Array>;
  /** Closes the open file(s). */
  close(): void;
}

/** Reads up to `length` bytes of the open file `fd` at `pos` into `buf` at `offset`. */
function readSome(
  fd: number,
  buf: Uint8Array,
  offset: number,
  length: number,
  pos: number,
): Promise<number> {
  return new Promise((resolve, reject) =>
    read(fd, buf, offset, length, pos, (e, n) => e ? reject(e) : resolve(n))
  );
}

/** Reads exactly `buf.length` bytes at `pos`, or throws a truncation error. */
async function readAt(
  file: number,
  path: string,
  field: string,
  pos: number,
  buf: Uint8Array,
) {
  let got = 0;
  while (got < buf.length) {
    const n = await readSome(file, buf, got, Math.min(buf.length - got, 2 ** 30), pos + got);
    if (n === 0) {
      throw new SafetensorsError(
        path,
        field,
        `file truncated: expected ${buf.length} bytes at offset ${pos}, got ${got}`,
      );
    }
    got += n;
  }
}

/** One open file (a descriptor): its header and a queue that keeps its reads in order. */
class ShardFile {
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    readonly file: number,
    readonly header: Header,
    readonly dataStart: number,
  ) {}

  /** Opens `path` and validates its header against the file size; reads no tensor data. */
  static async open(path: string): Promise<ShardFile> {
    const file = openSync(path, "r");
    try {
      const size = fstatSync(file).size;
      const prefix = new Uint8Array(8);
      if (size >= 8) await readAt(file, path, "header length", 0, prefix);
      const n = headerLength(path, prefix, size);
      const json = new Uint8Array(n);
      await readAt(file, path, "header", 8, json);
      return new ShardFile(path, file, parseHeader(path, json, size - 8 - n), 8 + n);
    } catch (e) {
      closeSync(file);
      throw e;
    }
  }

  read(name: string): Promise<TensorData> {
    const info = this.header.tensors.get(name);
    if (!info) throw new SafetensorsError(this.path, name, "no such tensor");
    const [begin, end] = info.dataOffsets;
    // Reads of one file take turns, in the order they were asked for.
    const job = this.#queue.then(async () => {
      const bytes = new Uint8Array(end - begin);
      await readAt(this.file, this.path, name, this.dataStart + begin, bytes);
      return decode(this.path, name, info.dtype, bytes);
    });
    this.#queue = job.catch(() => {});
    return job;
  }
}

/** Makes the reader object over a name -> shard map. */
function makeReader(
  shards: ShardFile[],
  where: Map<string, ShardFile>,
  metadata: Record<string, string>,
  source: string,
): SafetensorsReader {
  const shardOf = (name: string): ShardFile => {
    const shard = where.get(name);
    if (!shard) throw new SafetensorsError(source, name, "no such tensor");
    return shard;
  };
  return {
    names: [...where.keys()],
    metadata,
    info: (name) => shardOf(name).header.tensors.get(name)!,
    read: async (name) => await shardOf(name).read(name),
    async readF32(name) {
      const data = await shardOf(name).read(name);
      if (!(data instanceof Float32Array)) {
        throw new SafetensorsError(
          shardOf(name).path,
          `${name}.dtype`,
          "integer tensor where a float one is needed",
        );
      }
      return data;
    },
    close: () => shards.forEach((s) => closeSync(s.file)),
  };
}

/**
 * Opens one safetensors file lazily: reads and validates the header (offsets are checked against
 * the file size), then reads each tensor on demand with a positioned read.
 */
export async function openSafetensors(path: string): Promise<SafetensorsReader> {
  const shard = await ShardFile.open(path);
  const where = new Map([...shard.header.tensors.keys()].map((n) => [n, shard]));
  return makeReader([shard], where, shard.header.metadata, path);
}

/** The index file name used by sharded Hugging Face checkpoints. */
export const INDEX_FILE = "model.safetensors.index.json";

/**
 * Opens a sharded checkpoint from its `model.safetensors.index.json` (`{"weight_map": {tensor:
 * file}}`): every shard's header is read and validated, no tensor data. Throws a
 * {@link SafetensorsError} for a missing shard, a tensor its shard lacks, or a tensor present in
 * two shards.
 */
export async function openSafetensorsIndex(indexPath: string): Promise<SafetensorsReader> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(indexPath, "utf8"));
  } catch (e) {
    if (isNotFound(e)) throw e;
    throw new SafetensorsError(indexPath, "", `not valid JSON (${(e as Error).message})`);
  }
  const map = (raw as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new SafetensorsError(indexPath, "weight_map", "missing or not an object");
  }
  const dir = indexPath.includes("/") ? indexPath.slice(0, indexPath.lastIndexOf("/") + 1) : "";
  const files = new Map<string, string[]>(); // shard file -> tensors the index puts there
  for (const [tensor, file] of Object.entries(map)) {
    if (
      typeof file !== "string" || file === "" || file.startsWith("/") ||
      file.split("/").includes("..")
    ) {
      throw new SafetensorsError(
        indexPath,
        `weight_map.${tensor}`,
        `${JSON.stringify(file)} is not a file name beside the index`,
      );
    }
    files.set(file, [...(files.get(file) ?? []), tensor]);
  }
  const shards: ShardFile[] = [];
  try {
    const owner = new Map<string, ShardFile>();
    for (const [file, tensors] of files) {
      let shard: ShardFile;
      try {
        shard = await ShardFile.open(dir + file);
      } catch (e) {
        if (!isNotFound(e)) throw e;
        throw new SafetensorsError(
          indexPath,
          `weight_map.${tensors[0]}`,
          `shard ${file} is missing`,
        );
      }
      shards.push(shard);
      for (const name of shard.header.tensors.keys()) {
        const other = owner.get(name);
        if (other) {
          throw new SafetensorsError(
            indexPath,
            name,
            `tensor listed twice, in ${other.path} and ${shard.path}`,
          );
        }
        owner.set(name, shard);
      }
      for (const name of tensors) {
        if (!shard.header.tensors.has(name)) {
          throw new SafetensorsError(
            indexPath,
            `weight_map.${name}`,
            `tensor not found in shard ${file}`,
          );
        }
      }
    }
    const where = new Map(Object.keys(map).map((name) => [name, owner.get(name)!]));
    const metadata = (raw as { metadata?: Record<string, unknown> }).metadata ?? {};
    const strings = Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, String(v)]));
    return makeReader(shards, where, strings, indexPath);
  } catch (e) {
    shards.forEach((s) => closeSync(s.file));
    throw e;
  }
}

/**
 * Opens a checkpoint: a directory (its index if present, else its `model.safetensors`), an index
 * file (`*.index.json`), or a single `.safetensors` file.
 */
export async function openCheckpoint(path: string): Promise<SafetensorsReader> {
  if (!(await stat(path)).isDirectory()) {
    return path.endsWith(".index.json") ? openSafetensorsIndex(path) : openSafetensors(path);
  }
  const dir = path.endsWith("/") ? path : path + "/";
  const hasIndex = await stat(dir + INDEX_FILE).then(() => true, (e) => {
    if (isNotFound(e)) return false;
    throw e;
  });
  return hasIndex
    ? openSafetensorsIndex(dir + INDEX_FILE)
    : openSafetensors(dir + "model.safetensors");
}

// ---- writer --------------------------------------------------------------------------------

/** A tensor to write. */
export interface TensorToWrite {
  /** Tensor name; must be unique and not `__metadata__`. */
  name: string;
  /** Dimensions; their product must equal `data.length`. */
  shape: readonly number[];
  /** Row-major values. */
  data: Float32Array;
}

/** Options of {@link writeSafetensors}. */
export interface WriteOptions {
  /** Stored dtype; F16 and BF16 round to nearest, ties to even. */
  dtype: "F32" | "F16" | "BF16";
  /** `__metadata__` (string to string), e.g. `{format: "pt"}`. */
  metadata?: Record<string, string>;
}

/** Checks the tensors and metadata to write; returns the tensors sorted by name. */
function checkWrite(
  path: string,
  tensors: readonly TensorToWrite[],
  opts: WriteOptions,
): TensorToWrite[] {
  if (opts.dtype !== "F32" && opts.dtype !== "F16" && opts.dtype !== "BF16") {
    throw new SafetensorsError(
      path,
      "dtype",
      `cannot write ${JSON.stringify(opts.dtype)} (F32, F16 or BF16)`,
    );
  }
  for (const [k, v] of Object.entries(opts.metadata ?? {})) {
    if (typeof v !== "string") {
      throw new SafetensorsError(path, `__metadata__.${k}`, "value is not a string");
    }
  }
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === "" || t.name === "__metadata__") {
      throw new SafetensorsError(path, JSON.stringify(t.name), "reserved or empty tensor name");
    }
    if (seen.has(t.name)) throw new SafetensorsError(path, t.name, "tensor given twice");
    seen.add(t.name);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(
        path,
        `${t.name}.shape`,
        `${JSON.stringify(t.shape)} is not an array of non-negative integers`,
      );
    }
    if (numel(t.shape) !== t.data.length) {
      throw new SafetensorsError(
        path,
        `${t.name}.shape`,
        `${JSON.stringify(t.shape)} holds ${numel(t.shape)} elements but data has ${t.data.length}`,
      );
    }
  }
  // Byte-wise name order, as the reference writer uses for tensors of one dtype: the same set of
  // tensors always gives the same file.
  return [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The stored bytes of one tensor. */
/**
 * bfloat16 bits of a float32 given by its bits: the top half, rounded to nearest, ties to even
 * (NaN kept quiet).
 */
export function f32BitsToBf16(b: number): number {
  return (b & 0x7fffffff) > 0x7f800000
    ? (b >>> 16) | 0x40
    : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

function encode(data: Float32Array, dtype: "F32" | "F16" | "BF16"): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  if (dtype === "BF16") {
    const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < data.length; i++) out[i] = f32BitsToBf16(bits[i]);
  } else {
    for (let i = 0; i < data.length; i++) out[i] = f32ToF16Bits(data[i]);
  }
  return new Uint8Array(out.buffer);
}

/**
 * Writes tensors to a safetensors file atomically ({@link writeAtomic}): a failed write leaves any
 * old file untouched and no temp file behind. Tensors are stored sorted by name, back to back after a header padded with spaces to a
 * multiple of 8 bytes, so each starts aligned to its element size.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  opts: WriteOptions,
): Promise<void> {
  const sorted = checkWrite(path, tensors, opts);
  const width = opts.dtype === "F32" ? 4 : 2;
  const header: Record<string, unknown> = {};
  if (opts.metadata && Object.keys(opts.metadata).length) header.__metadata__ = opts.metadata;
  let offset = 0;
  for (const t of sorted) {
    const bytes = t.data.length * width;
    header[t.name] = {
      dtype: opts.dtype,
      shape: [...t.shape],
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20); // spaces, which JSON parsers skip
    p.set(json);
    json = p;
  }
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);

  await writeAtomic(
    path,
    (function* () {
      yield prefix;
      yield json;
      for (const t of sorted) yield encode(t.data, opts.dtype);
    })(),
  );
}
