/**
 * Kernel choices that depend on the adapter and its driver: the tuning profile per Mesa version
 * and the matmul v3 plan under a tile-area cap. Pure functions, no device.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  checkTuning,
  PROFILE_FORMAT,
  profilePath,
  selectTuning,
  slowCompiler,
  TuningError,
  tuningFor,
  tuningHash,
  writeProfile,
} from "../../src/gpu/tuning.ts";
import { choosePlan } from "../../src/gpu/kernels/matmul_tex.ts";

const LLVMPIPE = "llvmpipe (LLVM 15.0.6, 256 bits)";

test("slowCompiler: llvmpipe from Mesa 24 on, by the major version", () => {
  assert.equal(slowCompiler(null), false);
  assert.equal(slowCompiler("22.3.6"), false);
  assert.equal(slowCompiler("23.3.5"), false);
  assert.equal(slowCompiler("24.0.0"), true);
  assert.equal(slowCompiler("25.0.7-2~bpo12+1"), true);
});

test("tuningFor: small tiles and blocks only where the compiler is slow", () => {
  const fast = tuningFor(LLVMPIPE, "22.3.6"), slow = tuningFor(LLVMPIPE, "25.0.7");
  assert.equal(fast.profile, "llvmpipe");
  assert.equal(slow.profile, "llvmpipe");
  assert.equal(fast.matmulTileArea, 1024);
  assert.equal(fast.attentionBlock, 16);
  assert.equal(slow.matmulTileArea, 64);
  assert.equal(slow.attentionBlock, 2);
  assert.equal(fast.attentionBlockPacked, 16);
  assert.equal(slow.attentionBlockPacked, 2);
  // Everything else is the same profile.
  const { matmulTileArea: _a, attentionBlock: _b, attentionBlockPacked: _e, ...restFast } = fast;
  const { matmulTileArea: _c, attentionBlock: _d, attentionBlockPacked: _f, ...restSlow } = slow;
  assert.deepEqual(restSlow, restFast);
  // A real GPU never takes the llvmpipe profile, whatever Mesa is installed.
  assert.equal(tuningFor("NVIDIA H100 80GB HBM3", "25.0.7").profile, "gpu");
  // Each call returns its own copy: tests and tools mutate it.
  assert.notEqual(tuningFor(LLVMPIPE, null), tuningFor(LLVMPIPE, null));
});

test("choosePlan: never exceeds the tile-area cap, and the cap only removes choices", () => {
  const shapes = [[512, 512, 512], [1844, 64, 172], [32, 2652, 64], [8, 64, 1024], [1, 64, 512]];
  for (const [m, k, n] of shapes) {
    const free = choosePlan(m, n, k, 1, 2, 16);
    for (const area of [16, 64, 256, 1024]) {
      const p = choosePlan(m, n, k, 1, 2, 16, 32, area);
      assert.ok(p.tm * p.tn <= area, `${m}x${k}x${n} cap ${area}: tile ${p.tm}x${p.tn}`);
      if (free.tm * free.tn <= area) {
        assert.deepEqual(p, free, `${m}x${k}x${n}: a cap above the free choice changes nothing`);
      }
    }
  }
  // The free choice at n = 512 is the largest tile (a big tile amortises texel loads), every
  // lane on its own columns; at N = 64 four lanes share the columns so each can take 16.
  assert.deepEqual(choosePlan(512, 512, 512, 1, 2, 16), {
    tm: 32,
    tn: 32,
    wc: 16,
    slices: 1,
    shareA: 0,
  });
  assert.deepEqual(choosePlan(8192, 64, 64, 1, 2, 16), {
    tm: 32,
    tn: 16,
    wc: 4,
    slices: 1,
    shareA: 0,
  });
});

test("choosePlan with subgroups: every lane on columns, whole subgroups of rows, the same split-K", () => {
  const shapes = [[512, 512, 512], [1844, 64, 172], [32, 2652, 64], [8, 64, 1024], [1, 64, 512], [
    64,
    8192,
    64,
  ], [8192, 64, 516]];
  for (const [m, k, n] of shapes) {
    for (const [simd, sg] of [[16, 16], [8, 8], [16, 8]]) {
      for (const area of [64, 1024]) {
        const plain = choosePlan(m, n, k, 3, 2, simd, 32, area);
        const p = choosePlan(m, n, k, 3, 2, simd, 32, area, sg);
        const what = `${m}x${k}x${n} simd ${simd} subgroup ${sg} cap ${area}: ${JSON.stringify(p)}`;
        assert.equal(p.shareA, sg, what);
        assert.equal(p.wc, simd, what);
        assert.equal(p.tm % sg, 0, what);
        assert.ok(p.tm * p.tn <= area, what);
        assert.equal(p.slices, plain.slices, what);
      }
    }
    // A subgroup that does not divide the workgroup cannot share: the plain plan.
    assert.deepEqual(choosePlan(m, n, k, 1, 2, 8, 32, 1024, 16), choosePlan(m, n, k, 1, 2, 8));
  }
  // Training's N = 64 products take tall thin tiles; the square one keeps 32 x 32.
  assert.deepEqual(
    [
      choosePlan(8192, 64, 64, 1, 2, 16, 32, 1024, 16),
      choosePlan(1024, 1024, 1024, 1, 2, 16, 32, 1024, 16),
    ]
      .map((p) => [p.tm, p.tn]),
    [[128, 4], [32, 32]],
  );
});

test("checkTuning: a built-in profile passes; each bad field is named", () => {
  const t = tuningFor(LLVMPIPE, "22.3.6");
  assert.deepEqual(checkTuning(structuredClone(t), "p.json"), t);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ rowWorkgroup: 0 }, /p\.json: tuning field 'rowWorkgroup' must be a positive integer/],
    [{ attentionBlock: -1 }, /'attentionBlock' must be a non-negative integer/],
    [{ threadRowMaxLen: 1.5 }, /'threadRowMaxLen' must be a non-negative integer/],
    [{ elementwiseVec4: "yes" }, /'elementwiseVec4' must be true or false/],
    [{ matmulSubgroups: 1 }, /'matmulSubgroups' must be true or false/],
    [{ storageTextureReads: "no" }, /'storageTextureReads' must be true or false/],
    [{ matmul: { tileM: 4, tileN: 4 } }, /'matmul\.workgroup' must be a positive integer/],
    [{ matmulVersion: 4 }, /'matmulVersion' must be 1, 2 or 3/],
    [{ profile: "fast" }, /'profile' must be llvmpipe or gpu/],
    [{ tileSize: 8 }, /'tileSize' is not a tuning field/],
    [{ elementwiseWorkgroup: 2048 }, /at most 1024/],
  ];
  for (const [change, want] of cases) {
    assert.throws(() => checkTuning({ ...t, ...change }, "p.json"), want);
  }
  // 0 is a setting where the engine gives it one (attention v1, a workgroup per row, tree sums).
  const zeros = {
    attentionBlock: 0,
    attentionBlockPacked: 0,
    threadRowMaxLen: 0,
    serialReduceMax: 0,
  };
  assert.deepEqual(checkTuning({ ...t, ...zeros }, "p.json"), { ...t, ...zeros });
  const missing: Record<string, unknown> = { ...t };
  delete missing.serialReduceMax;
  assert.throws(() => checkTuning(missing, "p.json"), /'serialReduceMax'/);
});

test("tuningHash: the same values give the same hash, any change another", () => {
  // Built-in llvmpipe tuning on Mesa 22.3.6, as recorded in bench/results.json before the
  // subgroup and storage-texture fields existed: a field that changes no result leaves the hash
  // alone.
  assert.equal(tuningHash(tuningFor(LLVMPIPE, "22.3.6")), "6838b22229b5a91a");
  const t = tuningFor(LLVMPIPE, "22.3.6");
  const reordered = Object.fromEntries(Object.entries(t).reverse()) as typeof t;
  assert.equal(tuningHash(reordered), tuningHash(t));
  assert.match(tuningHash(t), /^[0-9a-f]{16}$/);
  assert.notEqual(tuningHash({ ...t, rowWorkgroup: 128 }), tuningHash(t));
  assert.notEqual(tuningHash({ ...t, matmul: { ...t.matmul, tileN: 4 } }), tuningHash(t));
  assert.equal(tuningHash({ ...t, matmulSubgroups: !t.matmulSubgroups }), tuningHash(t));
  assert.equal(tuningHash({ ...t, storageTextureReads: false }), tuningHash(t));
});

test("profiles: saved, loaded for their key; corrupt or foreign ones ignored with a warning", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-tuning-"));
  const saved = { ...process.env };
  try {
    process.env.GEMKIT_CACHE = dir;
    delete process.env.GEMKIT_TUNING;
    delete process.env.GEMKIT_TUNING_FILE;
    const key = { adapter: LLVMPIPE, driver: "22.3.6", runtime: "deno 2.9.6", gemkit: "0.1.0" };
    const builtIn = tuningFor(LLVMPIPE, "22.3.6");
    assert.deepEqual(selectTuning(builtIn, key), {
      tuning: builtIn,
      source: "built-in",
      warning: null,
    });
    const tuned = { ...builtIn, rowWorkgroup: 128 };
    const path = profilePath(key);
    assert.ok(path.startsWith(`${dir}/tuning/`));
    const save = (made = key) =>
      writeProfile(path, { format: PROFILE_FORMAT, key: made, tuning: tuned });
    save();
    const got = selectTuning(builtIn, key);
    assert.deepEqual(got.tuning, tuned);
    assert.equal(got.source, `tuned ${path}`);
    // GEMKIT_TUNING (what tests set) keeps the built-in one.
    process.env.GEMKIT_TUNING = "builtin";
    assert.equal(selectTuning(builtIn, key).source, "built-in");
    delete process.env.GEMKIT_TUNING;
    // Another runtime's profile at this key's path: foreign, ignored with a warning naming it.
    save({ ...key, runtime: "bun 1.4.5" });
    const foreign = selectTuning(builtIn, key);
    assert.deepEqual(foreign.tuning, builtIn);
    assert.match(
      foreign.warning ?? "",
      /ignored .*made for another runtime \(runtime "bun 1\.4\.5", here "deno 2\.9\.6"\)/,
    );
    // Corrupt: ignored with a warning; pinned with GEMKIT_TUNING_FILE: an error naming the file.
    writeFileSync(path, "{ not json");
    const corrupt = selectTuning(builtIn, key);
    assert.deepEqual(corrupt.tuning, builtIn);
    assert.match(corrupt.warning ?? "", /ignored .*not a readable JSON tuning profile/);
    process.env.GEMKIT_TUNING_FILE = path;
    assert.throws(
      () => selectTuning(builtIn, key),
      (e: Error) => e instanceof TuningError && e.message.startsWith(path),
    );
    // Pinned and foreign: used, with the warning.
    save({ ...key, driver: "25.0.7" });
    const pinned = selectTuning(builtIn, key);
    assert.deepEqual(pinned.tuning, tuned);
    assert.equal(pinned.source, `file ${path}`);
    assert.match(pinned.warning ?? "", /another driver/);
    writeFileSync(path, JSON.stringify({ format: "other/2", key, tuning: tuned }));
    assert.throws(() => selectTuning(builtIn, key), /field 'format' is "other\/2"/);
  } finally {
    for (const k of ["GEMKIT_CACHE", "GEMKIT_TUNING", "GEMKIT_TUNING_FILE"]) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
    await rm(dir, { recursive: true });
  }
});
