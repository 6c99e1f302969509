/**
 * Writes the README's study tables from the committed records (results/ablations/NAME/runs.jsonl),
 * between the `<!-- studies:begin -->` and `<!-- studies:end -->` markers: per study, each
 * variant's mean and min..max over its seeds for in-domain nDCG@10, STS-B, Banking77 and
 * perplexity, beside the paper's number. `--check` exits 1 when the README is stale (a test runs
 * it that way).
 */
import { readRecords } from "../src/study/records.ts";
import { readStudy, type Study } from "../src/study/study.ts";
import { metricValues, spread } from "../src/study/summary.ts";

const ROOT = new URL("../", import.meta.url).pathname;
/** The studies the README shows, in order. */
export const README_STUDIES = ["token-count", "mask-design", "objectives"];
const COLUMNS: [string, string][] = [
  ["indomain.ndcgAt10", "in-domain nDCG@10 ↑"],
  ["stsb.spearman", "STS-B ↑"],
  ["banking77.accuracy", "Banking77 ↑"],
  ["ppl-tinystories.perplexity", "perplexity ↓"],
];

function cell(values: number[], undefinedAll: boolean): string {
  if (!values.length) return undefinedAll ? "undefined" : "–";
  const s = spread(values);
  return values.length > 1
    ? `${s.mean.toFixed(3)} (${s.min.toFixed(3)}..${s.max.toFixed(3)})`
    : s.mean.toFixed(3);
}

/** The markdown table of one study. */
export async function studyTable(name: string): Promise<string> {
  const study: Study = await readStudy(`${ROOT}studies/${name}.json`);
  const records = await readRecords(`${ROOT}results/ablations/${name}/runs.jsonl`);
  const paper = study.paper;
  const head = `| ${name} | seeds | ${COLUMNS.map(([, t]) => t).join(" | ")}${
    paper ? " | paper, MTEB avg" : ""
  } |`;
  const rule = `| --- | --- | ${COLUMNS.map(() => "---").join(" | ")}${paper ? " | ---" : ""} |`;
  const labels = [
    ...study.baselines.map((p) => `base-${p}`),
    ...study.variants.map((v) => v.label),
  ];
  const rows = labels.flatMap((l) => {
    const rs = records.filter((r) => r.label === l);
    if (!rs.length) return [];
    const name = l === study.reference ? `**${l}**` : `\`${l}\``;
    const seeds = rs[0].kind === "trained" ? String(rs.length) : "–";
    return [
      `| ${name} | ${seeds} | ${
        COLUMNS.map(([k]) => cell(metricValues(rs, k), rs.some((r) => r.metrics[k] === null)))
          .join(" | ")
      }${paper ? ` | ${paper.values[l] ?? ""}` : ""} |`,
    ];
  });
  if (!rows.length) return `**${name}**: no records yet.`;
  const missing = study.variants.filter((v) => !records.some((r) => r.label === v.label))
    .map((v) => `\`${v.label}\``);
  const note = missing.length ? `\n\nNot yet recorded: ${missing.join(", ")}.` : "";
  return [head, rule, ...rows].join("\n") + note;
}

/** The README text with the study tables between the markers replaced. */
export async function withStudyTables(readme: string): Promise<string> {
  const BEGIN = "<!-- studies:begin -->", END = "<!-- studies:end -->";
  const a = readme.indexOf(BEGIN), b = readme.indexOf(END);
  if (a < 0 || b < a) throw new Error(`README.md: markers ${BEGIN} ... ${END} not found`);
  const tables = await Promise.all(README_STUDIES.map(studyTable));
  return readme.slice(0, a + BEGIN.length) + "\n\n" + tables.join("\n\n") + "\n\n" +
    readme.slice(b);
}

/** Collapses the cell padding `deno fmt` adds, for comparing tables. */
export function normTables(s: string): string {
  return s.replace(/-{3,}/g, "---").replace(/[ \t]+/g, " ");
}

if (import.meta.main) {
  const path = `${ROOT}README.md`;
  const old = Deno.readTextFileSync(path);
  const next = await withStudyTables(old);
  if (Deno.args.includes("--check")) {
    if (normTables(next) !== normTables(old)) {
      console.error(
        "README.md: the study tables are stale; run deno run -A scripts/readme_studies.ts",
      );
      Deno.exit(1);
    }
  } else {
    Deno.writeTextFileSync(path, next);
  }
}
