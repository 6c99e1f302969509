/**
 * The layering of src/: each folder imports only from folders below it, no module imports itself
 * through a cycle, and the gpu layer knows nothing about Llama (no attention-block epilogues,
 * SwiGLU or decode steps there: those live in the inference module above the tensor layer).
 */

import { test } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import assert from "node:assert/strict";

/** Bottom to top; folders on one rank (gem, train) may not import each other. */
export const LAYERS: string[][] = [
  ["platform"],
  ["gpu"],
  ["tensor"],
  ["nn", "tune"],
  ["io"],
  ["gem", "train"],
  ["recipe"],
  ["eval"],
  ["study"],
  ["cli"],
];

const ROOT = new URL("../../", import.meta.url).pathname;
const SRC = `${ROOT}src/`;

/** Every .ts file under a folder (default src/), relative to it. */
function files(dir = SRC, rel = ""): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? files(`${dir}${e.name}/`, `${rel}${e.name}/`)
      : e.name.endsWith(".ts")
      ? [`${rel}${e.name}`]
      : []
  ).sort();
}

/** Relative imports of a module (static, type-only and dynamic), resolved against its folder. */
export function importsOf(file: string, text: string, root = "src"): string[] {
  const out: string[] = [];
  const re =
    /(?:import|export)\s[^;]*?from\s*["'](\.[^"']+)["']|import\(\s*["'](\.[^"']+)["']\s*\)/g;
  for (const m of text.matchAll(re)) {
    const spec = m[1] ?? m[2];
    const url = new URL(spec, `file:///${root}/${file}`);
    out.push(url.pathname.replace(new RegExp(`^/${root}/`), ""));
  }
  return out;
}

function rank(folder: string): number {
  const r = LAYERS.findIndex((l) => l.includes(folder));
  if (r < 0) throw new Error(`src/${folder}: a folder the layer order does not list`);
  return r;
}

function graph(root = "src"): Map<string, string[]> {
  const dir = `${ROOT}${root}/`;
  return new Map(
    files(dir).map((f) => [f, importsOf(f, readFileSync(`${dir}${f}`, "utf8"), root)]),
  );
}

/** Import cycles: strongly connected components with more than one module (Tarjan). */
export function cycles(g: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>(), low = new Map<string, number>();
  const stack: string[] = [], on = new Set<string>(), out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) visit(v);
  return out;
}

test("layers: every import goes down the layer order (or within a folder)", () => {
  const bad: string[] = [];
  for (const [f, deps] of graph()) {
    const from = f.split("/")[0];
    for (const d of deps) {
      const to = d.split("/")[0];
      if (to === from) continue;
      if (!(rank(to) < rank(from))) bad.push(`src/${f} imports src/${d}`);
    }
  }
  assert.deepEqual(bad, [], `imports against the layer order:\n${bad.join("\n")}`);
});

test("layers: no import cycles in src/ or bench/", () => {
  const c = [...cycles(graph("src")), ...cycles(graph("bench"))];
  assert.deepEqual(c, [], `cycles:\n${c.map((x) => x.join(" -> ")).join("\n")}`);
});

test("layers: the gpu layer knows nothing about Llama; gem nothing about the gpu", () => {
  const words = /swiglu|q\/k\/v|qkv|decode/i;
  const bad = files().filter((f) => f.startsWith("gpu/")).flatMap((f) =>
    readFileSync(`${SRC}${f}`, "utf8").split("\n").flatMap((l, i) =>
      words.test(l) ? [`src/${f}:${i + 1}: ${l.trim()}`] : []
    )
  );
  assert.deepEqual(bad, [], `Llama in src/gpu:\n${bad.slice(0, 40).join("\n")}`);
  const gemGpu = [...graph()].filter(([f]) => f.startsWith("gem/")).flatMap(([f, deps]) =>
    deps.filter((d) => d.startsWith("gpu/")).map((d) => `src/${f} imports src/${d}`)
  );
  assert.deepEqual(gemGpu, []);
});

test("layers: the checks catch what they look for", () => {
  assert.deepEqual(importsOf("gem/a.ts", 'import { x } from "../gpu/b.ts";\nimport("./c.ts")'), [
    "gpu/b.ts",
    "gem/c.ts",
  ]);
  const g = new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]], ["d", ["a"]]]);
  assert.deepEqual(cycles(g), [["a", "b", "c"]]);
  assert.throws(() => rank("nowhere"), /src\/nowhere: a folder the layer order does not list/);
});
