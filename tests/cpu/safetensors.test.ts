/**
 * safetensors reader/writer. Debian bookworm has no python3-safetensors, so the reference bytes
 * below are written by hand from the format description; F16 conversion is checked against V8's
 * own Float16Array / Math.f16round, an independent implementation.
 */

import { test } from "node:test";
import { readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import {
  f16BitsToF32,
  f32ToF16Bits,
  openCheckpoint,
  openSafetensors,
  parseSafetensors,
  readSafetensors,
  SafetensorsError,
  writeSafetensors,
} from "../../src/io/safetensors.ts";
import { readBytes } from "../helpers.ts";

/** Builds file bytes from a header (object or raw string) and a data buffer. */
function build(header: unknown, data: Uint8Array = new Uint8Array(), n?: bigint): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, n ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Asserts that parsing `bytes` throws a SafetensorsError naming the file and `field`. */
function assertBad(bytes: Uint8Array, field: string, problem: RegExp): void {
  assert.throws(() => parseSafetensors(bytes, "bad.safetensors"), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, String(e));
    assert.equal(e.file, "bad.safetensors");
    assert.equal(e.field, field);
    assert.ok(e.message.startsWith("bad.safetensors: "), e.message);
    assert.ok(e.message.includes(field), e.message);
    assert.match(e.message, problem);
    return true;
  });
}

const f32 = (h: Record<string, unknown>) => ({ dtype: "F32", ...h });

test("F32 round trip keeps exact values, metadata, and a padded, sorted layout", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const path = `${dir}/a.safetensors`;
  const values = new Float32Array([1 / 3, 65504, 1e-7, -0, Infinity, -Infinity, NaN, 1e30]);
  await writeSafetensors(path, [
    { name: "z.last", shape: [2, 4], data: values },
    { name: "a.first", shape: [], data: new Float32Array([7]) },
    { name: "empty", shape: [0, 3], data: new Float32Array(0) },
  ], { dtype: "F32", metadata: { format: "pt" } });

  const bytes = await readBytes(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0, "header padded to a multiple of 8");
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(header, / *$/);
  assert.deepEqual(Object.keys(JSON.parse(header)), ["__metadata__", "a.first", "empty", "z.last"]);
  assert.deepEqual(JSON.parse(header)["z.last"].data_offsets, [4, 36]);

  const st = await readSafetensors(path);
  assert.deepEqual(st.metadata, { format: "pt" });
  assert.deepEqual([...st.tensors.keys()], ["a.first", "empty", "z.last"]);
  const z = st.tensors.get("z.last")!;
  assert.equal(z.dtype, "F32");
  assert.deepEqual(z.shape, [2, 4]);
  assert.ok(z.data instanceof Float32Array);
  for (let i = 0; i < values.length; i++) assert.ok(Object.is(z.data[i], values[i]), `index ${i}`);
  assert.deepEqual([...st.tensors.get("a.first")!.data], [7]);
  assert.equal(st.tensors.get("empty")!.data.length, 0);
  await rm(dir, { recursive: true });
});

test("F16 round trip rounds to nearest even, with subnormals, -0, inf and NaN", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const path = `${dir}/h.safetensors`;
  // [input, expected f16 bits]
  const cases: [number, number][] = [
    [1 / 3, 0x3555], // 0.333251953125
    [65504, 0x7bff], // largest finite
    [65519.99, 0x7bff], // just below the halfway point to 65536
    [65520, 0x7c00], // halfway: ties to even, which is 65536 = inf
    [1e-7, 0x0002], // subnormal: 1e-7 / 2^-24 = 1.68 -> 2
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // halfway to 0: ties to even 0
    [3 * 2 ** -26, 0x0001], // above halfway
    [2 ** -14 - 2 ** -25, 0x0400], // rounds up from the largest subnormal into the smallest normal
    [1 + 2 ** -11, 0x3c00], // tie, even mantissa stays
    [1 + 3 * 2 ** -11, 0x3c02], // tie, odd mantissa rounds up
    [-0, 0x8000],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [1e6, 0x7c00], // overflow
    [-2, 0xc000],
  ];
  const data = new Float32Array(cases.map(([x]) => x).concat([NaN]));
  await writeSafetensors(path, [{ name: "h", shape: [data.length], data }], { dtype: "F16" });

  const bytes = await readBytes(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const bits = new Uint16Array(bytes.slice(8 + n).buffer);
  cases.forEach(([x, want], i) => assert.equal(bits[i], want, `f16 bits of ${x}`));
  assert.equal(bits[cases.length] & 0x7c00, 0x7c00, "NaN exponent");
  assert.notEqual(bits[cases.length] & 0x3ff, 0, "NaN mantissa");

  const h = (await readSafetensors(path)).tensors.get("h")!;
  assert.equal(h.dtype, "F16");
  cases.forEach(([x, b], i) => assert.ok(Object.is(h.data[i], f16BitsToF32(b)), `value of ${x}`));
  assert.equal(h.data[0], 0.333251953125);
  assert.equal(h.data[4], 2 ** -23);
  assert.ok(Object.is(h.data[11], -0));
  assert.ok(Number.isNaN(h.data[cases.length]));
  await rm(dir, { recursive: true });
});

test("F16 conversion agrees with V8's Float16Array on every f16 and on random f32", () => {
  const ref = new Float16Array(1);
  const refBits = new Uint16Array(ref.buffer);
  for (let h = 0; h < 65536; h++) {
    refBits[0] = h;
    const want = ref[0];
    const got = f16BitsToF32(h);
    assert.ok(Object.is(got, want) || (Number.isNaN(got) && Number.isNaN(want)), `bits ${h}`);
    if (!Number.isNaN(want)) assert.equal(f32ToF16Bits(want), h, `re-encode ${h}`);
  }
  // Random float32 bit patterns cover every exponent, including subnormal and overflow results.
  const words = new Uint32Array(200_000);
  for (let i = 0; i < words.length; i += 16384) {
    crypto.getRandomValues(words.subarray(i, Math.min(i + 16384, words.length)));
  }
  const floats = new Float32Array(words.buffer);
  for (const x of floats) {
    if (Number.isNaN(x)) continue;
    ref[0] = x;
    assert.equal(f32ToF16Bits(x), refBits[0], `encode ${x}`);
  }
});

test("reads hand-written BF16, I32 and I64 bytes", () => {
  // bf16 words, little-endian: 1.0, -2.0, 0.5, 3.140625, smallest subnormal, inf, -inf, NaN
  const bf16 = [0x3f80, 0xc000, 0x3f00, 0x4049, 0x0001, 0x7f80, 0xff80, 0x7fc0];
  const data = new Uint8Array([
    ...bf16.flatMap((w) => [w & 0xff, w >> 8]),
    // I32 [-1, 2]
    0xff,
    0xff,
    0xff,
    0xff,
    0x02,
    0x00,
    0x00,
    0x00,
    // I64 [-3, 2147483647]
    0xfd,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0x7f,
    0x00,
    0x00,
    0x00,
    0x00,
  ]);
  // Written out as raw text, with the header length in explicit bytes, to pin the layout.
  const header = '{"__metadata__":{"format":"pt"},' +
    '"w":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]},' +
    '"i":{"dtype":"I32","shape":[2],"data_offsets":[16,24]},' +
    '"l":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}}';
  assert.equal(header.length, 199);
  const bytes = new Uint8Array([
    199,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    ...new TextEncoder().encode(header),
    ...data,
  ]);

  const st = parseSafetensors(bytes, "hand.safetensors");
  assert.deepEqual(st.metadata, { format: "pt" });
  const w = st.tensors.get("w")!;
  assert.equal(w.dtype, "BF16");
  assert.deepEqual(w.shape, [2, 4]);
  assert.deepEqual([...w.data].slice(0, 7), [1, -2, 0.5, 3.140625, 2 ** -133, Infinity, -Infinity]);
  assert.ok(Number.isNaN(w.data[7]));
  const i = st.tensors.get("i")!.data;
  assert.ok(i instanceof Int32Array);
  assert.deepEqual([...i], [-1, 2]);
  const l = st.tensors.get("l")!.data;
  assert.ok(l instanceof Int32Array);
  assert.deepEqual([...l], [-3, 2147483647]);
});

test("integer and unsupported dtypes", () => {
  const big = new Uint8Array(8);
  new DataView(big.buffer).setBigInt64(0, 1n << 40n, true);
  assertBad(
    build({ l: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, big),
    "l",
    /I64 value 1099511627776 at index 0 does not fit in int32/,
  );
  assertBad(
    build({ d: { dtype: "F64", shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)),
    "d.dtype",
    /F64 is not supported/,
  );
});

test("every malformed header is reported with the file and field", () => {
  const d16 = new Uint8Array(16);
  assertBad(new Uint8Array(5), "", /file truncated: 5 bytes/);
  assertBad(build({}, d16, 1000n), "header length", /1000 bytes exceeds the \d+ bytes after/);
  assertBad(build({}, d16, 1n << 40n), "header length", /exceeds the 100000000-byte limit/);
  assertBad(build("{not json"), "header", /not valid JSON/);
  assertBad(build("[1, 2]"), "header", /not a JSON object/);
  assertBad(build({ __metadata__: { a: 1 } }), "__metadata__.a", /not a string/);
  assertBad(build({ t: [1] }), "t", /entry is not an object/);
  assertBad(
    build({ t: { dtype: "F33", shape: [1], data_offsets: [0, 4] } }, d16),
    "t.dtype",
    /unknown dtype "F33"/,
  );
  assertBad(
    build({ t: f32({ shape: [2, -1], data_offsets: [0, 4] }) }, d16),
    "t.shape",
    /not an array of non-negative integers/,
  );
  assertBad(
    build({ t: f32({ shape: [1.5], data_offsets: [0, 4] }) }, d16),
    "t.shape",
    /non-negative integers/,
  );
  assertBad(
    build({ t: f32({ shape: "4", data_offsets: [0, 4] }) }, d16),
    "t.shape",
    /non-negative integers/,
  );
  assertBad(
    build({ t: f32({ shape: [1], data_offsets: [8, 4] }) }, d16),
    "t.data_offsets",
    /0 <= begin <= end/,
  );
  assertBad(
    build({ t: f32({ shape: [1], data_offsets: [-4, 0] }) }, d16),
    "t.data_offsets",
    /0 <= begin <= end/,
  );
  assertBad(
    build({ t: f32({ shape: [1], data_offsets: [0] }) }, d16),
    "t.data_offsets",
    /begin, end/,
  );
  assertBad(
    build({ t: f32({ shape: [2, 2], data_offsets: [0, 8] }) }, d16),
    "t.data_offsets",
    /holds 8 bytes but F32 \[2,2\] needs 16/,
  );
  assertBad(
    build({ t: f32({ shape: [8], data_offsets: [0, 32] }) }, d16),
    "t.data_offsets",
    /file truncated: tensor ends at data byte 32 but the data holds only 16/,
  );
  assertBad(
    build({
      a: f32({ shape: [2], data_offsets: [0, 8] }),
      b: f32({ shape: [2], data_offsets: [4, 12] }),
    }, d16),
    "b.data_offsets",
    /overlaps a \[0,8\]/,
  );
});

test("lazy reader: header first, tensors on demand, truncation caught at open", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const path = `${dir}/lazy.safetensors`;
  const tensors = Array.from({ length: 5 }, (_, k) => ({
    name: `layer.${k}`,
    shape: [3, k + 1],
    data: Float32Array.from({ length: 3 * (k + 1) }, (_, i) => k * 100 + i),
  }));
  await writeSafetensors(path, tensors, { dtype: "F32" });

  const r = await openSafetensors(path);
  assert.deepEqual(r.names, tensors.map((t) => t.name));
  assert.deepEqual(r.info("layer.2"), { dtype: "F32", shape: [3, 3], dataOffsets: [36, 72] });
  // Concurrent reads share one file handle; each must still get its own bytes.
  const got = await Promise.all(tensors.map((t) => r.readF32(t.name)).reverse());
  got.reverse().forEach((g, k) => assert.deepEqual(g, tensors[k].data));
  await assert.rejects(r.read("nope"), /lazy\.safetensors: nope: no such tensor/);
  r.close();

  const bytes = await readBytes(path);
  await writeFile(path, bytes.subarray(0, bytes.length - 4));
  await assert.rejects(openSafetensors(path), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError);
    assert.equal(e.file, path);
    assert.equal(e.field, "layer.4.data_offsets");
    assert.match(e.message, /file truncated/);
    return true;
  });
  await rm(dir, { recursive: true });
});

test("sharded checkpoint: index, missing shard, tensor in two shards", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const t = (name: string, v: number) => ({ name, shape: [2], data: new Float32Array([v, -v]) });
  await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, [t("a", 1), t("b", 2)], {
    dtype: "F32",
  });
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, [t("c", 3)], { dtype: "F16" });
  const index = {
    metadata: { total_size: 20 },
    weight_map: {
      a: "model-00001-of-00002.safetensors",
      b: "model-00001-of-00002.safetensors",
      c: "model-00002-of-00002.safetensors",
    },
  };
  const indexPath = `${dir}/model.safetensors.index.json`;
  await writeFile(indexPath, JSON.stringify(index));

  const r = await openCheckpoint(dir);
  assert.deepEqual(r.names, ["a", "b", "c"]);
  assert.deepEqual(r.metadata, { total_size: "20" });
  assert.equal(r.info("c").dtype, "F16");
  assert.deepEqual([...(await r.readF32("b"))], [2, -2]);
  assert.deepEqual([...(await r.readF32("c"))], [3, -3]);
  r.close();

  // The shard lacks a tensor the index puts there.
  await writeFile(
    indexPath,
    JSON.stringify({ weight_map: { ...index.weight_map, d: "model-00002-of-00002.safetensors" } }),
  );
  await assert.rejects(
    openCheckpoint(dir),
    /model\.safetensors\.index\.json: weight_map\.d: tensor not found in shard model-00002/,
  );

  // A tensor present in two shards is ambiguous.
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, [t("c", 3), t("a", 9)], {
    dtype: "F32",
  });
  await writeFile(indexPath, JSON.stringify(index));
  await assert.rejects(openCheckpoint(indexPath), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError);
    assert.equal(e.file, indexPath);
    assert.equal(e.field, "a");
    assert.match(
      e.message,
      /tensor listed twice, in .*model-00001-of-00002.* and .*model-00002-of-00002/,
    );
    return true;
  });

  await rm(`${dir}/model-00002-of-00002.safetensors`);
  await assert.rejects(
    openCheckpoint(dir),
    /index\.json: weight_map\.c: shard model-00002-of-00002\.safetensors is missing/,
  );

  await writeFile(indexPath, JSON.stringify({ weight_map: { a: "../x.safetensors" } }));
  await assert.rejects(
    openCheckpoint(dir),
    /weight_map\.a: "\.\.\/x\.safetensors" is not a file name beside the index/,
  );
  await writeFile(indexPath, JSON.stringify({ weights: {} }));
  await assert.rejects(openCheckpoint(dir), /index\.json: weight_map: missing or not an object/);
  await rm(dir, { recursive: true });
});

test("atomic write: no temp file left, a failed write keeps the old file", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const path = `${dir}/w.safetensors`;
  const good = [{ name: "x", shape: [2], data: new Float32Array([1, 2]) }];
  await writeSafetensors(path, good, { dtype: "F32" });
  await writeSafetensors(path, [{ name: "x", shape: [2], data: new Float32Array([3, 4]) }], {
    dtype: "F32",
  });
  const listing = () => readdirSync(dir).sort();
  assert.deepEqual(listing(), ["w.safetensors"]);
  const old = await readBytes(path);
  assert.deepEqual([...(await readSafetensors(path)).tensors.get("x")!.data], [3, 4]);

  // Fails while writing: the second tensor's bytes cannot be read.
  const bad = new Float32Array([5, 6]);
  Object.defineProperty(bad, "buffer", {
    get() {
      throw new Error("boom");
    },
  });
  await assert.rejects(
    writeSafetensors(path, [{ name: "a", shape: [1], data: new Float32Array([0]) }, {
      name: "b",
      shape: [2],
      data: bad,
    }], { dtype: "F32" }),
    /boom/,
  );
  assert.deepEqual(listing(), ["w.safetensors"]);
  assert.deepEqual(await readBytes(path), old);

  // Fails validation before anything is written.
  const writeBad = (tensors: { name: string; shape: number[]; data: Float32Array }[]) =>
    writeSafetensors(path, tensors, { dtype: "F32" });
  await assert.rejects(
    writeBad([{ name: "y", shape: [3], data: new Float32Array(2) }]),
    /w\.safetensors: y\.shape: \[3\] holds 3 elements but data has 2/,
  );
  await assert.rejects(writeBad([...good, ...good]), /w\.safetensors: x: tensor given twice/);
  await assert.rejects(
    writeBad([{ name: "__metadata__", shape: [0], data: new Float32Array() }]),
    /reserved or empty tensor name/,
  );
  assert.deepEqual(listing(), ["w.safetensors"]);
  assert.deepEqual(await readBytes(path), old);
  await rm(dir, { recursive: true });
});
