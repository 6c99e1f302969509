/**
 * Helpers the study notebooks (04, 05) share: read a study and its committed records, show the
 * per-variant table (mean ± std and min..max over seeds), the paired-by-seed differences to the
 * reference variant, and one plotly figure with every seed as a point. Everything is computed
 * from `results/ablations/<study>/runs.jsonl`, never from local run directories.
 */

import {
  metricValue,
  metricValues,
  paired,
  readRecords,
  readStudy,
  type RunRecord,
  spread,
  type Study,
  SUMMARY_METRICS,
  type SummaryMetric,
} from "../mod.ts";
import type { Figure } from "./plot.ts";

/** The repository root (the kernel runs in notebooks/). */
export const ROOT: string = Deno.cwd().replace(/\/notebooks\/?$/, "");

/** A study file and its committed records. */
export interface StudyData {
  /** The parsed study. */
  study: Study;
  /** Its records, in file order. */
  records: RunRecord[];
}

/** Reads `studies/<name>.json` and `results/ablations/<name>/runs.jsonl`. */
export async function loadStudy(name: string): Promise<StudyData> {
  const study = await readStudy(`${ROOT}/studies/${name}.json`);
  study.file = `studies/${name}.json`;
  const records = await readRecords(`${ROOT}/results/ablations/${name}/runs.jsonl`);
  return { study, records };
}

/** Metrics by key, for picking a subset. */
export function metric(key: string): SummaryMetric {
  const m = SUMMARY_METRICS.find((x) => x.key === key);
  if (!m) throw new Error(`no summary metric '${key}'`);
  return m;
}

/** Labels in display order: base rows, then the study's variants. */
function labels(d: StudyData): string[] {
  return [...d.study.baselines.map((p) => `base-${p}`), ...d.study.variants.map((v) => v.label)];
}

/** Which seeds each variant has on record, and what is still missing. */
export function coverage(d: StudyData): string {
  const lines = d.study.variants.map((v) => {
    const rs = d.records.filter((r) => r.label === v.label);
    const want = v.untrained ? [0] : d.study.seeds;
    const have = rs.map((r) => r.seed);
    const missing = want.filter((s) => !have.includes(s));
    return `  ${v.label.padEnd(26)} seeds ${have.join(",") || "-"}${
      missing.length ? `   (not yet recorded: ${missing.join(",")})` : ""
    }`;
  });
  const commits = [...new Set(d.records.map((r) => r.env.commit.slice(0, 10)))];
  const envs = [...new Set(d.records.map((r) => `${r.env.adapter}, Mesa ${r.env.mesa}`))];
  return `${d.study.name}: ${d.records.length} records (commits ${commits.join(", ")}; ${
    envs.join("; ")
  })\n${lines.join("\n")}`;
}

function cell(vals: number[], digits = 3, undefinedAll = false): string {
  if (!vals.length) return undefinedAll ? "undefined" : "–";
  const s = spread(vals);
  return vals.length > 1
    ? `${s.mean.toFixed(digits)} ± ${s.std.toFixed(digits)} <br><sub>${s.min.toFixed(digits)}..${
      s.max.toFixed(digits)
    }</sub>`
    : s.mean.toFixed(digits);
}

/** Markdown table: one row per variant (and base row), one column per metric. */
export function resultsTable(
  d: StudyData,
  keys: string[],
  extra?: { title: string; values: Record<string, string> },
): string {
  const ms = keys.map(metric);
  const head = `| variant | seeds | ${
    ms.map((m) => `${m.name} ${m.higher ? "↑" : "↓"}`).join(" | ")
  }${extra ? ` | ${extra.title}` : ""} |`;
  const rule = `|---|---|${ms.map(() => "---|").join("")}${extra ? "---|" : ""}`;
  const rows = labels(d).flatMap((l) => {
    const rs = d.records.filter((r) => r.label === l);
    if (!rs.length) return [];
    const name = l === d.study.reference ? `**${l}**` : l;
    return [
      `| ${name} | ${rs.map((r) => r.seed ?? "–").join(",")} | ${
        ms.map((m) => cell(metricValues(rs, m.key), 3, rs.some((r) => r.metrics[m.key] === null)))
          .join(" | ")
      }${extra ? ` | ${extra.values[l] ?? ""}` : ""} |`,
    ];
  });
  return [head, rule, ...rows].join("\n");
}

/** Markdown table of variant − reference, paired by seed, with the verdict of each cell. */
export function pairedTable(d: StudyData, keys: string[]): string {
  const ms = keys.map(metric);
  const ref = d.records.filter((r) => r.label === d.study.reference);
  const head = `| variant − ${d.study.reference} | ${ms.map((m) => m.name).join(" | ")} |`;
  const rule = `|---|${ms.map(() => "---|").join("")}`;
  const sign = (x: number) => (x >= 0 ? "+" : "") + x.toFixed(3);
  const rows = d.study.variants.filter((v) => v.label !== d.study.reference && !v.untrained)
    .flatMap((v) => {
      const rs = d.records.filter((r) => r.label === v.label);
      if (!rs.length) return [];
      return [`| ${v.label} | ${
        ms.map((m) => {
          const p = paired(rs, ref, m);
          if (!p) return "–";
          const tag = p.verdict === "noise"
            ? "inside seed noise"
            : `**${p.verdict}** in every seed`;
          return `${sign(p.mean)} (${p.diffs.map(sign).join(", ")}) ${tag}`;
        }).join(" | ")
      } |`];
    });
  return [head, rule, ...rows].join("\n");
}

/** Shows markdown in the notebook. */
export function showMarkdown(md: string): void {
  Deno.jupyter.display({ "text/markdown": md, "text/plain": md }, { raw: true });
}

const COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d"];

/**
 * One figure, one panel per metric: every seed a point, the mean a bar with ± std, base-model
 * rows dashed. `x` maps a label to its position (numeric k for the token-count study) or the
 * label itself is used (categories).
 */
export function studyFigure(
  d: StudyData,
  keys: string[],
  opts: { title: string; x?: (label: string) => number; xTitle?: string; cols?: number },
): Figure {
  const ms = keys.map(metric);
  const cols = opts.cols ?? Math.min(ms.length, 3);
  const rows = Math.ceil(ms.length / cols);
  const variants = d.study.variants.map((v) => v.label).filter((l) =>
    d.records.some((r) => r.label === l)
  );
  const bases = d.study.baselines.map((p) => `base-${p}`).filter((l) =>
    d.records.some((r) => r.label === l)
  );
  const xOf = (l: string) => (opts.x ? opts.x(l) : l);
  const allLabels = d.study.variants.map((v) => v.label);
  const data: Record<string, unknown>[] = [];
  const layout: Record<string, unknown> = {
    title: { text: opts.title },
    width: 330 * cols,
    height: 300 * rows + 90,
    showlegend: true,
    legend: { orientation: "h", y: -0.08 },
    grid: { rows, columns: cols, pattern: "independent" },
    margin: { t: 70, l: 50, r: 20, b: 60 },
  };
  ms.forEach((m, i) => {
    const ax = i === 0 ? "" : String(i + 1);
    const first = i === 0;
    for (const [j, l] of variants.entries()) {
      const rs = d.records.filter((r) => r.label === l && metricValue(r, m.key) !== undefined);
      const ys = metricValues(rs, m.key);
      if (!ys.length) continue;
      data.push({
        type: "scatter",
        mode: "markers",
        x: rs.map(() => xOf(l)),
        y: ys,
        text: rs.map((r) => `${l}, seed ${r.seed}`),
        hoverinfo: "text+y",
        marker: { color: COLORS[j % COLORS.length], size: 7, opacity: 0.75 },
        name: "one seed",
        legendgroup: "seed",
        showlegend: first && j === 0,
        xaxis: `x${ax}`,
        yaxis: `y${ax}`,
      });
    }
    const withData = variants.filter((l) =>
      d.records.some((r) => r.label === l && metricValue(r, m.key) !== undefined)
    );
    const stats = withData.map((l) =>
      spread(metricValues(d.records.filter((r) => r.label === l), m.key))
    );
    data.push({
      type: "scatter",
      mode: opts.x ? "lines+markers" : "markers",
      x: withData.map(xOf),
      y: stats.map((s) => s.mean),
      error_y: { type: "data", array: stats.map((s) => s.std), visible: true, color: "#333" },
      marker: { symbol: "line-ew-open", size: 18, color: "#333", line: { width: 2 } },
      line: { color: "#333", width: 1 },
      name: "mean ± std over seeds",
      legendgroup: "mean",
      showlegend: first,
      xaxis: `x${ax}`,
      yaxis: `y${ax}`,
    });
    for (const [b, l] of bases.entries()) {
      const rec = d.records.find((r) => r.label === l);
      const v = rec && metricValue(rec, m.key);
      if (v === undefined) continue;
      data.push({
        type: "scatter",
        mode: "lines",
        // Across the whole axis: every variant of the study, recorded yet or not.
        x: opts.x
          ? [Math.min(...allLabels.map(opts.x)), Math.max(...allLabels.map(opts.x))]
          : [allLabels[0], allLabels.at(-1)],
        y: [v, v],
        line: { dash: ["dash", "dot", "dashdot"][b % 3], color: "#888", width: 1.5 },
        name: `base model, ${l.slice(5)} pooling`,
        legendgroup: l,
        showlegend: first,
        xaxis: `x${ax}`,
        yaxis: `y${ax}`,
      });
    }
    layout[`xaxis${ax}`] = {
      title: { text: opts.xTitle ?? "" },
      type: opts.x ? "linear" : "category",
      tickangle: opts.x ? 0 : 30,
    };
    layout[`yaxis${ax}`] = {
      title: { text: `${m.name} ${m.higher ? "↑" : "↓"}` },
      zeroline: false,
    };
  });
  return { data, layout };
}

/**
 * A plain reading of the paired differences, computed from the records: per variant, the metrics
 * on which every recorded seed moves the same way, and how many seeds that rests on. With one
 * seed nothing can be told from seed noise, and it says so.
 */
export function pairedReading(d: StudyData, keys: string[]): string {
  const ms = keys.map(metric);
  const ref = d.records.filter((r) => r.label === d.study.reference);
  const lines = d.study.variants.filter((v) => v.label !== d.study.reference && !v.untrained)
    .flatMap((v) => {
      const rs = d.records.filter((r) => r.label === v.label);
      if (!rs.length) return [`- \`${v.label}\`: no record yet.`];
      const ps = ms.map((m) => [m, paired(rs, ref, m)] as const).filter(([, p]) => p);
      const n = Math.max(0, ...ps.map(([, p]) => p!.seeds.length));
      if (n < 2) {
        return [
          `- \`${v.label}\`: ${n} seed paired with \`${d.study.reference}\`; one seed cannot be ` +
          "told from seed noise.",
        ];
      }
      const better = ps.filter(([, p]) => p!.verdict === "better").map(([m]) => m.name);
      const worse = ps.filter(([, p]) => p!.verdict === "worse").map(([m]) => m.name);
      const parts = [
        better.length ? `better in every seed on ${better.join(", ")}` : "",
        worse.length ? `worse in every seed on ${worse.join(", ")}` : "",
      ].filter(Boolean);
      return [
        `- \`${v.label}\` (${n} seeds): ${
          parts.length ? parts.join("; ") : "no metric moves the same way in every seed"
        }; the rest is inside seed noise.`,
      ];
    });
  return lines.join("\n");
}
