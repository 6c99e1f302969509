/** CLI pieces without a GPU: argument parsing, the .npy writer, and input validation. */

import { test } from "node:test";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { parseArgs, UsageError } from "../../src/cli/args.ts";
import { npyBytes, readInputTexts } from "../../src/cli/embed.ts";
import { CorpusError } from "../../src/io/corpus.ts";
import { withConfigTable } from "../../scripts/readme_config.ts";
import { normTables, withStudyTables } from "../../scripts/readme_studies.ts";
import { FIELDS } from "../../src/recipe/config.ts";
import { runCli } from "../helpers.ts";

test("args: flags, booleans, overrides; unknown flags and bad numbers are usage errors", () => {
  const spec = {
    steps: { type: "number" as const, help: "" },
    out: { type: "string" as const, help: "", default: "runs" },
    quiet: { type: "boolean" as const, help: "" },
  };
  const r = parseArgs(["--steps", "5", "--quiet", "gem.k=8", "--out=x"], spec, "usage: t");
  assert.deepEqual(r.flags, { steps: 5, out: "x", quiet: true });
  assert.deepEqual(r.overrides, [["gem.k", "8"]]);
  assert.throws(
    () => parseArgs(["--nope"], spec, "usage: t"),
    (e: Error) => e instanceof UsageError && /--nope/.test(e.message),
  );
  assert.throws(() => parseArgs(["--steps", "five"], spec, "usage: t"), /'five' is not a number/);
  assert.throws(() => parseArgs(["stray"], spec, "usage: t"), /unexpected argument 'stray'/);
});

test("npy: header and float32 payload as numpy writes them", () => {
  const bytes = npyBytes([Float32Array.of(1, 2, 3), Float32Array.of(4, 5, 6)], 3);
  assert.deepEqual([...bytes.subarray(0, 8)], [0x93, 78, 85, 77, 80, 89, 1, 0]);
  const hlen = new DataView(bytes.buffer).getUint16(8, true);
  assert.equal((10 + hlen) % 64, 0);
  const header = new TextDecoder().decode(bytes.subarray(10, 10 + hlen));
  assert.match(header, /'descr': '<f4', 'fortran_order': False, 'shape': \(2, 3\)/);
  assert.ok(header.endsWith("\n"));
  assert.deepEqual([...new Float32Array(bytes.buffer.slice(10 + hlen))], [1, 2, 3, 4, 5, 6]);
});

test("embed input: text and JSONL; empty texts and bad UTF-8 name the line", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  await writeFile(`${dir}/a.txt`, "one\ntwo\r\nthree\n");
  assert.deepEqual(readInputTexts(`${dir}/a.txt`), ["one", "two", "three"]);
  await writeFile(`${dir}/b.jsonl`, '{"text": "x"}\n{"text": "y"}\n');
  assert.deepEqual(readInputTexts(`${dir}/b.jsonl`), ["x", "y"]);
  await writeFile(`${dir}/c.txt`, "ok\n   \nok\n");
  assert.throws(
    () => readInputTexts(`${dir}/c.txt`),
    (e: Error) => e instanceof CorpusError && /c\.txt: line 2: empty text/.test(e.message),
  );
  await writeFile(`${dir}/d.jsonl`, '{"text": "x"}\n{"txt": "y"}\n');
  assert.throws(() => readInputTexts(`${dir}/d.jsonl`), /d\.jsonl: line 2: no string field 'text'/);
  await writeFile(`${dir}/e.txt`, new Uint8Array([0x61, 0x0a, 0x62, 0xff, 0x0a]));
  assert.throws(() => readInputTexts(`${dir}/e.txt`), /e\.txt: line 2: not valid UTF-8/);
  await rm(dir, { recursive: true });
});

test("README: the configuration table matches FIELDS (every field, its default and help)", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  const norm = (s: string) => s.replace(/-{3,}/g, "---").replace(/[ \t]+/g, " ");
  assert.equal(
    norm(withConfigTable(readme)),
    norm(readme),
    "run deno run -A scripts/readme_config.ts",
  );
  for (const k of Object.keys(FIELDS)) assert.ok(readme.includes(`\`${k}\``), k);
});

test("README: the study tables match the committed records", async () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  assert.equal(
    normTables(await withStudyTables(readme)),
    normTables(readme),
    "run deno run -A scripts/readme_studies.ts",
  );
});

test("every CLI: --help exits 0 and ends with an example of that command", async () => {
  const root = new URL("../../", import.meta.url).pathname;
  for (const name of ["train", "generate", "embed", "eval", "sweep", "convert", "data", "tune"]) {
    const r = await runCli(`${root}src/cli/${name}.ts`, ["--help"]);
    assert.equal(r.code, 0, `${name}: ${r.err}`);
    const m = /\nexample:\n {2}(.+)\n?$/.exec(r.err);
    assert.ok(m, `${name} --help ends with an example:\n${r.err}`);
    assert.match(m[1], new RegExp(`(^|&& )deno task ${name} `), `${name}'s example runs ${name}`);
  }
});

test("embed: bad --batch and --batch-tokens are usage errors that name the flag, before any model loads", async () => {
  const root = new URL("../../", import.meta.url).pathname;
  // The model path does not exist: the flags are refused first.
  const base = ["--model", "/nonexistent/model.bin", "--input", "/nonexistent/in.txt"];
  for (const [flag, value] of [["--batch", "0"], ["--batch", "2.5"], ["--batch-tokens", "-3"]]) {
    const r = await runCli(`${root}src/cli/embed.ts`, [...base, "--output", "x.npy", flag, value]);
    assert.equal(r.code, 2, `${flag} ${value}: ${r.err}`);
    assert.match(r.err, new RegExp(`${flag} must be a positive integer, got ${value}`));
    assert.doesNotMatch(r.err, /nonexistent/, "refused before the input or model is read");
  }
});
