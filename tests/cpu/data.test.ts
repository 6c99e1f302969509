/**
 * The data manifest against the data folder, and `deno task data` against loopback HTTP servers
 * that serve the folder: as it is, with one file corrupted, and dropping a connection midway.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type DataFile, fetchData, hasFile, readManifest } from "../../src/io/data.ts";
import { sha256Path } from "../../src/io/hash.ts";
import { dataDir } from "../../src/io/paths.ts";
import { concat, runCli } from "../helpers.ts";
import { deflateRawSync } from "node:zlib";

const ROOT = new URL("../../", import.meta.url).pathname;

/** A server of the data folder with Range support; `hook` may answer a request itself. */
async function serve(
  hook?: (path: string, req: IncomingMessage, res: ServerResponse, body: Uint8Array) => boolean,
): Promise<{ url: string; requests: { path: string; range?: string }[]; close(): Promise<void> }> {
  const requests: { path: string; range?: string }[] = [];
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url!, "http://x").pathname.slice(1));
    requests.push({ path, range: req.headers.range });
    let body: Uint8Array;
    try {
      body = await readFile(join(dataDir(), path));
    } catch {
      res.writeHead(404).end();
      return;
    }
    if (hook?.(path, req, res, body)) return;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (m) {
      const from = Number(m[1]);
      res.writeHead(206, {
        "content-length": body.length - from,
        "content-range": `bytes ${from}-${body.length - 1}/${body.length}`,
      });
      res.end(body.subarray(from));
    } else {
      res.writeHead(200, { "content-length": body.length }).end(body);
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

test("manifest: every file of the data folder, with its size and SHA-256, url or source", async () => {
  const m = await readManifest();
  const tsv = (await readFile(join(dataDir(), "MANIFEST.tsv"), "utf8")).trim().split("\n").slice(1);
  assert.equal(m.files.length, tsv.length);
  for (const f of m.files) {
    const info = await stat(join(dataDir(), f.path));
    assert.equal(info.size, f.bytes, f.path);
    assert.equal(await sha256Path(join(dataDir(), f.path)), f.sha256, f.path);
    const url = f.url ?? f.derived!.url;
    assert.match(
      url,
      /^https:\/\/raw\.githubusercontent\.com\/[^/]+\/[^/]+\/[0-9a-f]{40}\//,
      f.path,
    );
  }
  // Every file can be fetched from its origin: as it is, as a zip member, or made by a transform.
  const ways = { url: 0, member: 0, make: 0 };
  for (const f of m.files) {
    const way = f.url ? "url" : f.derived?.member ? "member" : f.derived?.make ? "make" : null;
    assert.ok(way, `${f.path} has a way to be fetched`);
    ways[way]++;
  }
  assert.deepEqual(ways, { url: 139, member: 130, make: 1 });
});

test("deno task data --mirror: fetches, verifies, is idempotent, names a bad group", async () => {
  const m = await readManifest();
  const server = await serve();
  const dest = await mkdtemp(join(tmpdir(), "gemkit-data-"));
  try {
    const run = (extra: string[]) =>
      runCli(`${ROOT}src/cli/data.ts`, ["--dest", dest, ...extra], { GEMKIT_DATA: dest });
    const first = await run(["--only", "stsb,stories260k", "--mirror", server.url]);
    assert.equal(first.code, 0, first.err);
    assert.match(first.err, /7 fetched, 0 already present/);
    for (const f of m.files.filter((f) => f.group === "stsb" || f.group === "stories260k")) {
      assert.ok(await hasFile(dest, f), f.path);
    }
    const n = server.requests.length;
    const again = await run(["--only", "stsb,stories260k", "--mirror", server.url]);
    assert.equal(again.code, 0, again.err);
    assert.match(again.err, /0 fetched, 7 already present/);
    assert.equal(server.requests.length, n, "a second run downloads nothing");
    const bad = await run(["--only", "nothing"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.err, /--only: no group 'nothing'/);
  } finally {
    await server.close();
    await rm(dest, { recursive: true });
  }
});

test("data fetch: a corrupted file is named and removed, good files stay; a dropped transfer resumes", async () => {
  const m = await readManifest();
  const pick = (p: string) => m.files.find((f) => f.path === p)!;
  const good: DataFile = pick("eval/stsb/sts-dev.csv");
  const corrupt: DataFile = pick("eval/stsb/sts-test.csv");
  const dropped: DataFile = pick("models/llama2c/stories260K.bin");
  let drops = 0;
  const server = await serve((path, _req, res, body) => {
    if (path === corrupt.path) {
      const copy = body.slice();
      copy[100] ^= 1;
      res.writeHead(200, { "content-length": copy.length }).end(copy);
      return true;
    }
    if (path === dropped.path && drops === 0) {
      // Half the body, then the connection goes away.
      drops++;
      res.writeHead(200, { "content-length": body.length });
      res.write(body.subarray(0, body.length >> 1), () => res.socket?.destroy());
      return true;
    }
    return false;
  });
  const dest = await mkdtemp(join(tmpdir(), "gemkit-data-"));
  try {
    const res = await fetchData(dest, [good, corrupt, dropped], {
      mirror: server.url,
      retryDelayMs: 10,
    });
    assert.deepEqual(res.fetched, [good.path, dropped.path]);
    assert.equal(res.failed.length, 1);
    assert.equal(res.failed[0].path, corrupt.path);
    assert.match(res.failed[0].reason, /sts-test\.csv: SHA-256 [0-9a-f]{64}, expected/);
    await assert.rejects(stat(join(dest, corrupt.path)), "no corrupted file is left");
    await assert.rejects(stat(join(dest, `${corrupt.path}.part`)), "nor its partial download");
    assert.ok(await hasFile(dest, good));
    assert.ok(await hasFile(dest, dropped));
    const resumed = server.requests.filter((r) => r.path === dropped.path);
    assert.equal(resumed.length, 2);
    assert.match(resumed[1].range ?? "", /^bytes=\d+-$/, "the second request resumes");
    assert.ok(Number(/\d+/.exec(resumed[1].range!)![0]) > 0);
    // A good file already in place is never fetched or touched again.
    const before = (await stat(join(dest, good.path))).mtimeMs;
    const n = server.requests.length;
    const again = await fetchData(dest, [good], { mirror: server.url });
    assert.deepEqual(again.present, [good.path]);
    assert.equal(server.requests.length, n);
    assert.equal((await stat(join(dest, good.path))).mtimeMs, before);
  } finally {
    await server.close();
    await rm(dest, { recursive: true });
  }
});

/** A zip archive of `files` (name -> bytes): deflated members, except `stored` ones. */
function makeZip(files: Record<string, Uint8Array>, stored: string[] = []): Uint8Array {
  const enc = new TextEncoder();
  const locals: Uint8Array[] = [], centrals: Uint8Array[] = [];
  let offset = 0;
  for (const [name, data] of Object.entries(files)) {
    const method = stored.includes(name) ? 0 : 8;
    const body = method ? new Uint8Array(deflateRawSync(data)) : data;
    const n = enc.encode(name);
    const local = new Uint8Array(30 + n.length + body.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(8, method, true);
    lv.setUint32(18, body.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, n.length, true);
    local.set(n, 30);
    local.set(body, 30 + n.length);
    const central = new Uint8Array(46 + n.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(10, method, true);
    cv.setUint32(20, body.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, n.length, true);
    cv.setUint32(42, offset, true);
    central.set(n, 46);
    locals.push(local);
    centrals.push(central);
    offset += local.length;
  }
  const dirSize = centrals.reduce((s, c) => s + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, centrals.length, true);
  ev.setUint16(10, centrals.length, true);
  ev.setUint32(12, dirSize, true);
  ev.setUint32(16, offset, true);
  return concat([...locals, ...centrals, end]);
}

test("data fetch: members of a zip archive are extracted and checked; a missing member is named", async () => {
  const m = await readManifest();
  const trec = m.files.filter((f) => f.group === "trec");
  assert.ok(trec.length === 3 && trec.every((f) => f.derived?.member?.startsWith("qc/")));
  const url = trec[0].derived!.url;
  const members: Record<string, Uint8Array> = {};
  for (const f of trec) members[f.derived!.member!] = await readFile(join(dataDir(), f.path));
  // The archive served where the manifest says it is, through a stand-in fetch.
  let requests = 0;
  const serveZip = (zip: Uint8Array): typeof fetch => (input) => {
    assert.equal(String(input), url);
    requests++;
    return Promise.resolve(new Response(zip.slice()));
  };
  const zip = makeZip(members, ["qc/README"]);
  const dest = await mkdtemp(join(tmpdir(), "gemkit-data-"));
  try {
    const res = await fetchData(dest, trec, { fetch: serveZip(zip) });
    assert.deepEqual(res.failed, []);
    assert.deepEqual(res.fetched.sort(), trec.map((f) => f.path).sort());
    assert.equal(requests, 1, "one download for the three members");
    for (const f of trec) assert.ok(await hasFile(dest, f), f.path);
    // A changed member fails its SHA-256; a missing one is named.
    const bad: Record<string, Uint8Array> = {
      ...members,
      "qc/train.txt": new TextEncoder().encode("changed"),
    };
    delete bad["qc/test.txt"];
    const dest2 = await mkdtemp(join(tmpdir(), "gemkit-data-"));
    const res2 = await fetchData(dest2, trec, { fetch: serveZip(makeZip(bad)) });
    const reasons = Object.fromEntries(res2.failed.map((x) => [x.path, x.reason]));
    assert.match(reasons["eval/trec_qc/train.txt"], /SHA-256 [0-9a-f]{64}, expected/);
    assert.match(reasons["eval/trec_qc/test.txt"], /qc\/test\.txt: no such member/);
    // A recorded source SHA-256 is checked before anything is extracted.
    const pinned = trec.map((f) => ({
      ...f,
      derived: {
        ...f.derived!,
        sourceSha256: f.path.endsWith("README") ? "0".repeat(64) : undefined,
      },
    }));
    const dest3 = await mkdtemp(join(tmpdir(), "gemkit-data-"));
    const res3 = await fetchData(dest3, pinned, { fetch: serveZip(zip) });
    assert.deepEqual(res3.failed.map((x) => x.path), ["eval/trec_qc/README"]);
    assert.match(res3.failed[0].reason, /qc\.zip: source SHA-256 [0-9a-f]{64}, expected 0{64}$/);
    assert.equal(res3.fetched.length, 2);
    await rm(dest3, { recursive: true });
    await rm(dest2, { recursive: true });
  } finally {
    await rm(dest, { recursive: true });
  }
});

test("data fetch: the movie-review JSON lines are made from the archive's review files", async () => {
  const m = await readManifest();
  const files = m.files.filter((f) => f.group === "movie-reviews");
  const jsonl = files.find((f) => f.derived?.make === "movie-reviews-jsonl")!;
  assert.ok(jsonl && files.length === 2);
  // The archive rebuilt from the data folder's rows: one file per review, in a shuffled order
  // (the transform sorts), plus the README member and a directory entry.
  const enc = new TextEncoder();
  const rows = (await readFile(join(dataDir(), jsonl.path), "utf8")).trim().split("\n")
    .map((l) => JSON.parse(l) as { id: string; label: string; text: string });
  assert.equal(rows.length, 2000);
  const members: Record<string, Uint8Array> = {
    "movie_reviews/README": await readFile(join(dataDir(), "corpus/movie_reviews.README")),
    "movie_reviews/pos/": new Uint8Array(0),
  };
  for (let i = 0; i < rows.length; i++) {
    const r: { id: string; label: string; text: string } = rows[(i * 7919) % rows.length]; // 7919 is prime to 2000: a permutation
    assert.equal(r.id.split("/")[0], r.label);
    members[`movie_reviews/${r.id}`] = enc.encode(r.text);
  }
  const url = jsonl.derived!.url;
  let requests = 0;
  const serveZip = (zip: Uint8Array): typeof fetch => (input) => {
    assert.equal(String(input), url);
    requests++;
    return Promise.resolve(new Response(zip.slice()));
  };
  const dest = await mkdtemp(join(tmpdir(), "gemkit-data-"));
  try {
    const res = await fetchData(dest, files, {
      fetch: serveZip(makeZip(members, Object.keys(members))),
    });
    assert.deepEqual(res.failed, []);
    assert.equal(requests, 1, "one download for the README and the JSON lines");
    for (const f of files) assert.ok(await hasFile(dest, f), f.path);
    // One changed review fails the result's SHA-256, and nothing is written.
    const changed = { ...members, "movie_reviews/neg/cv000_29416.txt": enc.encode("changed") };
    const dest2 = await mkdtemp(join(tmpdir(), "gemkit-data-"));
    const res2 = await fetchData(dest2, [jsonl], { fetch: serveZip(makeZip(changed)) });
    assert.equal(res2.failed.length, 1);
    assert.match(res2.failed[0].reason, /movie_reviews\.zip: SHA-256 [0-9a-f]{64}, expected/);
    await assert.rejects(stat(join(dest2, jsonl.path)));
    await rm(dest2, { recursive: true });
  } finally {
    await rm(dest, { recursive: true });
  }
});
