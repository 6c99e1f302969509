/**
 * GEM's attention masks as role tables. Every token of a GEM sample has a role: prefix, special,
 * suffix or padding; a table says which query role may attend to which key role and how
 * (none, causal, self, all). The engine's attention kernel applies the table directly, so a mask
 * design is nothing more than one of these small tables.
 *
 * One special role serves all k special tokens: "specials do not see each other" is the rule
 * self (each sees only itself among specials), and a design where they do is the rule causal.
 */

import { type RoleTable, RULE } from "../tensor/ops.ts";

/** Role ids of GEM samples. Raw (plain causal LM) samples use PREFIX for every token. */
export const ROLE = { prefix: 0, special: 1, suffix: 2, pad: 3 } as const;
/** Role names by id, for plots and configs. */
export const ROLE_NAMES = ["prefix", "special", "suffix", "pad"] as const;

const { none: N, causal: C, self: S, all: A } = RULE;

/** Named mask designs (rows: query role, columns: key role, in ROLE order). */
export const MASK_DESIGNS: Record<string, RoleTable> = {
  /** The paper's: suffix sees only specials and suffix; specials see the prefix and themselves. */
  gem: [
    [C, N, N, N],
    [C, S, N, N],
    [N, C, C, N],
    [N, N, N, N],
  ],
  /** Specials also see earlier specials. */
  "specials-see-each-other": [
    [C, N, N, N],
    [C, C, N, N],
    [N, C, C, N],
    [N, N, N, N],
  ],
  /** Control: the suffix also sees the prefix, so nothing forces information through specials. */
  "no-bottleneck": [
    [C, N, N, N],
    [C, S, N, N],
    [C, C, C, N],
    [N, N, N, N],
  ],
  /** Sanity check: specials see nothing of the prefix, so they cannot learn to summarise it. */
  "specials-self-only": [
    [C, N, N, N],
    [N, S, N, N],
    [N, C, C, N],
    [N, N, N, N],
  ],
  /**
   * Control: the specials are inserted but every token attends plain causally (specials see the
   * prefix and earlier specials, the suffix sees everything before it), so no bottleneck exists.
   */
  causal: [
    [C, N, N, N],
    [C, C, N, N],
    [C, C, C, N],
    [N, N, N, N],
  ],
};

/**
 * Plain causal LM in GEM roles: raw samples are all prefix tokens, and the padding `pack` adds
 * (role pad) sees and is seen by nothing. It is the `causal` design, used for every raw text
 * (perplexity, mean/last pooling, MMLU scoring).
 */
export const RAW_CAUSAL: RoleTable = MASK_DESIGNS.causal;

/** Names of the rules, for configs and plots. */
export const RULE_NAMES = ["none", "causal", "self", "all"] as const;

/** A user-written table may use rule names or codes; returns codes or an error naming the cell. */
export function parseRoleTable(v: unknown, field: string): RoleTable {
  if (typeof v === "string") {
    const t = MASK_DESIGNS[v];
    if (!t) {
      throw new Error(
        `${field}: unknown mask design '${v}' (known: ${
          Object.keys(MASK_DESIGNS).join(", ")
        }, or a 4x4 table)`,
      );
    }
    return t;
  }
  if (!Array.isArray(v) || v.length !== 4) {
    throw new Error(
      `${field}: a role table must be 4 rows (prefix, special, suffix, pad), got ${
        JSON.stringify(v)
      }`,
    );
  }
  return v.map((row, i) => {
    if (!Array.isArray(row) || row.length !== 4) {
      throw new Error(`${field}[${i}]: each row needs 4 entries, got ${JSON.stringify(row)}`);
    }
    return row.map((cell, j) => {
      const code = typeof cell === "string"
        ? RULE_NAMES.indexOf(cell as typeof RULE_NAMES[number])
        : cell;
      if (!Number.isInteger(code) || code < 0 || code > 3) {
        throw new Error(
          `${field}[${i}][${j}]: '${cell}' is not a rule (none, causal, self, all or 0-3)`,
        );
      }
      if (i === ROLE.pad && code !== N || j === ROLE.pad && code !== N) {
        throw new Error(`${field}[${i}][${j}]: padding must neither see nor be seen (rule none)`);
      }
      return code as number;
    });
  });
}

/** Whether query position t (role rq) may attend key position s (role rk) under `table`. */
export function allowed(table: RoleTable, rq: number, rk: number, t: number, s: number): boolean {
  const r = table[rq][rk];
  return r === A || (r === C && s <= t) || (r === S && s === t);
}

/** The full T x T attention matrix a table gives for one sample's roles (1 = may attend). */
export function drawMask(table: RoleTable, roles: readonly number[]): number[][] {
  return roles.map((rq, t) => roles.map((rk, s) => (allowed(table, rq, rk, t, s) ? 1 : 0)));
}
