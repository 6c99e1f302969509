/**
 * Writes the README's configuration table from `FIELDS` (src/recipe/config.ts), between the
 * `<!-- config:begin -->` and `<!-- config:end -->` markers. `--check` exits 1 when the README is
 * stale instead of writing (a test runs it that way).
 */
import { FIELDS } from "../src/recipe/config.ts";

/** The markdown table of every training field, its default and its help text. */
export function configTable(): string {
  const esc = (s: string) => s.replaceAll("|", "\\|");
  const rows = Object.entries(FIELDS).map(([k, [def, help]]) =>
    `| \`${k}\` | \`${esc(JSON.stringify(def))}\` | ${esc(help)} |`
  );
  return ["| field | default | meaning |", "| --- | --- | --- |", ...rows].join("\n");
}

const BEGIN = "<!-- config:begin -->";
const END = "<!-- config:end -->";

/** The README text with the table between the markers replaced. */
export function withConfigTable(readme: string): string {
  const a = readme.indexOf(BEGIN), b = readme.indexOf(END);
  if (a < 0 || b < a) throw new Error(`README.md: markers ${BEGIN} ... ${END} not found`);
  return readme.slice(0, a + BEGIN.length) + "\n\n" + configTable() + "\n\n" + readme.slice(b);
}

if (import.meta.main) {
  const path = new URL("../README.md", import.meta.url);
  const old = Deno.readTextFileSync(path);
  const next = withConfigTable(old);
  // deno fmt pads table cells; compare with padding collapsed.
  const norm = (s: string) => s.replace(/-{3,}/g, "---").replace(/[ \t]+/g, " ");
  if (Deno.args.includes("--check")) {
    if (norm(next) !== norm(old)) {
      console.error(
        "README.md: the configuration table is stale; run deno run -A scripts/readme_config.ts",
      );
      Deno.exit(1);
    }
  } else {
    Deno.writeTextFileSync(path, next);
  }
}
