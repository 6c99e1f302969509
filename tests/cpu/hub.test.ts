/**
 * Hub client against a fake hub served by the test: the tree listing @huggingface/hub asks for
 * (`/api/models/{repo}/tree/{rev}`) and files at `/{repo}/resolve/{rev}/{path}` with Range
 * support. Every test uses its own temp cache; the real home cache is never touched.
 */

import { test } from "node:test";
import { once } from "node:events";
import { readdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import assert from "node:assert/strict";
import {
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
      s.path.endsWith(`/resolve/main/${file}`) && s.range !== "bytes=0-0"
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
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/main$/.exec(url.pathname);
    if (tree) {
      const files = this.repos[tree[1]];
      if (!files) {
        return json({ error: "Repository not found" }, 404, { "x-error-code": "RepoNotFound" });
      }
      return json(
        Object.entries(files).map(([path, d]) => ({
          type: "file",
          oid: "0",
          size: d.length,
          path,
        })),
      );
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(url.pathname);
    const data = resolve && !this.gone.has(resolve[2])
      ? this.repos[resolve[1]]?.[resolve[2]]
      : undefined;
    if (!resolve || !data) {
      send(
        404,
        { "content-type": "text/plain;charset=UTF-8", "x-error-code": "EntryNotFound" },
        text("Entry not found"),
      );
      return;
    }
    const headers = { etag: `"${resolve[2]}-v1"`, "accept-ranges": "bytes" };
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
    if (!probe && this.dropNext.delete(resolve[2])) {
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
    assert.equal(dir, `${cache}/org/tiny/main`);
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

    // Online again: the cache is complete, so only the listing is asked for.
    const before = hub.seen.length;
    assert.equal(await resolveModel("org/tiny", opts), dir);
    assert.deepEqual(hub.seen.slice(before).map((s) => s.path), ["/api/models/org/tiny/tree/main"]);
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
    const part = `${cache}/org/tiny/main/model.safetensors.incomplete`;
    assert.equal((await stat(part)).size, 150_000);
    const dir = await resolveModel("org/tiny", opts);
    assert.deepEqual(hub.gets("model.safetensors").map((g) => g.range), [null, "bytes=150000-"]);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);
  });
});

test("a pre-existing .incomplete file is continued; a server ignoring Range restarts it", async () => {
  const repo = tinyRepo();
  await withHub({ "org/tiny": repo }, async (hub, opts, cache) => {
    const dir = `${cache}/org/tiny/main`;
    await mkdir(dir, { recursive: true });
    await writeFile(
      `${dir}/model.safetensors.incomplete`,
      repo["model.safetensors"].slice(0, 1000),
    );
    await resolveModel("org/tiny", opts);
    assert.deepEqual(hub.gets("model.safetensors").map((g) => g.range), ["bytes=1000-"]);
    assert.deepEqual(await readBytes(`${dir}/model.safetensors`), repo["model.safetensors"]);

    // A partial of a file the server will not resume: the 200 answer replaces it, not appends.
    await rm(`${dir}/model.safetensors`);
    await writeFile(`${dir}/model.safetensors.incomplete`, new Uint8Array(1000).fill(9));
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

test("HF_HUB_OFFLINE=1 with an empty cache names the repo and the missing file", async () => {
  await withHub({ "org/tiny": tinyRepo() }, async (hub, opts, cache) => {
    await withEnv({ HF_HUB_OFFLINE: "true" }, async () => {
      await assert.rejects(
        resolveModel("org/tiny@v2", { ...opts, offline: undefined }),
        (e: unknown) => {
          assert.ok(e instanceof HubError);
          assert.equal(e.repo, "org/tiny@v2");
          assert.equal(e.file, "config.json");
          assert.ok(e.message.includes(`${cache}/org/tiny/v2`), e.message);
          assert.match(e.message, /HF_HUB_OFFLINE forbids downloading it/);
          return true;
        },
      );
    });
    assert.equal(hub.seen.length, 0);
  });
});

test("an unreachable hub with an empty cache names the repo, the endpoint and the file", async () => {
  await withHub({}, async (hub, opts) => {
    await hub.shutdown(); // nothing listens on this port now
    await assert.rejects(resolveModel("org/tiny", { ...opts, attempts: 1 }), (e: unknown) => {
      assert.ok(e instanceof HubError);
      assert.match(
        e.message,
        /^org\/tiny@main: config\.json: the hub at http:\/\/127\.0\.0\.1:\d+ is unreachable or failing/,
      );
      assert.match(e.message, /not in the cache at /);
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

test("environment: GEMKIT_CACHE, HF_ENDPOINT and HF_TOKEN", async () => {
  await withHub({ "org/tiny": tinyRepo() }, async (hub, _opts, cache) => {
    await withEnv({
      GEMKIT_CACHE: cache,
      HF_ENDPOINT: hub.url,
      HF_TOKEN: "hf_env",
      HF_HUB_OFFLINE: undefined,
    }, async () => {
      const dir = await resolveModel("org/tiny", { onProgress: false });
      assert.equal(dir, `${cache}/hub/org/tiny/main`);
      assert.ok(hub.seen.length > 0 && hub.seen.every((s) => s.auth === "Bearer hf_env"));
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
