/**
 * Hub client against a fake hub served by the test: the revision lookup and tree listing
 * @huggingface/hub asks for (`/api/models/{repo}/revision/{rev}`, `/api/models/{repo}/tree/{commit}`)
 * and files at `/{repo}/resolve/{commit}/{path}` with Range support. Files of a repo are listed
 * with the hashes the real hub gives (git blob SHA-1; SHA-256 under `lfs` for safetensors), so the
 * cache is laid out as huggingface_hub lays it out. Every test uses its own temp cache; the real
 * home cache is never touched.
 */

import { test } from "node:test";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readdirSync } from "node:fs";
import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readlink,
  rm,
  rmdir,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import assert from "node:assert/strict";
import {
  cachedSnapshot,
  HubError,
  type HubOptions,
  missingFiles,
  parseModelSpec,
  resolveModel,
} from "../../src/io/hub.ts";
import { readBytes } from "../helpers.ts";

type Bytes = Uint8Array<ArrayBuffer>;

interface Seen {
  path: string;
  range: string | null;
  auth: string | null;
}

/** How long a dropped connection stays open after its last byte is written. */
const DROP_DELAY_MS = 200;

/** A hub with some repos; records requests and can misbehave on purpose. */
class FakeHub {
  readonly seen: Seen[] = [];
  /** Files whose next data GET stops halfway, as a dropped connection. */
  readonly dropNext = new Set<string>();
  /** Files listed in the tree that answer 404 on download. */
  readonly gone = new Set<string>();
  /** Files served with their first byte changed (the listing keeps the true hash). */
  readonly corrupt = new Set<string>();
  /** Answer data requests with 200 and the whole file even when a Range is asked (the 1-byte
   * size probe still gets its 206: @huggingface/hub needs the Content-Range of it). */
  ignoreRange = false;
  readonly server: Server;

  private constructor(readonly repos: Record<string, Record<string, Bytes>>) {
    this.server = createServer((req, res) => this.handle(req, res));
  }

  /** A hub listening on a free loopback port. */
  static async start(repos: Record<string, Record<string, Bytes>>): Promise<FakeHub> {
    const hub = new FakeHub(repos);
    hub.server.listen(0, "127.0.0.1");
    await once(hub.server, "listening");
    return hub;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Stops listening and drops open connections; nothing listens on the port afterwards. */
  async shutdown(): Promise<void> {
    if (!this.server.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  /** Data requests for one file (not the 1-byte size probes). */
  gets(file: string): Seen[] {
    return this.seen.filter((s) =>
      /\/resolve\/[0-9a-f]{40}\//.test(s.path) && s.path.endsWith(`/${file}`) &&
      s.range !== "bytes=0-0"
    );
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const range = req.headers.range ?? null;
    this.seen.push({ path: url.pathname, range, auth: req.headers.authorization ?? null });
    const send = (status: number, headers: Record<string, string>, body: Uint8Array) => {
      res.writeHead(status, { ...headers, "content-length": String(body.length) }).end(body);
    };
    const json = (body: unknown, status = 200, headers: Record<string, string> = {}) =>
      send(status, { "content-type": "application/json", ...headers }, text(JSON.stringify(body)));
    const revision = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (revision) {
      if (!this.repos[revision[1]] || decodeURIComponent(revision[2]) !== "main") {
        return json({ error: "Repository not found" }, 404, { "x-error-code": "RepoNotFound" });
      }
      return json({ _id: "1", id: revision[1], sha: commitOf(this.repos[revision[1]]) });
    }
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([0-9a-f]{40})$/.exec(url.pathname);
    if (tree) {
      const files = this.repos[tree[1]];
      if (!files || commitOf(files) !== tree[2]) {
        return json({ error: "Repository not found" }, 404, { "x-error-code": "RepoNotFound" });
      }
      return json(Object.entries(files).map(([path, d]) => listingOf(path, d)));
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    const files = resolve ? this.repos[resolve[1]] : undefined;
    let data = resolve && files && commitOf(files) === resolve[2] && !this.gone.has(resolve[3])
      ? files[resolve[3]]
      : undefined;
    if (!resolve || !data) {
      send(
        404,
        { "content-type": "text/plain;charset=UTF-8", "x-error-code": "EntryNotFound" },
        text("Entry not found"),
      );
      return;
    }
    if (this.corrupt.has(resolve[3])) {
      data = data.slice();
      data[0] ^= 1;
    }
    const headers = { etag: `"${listingOf(resolve[3], data).oid}"`, "accept-ranges": "bytes" };
    const r = /^bytes=(\d+)-(\d*)$/.exec(range ?? "");
    const probe = r?.[0] === "bytes=0-0";
    if (r && (probe || !this.ignoreRange)) {
      const start = Number(r[1]);
      const end = r[2] ? Number(r[2]) + 1 : data.length;
      send(
        206,
        { ...headers, "content-range": `bytes ${start}-${end - 1}/${data.length}` },
        data.slice(start, end),
      );
      return;
    }
    if (!probe && this.dropNext.delete(resolve[3])) {
      // Send half, then close the connection while Content-Length promised all of it. The close
      // waits a moment: Bun's fetch drops body bytes it has buffered but not yet handed to a
      // reader when the connection ends, and the client opens its output file before reading.
      res.writeHead(200, { ...headers, "content-length": String(data.length) });
      res.write(data.slice(0, data.length >> 1), () => {
        setTimeout(() => res.socket?.end(), DROP_DELAY_MS);
      });
      return;
    }
    send(200, headers, data);
  }
}

/** Deterministic pseudo-random bytes. */
function bytes(n: number, seed: number): Bytes {
  const out = new Uint8Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 255;
  }
  return out;
}

const text = (s: string) => new TextEncoder().encode(s);

const hex = (algorithm: string, ...parts: (string | Uint8Array)[]) => {
  const h = createHash(algorithm);
  for (const p of parts) h.update(p);
  return h.digest("hex");
};

/** A tree entry as the hub gives it: git blob SHA-1, and SHA-256 under `lfs` for safetensors. */
function listingOf(path: string, d: Uint8Array) {
  const oid = hex("sha1", `blob ${d.length}\0`, d);
  const lfs = path.endsWith(".safetensors")
    ? { lfs: { oid: hex("sha256", d), size: d.length, pointerSize: 130 } }
    : {};
  return { type: "file", oid, size: d.length, path, ...lfs };
}

/** A repo's commit id: a hash of its files, so changing a file makes a new commit. */
function commitOf(files: Record<string, Uint8Array>): string {
  const h = createHash("sha1");
  for (const [path, d] of Object.entries(files).sort(([a], [b]) => a.localeCompare(b))) {
    h.update(`${path}\0${listingOf(path, d).oid}\0`);
  }
  return h.digest("hex");
}

function tinyRepo(weights = bytes(300_000, 7)): Record<string, Bytes> {
  return {
    "config.json": text('{"hidden_size": 8}'),
    "tokenizer.json": text('{"model": {}}'),
    "tokenizer_config.json": text("{}"),
    "README.md": text("# a model card"),
    "notes.txt": text("not downloaded"),
    "model.safetensors": weights,
  };
}

/** Runs `fn` with a fresh temp cache and fake hub, cleaning both up. */
async function withHub(
  repos: Record<string, Record<string, Bytes>>,
  fn: (hub: FakeHub, opts: HubOptions, cache: string) => Promise<void>,
): Promise<void> {
  const cache = await mkdtemp(join(tmpdir(), "gemkit-hub-test-"));
  const hub = await FakeHub.start(repos);
  try {
    // Explicit options so the tests ignore HF_* variables of the machine running them.
    const opts: HubOptions = {
      cacheDir: cache,
      endpoint: hub.url,
      offline: false,
      token: "",
      retryDelayMs: 0,
      onProgress: false,
    };
    await fn(hub, opts, cache);
  } finally {
    await hub.shutdown().catch(() => {});
    await rm(cache, { recursive: true });
  }
}

/** Swaps environment variables for the duration of `fn`. */
async function withEnv(
  vars: Record<string, string | undefined>,
  fn: () => Promise<void>,
): Promise<void> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  set(vars);
  try {
    await fn();
  } finally {
    set(old);
  }
}

const listing = (dir: string) => readdirSync(dir).sort();

/** Where huggingface_hub keeps a repo, and the snapshot of a commit, under `cache`. */
const repoDir = (cache: string, repo: string) => `${cache}/models--${repo.replace("/", "--")}`;
const snapshotOf = (cache: string, repo: string, files: Record<string, Uint8Array>) =>
  `${repoDir(cache, repo)}/snapshots/${commitOf(files)}`;
const sha256 = (d: Uint8Array) => hex("sha256", d);

test("parses model specs", () => {
  assert.deepEqual(parseModelSpec("org/name"), { repo: "org/name", revision: "main" });
  assert.deepEqual(parseModelSpec("Org-1/na.me_2@v1.0"), {
    repo: "Org-1/na.me_2",
    revision: "v1.0",
  });
  assert.deepEqual(parseModelSpec("org/name@refs/pr/1"), {
    repo: "org/name",
    revision: "refs/pr/1",
  });
  for (
    const bad of ["name", "a/b/c", "../x", "org/..", "org/name@", "org/name@a/../b", "org/name@a b"]
  ) {
    assert.equal(parseModelSpec(bad), null, bad);
  }
  return resolveModel("no/such/dir", { offline: true }).then(
    () => assert.fail("should throw"),
    (e) =>
      assert.match(String(e), /HubError: no\/such\/dir: not an existing local path, nor a hub id/),
  );
});

test("a local path is returned as is", async () => {
  const dir = await mkdtemp(join(tmpdir(), "gemkit-"));
  assert.equal(await resolveModel(dir, { offline: true }), dir);
  await rmdir(dir);
});

test("fresh download: checkpoint files byte-identical, token sent, progress reported", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    const progress: number[] = [];
    const dir = await resolveModel("org/tiny", {
      ...opts,
      token: "hf_secret",
      progressMinBytes: 100_000,
      onProgress: (p) => {
        assert.equal(p.repo, "org/tiny@main");
        assert.equal(p.file, "model.safetensors");
        progress.push(p.bytes / p.total);
      },
    });
    assert.equal(dir, snapshotOf(cache, "org/tiny", repo));
    assert.deepEqual(listing(dir), [
      "README.md",
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    for (const f of listing(dir)) assert.deepEqual(await readBytes(`${dir}/${f}`), repo[f], f);
    assert.ok(hub.seen.every((s) => s.auth === "Bearer hf_secret"));
    assert.equal(progress.at(-1), 1);
    assert.deepEqual(await missingFiles(dir), []);

    // The Hugging Face layout: refs/main holds the commit (no newline), each snapshot file is a
    // relative link to a blob named by its git SHA-1, or by its SHA-256 for LFS files.
    const root = repoDir(cache, "org/tiny");
    assert.equal(await readFile(`${root}/refs/main`, "utf8"), commitOf(repo));
    for (const f of listing(dir)) {
      assert.ok((await lstat(`${dir}/${f}`)).isSymbolicLink(), f);
      const etag = f.endsWith(".safetensors") ? sha256(repo[f]) : listingOf(f, repo[f]).oid;
      assert.equal(await readlink(`${dir}/${f}`), `../../blobs/${etag}`, f);
    }
    assert.equal(listing(`${root}/blobs`).length, 5);

    // Online again: the cache is complete, so only the revision and the listing are asked for.
    const before = hub.seen.length;
    assert.equal(await resolveModel("org/tiny", opts), dir);
    assert.deepEqual(hub.seen.slice(before).map((s) => s.path), [
      "/api/models/org/tiny/revision/main",
      `/api/models/org/tiny/tree/${commitOf(repo)}`,
    ]);
  });
});

test("a new commit on main: only changed files are fetched, refs/main moves, blobs are shared", async () => {
  const v1 = tinyRepo();
  const v2 = { ...v1, "config.json": text('{"hidden_size": 16}') };
  await withHub({ "org/tiny": v1 }, async (hub, opts, cache) => {
    const old = await resolveModel("org/tiny", opts);
    hub.repos["org/tiny"] = v2;
    const before = hub.seen.length;
    const dir = await resolveModel("org/tiny", opts);
    assert.equal(dir, snapshotOf(cache, "org/tiny", v2));
    assert.notEqual(dir, old);
    const fetched = hub.seen.slice(before).filter((s) => s.path.includes("/resolve/"));
    assert.deepEqual(fetched.map((s) => s.path.split("/").at(-1)), ["config.json", "config.json"]);
    assert.equal(await readFile(`${repoDir(cache, "org/tiny")}/refs/main`, "utf8"), commitOf(v2));
    assert.deepEqual(await readBytes(`${dir}/config.json`), v2["config.json"]);
    assert.deepEqual(await readBytes(`${old}/config.json`), v1["config.json"]);
    assert.equal(listing(`${repoDir(cache, "org/tiny")}/blobs`).length, 6);
    // A pinned commit resolves offline to its own snapshot.
    const pinned = await resolveModel(`org/tiny@${commitOf(v1)}`, { ...opts, offline: true });
    assert.equal(pinned, old);
  });
});

test("a cache written by huggingface_hub is used offline, and online without downloads", async () => {
  const repo = tinyRepo();
  delete repo["notes.txt"];
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    // The layout as Python's huggingface_hub writes it: blobs, refs/main, relative links.
    const root = repoDir(cache, "org/tiny");
    const commit = commitOf(repo);
    await mkdir(`${root}/blobs`, { recursive: true });
    await mkdir(`${root}/refs`);
    await mkdir(`${root}/snapshots/${commit}`, { recursive: true });
    await writeFile(`${root}/refs/main`, commit);
    for (const [f, d] of Object.entries(repo)) {
      const etag = f.endsWith(".safetensors") ? sha256(d) : listingOf(f, d).oid;
      await writeFile(`${root}/blobs/${etag}`, d);
      await symlink(`../../blobs/${etag}`, `${root}/snapshots/${commit}/${f}`);
    }
    const dir = await resolveModel("org/tiny", { ...opts, offline: true });
    assert.equal(dir, `${root}/snapshots/${commit}`);
    assert.equal(hub.seen.length, 0);
    assert.equal(await resolveModel("org/tiny", opts), dir);
    assert.equal(hub.seen.filter((s) => s.path.includes("/resolve/")).length, 0);
    assert.equal(await cachedSnapshot({ repo: "org/tiny", revision: "main" }, opts), dir);
    assert.equal(await cachedSnapshot({ repo: "org/tiny", revision: "v9" }, opts), null);
  });
});

test("a download whose bytes do not match the listed hash is removed and named", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    hub.corrupt.add("model.safetensors");
    await assert.rejects(resolveModel("org/tiny", opts), (e: unknown) => {
      assert.ok(e instanceof HubError);
      assert.match(
        e.message,
        /^org\/tiny@main: model\.safetensors: downloaded bytes hash to [0-9a-f]{64}, but the hub lists [0-9a-f]{64} \(SHA-256\); the download was removed$/,
      );
      return true;
    });
    const blobs = listing(`${repoDir(cache, "org/tiny")}/blobs`);
    assert.ok(!blobs.some((b) => b.startsWith(sha256(repo["model.safetensors"]))), blobs.join());
    assert.equal(blobs.length, 4, "the files fetched before it are kept");
    hub.corrupt.delete("model.safetensors");
    hub.corrupt.add("config.json");
    // config.json is linked already, so its corrupted copy is never fetched.
    const dir = await resolveModel("org/tiny", opts);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);
  });
});

test("a dropped connection is resumed with a Range request", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts) => {
    hub.dropNext.add("model.safetensors");
    const dir = await resolveModel("org/tiny", opts);
    const gets = hub.gets("model.safetensors");
    assert.deepEqual(gets.map((g) => g.range), [
      null,
      `bytes=${repo["model.safetensors"].length >> 1}-`,
    ]);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);
    assert.ok(!listing(dir).some((f) => f.endsWith(".incomplete")));
  });
});

test("a dropped connection with no attempts left keeps the partial file for the next run", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    hub.dropNext.add("model.safetensors");
    await assert.rejects(resolveModel("org/tiny", { ...opts, attempts: 1 }), (e: unknown) => {
      assert.ok(e instanceof HubError);
      assert.match(
        e.message,
        /^org\/tiny@main: model\.safetensors: the hub at .* is unreachable or failing \(download broke at byte 150000 of 300000/,
      );
      return true;
    });
    const part = `${repoDir(cache, "org/tiny")}/blobs/${
      sha256(repo["model.safetensors"])
    }.incomplete`;
    assert.equal((await stat(part)).size, 150_000);
    const dir = await resolveModel("org/tiny", opts);
    assert.deepEqual(hub.gets("model.safetensors").map((g) => g.range), [null, "bytes=150000-"]);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);
  });
});

test("a pre-existing .incomplete file is continued; a server ignoring Range restarts it", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    const blob = `${repoDir(cache, "org/tiny")}/blobs/${sha256(repo["model.safetensors"])}`;
    await mkdir(`${repoDir(cache, "org/tiny")}/blobs`, { recursive: true });
    await writeFile(`${blob}.incomplete`, repo["model.safetensors"].slice(0, 1000));
    const dir = await resolveModel("org/tiny", opts);
    assert.deepEqual(hub.gets("model.safetensors").map((g) => g.range), ["bytes=1000-"]);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);

    // A partial of a file the server will not resume: the 200 answer replaces it, not appends.
    await rm(`${dir}/model.safetensors`);
    await rm(blob);
    await writeFile(`${blob}.incomplete`, new Uint8Array(1000).fill(9));
    hub.ignoreRange = true;
    await resolveModel("org/tiny", opts);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);
  });
});

test("sharded checkpoint: index and every shard it names", async () => {
  const index = {
    metadata: {},
    weight_map: { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" },
  };
  const repo: Record<string, Bytes> = {
    "config.json": text("{}"),
    "tokenizer.json": text("{}"),
    "model.safetensors.index.json": text(JSON.stringify(index)),
    "model-00001-of-00002.safetensors": bytes(5000, 1),
    "model-00002-of-00002.safetensors": bytes(7000, 2),
  };
  // The same repo without its second shard in the tree.
  const broken = Object.fromEntries(
    Object.entries(repo).filter(([f]) => !f.startsWith("model-00002")),
  );
  await withHub({ "org/sharded": repo, "org/broken": broken }, async (_hub, opts) => {
    const dir = await resolveModel("org/sharded", opts);
    assert.deepEqual(listing(dir), Object.keys(repo).sort());
    for (const f of listing(dir)) assert.deepEqual(await readBytes(`${dir}/${f}`), repo[f], f);
    await assert.rejects(
      resolveModel("org/broken", opts),
      /^HubError: org\/broken@main: model-00002-of-00002\.safetensors: not in the repo at http/,
    );
  });
});

test("the cache is used when the hub is down, or with HF_HUB_OFFLINE=1", async () => {
  await withHub({ "org/tiny": tinyRepo() }, async (hub, opts) => {
    const dir = await resolveModel("org/tiny", opts);
    const n = hub.seen.length;
    await withEnv({ HF_HUB_OFFLINE: "1" }, async () => {
      assert.equal(await resolveModel("org/tiny", { ...opts, offline: undefined }), dir);
    });
    assert.equal(hub.seen.length, n, "offline mode made no request");
    await hub.shutdown();
    assert.equal(await resolveModel("org/tiny", opts), dir);
  });
});

test("HF_HUB_OFFLINE=1 names the repo, and the revision or file the cache lacks", async () => {
  await withHub({ "org/tiny": tinyRepo() }, async (hub, opts, cache) => {
    await withEnv({ HF_HUB_OFFLINE: "true" }, async () => {
      await assert.rejects(
        resolveModel("org/tiny@v2", { ...opts, offline: undefined }),
        (e: unknown) => {
          assert.ok(e instanceof HubError);
          assert.equal(e.repo, "org/tiny@v2");
          assert.equal(e.file, "");
          assert.equal(
            e.message,
            `org/tiny@v2: HF_HUB_OFFLINE forbids downloading it, and the cache at ${
              repoDir(cache, "org/tiny")
            } has no snapshot of revision v2`,
          );
          return true;
        },
      );
    });
    assert.equal(hub.seen.length, 0);
    const dir = await resolveModel("org/tiny", opts);
    await rm(`${dir}/model.safetensors`);
    await assert.rejects(resolveModel("org/tiny", { ...opts, offline: true }), (e: unknown) => {
      assert.ok(e instanceof HubError);
      assert.equal(e.file, "model.safetensors");
      assert.match(e.message, /HF_HUB_OFFLINE forbids downloading it, and the file is not in the/);
      assert.ok(e.message.endsWith(`in the cache at ${dir}`), e.message);
      return true;
    });
  });
});

test("an unreachable hub with an empty cache names the repo, the endpoint and the file", async () => {
  await withHub({}, async (hub, opts) => {
    await hub.shutdown(); // nothing listens on this port now
    await assert.rejects(resolveModel("org/tiny", { ...opts, attempts: 1 }), (e: unknown) => {
      assert.ok(e instanceof HubError);
      assert.match(
        e.message,
        /^org\/tiny@main: the hub at http:\/\/127\.0\.0\.1:\d+ is unreachable or failing/,
      );
      assert.match(e.message, /has no snapshot of revision main$/);
      return true;
    });
  });
});

test("missing files and repos: 404s are named", async () => {
  const repo = tinyRepo();
  await withHub(
    { "org/tiny": repo, "org/notok": { "config.json": text("{}") } },
    async (hub, opts) => {
      hub.gone.add("tokenizer.json");
      await assert.rejects(
        resolveModel("org/tiny", opts),
        /^HubError: org\/tiny@main: tokenizer\.json: not found at http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/,
      );
      await assert.rejects(
        resolveModel("org/notok", opts),
        /^HubError: org\/notok@main: tokenizer\.json: not in the repo at/,
      );
      await assert.rejects(
        resolveModel("org/nope", opts),
        /^HubError: org\/nope@main: listing failed at .*: HTTP 404 \(check the name and revision/,
      );
    },
  );
});

test("environment: HF_HUB_CACHE, HF_HOME, HF_ENDPOINT and HF_TOKEN", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, _opts, cache) => {
    const common = { HF_ENDPOINT: hub.url, HF_TOKEN: "hf_env", HF_HUB_OFFLINE: undefined };
    await withEnv({ ...common, HF_HUB_CACHE: undefined, HF_HOME: cache }, async () => {
      const dir = await resolveModel("org/tiny", { onProgress: false });
      assert.equal(dir, snapshotOf(`${cache}/hub`, "org/tiny", repo));
      assert.ok(hub.seen.length > 0 && hub.seen.every((s) => s.auth === "Bearer hf_env"));
    });
    await withEnv({ ...common, HF_HUB_CACHE: `${cache}/other`, HF_HOME: cache }, async () => {
      const dir = await resolveModel("org/tiny", { onProgress: false });
      assert.equal(dir, snapshotOf(`${cache}/other`, "org/tiny", repo));
    });
  });
});

test("a GEM checkpoint on the hub: llama2.c tokenizer and gem.json come with it", async () => {
  const gem: Record<string, Bytes> = {
    "config.json": text('{"hidden_size": 8}'),
    "tokenizer.bin": bytes(1000, 3),
    "gem.json": text('{"k": 4}'),
    "README.md": text("# GEM checkpoint"),
    "model.safetensors": bytes(5000, 9),
  };
  await withHub({ "org/gem": gem }, async (_hub, opts) => {
    const dir = await resolveModel("org/gem", opts);
    assert.deepEqual(listing(dir), [
      "README.md",
      "config.json",
      "gem.json",
      "model.safetensors",
      "tokenizer.bin",
    ]);
    assert.deepEqual(await missingFiles(dir), []);
  });
  // Neither tokenizer: the first one is named as missing.
  const none = { ...gem };
  delete none["tokenizer.bin"];
  await withHub({ "org/none": none }, async (_hub, opts) => {
    await assert.rejects(
      resolveModel("org/none", opts),
      /org\/none@main: tokenizer\.json: not in the repo/,
    );
  });
});
