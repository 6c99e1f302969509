/**
 * Training: a run stopped at step K (--stop-at, or Ctrl-C) and resumed ends bitwise equal to an
 * uninterrupted run; a non-finite loss stops training and keeps the last good checkpoint; a
 * failure while writing a checkpoint leaves the previous one intact.
 */

import { test } from "node:test";
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import assert from "node:assert/strict";
import * as T from "../../src/tensor/ops.ts";
import { buildConfig } from "../../src/recipe/config.ts";
import { NonFiniteLossError, train, type TrainTask } from "../../src/train/trainer.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { exitCode } from "../../src/platform/platform.ts";
import { cliCommand, readBytesSync, testGpu } from "../helpers.ts";

const CLI = new URL("../../src/cli/train.ts", import.meta.url).pathname;
const SMALL = [
  "batchSize=4",
  "contrastive.batchSize=4",
  "maxLen=48",
  "checkpointEvery=100",
  'phases=[{"frac":0.5,"alpha":0,"lr":0.001},{"frac":0.5,"alpha":0.5,"lr":0.0003}]',
];

async function cli(args: string[], onLine?: (line: string, child: ChildProcess) => void) {
  const child = spawn(...cliCommand(CLI, ["--no-report", ...args]), {
    env: { ...process.env, GEMKIT_LOG: "0" },
    stdio: ["inherit", "ignore", "pipe"],
  });
  const exited = new Promise<number>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve(exitCode(code, signal)));
  });
  let err = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stderr!) {
    const value = decoder.decode(chunk, { stream: true });
    err += value;
    if (onLine) { for (const l of value.split("\n")) if (l) onLine(l, child); }
  }
  return { code: await exited, err };
}

const bytes = (p: string) => readBytesSync(p);

test("resume: --stop-at and Ctrl-C runs, resumed, end bitwise equal to an uninterrupted run", async () => {
  const root = await mkdtemp(join(tmpdir(), "gemkit-"));
  const full = await cli(["--steps", "6", "--out", `${root}/full`, ...SMALL]);
  assert.equal(full.code, 0, full.err);
  const stop = await cli(["--steps", "6", "--stop-at", "2", "--out", `${root}/stop`, ...SMALL]);
  assert.equal(stop.code, 0, stop.err);
  assert.equal(readFileSync(`${root}/stop/latest`, "utf8").trim(), "ckpt-000002");
  const resumed = await cli(["--resume", `${root}/stop`]);
  assert.equal(resumed.code, 0, resumed.err);
  let sent = false;
  const intr = await cli(["--steps", "6", "--out", `${root}/intr`, ...SMALL], (line, child) => {
    if (!sent && /step [1-3]\/6/.test(line)) {
      sent = true;
      child.kill("SIGINT");
    }
  });
  assert.equal(intr.code, 130, intr.err);
  const at = Number(readFileSync(`${root}/intr/latest`, "utf8").trim().slice(5));
  assert.ok(at >= 1 && at < 6, `interrupted at step ${at}`);
  const intrResumed = await cli(["--resume", `${root}/intr`]);
  assert.equal(intrResumed.code, 0, intrResumed.err);
  for (const f of ["model.safetensors", "trainer/optimizer.safetensors", "gem.json"]) {
    const want = bytes(`${root}/full/ckpt-000006/${f}`);
    assert.deepEqual(bytes(`${root}/stop/ckpt-000006/${f}`), want, `stop-at resume: ${f}`);
    assert.deepEqual(bytes(`${root}/intr/ckpt-000006/${f}`), want, `Ctrl-C resume: ${f}`);
  }
  const rejected = await cli(["--resume", `${root}/stop`, "gem.k=2"]);
  assert.equal(rejected.code, 2);
  assert.match(rejected.err, /--resume continues the saved run exactly/);
  await rm(root, { recursive: true });
});

/** A task on one parameter whose loss turns bad at `badStep`, or whose save fails at `failSave`. */
function toyTask(opts: { badStep?: number; failSave?: number }): TrainTask & { saves: number } {
  const w = T.parameter(tensor([1, 2, 3, 4], [2, 2]), "w");
  let saves = 0;
  return {
    get saves() {
      return saves;
    },
    params: [w],
    decay: [true],
    micro: (step) => {
      const scale = opts.badStep !== undefined && step >= opts.badStep ? Infinity : 1;
      const loss = T.mulScalar(T.sumAll(T.square(w)), scale);
      return { total: loss, parts: {}, tokens: 4 };
    },
    saveModel: async (dir) => {
      saves++;
      if (saves === opts.failSave) throw new Error("disk full (simulated)");
      await writeFile(`${dir}/weights.json`, JSON.stringify([...(await w.toArray())]));
    },
    dataState: () => ({}),
    restoreData: () => {},
  };
}

test("non-finite loss: stops with a clear error, no update, last good checkpoint kept", async () => {
  await testGpu();
  const out = await mkdtemp(join(tmpdir(), "gemkit-"));
  const config = buildConfig(null, [["steps", "10"], ["checkpointEvery", "2"]]);
  const task = toyTask({ badStep: 3 });
  await assert.rejects(
    train(task, config, { out }),
    (e: Error) =>
      e instanceof NonFiniteLossError && /step 4/.test(e.message) && /ckpt-000002/.test(e.message),
  );
  assert.equal(readFileSync(`${out}/latest`, "utf8").trim(), "ckpt-000002");
  assert.deepEqual(
    readdirSync(out).filter((n) => n.startsWith("ckpt")),
    ["ckpt-000002"],
  );
  await rm(out, { recursive: true });
});

test("a failure while writing a checkpoint leaves the previous one and 'latest' intact", async () => {
  await testGpu();
  const out = await mkdtemp(join(tmpdir(), "gemkit-"));
  const config = buildConfig(null, [["steps", "10"], ["checkpointEvery", "2"]]);
  await assert.rejects(train(toyTask({ failSave: 2 }), config, { out }), /disk full/);
  assert.equal(readFileSync(`${out}/latest`, "utf8").trim(), "ckpt-000002");
  const names = readdirSync(out);
  assert.ok(!names.includes("ckpt-000004"), "no half-written checkpoint under its final name");
  assert.ok(statSync(`${out}/ckpt-000002/weights.json`).isFile());
  await rm(out, { recursive: true });
});
