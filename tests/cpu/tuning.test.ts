/**
 * Kernel choices that depend on the adapter and its driver: the tuning profile per Mesa version
 * and the matmul v3 plan under a tile-area cap. Pure functions, no device.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { slowCompiler, tuningFor } from "../../src/gpu/tuning.ts";
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
  assert.equal(fast.attentionBlock, 8);
  assert.equal(slow.matmulTileArea, 64);
  assert.equal(slow.attentionBlock, 2);
  // Everything else is the same profile.
  const { matmulTileArea: _a, attentionBlock: _b, ...restFast } = fast;
  const { matmulTileArea: _c, attentionBlock: _d, ...restSlow } = slow;
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
  // The free choice at n = 512 is the largest tile (a big tile amortises texel loads).
  assert.deepEqual(choosePlan(512, 512, 512, 1, 2, 16), { tm: 32, tn: 32, slices: 1 });
});
