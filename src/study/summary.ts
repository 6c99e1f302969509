/**
 * A study's summary from its records: per variant the mean, standard deviation and min..max over
 * seeds of each headline metric, the paired difference to the reference variant seed by seed,
 * the base model's reference rows, and figures (plotly HTML, and an SVG that GitHub shows).
 */

import { mkdir } from "node:fs/promises";
import { writeAtomic } from "../io/atomic.ts";
import { type Figure, figuresHtml } from "../eval/plotly.ts";
import type { RunRecord } from "./records.ts";
import type { Study } from "./study.ts";

/** A metric the summary reports: record key, short name, and which way is better. */
export interface SummaryMetric {
  /** `task.metric` key in records. */
  key: string;
  /** Column title. */
  name: string;
  /** Higher is better (false: lower is better, e.g. perplexity). */
  higher: boolean;
}

/** The metrics a study summary shows, in order. */
export const SUMMARY_METRICS: SummaryMetric[] = [
  { key: "indomain.ndcgAt10", name: "in-domain nDCG@10", higher: true },
  { key: "indomain.recallAt1", name: "in-domain R@1", higher: true },
  { key: "stsb.spearman", name: "STS-B", higher: true },
  { key: "sick.spearman", name: "SICK-R", higher: true },
  { key: "banking77.accuracy", name: "Banking77", higher: true },
  { key: "trec.accuracy", name: "TREC", higher: true },
  { key: "cranfield.ndcgAt10", name: "Cranfield nDCG@10", higher: true },
  { key: "ppl-tinystories.perplexity", name: "perplexity", higher: false },
  { key: "probe.gapFirst8", name: "probe gap (first 8)", higher: true },
];

/**
 * A record's value of a metric, or undefined when the record lacks it or it is not a finite
 * number. A metric can be undefined in a run: a Spearman correlation of embeddings that are all
 * the same is 0/0, written to the record as null.
 */
export function metricValue(r: RunRecord, key: string): number | undefined {
  const v = r.metrics[key] as number | null | undefined;
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/** The defined values of a metric over records. */
export function metricValues(rs: readonly RunRecord[], key: string): number[] {
  return rs.map((r) => metricValue(r, key)).filter((v): v is number => v !== undefined);
}

/** Mean, sample standard deviation, min and max. */
export interface Spread {
  /** Values, in seed order. */
  values: number[];
  /** Mean. */
  mean: number;
  /** Sample standard deviation (0 for one value). */
  std: number;
  /** Smallest value. */
  min: number;
  /** Largest value. */
  max: number;
}

/** Spread of values. */
export function spread(values: number[]): Spread {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1)) : 0;
  return { values, mean, std, min: Math.min(...values), max: Math.max(...values) };
}

/** A variant's difference to the reference, paired by seed. */
export interface Paired {
  /** Seeds both have. */
  seeds: number[];
  /** variant - reference per seed. */
  diffs: number[];
  /** Mean of the differences. */
  mean: number;
  /** "better" or "worse" when every seed agrees in sign, else "noise". */
  verdict: "better" | "worse" | "noise";
}

/** Pairs a variant's records with the reference's by seed on one metric. */
export function paired(
  variant: RunRecord[],
  reference: RunRecord[],
  m: SummaryMetric,
): Paired | null {
  const ref = new Map(reference.map((r) => [r.seed, metricValue(r, m.key)]));
  const pairs = variant.filter((r) =>
    ref.get(r.seed) !== undefined && metricValue(r, m.key) !== undefined
  ).sort((a, b) => (a.seed ?? 0) - (b.seed ?? 0));
  if (!pairs.length) return null;
  const diffs = pairs.map((r) => metricValue(r, m.key)! - ref.get(r.seed)!);
  const mean = diffs.reduce((a, b) => a + b, 0) / diffs.length;
  const sign = (d: number) => (m.higher ? d : -d);
  const verdict = diffs.length > 1 && diffs.every((d) => sign(d) > 0)
    ? "better"
    : diffs.length > 1 && diffs.every((d) => sign(d) < 0)
    ? "worse"
    : "noise";
  return { seeds: pairs.map((r) => r.seed!), diffs, mean, verdict };
}

function fmt(x: number, key: string): string {
  return key.startsWith("ppl") ? x.toFixed(3) : x.toFixed(3);
}

function signed(x: number): string {
  return (x >= 0 ? "+" : "") + x.toFixed(3);
}

/** Records grouped by label, in the study's variant order (baselines first). */
function groups(study: Study, records: RunRecord[]): [string, RunRecord[]][] {
  const labels = [
    ...study.baselines.map((p) => `base-${p}`),
    ...study.variants.map((v) => v.label),
  ];
  return labels.map((l) => [l, records.filter((r) => r.label === l)] as [string, RunRecord[]])
    .filter(([, rs]) => rs.length > 0);
}

/** The README of a study's results. */
export function summaryMarkdown(study: Study, records: RunRecord[]): string {
  const g = groups(study, records);
  const ref = records.filter((r) => r.label === study.reference);
  const metrics = SUMMARY_METRICS.filter((m) => records.some((r) => m.key in r.metrics));
  const about = new Map(study.variants.map((v) => [v.label, v.about ?? ""]));
  const lines: string[] = [
    `# Study: ${study.name}`,
    "",
    study.question,
    "",
    `Study file: \`${study.file}\`. Records: \`runs.jsonl\` (${records.length} rows). ` +
    `Reproduce one: \`deno task sweep --study ${study.file} --only LABEL --seeds S\`; ` +
    `rewrite this page: \`deno task sweep --study ${study.file} --summarize\`.`,
    "",
    `Each trained row has the seeds its column lists (the study's: ${study.seeds.join(", ")}); ` +
    "values are mean ± sample std, with min..max below. Embeddings use " +
    `${study.pooling} pooling; \`base-*\` rows are the untouched base model with that pooling.`,
    "",
  ];
  if (study.paper) {
    lines.push(
      `Paper (${study.paper.metric}): ` +
        Object.entries(study.paper.values).map(([l, v]) => `${l} ${v}`).join(", ") + ".",
      "",
    );
  }
  lines.push("## Results", "");
  if (!records.length) {
    lines.push("No records yet: `deno task sweep --study " + study.file + "` makes them.", "");
    return lines.join("\n");
  }
  lines.push(
    `| variant | seeds | ${metrics.map((m) => m.name + (m.higher ? " ↑" : " ↓")).join(" | ")} |`,
    `|---|---|${metrics.map(() => "---|").join("")}`,
  );
  for (const [label, rs] of g) {
    const cells = metrics.map((m) => {
      const vals = metricValues(rs, m.key);
      if (!vals.length) return rs.some((r) => m.key in r.metrics) ? "undefined" : "-";
      const s = spread(vals);
      return vals.length > 1
        ? `${fmt(s.mean, m.key)} ± ${s.std.toFixed(3)}<br>${fmt(s.min, m.key)}..${
          fmt(s.max, m.key)
        }`
        : fmt(s.mean, m.key);
    });
    const name = label === study.reference ? `**${label}** (reference)` : label;
    lines.push(`| ${name} | ${rs.map((r) => r.seed ?? "-").join(",")} | ${cells.join(" | ")} |`);
  }
  lines.push("");
  const others = g.filter(([l, rs]) => l !== study.reference && rs[0].kind === "trained");
  if (ref.length && others.length) {
    lines.push(
      `## Paired by seed: variant − ${study.reference}`,
      "",
      "Mean difference over the seeds both have, then each seed's difference. **better** / " +
        "**worse**: every seed moves the same way (↑/↓ says which way is better); _noise_: the " +
        "seeds disagree, so the difference is inside seed-to-seed variation.",
      "",
      `| variant | ${metrics.map((m) => m.name).join(" | ")} |`,
      `|---|${metrics.map(() => "---|").join("")}`,
    );
    for (const [label, rs] of others) {
      const cells = metrics.map((m) => {
        const p = paired(rs, ref, m);
        if (!p) return "-";
        const tag = p.verdict === "noise" ? "_noise_" : `**${p.verdict}**`;
        return `${signed(p.mean)} ${tag}<br>(${p.diffs.map(signed).join(", ")})`;
      });
      lines.push(`| ${label} | ${cells.join(" | ")} |`);
    }
    lines.push("");
  }
  lines.push("## Variants", "");
  for (const v of study.variants) {
    lines.push(
      `- \`${v.label}\`${v.untrained ? " (untrained)" : ""}: ${about.get(v.label) || "-"} ` +
        `(\`${JSON.stringify(v.set)}\`)`,
    );
  }
  lines.push("", "## Provenance", "");
  const envs = new Map<string, number>();
  for (const r of records) {
    const k =
      `commit ${r.env.commit.slice(0, 10)}${r.env.dirty ? " (dirty)" : ""}, ${r.env.adapter}, ` +
      `Mesa ${r.env.mesa ?? "?"}, tuning ${
        (r.env.tuning as { profile?: string })?.profile ?? "?"
      }, ` +
      (r.env.runtime ?? `deno ${r.env.deno}`);
    envs.set(k, (envs.get(k) ?? 0) + 1);
  }
  for (const [k, n] of envs) lines.push(`- ${n} rows: ${k}`);
  const reused = records.filter((r) => r.reusedFrom);
  if (reused.length) {
    lines.push(
      `- ${reused.length} rows reuse another study's record of the same experiment: ` +
        [
          ...new Set(
            reused.map((r) => `${r.label} <- ${r.reusedFrom!.study}/${r.reusedFrom!.label}`),
          ),
        ].join(", "),
    );
  }
  const trained = records.filter((r) => r.train);
  if (trained.length) {
    const t = spread(trained.map((r) => r.train!.stepSeconds / 60));
    const e = spread(trained.map((r) => r.evalSeconds / 60));
    lines.push(
      `- training ${t.mean.toFixed(1)} min per run (${t.min.toFixed(1)}..${
        t.max.toFixed(1)
      }, summed step ` +
        `times), evaluation ${e.mean.toFixed(1)} min (${e.min.toFixed(1)}..${e.max.toFixed(1)})`,
    );
  }
  lines.push("", "![results](figure.svg)", "", "Interactive: [figure.html](figure.html).", "");
  return lines.join("\n");
}

const COLORS = [
  "#4c78a8",
  "#f58518",
  "#54a24b",
  "#e45756",
  "#72b7b2",
  "#b279a2",
  "#ff9da6",
  "#9d755d",
];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/**
 * A static SVG: one panel per metric, variants along x, every seed a dot, the mean a bar;
 * baseline rows as dashed horizontal lines.
 */
export function summarySvg(study: Study, records: RunRecord[]): string {
  const metrics = SUMMARY_METRICS.filter((m) => records.some((r) => m.key in r.metrics));
  const g = groups(study, records).filter(([, rs]) => rs[0].kind !== "baseline");
  const base = groups(study, records).filter(([, rs]) => rs[0].kind === "baseline");
  const cols = 3, pw = 300, ph = 210, pad = { l: 52, r: 10, t: 28, b: 58 };
  const rows = Math.ceil(metrics.length / cols);
  const W = cols * pw, H = rows * ph + 40;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${
      esc(study.name)
    }: each dot one seed, bar the mean; dashed: base model (${
      base.map(([l]) => l.slice(5)).join(", ")
    })</text>`,
  ];
  metrics.forEach((m, mi) => {
    const x0 = (mi % cols) * pw, y0 = 40 + Math.floor(mi / cols) * ph;
    const vals = [
      ...g.flatMap(([, rs]) => metricValues(rs, m.key)),
      ...base.flatMap(([, rs]) => metricValues(rs, m.key)),
    ].filter((v) => v !== undefined && Number.isFinite(v));
    if (!vals.length) return;
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 1e-9) {
      lo -= 0.5;
      hi += 0.5;
    }
    const span = hi - lo;
    lo -= span * 0.08;
    hi += span * 0.08;
    const iw = pw - pad.l - pad.r, ih = ph - pad.t - pad.b;
    const y = (v: number) => y0 + pad.t + ih - ((v - lo) / (hi - lo)) * ih;
    const x = (i: number) => x0 + pad.l + (i + 0.5) * (iw / Math.max(g.length, 1));
    out.push(
      `<text x="${x0 + pad.l + iw / 2}" y="${
        y0 + 16
      }" text-anchor="middle" font-size="12" font-weight="bold">${
        esc(m.name + (m.higher ? " (higher is better)" : " (lower is better)"))
      }</text>`,
      `<rect x="${x0 + pad.l}" y="${
        y0 + pad.t
      }" width="${iw}" height="${ih}" fill="none" stroke="#bbb"/>`,
    );
    for (let t = 0; t <= 4; t++) {
      const v = lo + ((hi - lo) * t) / 4;
      out.push(
        `<text x="${x0 + pad.l - 4}" y="${y(v) + 4}" text-anchor="end" fill="#555">${
          v.toFixed(3)
        }</text>`,
        `<line x1="${x0 + pad.l}" x2="${x0 + pad.l + iw}" y1="${y(v)}" y2="${
          y(v)
        }" stroke="#eee"/>`,
      );
    }
    base.forEach(([label, rs], bi) => {
      const v = metricValue(rs[0], m.key);
      if (v === undefined) return;
      out.push(
        `<line x1="${x0 + pad.l}" x2="${x0 + pad.l + iw}" y1="${y(v)}" y2="${
          y(v)
        }" stroke="#888" stroke-dasharray="${4 + 2 * bi},3"><title>${esc(label)} ${
          v.toFixed(4)
        }</title></line>`,
      );
    });
    g.forEach(([label, rs], i) => {
      const defined = rs.filter((r) => metricValue(r, m.key) !== undefined);
      const vs = metricValues(defined, m.key);
      if (!vs.length) return;
      const s = spread(vs);
      const c = COLORS[i % COLORS.length];
      out.push(
        `<line x1="${x(i) - 10}" x2="${x(i) + 10}" y1="${y(s.mean)}" y2="${
          y(s.mean)
        }" stroke="${c}" stroke-width="3"/>`,
      );
      vs.forEach((v, j) =>
        out.push(
          `<circle cx="${x(i) + (j - (vs.length - 1) / 2) * 5}" cy="${
            y(v)
          }" r="3" fill="${c}" fill-opacity="0.7"><title>${
            esc(`${label} seed ${defined[j].seed}: ${v.toFixed(4)}`)
          }</title></circle>`,
        )
      );
      out.push(
        `<text transform="translate(${x(i) + 3},${y0 + pad.t + ih + 8}) rotate(40)" fill="#333">${
          esc(label)
        }</text>`,
      );
    });
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Plotly figures of the same data (interactive HTML). */
export function summaryFigures(study: Study, records: RunRecord[]): Figure[] {
  const metrics = SUMMARY_METRICS.filter((m) => records.some((r) => m.key in r.metrics));
  const g = groups(study, records).filter(([, rs]) => rs[0].kind !== "baseline");
  const base = groups(study, records).filter(([, rs]) => rs[0].kind === "baseline");
  return metrics.map((m) => ({
    data: [
      {
        type: "scatter",
        mode: "markers",
        name: "seeds",
        x: g.flatMap(([l, rs]) => rs.map(() => l)),
        y: g.flatMap(([, rs]) => rs.map((r) => metricValue(r, m.key) ?? null)),
        text: g.flatMap(([, rs]) => rs.map((r) => `seed ${r.seed}`)),
        marker: { size: 9, opacity: 0.7 },
      },
      {
        type: "scatter",
        mode: "markers",
        name: "mean ± std",
        x: g.map(([l]) => l),
        y: g.map(([, rs]) => spread(metricValues(rs, m.key)).mean),
        error_y: {
          type: "data",
          array: g.map(([, rs]) => spread(metricValues(rs, m.key)).std),
        },
        marker: { symbol: "line-ew-open", size: 24 },
      },
      ...base.map(([l, rs]) => ({
        type: "scatter",
        mode: "lines",
        name: l,
        x: [g[0]?.[0], g.at(-1)?.[0]],
        y: [metricValue(rs[0], m.key) ?? null, metricValue(rs[0], m.key) ?? null],
        line: { dash: "dash" },
      })),
    ],
    layout: {
      title: `${m.name} (${m.higher ? "higher" : "lower"} is better)`,
      xaxis: { type: "category" },
    },
  }));
}

/** Writes README.md, figure.svg and figure.html into `dir`. */
export async function writeSummary(study: Study, records: RunRecord[], dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeAtomic(`${dir}/README.md`, summaryMarkdown(study, records));
  await writeAtomic(`${dir}/figure.svg`, summarySvg(study, records));
  await writeAtomic(
    `${dir}/figure.html`,
    await figuresHtml(`gemkit study: ${study.name}`, summaryFigures(study, records), "", {
      cdn: true,
    }),
  );
}
