/** The embed and eval commands end to end on stories260K (small inputs). */

import { test } from "node:test";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { addSpecialTokens, embedIds } from "../../src/gem/gem.ts";
import { saveGem } from "../../src/gem/io.ts";
import { loadModel } from "../../src/io/model.ts";
import { dataDir } from "../../src/io/paths.ts";
import { readBytes, runCli, runCommand, testGpu } from "../helpers.ts";

const root = new URL("../../", import.meta.url).pathname;
const M = () => `${dataDir()}/models/llama2c`;

function run(script: string, args: string[]) {
  return runCli(`${root}src/cli/${script}`, args, { GEMKIT_LOG: "0" });
}

test("deno task generate: greedy text; a GEM run directory generates the same", async () => {
  await testGpu();
  const args = ["--prompt", "Once upon a time", "--max-tokens", "24", "--temperature", "0"];
  const base = await run("generate.ts", [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    ...args,
  ]);
  assert.equal(base.code, 0, base.err);
  assert.match(base.out, /^Once upon a time.{20,}/);
  // Specials add classifier rows but leave the text tokens' logits alone, so greedy text is equal.
  const { model, tokenizer } = await loadModel(`${M()}/stories260K.bin`, {
    tokenizer: `${M()}/tok512.bin`,
  });
  const gem = await addSpecialTokens(model, tokenizer, { k: 4 });
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  await saveGem(`${dir}/ckpt-000001`, gem, `${M()}/tok512.bin`);
  await writeFile(`${dir}/latest`, "ckpt-000001");
  gem.dispose();
  const g = await run("generate.ts", ["--model", dir, ...args]);
  assert.equal(g.code, 0, g.err);
  assert.equal(g.out, base.out);
  const bad = await run("generate.ts", ["--model", `${dir}/nothing-here`, ...args]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /nothing-here: no such file or directory/);
  await rm(dir, { recursive: true });
});

test("generate under Bun (src) and Node (dist/node bundle) prints Deno's greedy text", async () => {
  await testGpu();
  const args = [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    ...["--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0"],
  ];
  const deno = await runCommand("deno", ["run", "-A", `${root}src/cli/generate.ts`, ...args]);
  assert.equal(deno.code, 0, deno.err);
  // scripts/setup.sh installs Bun and builds the Node bundle: missing ones fail, not skip.
  const bun = await runCommand(`${root}node_modules/.bin/bun`, [
    `${root}src/cli/generate.ts`,
    ...args,
  ]);
  assert.equal(bun.code, 0, bun.err);
  assert.match(bun.err, /backend dawn/);
  assert.equal(bun.out, deno.out);
  const node = await runCommand("node", [`${root}dist/node/generate.js`, ...args]);
  assert.equal(node.code, 0, node.err);
  assert.match(node.err, /backend dawn/);
  assert.equal(node.out, deno.out);
});

test("deno task embed: .npy in input order equals the library's vectors; errors name the line", async () => {
  await testGpu();
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const texts = ["The cat sat on the mat.", "Lily went to the park.", "A big red ball."];
  await writeFile(`${dir}/in.txt`, texts.join("\n") + "\n");
  const r = await run("embed.ts", [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    "--input",
    `${dir}/in.txt`,
    "--output",
    `${dir}/out.npy`,
    "--pooling",
    "mean",
  ]);
  assert.equal(r.code, 0, r.err);
  const bytes = await readBytes(`${dir}/out.npy`);
  const hlen = new DataView(bytes.buffer).getUint16(8, true);
  assert.match(new TextDecoder().decode(bytes.subarray(10, 10 + hlen)), /'shape': \(3, 64\)/);
  const got = new Float32Array(bytes.buffer.slice(10 + hlen));
  const { model, tokenizer } = await loadModel(`${M()}/stories260K.bin`, {
    tokenizer: `${M()}/tok512.bin`,
  });
  const want = await embedIds(model, texts.map((t) => tokenizer.encode(t, { bos: true })), {
    pooling: "mean",
  });
  for (let i = 0; i < 3; i++) assert.deepEqual(got.slice(i * 64, (i + 1) * 64), want.vectors[i]);
  model.dispose();
  await writeFile(`${dir}/bad.txt`, "fine\n\nfine\n");
  const bad = await run("embed.ts", [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    "--input",
    `${dir}/bad.txt`,
    "--output",
    `${dir}/x.npy`,
  ]);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /bad\.txt: line 2: empty text/);
  await rm(dir, { recursive: true });
});

test("deno task eval: results.json (metrics, hashes, versions), results.md and offline report.html", async () => {
  await testGpu();
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  const r = await run("eval.ts", [
    "--model",
    `${M()}/stories260K.bin`,
    "--tokenizer",
    `${M()}/tok512.bin`,
    "--tasks",
    "stsb,trec-clustering",
    "--pooling",
    "mean,last",
    "--out",
    dir,
    "--format",
    "mteb",
  ]);
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(await readFile(`${dir}/results.json`, "utf8"));
  assert.deepEqual(j.poolings, ["mean", "last"]);
  assert.equal(j.results.length, 4);
  const stsb = j.results.find((x: { task: string; pooling: string }) =>
    x.task === "stsb" && x.pooling === "mean"
  );
  // An independent measurement of mean pooling on STS-B test (numpy, same model) gave 0.41.
  assert.ok(Math.abs(stsb.metrics.spearman - 0.41) < 0.01, `stsb mean ${stsb.metrics.spearman}`);
  assert.match(j.data["eval/stsb/sts-test.csv"], /^[0-9a-f]{64}$/);
  assert.ok(j.versions.adapter && j.versions.deno);
  assert.match(await readFile(`${dir}/results.md`, "utf8"), /\| stsb \| spearman \|/);
  assert.match(j.commit, /^[0-9a-f]{40}$/);
  assert.deepEqual(j.config.tasks, ["stsb", "trec-clustering"]);
  // MTEB-style files: MTEB's task name, main score = the headline metric, the pooling's folder.
  const mteb = JSON.parse(await readFile(`${dir}/mteb/mean/STSBenchmark.json`, "utf8"));
  assert.equal(mteb.task_name, "STSBenchmark");
  assert.equal(mteb.scores.test[0].main_score, stsb.metrics.spearman);
  assert.equal(mteb.scores.test[0].cosine_spearman, stsb.metrics.spearman);
  assert.equal(mteb.gemkit.commit, j.commit);
  const clus = JSON.parse(await readFile(`${dir}/mteb/last/trec-clustering.json`, "utf8"));
  assert.equal(clus.task_name, "trec-clustering");
  assert.equal(typeof clus.scores.test[0].main_score, "number");
  const html = await readFile(`${dir}/report.html`, "utf8");
  assert.ok(
    html.includes("<table>") && html.includes("Plotly.newPlot") && !/<script[^>]*\ssrc=/.test(html),
    "self-contained",
  );
  await rm(dir, { recursive: true });
});

test("the --help examples run as printed (all but train's 200 steps)", async () => {
  await testGpu();
  for (const name of ["generate", "embed", "eval", "sweep", "convert", "data", "tune"]) {
    const help = await run(`${name}.ts`, ["--help"]);
    const example = /\nexample:\n {2}(.+)\n?$/.exec(help.err)![1];
    const r = await runCommand("bash", ["-c", `cd '${root}' && ${example}`]);
    assert.equal(r.code, 0, `${example}\n${r.err.slice(-2000)}`);
  }
  await rm("/tmp/stories260K-hf", { recursive: true });
  await rm("/tmp/gemkit-eval", { recursive: true });
  await rm("/tmp/gemkit-tuning.json");
});

test("examples/embed_numpy.py: numpy alone gives deno task embed's GEM vectors within 1e-4", async () => {
  await testGpu();
  const { model, tokenizer } = await loadModel(`${M()}/stories260K.bin`, {
    tokenizer: `${M()}/tok512.bin`,
  });
  const gem = await addSpecialTokens(model, tokenizer, { k: 4 });
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  try {
    await saveGem(`${dir}/ckpt`, gem, `${M()}/tok512.bin`);
    const texts = [
      "Once upon a time there was a cat.",
      "The dog ran to the park, and Lily ran too!",
      "Un café à Zürich", // bytes without a piece fall back to <0xNN> tokens
      "x",
    ];
    await writeFile(`${dir}/texts.txt`, texts.join("\n") + "\n");
    const ours = await run("embed.ts", [
      "--model",
      `${dir}/ckpt`,
      "--input",
      `${dir}/texts.txt`,
      "--output",
      `${dir}/deno.npy`,
      "--pooling",
      "gem",
    ]);
    assert.equal(ours.code, 0, ours.err);
    const py = await runCommand("/usr/bin/python3", [
      `${root}examples/embed_numpy.py`,
      `${dir}/ckpt`,
      `${dir}/texts.txt`,
      `${dir}/numpy.npy`,
    ]);
    assert.equal(py.code, 0, py.err);
    const a = npyFloats(await readBytes(`${dir}/deno.npy`));
    const b = npyFloats(await readBytes(`${dir}/numpy.npy`));
    assert.equal(a.length, texts.length * 64);
    assert.equal(b.length, a.length);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    assert.ok(worst < 1e-4, `largest difference ${worst}`);
  } finally {
    gem.dispose();
    await rm(dir, { recursive: true });
  }
});

/** The float32 payload of a .npy file (version 1 header). */
function npyFloats(bytes: Uint8Array): Float32Array {
  const headerLen = bytes[8] | (bytes[9] << 8);
  const body = bytes.slice(10 + headerLen);
  return new Float32Array(body.buffer, body.byteOffset, body.byteLength / 4);
}
