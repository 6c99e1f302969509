/** The bench's PyTorch setup from the environment (bench/competitors.ts torchSetup). */

import { test } from "node:test";
import assert from "node:assert/strict";
import { torchSetup } from "../../bench/competitors.ts";

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
