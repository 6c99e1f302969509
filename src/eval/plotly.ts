/**
 * Plotly figures for reports and notebooks. plotly.js cannot be imported here (it needs a window),
 * so we locate the npm package's file (under Deno through `deno info`, under Bun or Node in
 * node_modules) and inline it into self-contained HTML that opens offline.
 */

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import process from "node:process";
import { RUNTIME } from "../platform/platform.ts";

/** The pinned plotly.js build. */
export const PLOTLY = "npm:plotly.js-dist-min@3.3.0";

/**
 * Path of plotly.min.js: in Deno's npm cache (fetched on first use), or under Bun and Node in
 * node_modules when the installed version is the pinned one; null when unavailable.
 */
export async function plotlyPath(): Promise<string | null> {
  if (RUNTIME !== "deno") return installedPlotly();
  try {
    const out = await new Promise<string | null>((resolve) => {
      const dec = new TextDecoder();
      let text = "";
      const child = spawn(process.execPath, ["info", "--json", PLOTLY], {
        stdio: ["ignore", "pipe", "ignore"],
      });
      child.stdout.on("data", (c: Uint8Array) => text += dec.decode(c, { stream: true }));
      child.on("error", () => resolve(null));
      child.on("close", (code) => resolve(code === 0 ? text + dec.decode() : null));
    });
    if (out === null) return null;
    const info = JSON.parse(out);
    const pkg = Object.values(
      info.npmPackages as Record<string, { name: string; localPath?: string }>,
    )
      .find((p) => p.name === "plotly.js-dist-min");
    return pkg?.localPath ? `${pkg.localPath}/plotly.min.js` : null;
  } catch {
    return null;
  }
}

/** plotly.min.js of the pinned version in node_modules (Bun, Node), or null. */
async function installedPlotly(): Promise<string | null> {
  try {
    const [name, version] = PLOTLY.slice("npm:".length).split("@");
    const manifest = createRequire(import.meta.url).resolve(`${name}/package.json`);
    if (JSON.parse(await readFile(manifest, "utf8")).version !== version) return null;
    const file = manifest.replace(/package\.json$/, "plotly.min.js");
    return existsSync(file) ? file : null;
  } catch {
    return null;
  }
}

/** A plotly figure: data traces and layout, as plotly.js takes them. */
export interface Figure {
  /** Traces. */
  data: Record<string, unknown>[];
  /** Layout. */
  layout: Record<string, unknown>;
}

/** plotly.js on its public CDN, for small HTML files meant to be committed. */
export const PLOTLY_CDN = "https://cdn.plot.ly/plotly-3.3.0.min.js";

/**
 * HTML with `figures` and extra HTML. By default plotly.js is inlined when available, so the file
 * opens offline (about 4.6 MB); with `opts.cdn` it loads plotly.js from {@link PLOTLY_CDN}
 * instead, and the file stays a few kB.
 */
export async function figuresHtml(
  title: string,
  figures: Figure[],
  bodyHtml: string,
  opts: { cdn?: boolean } = {},
): Promise<string> {
  const path = opts.cdn ? null : await plotlyPath();
  const inline = path ? await readFile(path, "utf8") : null;
  const lib = opts.cdn ? "" : inline;
  const divs = figures.map((_, i) => `<div id="fig${i}" style="width:900px;height:420px"></div>`)
    .join("\n");
  const calls = figures.map((f, i) =>
    `Plotly.newPlot("fig${i}", ${JSON.stringify(f.data)}, ${JSON.stringify(f.layout)});`
  )
    .join("\n");
  // Only a literal "</script" would end the inline script early; escaping every "<" would
  // corrupt the library's own code.
  const esc = (s: string) => s.replace(/<\/script/gi, "<\\/script");
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f4f4f4}</style>
${
    opts.cdn
      ? `<script src="${PLOTLY_CDN}"></script>`
      : lib
      ? `<script>${esc(lib)}</script>`
      : "<!-- plotly.js unavailable: figures omitted -->"
  }
</head><body>
<h1>${title}</h1>
${lib !== null ? divs : "<p>(plotly.js could not be located; figures omitted, tables below.)</p>"}
${bodyHtml}
${lib !== null ? `<script>${esc(calls)}</script>` : ""}
</body></html>
`;
}
