/**
 * Loaders for the evaluation sets under `<data>/eval` (see the data README for formats). Each
 * returns plain arrays and prints nothing; a malformed file throws {@link DatasetError} naming
 * the file and line. STS-B pairs come from `stsbPairs` in quick.ts.
 *
 * Quirks handled here, found by reading the files:
 * - SICK_test_annotated.txt has CRLF line ends, the train and trial files LF.
 * - Banking77 rows end in CRLF, yet 13 texts hold bare LF newlines inside quotes (kept verbatim).
 * - MMLU's college_mathematics dev file has CRLF inside quoted questions (kept verbatim).
 * - TREC train is Latin-1 (one line, 66, holds byte 0xF0, "ð"); test is ASCII.
 * - Cranfield docs 240, 576 and 578 carry stray `.A`/`.B`/`.W` marker lines inside their abstract;
 *   once a doc's `.W` has begun, later markers are dropped and their lines stay in the abstract.
 */

import { readdirSync } from "node:fs";
import { dataDir, readBytes } from "../io/paths.ts";

/** A dataset file that cannot be parsed; the message names the file and line. */
export class DatasetError extends Error {
  /** Error class name. */
  override name = "DatasetError";
}

/** A sentence pair with a gold similarity or relatedness score. */
export interface ScoredPair {
  a: string;
  b: string;
  score: number;
}

/** A text with its class name. */
export interface LabelledText {
  text: string;
  label: string;
}

/** One CSV record and the 1-based line of the file where it starts. */
export interface CsvRecord {
  line: number;
  fields: string[];
}

/**
 * Parses RFC 4180 CSV: comma-separated fields, records ended by LF or CRLF (the last may lack
 * one), quoted fields that may hold commas, newlines and doubled quotes (`""` is one `"`).
 * Characters inside quotes are kept verbatim, CR included. Empty lines are skipped, as Python's
 * csv module does. A quote inside an unquoted field, text after a closing quote, or an unclosed
 * quote throws {@link DatasetError} naming `source` and the line.
 */
export function parseCsv(text: string, source = "<string>"): CsvRecord[] {
  const records: CsvRecord[] = [];
  let fields: string[] = [];
  let line = 1, recordLine = 1;
  let i = 0;
  const isEnd = (at: number) =>
    at >= text.length || text[at] === "," || text[at] === "\n" ||
    (text[at] === "\r" && text[at + 1] === "\n");
  while (i < text.length) {
    let field: string;
    const quoted = text[i] === '"';
    if (quoted) {
      // Copy runs up to each quote; a doubled quote is one quote, a single one closes.
      const openLine = line;
      field = "";
      i++;
      for (;;) {
        const q = text.indexOf('"', i);
        if (q < 0) {
          throw new DatasetError(`${source}: line ${openLine}: quoted field is never closed`);
        }
        const run = text.slice(i, q);
        for (let at = run.indexOf("\n"); at >= 0; at = run.indexOf("\n", at + 1)) line++;
        field += run;
        if (text[q + 1] === '"') {
          field += '"';
          i = q + 2;
        } else {
          i = q + 1;
          break;
        }
      }
      if (!isEnd(i)) {
        throw new DatasetError(
          `${source}: line ${line}: unexpected ${JSON.stringify(text[i])} after a closing quote`,
        );
      }
    } else {
      const from = i;
      while (!isEnd(i)) {
        if (text[i] === '"') {
          throw new DatasetError(`${source}: line ${line}: quote inside an unquoted field`);
        }
        i++;
      }
      field = text.slice(from, i);
    }
    fields.push(field);
    if (text[i] === ",") {
      i++;
      // A trailing comma at the very end still ends a record with one more empty field.
      if (i === text.length) fields.push("");
      continue;
    }
    // Record end (newline or end of text). A lone empty unquoted field is an empty line.
    if (quoted || fields.length > 1 || field !== "") records.push({ line: recordLine, fields });
    fields = [];
    if (i < text.length) {
      i += text[i] === "\r" ? 2 : 1;
      line++;
      recordLine = line;
    }
  }
  if (fields.length > 0) records.push({ line: recordLine, fields });
  return records;
}

function readText(path: string, encoding = "utf-8"): string {
  const bytes = readBytes(path, (m) => new DatasetError(m));
  try {
    // fatal: a UTF-8 file with stray Latin-1 bytes must fail loudly, not decode to U+FFFD.
    return new TextDecoder(encoding, { fatal: true }).decode(bytes);
  } catch {
    throw new DatasetError(`${path}: not valid ${encoding}`);
  }
}

/** Reads a CSV file and checks its header row; returns the data records. */
function readCsv(path: string, header: readonly string[]): CsvRecord[] {
  const records = parseCsv(readText(path), path);
  const got = records[0]?.fields ?? [];
  if (got.join(",") !== header.join(",")) {
    throw new DatasetError(`${path}: line 1: header ${got.join(",")}, expected ${header}`);
  }
  const rows = records.slice(1);
  for (const r of rows) {
    if (r.fields.length !== header.length) {
      throw new DatasetError(
        `${path}: line ${r.line}: ${r.fields.length} fields, expected ${header.length}`,
      );
    }
  }
  return rows;
}

/**
 * SICK pairs of a split with their relatedness score (1-5). Columns are found by the header
 * names `sentence_A`, `sentence_B`, `relatedness_score`; the test split is
 * SICK_test_annotated.txt.
 */
export function sickPairs(split: "train" | "trial" | "test" = "test"): ScoredPair[] {
  const name = split === "test" ? "SICK_test_annotated.txt" : `SICK_${split}.txt`;
  const path = `${dataDir()}/eval/sick/${name}`;
  const lines = readText(path).split("\n").map((l) => l.replace(/\r$/, ""));
  const header = lines[0].split("\t");
  const col = (name: string) => {
    const i = header.indexOf(name);
    if (i < 0) throw new DatasetError(`${path}: line 1: no column "${name}" in the header`);
    return i;
  };
  const ia = col("sentence_A"), ib = col("sentence_B"), is = col("relatedness_score");
  const pairs: ScoredPair[] = [];
  lines.slice(1).forEach((line, n) => {
    if (line === "") return;
    const c = line.split("\t");
    const score = Number(c[is]);
    if (c.length !== header.length || !(score >= 1 && score <= 5)) {
      throw new DatasetError(
        `${path}: line ${n + 2}: expected ${header.length} tab-separated fields with a ` +
          `relatedness score in 1..5, got ${c.length} fields, score "${c[is]}"`,
      );
    }
    pairs.push({ a: c[ia], b: c[ib], score });
  });
  return pairs;
}

/**
 * Banking77 texts and intent names. Texts are verbatim: a few begin or end with newlines that
 * the source file holds inside quotes.
 */
export function banking77(split: "train" | "test"): LabelledText[] {
  const path = `${dataDir()}/eval/banking77/${split}.csv`;
  return readCsv(path, ["text", "category"]).map((r) => {
    const [text, label] = r.fields;
    if (!label) throw new DatasetError(`${path}: line ${r.line}: empty category`);
    return { text, label };
  });
}

/**
 * TREC question classification. `coarse` labels are the 6 classes (`ABBR`, `DESC`, `ENTY`,
 * `HUM`, `LOC`, `NUM`); `fine` labels keep the coarse prefix (`LOC:city`, 50 classes), because
 * fine names repeat across coarse classes (`LOC:other`, `NUM:other`). Text is what follows the
 * first space. The train file is Latin-1; decoded with WHATWG "latin1" (really windows-1252,
 * which differs only on bytes 0x80-0x9F that the file does not contain).
 */
export function trec(
  split: "train" | "test",
  granularity: "coarse" | "fine" = "coarse",
): LabelledText[] {
  const path = `${dataDir()}/eval/trec_qc/${split}.txt`;
  const text = readText(path, split === "train" ? "latin1" : "utf-8");
  const out: LabelledText[] = [];
  text.split("\n").forEach((raw, n) => {
    const line = raw.replace(/\r$/, "");
    if (line === "") return;
    const m = /^([A-Z]+):(\S+) (.+)$/.exec(line);
    if (!m) {
      throw new DatasetError(`${path}: line ${n + 1}: expected "COARSE:fine question"`);
    }
    out.push({ text: m[3], label: granularity === "coarse" ? m[1] : `${m[1]}:${m[2]}` });
  });
  return out;
}

/** A Cranfield document; `text` is title and abstract joined by a space. */
export interface CranfieldDoc {
  /** The `.I` id, 1..1400; qrels refer to documents by it. */
  id: number;
  title: string;
  abstract: string;
  text: string;
}

/** A Cranfield query; `id` is the `.I` id in cran.qry, which the qrels do NOT use. */
export interface CranfieldQuery {
  id: number;
  text: string;
}

/** The Cranfield collection. */
export interface Cranfield {
  docs: CranfieldDoc[];
  queries: CranfieldQuery[];
  /**
   * Graded judgments: key = 0-based index into `queries` (cranqrel's query number minus 1),
   * value = doc id -> gain (5 - grade: 4 for grade 1 down to 1 for grade 4; 0 for grade -1,
   * judged not relevant). Every query has judgments.
   */
  qrels: Map<number, Map<number, number>>;
}

/** SMART records: `.I id` starts one, field markers `.X` start fields; text joined by spaces. */
function parseSmart(path: string, fieldNames: string): { id: number; f: Record<string, string> }[] {
  const records: { id: number; f: Record<string, string[]> }[] = [];
  let field = "";
  readText(path).split("\n").forEach((raw, n) => {
    const line = raw.replace(/\r$/, "");
    const id = /^\.I\s+(\d+)\s*$/.exec(line);
    if (id) {
      records.push({ id: Number(id[1]), f: {} });
      field = "";
      return;
    }
    const rec = records.at(-1);
    const mark = /^\.([A-Z])\s*$/.exec(line);
    if (mark) {
      if (!rec) throw new DatasetError(`${path}: line ${n + 1}: field marker before any .I`);
      if (!fieldNames.includes(mark[1])) {
        throw new DatasetError(`${path}: line ${n + 1}: unknown field marker .${mark[1]}`);
      }
      // A marker after the abstract began (or a repeated one) is stray text in a damaged record.
      if (rec.f.W === undefined && rec.f[mark[1]] === undefined) {
        field = mark[1];
        rec.f[field] = [];
      }
      return;
    }
    if (line.trim() === "") return;
    if (!rec || !field) {
      throw new DatasetError(`${path}: line ${n + 1}: text outside any field`);
    }
    rec.f[field].push(line);
  });
  return records.map((r) => ({
    id: r.id,
    f: Object.fromEntries(
      Object.entries(r.f).map(([k, v]) => [k, v.join(" ").replace(/\s+/g, " ").trim()]),
    ),
  }));
}

/**
 * The Cranfield collection (cran.all.1400, cran.qry, cranqrel). Line breaks inside a field
 * become single spaces. Queries are numbered 1..225 in file order by cranqrel, whatever their
 * `.I` ids (001, 002, 004, ...).
 */
export function cranfield(): Cranfield {
  const dir = `${dataDir()}/eval/cranfield`;
  const docs = parseSmart(`${dir}/cran.all.1400`, "TABW").map(({ id, f }) => {
    const title = f.T ?? "", abstract = f.W ?? "";
    return { id, title, abstract, text: [title, abstract].filter(Boolean).join(" ") };
  });
  const queries = parseSmart(`${dir}/cran.qry`, "W").map(({ id, f }) => ({ id, text: f.W ?? "" }));
  const docIds = new Set(docs.map((d) => d.id));
  const qrels = new Map<number, Map<number, number>>();
  const path = `${dir}/cranqrel`;
  readText(path).split("\n").forEach((raw, n) => {
    if (raw.trim() === "") return;
    const [q, d, g] = raw.trim().split(/\s+/).map(Number);
    const where = `${path}: line ${n + 1}`;
    if (!(q >= 1 && q <= queries.length)) {
      throw new DatasetError(`${where}: query number ${q} outside 1..${queries.length}`);
    }
    if (!docIds.has(d)) throw new DatasetError(`${where}: unknown doc id ${d}`);
    if (![-1, 1, 2, 3, 4].includes(g)) throw new DatasetError(`${where}: grade ${g}`);
    const judged = qrels.get(q - 1) ?? new Map<number, number>();
    if (judged.has(d)) throw new DatasetError(`${where}: query ${q} doc ${d} judged twice`);
    judged.set(d, g === -1 ? 0 : 5 - g);
    qrels.set(q - 1, judged);
  });
  return { docs, queries, qrels };
}

/** An MMLU question; `answer` indexes `choices` (0..3). */
export interface MmluItem {
  question: string;
  choices: [string, string, string, string];
  answer: number;
}

/**
 * MMLU questions by subject (the file name minus `_<split>.csv`), subjects in sorted order.
 * `dev` holds 5 per subject for few-shot prompts.
 */
export function mmlu(split: "dev" | "test"): Map<string, MmluItem[]> {
  const dir = `${dataDir()}/eval/mmlu/${split}`;
  const suffix = `_${split}.csv`;
  const files = readdirSync(dir).filter((n) => n.endsWith(suffix)).sort();
  const out = new Map<string, MmluItem[]>();
  for (const file of files) {
    const path = `${dir}/${file}`;
    const header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"];
    out.set(
      file.slice(0, -suffix.length),
      readCsv(path, header).map((r) => {
        const [question, c0, c1, c2, c3, a] = r.fields;
        if (!/^[0-3]$/.test(a)) {
          throw new DatasetError(`${path}: line ${r.line}: answer "${a}" is not 0..3`);
        }
        return { question, choices: [c0, c1, c2, c3], answer: Number(a) };
      }),
    );
  }
  return out;
}
