/**
 * JSON with object keys sorted at every level, so equal values give equal strings: what study
 * keys and tuning hashes are taken over.
 */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${
      Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(",")
    }}`;
  }
  return JSON.stringify(v);
}
