/** The bench's PyTorch setup from the environment (bench/competitors.ts torchSetup). */

import { test } from "node:test";
import assert from "node:assert/strict";
import { torchSetup } from "../../bench/competitors.ts";
import { ratios } from "../../bench/model.ts";

const env = (vars: Record<string, string>) => ({ get: (k: string) => vars[k] });

test("bench torchSetup: defaults, a GPU machine's settings, and bad values named", () => {
  assert.deepEqual(torchSetup(env({})), {
    python: "/usr/bin/python3",
    threads: [1, 2],
    cuda: false,
  });
  assert.deepEqual(
    torchSetup(env({
      GEMKIT_PYTHON: "/opt/torch/.venv/bin/python3",
      GEMKIT_TORCH_THREADS: "1, 16",
      GEMKIT_TORCH_CUDA: "1",
    })),
    { python: "/opt/torch/.venv/bin/python3", threads: [1, 16], cuda: true },
  );
  assert.deepEqual(torchSetup(env({ GEMKIT_TORCH_THREADS: "" })).threads, []);
  assert.throws(() => torchSetup(env({ GEMKIT_TORCH_THREADS: "1,x" })), /GEMKIT_TORCH_THREADS/);
  assert.throws(() => torchSetup(env({ GEMKIT_TORCH_THREADS: "0" })), /GEMKIT_TORCH_THREADS/);
  assert.throws(() => torchSetup(env({ GEMKIT_TORCH_CUDA: "yes" })), /GEMKIT_TORCH_CUDA/);
});

test("bench ratios: gemkit over the best PyTorch thread count; prefill variants against its one prefill", () => {
  const rec = (bench: string, impl: string, f: Record<string, number>) => ({ bench, impl, ...f });
  const r = ratios([
    rec("train_step", "gemkit", { tokens_per_s: 9000, median_s: 0.91 }),
    rec("train_step", "torch-cpu-1t", { tokens_per_s: 8000, median_s: 1.02 }),
    rec("train_step", "torch-cpu-2t", { tokens_per_s: 6000, median_s: 1.37 }),
    rec("prefill", "gemkit", { tokens_per_s: 15000, median_s: 0.034 }),
    rec("prefill_x4", "gemkit", { tokens_per_s: 20000, median_s: 0.1 }),
    rec("prefill", "torch-cpu-1t", { tokens_per_s: 10000, median_s: 0.05 }),
    rec("embed", "gemkit", { texts_per_s: 1200, median_s: 2.3 }),
    // A failed PyTorch run has a note and no median: skipped.
    { bench: "model", impl: "torch-cpu-2t", note: "PyTorch not available" },
    rec("embed", "torch-cpu-1t", { texts_per_s: 1000, median_s: 2.76 }),
    // No PyTorch counterpart: no ratio.
    rec("generate", "gemkit", { tokens_per_s: 2000, median_s: 0.128 }),
  ]);
  assert.deepEqual(Object.keys(r).sort(), ["embed", "prefill", "prefill_x4", "train_step"]);
  assert.equal(r.train_step, 9000 / 8000);
  assert.equal(r.prefill, 1.5);
  assert.equal(r.prefill_x4, 2);
  assert.equal(r.embed, 1.2);
});
