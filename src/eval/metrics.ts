/**
 * Evaluation metrics on host arrays: rank correlation, retrieval metrics, and similarity helpers.
 * Definitions follow scipy (spearmanr with average ranks for ties) and the usual IR ones (nDCG
 * with gain / log2(rank + 1), as MTEB/pytrec_eval compute it).
 */

/** Ranks 1..n with ties given their average rank (scipy.stats.rankdata "average"). */
export function averageRanks(x: readonly number[]): number[] {
  const order = x.map((_, i) => i).sort((a, b) => x[a] - x[b]);
  const ranks = new Array<number>(x.length);
  for (let i = 0; i < order.length;) {
    let j = i;
    while (j + 1 < order.length && x[order[j + 1]] === x[order[i]]) j++;
    const r = (i + j) / 2 + 1;
    for (let m = i; m <= j; m++) ranks[order[m]] = r;
    i = j + 1;
  }
  return ranks;
}

/** Pearson correlation (NaN when a side is constant). */
export function pearson(x: readonly number[], y: readonly number[]): number {
  if (x.length !== y.length) throw new Error(`pearson: ${x.length} vs ${y.length} values`);
  const n = x.length;
  const mx = x.reduce((a, b) => a + b, 0) / n, my = y.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) ** 2;
    syy += (y[i] - my) ** 2;
  }
  return sxy / Math.sqrt(sxx * syy);
}

/** Spearman rank correlation with average ranks for ties. */
export function spearman(x: readonly number[], y: readonly number[]): number {
  return pearson(averageRanks(x), averageRanks(y));
}

/** Dot product of two vectors (cosine for L2-normalised ones). */
export function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Indices of the `k` largest scores, best first (ties: lower index first). */
export function topK(scores: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  idx.sort((a, b) => scores[b] - scores[a] || a - b);
  return idx.slice(0, k);
}

/**
 * nDCG@k of a ranking: gains by document id (missing = 0). DCG = sum gain / log2(rank + 1) over
 * the top k; ideal DCG from the k largest gains.
 */
export function ndcgAtK(
  ranking: readonly number[],
  gains: ReadonlyMap<number, number>,
  k: number,
): number {
  let dcg = 0;
  ranking.slice(0, k).forEach((doc, i) => (dcg += (gains.get(doc) ?? 0) / Math.log2(i + 2)));
  const ideal = [...gains.values()].filter((g) => g > 0).sort((a, b) => b - a).slice(0, k);
  let idcg = 0;
  ideal.forEach((g, i) => (idcg += g / Math.log2(i + 2)));
  return idcg > 0 ? dcg / idcg : 0;
}

/** Fraction of relevant documents (gain > 0) found in the top k. */
export function recallAtK(
  ranking: readonly number[],
  gains: ReadonlyMap<number, number>,
  k: number,
): number {
  const relevant = [...gains.entries()].filter(([, g]) => g > 0).map(([d]) => d);
  if (!relevant.length) return 0;
  const top = new Set(ranking.slice(0, k));
  return relevant.filter((d) => top.has(d)).length / relevant.length;
}

/** Reciprocal rank of the first relevant document within the top k (0 if none). */
export function mrrAtK(
  ranking: readonly number[],
  gains: ReadonlyMap<number, number>,
  k: number,
): number {
  const i = ranking.slice(0, k).findIndex((d) => (gains.get(d) ?? 0) > 0);
  return i < 0 ? 0 : 1 / (i + 1);
}

/** Mean of numbers (NaN for none). */
export function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}
