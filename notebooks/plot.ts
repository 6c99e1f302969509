/**
 * Plotly figures in Deno's Jupyter kernel.
 *
 * `showFigure(fig)` displays a figure as a plotly JSON bundle (interactive in JupyterLab / VS Code)
 * together with a PNG rendering (for GitHub, nbviewer and any viewer without the plotly
 * renderer). plotly.js cannot be imported in Deno (it needs `window`), so the PNG is made by
 * headless Chromium from a small HTML page that inlines plotly.min.js from Deno's npm cache
 * (located by `plotlyPath()` in src/eval/plotly.ts). When Chromium or plotly.js is missing the
 * figure is shown as JSON only and a note says why.
 *
 * ```ts
 * import { showFigure } from "./plot.ts";
 * await showFigure({ data: [{ type: "bar", x: ["a", "b"], y: [1, 2] }], layout: { title: { text: "hi" } } });
 * ```
 */

import { type Figure, plotlyPath } from "../src/eval/plotly.ts";

export type { Figure };

/** Options of {@link showFigure}. */
export interface ShowOptions {
  /** Pixel size of the PNG (defaults: layout.width / layout.height, else 720 x 460). */
  width?: number;
  height?: number;
  /** Skip the PNG (JSON only). */
  png?: boolean;
}

const CHROMIUM_CANDIDATES = ["chromium", "chromium-browser", "google-chrome", "chrome"];
let chromiumCache: string | null | undefined;
let plotlyCache: string | null | undefined;

/** The first headless-capable Chromium on PATH (or $CHROMIUM), or null. */
export async function findChromium(): Promise<string | null> {
  if (chromiumCache !== undefined) return chromiumCache;
  const env = Deno.env.get("CHROMIUM");
  for (const name of env ? [env] : CHROMIUM_CANDIDATES) {
    try {
      const out = await new Deno.Command("sh", {
        args: ["-c", `command -v ${name}`],
        stdout: "piped",
        stderr: "null",
      }).output();
      const path = new TextDecoder().decode(out.stdout).trim();
      if (out.success && path) return (chromiumCache = path);
    } catch {
      // try the next one
    }
  }
  return (chromiumCache = null);
}

async function plotlySource(): Promise<string | null> {
  if (plotlyCache !== undefined) return plotlyCache;
  const path = await plotlyPath();
  plotlyCache = path ? await Deno.readTextFile(path).catch(() => null) : null;
  return plotlyCache;
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Renders `fig` to PNG bytes through headless Chromium; throws with the reason on failure. */
export async function renderPng(fig: Figure, width: number, height: number): Promise<Uint8Array> {
  const chromium = await findChromium();
  if (!chromium) throw new Error("no Chromium on PATH (apt-get install chromium)");
  const lib = await plotlySource();
  if (!lib) {
    throw new Error("plotly.js not found in Deno's npm cache (`deno info npm:plotly.js-dist-min`)");
  }
  const dir = await Deno.makeTempDir({ prefix: "gemkit-plot-" });
  try {
    // Only "</script" would end an inline script early; escaping every "<" would break the JS.
    const esc = (s: string) => s.replace(/<\/script/gi, "<\\/script");
    const layout = { ...fig.layout, width, height };
    const html = `<!doctype html><html><head><meta charset="utf-8">
<style>html,body{margin:0;padding:0;background:white;overflow:hidden}</style>
<script>${esc(lib)}</script></head><body><div id="f"></div>
<script>Plotly.newPlot("f", ${esc(JSON.stringify(fig.data))}, ${
      esc(JSON.stringify(layout))
    }, {staticPlot: true});</script></body></html>`;
    await Deno.writeTextFile(`${dir}/fig.html`, html);
    const out = await new Deno.Command(chromium, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        `--user-data-dir=${dir}/profile`,
        "--virtual-time-budget=3000",
        `--screenshot=${dir}/fig.png`,
        `--window-size=${width},${height}`,
        `file://${dir}/fig.html`,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    try {
      return await Deno.readFile(`${dir}/fig.png`);
    } catch {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
      throw new Error(`Chromium wrote no screenshot (exit ${out.code}): ${err}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Displays a plotly figure in the notebook: the plotly JSON (interactive where a plotly renderer
 * exists) and a PNG fallback rendered by headless Chromium.
 */
export async function showFigure(fig: Figure, opts: ShowOptions = {}): Promise<void> {
  const width = opts.width ?? (fig.layout.width as number | undefined) ?? 720;
  const height = opts.height ?? (fig.layout.height as number | undefined) ?? 460;
  const title = fig.layout.title as { text?: string } | string | undefined;
  const name = (typeof title === "string" ? title : title?.text ?? "plotly figure")
    .replace(/<br>/g, ": ").replace(/<[^>]+>/g, "");
  const bundle: Record<string, unknown> = {
    "application/vnd.plotly.v1+json": { data: fig.data, layout: { ...fig.layout, width, height } },
    "text/plain": `<${name}>`,
  };
  if (opts.png !== false) {
    try {
      bundle["image/png"] = base64(await renderPng(fig, width, height));
    } catch (e) {
      console.log(
        `(no PNG fallback for "${name}": ${e instanceof Error ? e.message : e}; ` +
          "showing the plotly JSON only, which needs a plotly-aware viewer)",
      );
    }
  }
  await Deno.jupyter.display(bundle, { raw: true });
}

/** A heatmap figure of a matrix with labelled rows/columns and values written in the cells. */
export function heatmap(
  z: number[][],
  opts: {
    title: string;
    x?: string[];
    y?: string[];
    colorscale?: unknown;
    zmin?: number;
    zmax?: number;
    text?: boolean;
    digits?: number;
    width?: number;
    height?: number;
    showscale?: boolean;
  },
): Figure {
  const trace: Record<string, unknown> = {
    type: "heatmap",
    z,
    x: opts.x,
    y: opts.y,
    colorscale: opts.colorscale ?? "Viridis",
    zmin: opts.zmin,
    zmax: opts.zmax,
    showscale: opts.showscale ?? true,
  };
  if (opts.text) {
    trace.text = z.map((r) => r.map((v) => v.toFixed(opts.digits ?? 2)));
    trace.texttemplate = "%{text}";
  }
  return {
    data: [trace],
    layout: {
      title: { text: opts.title },
      width: opts.width ?? 640,
      height: opts.height ?? 560,
      yaxis: { autorange: "reversed", automargin: true },
      xaxis: { automargin: true, side: "bottom" },
      margin: { t: 60, l: 10, r: 10, b: 10 },
    },
  };
}
