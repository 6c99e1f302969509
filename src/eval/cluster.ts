/**
 * Clustering evaluation: k-means (greedy k-means++ seeding from a seeded {@link Rng}, several
 * restarts, Lloyd iterations) and the V-measure family, both following scikit-learn
 * (KMeans(algorithm="lloyd"), homogeneity_completeness_v_measure) so numbers are comparable
 * with MTEB-style clustering scores. Legend: n points, d features, k clusters.
 */

import { Rng } from "../tensor/random.ts";

/** Inputs of the wrong shape or an impossible k; the message names the argument. */
export class ClusterInputError extends Error {
  /** Error class name. */
  override name = "ClusterInputError";
}

/** Options of {@link kmeans}. */
export interface KMeansOptions {
  /** Seed of the Rng that draws every restart's initial centres (default 0). */
  seed?: number;
  /** Independent k-means++ starts; the lowest inertia wins (default 10, sklearn's n_init). */
  restarts?: number;
  /** Lloyd iterations per start at most (default 300). */
  maxIter?: number;
  /**
   * Stop when the centres move by at most tol * (mean per-feature variance of x), summed squared
   * shift, as sklearn does (default 1e-4). Unchanged labels always stop.
   */
  tol?: number;
}

/** A k-means result. */
export interface KMeansResult {
  /** Cluster of each point, 0..k-1; each point is assigned to its nearest centre. */
  labels: number[];
  /** [k] centres of d values. */
  centroids: Float64Array[];
  /** Sum of squared distances of points to their centres. */
  inertia: number;
  /** Lloyd iterations of the winning start. */
  iterations: number;
}

/** Squared Euclidean distance between x[a*d..] and c[b*d..]. */
function dist2(x: Float64Array, a: number, c: Float64Array, b: number, d: number): number {
  let s = 0;
  const xo = a * d, co = b * d;
  for (let j = 0; j < d; j++) {
    const t = x[xo + j] - c[co + j];
    s += t * t;
  }
  return s;
}

/** Greedy k-means++ (sklearn's `_kmeans_plusplus`): 2 + ln k candidates per centre. */
function kmeansPlusPlus(x: Float64Array, n: number, d: number, k: number, rng: Rng): Float64Array {
  const centers = new Float64Array(k * d);
  const trials = 2 + Math.floor(Math.log(k));
  const first = rng.int(n);
  centers.set(x.subarray(first * d, first * d + d), 0);
  let closest = new Float64Array(n);
  let pot = 0;
  for (let i = 0; i < n; i++) pot += closest[i] = dist2(x, i, centers, 0, d);
  const cum = new Float64Array(n);
  let cand = new Float64Array(n), best = new Float64Array(n);
  for (let c = 1; c < k; c++) {
    let acc = 0;
    for (let i = 0; i < n; i++) cum[i] = acc += closest[i];
    let bestPot = Infinity, bestId = 0;
    for (let t = 0; t < trials; t++) {
      // Sample a point with probability proportional to its squared distance (D^2 weighting).
      const r = rng.uniform() * pot;
      let lo = 0, hi = n - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cum[mid] < r) lo = mid + 1;
        else hi = mid;
      }
      let p = 0;
      for (let i = 0; i < n; i++) {
        p += cand[i] = Math.min(closest[i], dist2(x, i, x, lo, d));
      }
      if (p < bestPot) {
        bestPot = p;
        bestId = lo;
        [best, cand] = [cand, best];
      }
    }
    centers.set(x.subarray(bestId * d, bestId * d + d), c * d);
    [closest, best] = [best, closest];
    pot = bestPot;
  }
  return centers;
}

/** Nearest centre of every point (lowest index on ties); returns the inertia. */
function assign(
  x: Float64Array,
  n: number,
  d: number,
  centers: Float64Array,
  k: number,
  labels: Int32Array,
  dists: Float64Array,
): number {
  let inertia = 0;
  for (let i = 0; i < n; i++) {
    let bestK = 0, bestD = Infinity;
    for (let c = 0; c < k; c++) {
      const t = dist2(x, i, centers, c, d);
      if (t < bestD) {
        bestD = t;
        bestK = c;
      }
    }
    labels[i] = bestK;
    dists[i] = bestD;
    inertia += bestD;
  }
  return inertia;
}

/**
 * Centres as the means of their points. An empty cluster takes the point farthest from its own
 * centre (as sklearn relocates empty clusters), each such point used once.
 */
function updateCenters(
  x: Float64Array,
  n: number,
  d: number,
  k: number,
  labels: Int32Array,
  dists: Float64Array,
  out: Float64Array,
): void {
  out.fill(0);
  const count = new Int32Array(k);
  for (let i = 0; i < n; i++) {
    const c = labels[i];
    count[c]++;
    const xo = i * d, co = c * d;
    for (let j = 0; j < d; j++) out[co + j] += x[xo + j];
  }
  const taken = new Set<number>();
  for (let c = 0; c < k; c++) {
    if (count[c] === 0) {
      let far = -1;
      for (let i = 0; i < n; i++) {
        if (!taken.has(i) && (far < 0 || dists[i] > dists[far])) far = i;
      }
      taken.add(far);
      out.set(x.subarray(far * d, far * d + d), c * d);
      continue;
    }
    for (let j = 0; j < d; j++) out[c * d + j] /= count[c];
  }
}

/** One start: Lloyd iterations from `centers` (updated in place). */
function lloyd(
  x: Float64Array,
  n: number,
  d: number,
  k: number,
  centers: Float64Array,
  maxIter: number,
  tol: number,
): { labels: Int32Array; inertia: number; iterations: number } {
  let labels = new Int32Array(n), next = new Int32Array(n);
  const dists = new Float64Array(n);
  const updated = new Float64Array(k * d);
  let inertia = assign(x, n, d, centers, k, labels, dists);
  let it = 0;
  while (it < maxIter) {
    it++;
    updateCenters(x, n, d, k, labels, dists, updated);
    let shift = 0;
    for (let j = 0; j < k * d; j++) shift += (updated[j] - centers[j]) ** 2;
    centers.set(updated);
    inertia = assign(x, n, d, centers, k, next, dists);
    [labels, next] = [next, labels];
    // Labels still equal means the centres are already the means: a fixed point.
    if (labels.every((v, i) => v === next[i]) || shift <= tol) break;
  }
  return { labels, inertia, iterations: it };
}

/**
 * k-means with `restarts` greedy k-means++ starts drawn in turn from one `Rng(seed)`, each run
 * by Lloyd iterations; returns the start with the lowest inertia (the first on ties).
 * Deterministic for a given seed.
 */
export function kmeans(
  x: readonly ArrayLike<number>[],
  k: number,
  opts: KMeansOptions = {},
): KMeansResult {
  const n = x.length;
  if (!Number.isInteger(k) || k < 1 || k > n) {
    throw new ClusterInputError(`kmeans: k = ${k}, expected an integer in 1..${n} (points)`);
  }
  const d = x[0].length;
  const flat = new Float64Array(n * d);
  x.forEach((row, i) => {
    if (row.length !== d) {
      throw new ClusterInputError(`kmeans: x[${i}] has ${row.length} values, expected ${d}`);
    }
    for (let j = 0; j < d; j++) flat[i * d + j] = row[j];
  });
  // sklearn's tolerance is relative to the data's spread: tol * mean(var(x, axis=0)).
  let meanVar = 0;
  for (let j = 0; j < d; j++) {
    let m = 0, v = 0;
    for (let i = 0; i < n; i++) m += flat[i * d + j] / n;
    for (let i = 0; i < n; i++) v += (flat[i * d + j] - m) ** 2 / n;
    meanVar += v / d;
  }
  const tol = (opts.tol ?? 1e-4) * meanVar;
  const rng = new Rng(opts.seed ?? 0);
  let best: KMeansResult | undefined;
  for (let r = 0; r < (opts.restarts ?? 10); r++) {
    const centers = kmeansPlusPlus(flat, n, d, k, rng);
    const res = lloyd(flat, n, d, k, centers, opts.maxIter ?? 300, tol);
    if (!best || res.inertia < best.inertia) {
      best = {
        labels: Array.from(res.labels),
        centroids: Array.from({ length: k }, (_, c) => centers.slice(c * d, c * d + d)),
        inertia: res.inertia,
        iterations: res.iterations,
      };
    }
  }
  if (!best) throw new ClusterInputError(`kmeans: restarts must be at least 1`);
  return best;
}

/** Homogeneity, completeness and their harmonic mean (V-measure, beta = 1). */
export interface VMeasure {
  homogeneity: number;
  completeness: number;
  vMeasure: number;
}

/** Sizes of the classes of a labelling. */
function counts<L>(labels: ArrayLike<L>): Map<L, number> {
  const m = new Map<L, number>();
  for (let i = 0; i < labels.length; i++) m.set(labels[i], (m.get(labels[i]) ?? 0) + 1);
  return m;
}

/** Entropy (nats) of a labelling from its class sizes; 0 for a single class. */
function entropy(sizes: Iterable<number>): number {
  const pi = [...sizes];
  if (pi.length <= 1) return 0;
  const sum = pi.reduce((a, b) => a + b, 0);
  let h = 0;
  for (const p of pi) h -= (p / sum) * (Math.log(p) - Math.log(sum));
  return h;
}

/**
 * Homogeneity, completeness and V-measure of a clustering against true classes, as
 * sklearn.metrics.homogeneity_completeness_v_measure (natural logs; a single-class side scores
 * 1; V = 0 when both are 0; any label values, compared with ===).
 */
export function vMeasure<A, B>(labelsTrue: ArrayLike<A>, labelsPred: ArrayLike<B>): VMeasure {
  const n = labelsTrue.length;
  if (labelsPred.length !== n) {
    throw new ClusterInputError(`vMeasure: ${n} true labels, ${labelsPred.length} predicted`);
  }
  if (n === 0) return { homogeneity: 1, completeness: 1, vMeasure: 1 };
  const ci = counts(labelsTrue), ck = counts(labelsPred);
  const joint = new Map<A, Map<B, number>>();
  for (let i = 0; i < n; i++) {
    const row = joint.get(labelsTrue[i]) ?? new Map<B, number>();
    row.set(labelsPred[i], (row.get(labelsPred[i]) ?? 0) + 1);
    joint.set(labelsTrue[i], row);
  }
  const hC = entropy(ci.values()), hK = entropy(ck.values());
  // Mutual information written as sklearn's mutual_info_score computes it, for equal rounding.
  let mi = 0;
  if (ci.size > 1 && ck.size > 1) {
    for (const [a, row] of joint) {
      for (const [b, nab] of row) {
        const p = nab / n;
        const term = p * (Math.log(nab) - Math.log(n)) +
          p * (-Math.log(ci.get(a)! * ck.get(b)!) + 2 * Math.log(n));
        if (Math.abs(term) >= Number.EPSILON) mi += term;
      }
    }
    mi = Math.max(0, mi);
  }
  const homogeneity = hC ? mi / hC : 1;
  const completeness = hK ? mi / hK : 1;
  const vMeasure = homogeneity + completeness === 0
    ? 0
    : (2 * homogeneity * completeness) / (homogeneity + completeness);
  return { homogeneity, completeness, vMeasure };
}
