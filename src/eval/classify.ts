/**
 * Linear probes on embeddings: multinomial logistic regression fitted by L-BFGS, plus accuracy
 * and macro-F1. Deterministic: weights start at zero and nothing is random, so a fit is a pure
 * function of its inputs.
 *
 * Objective (sklearn's LogisticRegression with C, multinomial, lbfgs):
 *   sum_i -log softmax(W x_i + b)[y_i] + 1/(2C) ||W||^2      (no penalty on the intercept b)
 * We minimise it divided by n (same minimiser, gradients of order 1 whatever n is), so `tol` is
 * on the gradient of the mean loss. Legend: n samples, d features, K classes.
 */

/** Inputs of the wrong shape or labels out of range; the message names the argument and row. */
export class ClassifierInputError extends Error {
  /** Error class name. */
  override name = "ClassifierInputError";
}

/** Options of {@link fitLogReg}. */
export interface LogRegOptions {
  /** Inverse L2 strength, as sklearn's C (default 1). */
  c?: number;
  /** L-BFGS iterations at most (default 500). */
  maxIter?: number;
  /** Stop when every gradient entry of the mean objective is within tol (default 1e-6). */
  tol?: number;
  /** Scale features to zero mean, unit variance before fitting (default false). */
  standardize?: boolean;
  /** Number of classes (default max(y) + 1). */
  numClasses?: number;
  /** L-BFGS history length (default 10). */
  memory?: number;
}

/** A fitted model. Weights act on raw features (standardisation is folded in). */
export interface LogRegModel {
  numClasses: number;
  dim: number;
  /** [K, d] row-major. */
  weights: Float64Array;
  /** [K]. */
  bias: Float64Array;
  /** L-BFGS iterations run. */
  iterations: number;
  /** Whether the gradient tolerance (or a vanishing decrease) was reached before maxIter. */
  converged: boolean;
  /** Final objective: sum of log-losses + 1/(2C)||W||^2 in the fitted (maybe standardised) space. */
  objective: number;
}

/** Copies rows into one [n, d] Float64Array, checking every row's length. */
function packRows(x: readonly ArrayLike<number>[], d: number, what: string): Float64Array {
  const out = new Float64Array(x.length * d);
  x.forEach((row, i) => {
    if (row.length !== d) {
      throw new ClassifierInputError(`${what}: x[${i}] has ${row.length} values, expected ${d}`);
    }
    for (let j = 0; j < d; j++) out[i * d + j] = row[j];
  });
  return out;
}

/**
 * z[i, k] = x_i . w_k + b_k. Two samples by two classes per pass over j: four accumulators and
 * four loads per step instead of two loads per product (the JIT does not vectorise).
 */
function logits(
  x: Float64Array,
  n: number,
  d: number,
  w: Float64Array,
  b: Float64Array,
  K: number,
  z: Float64Array,
) {
  let i = 0;
  for (; i + 1 < n; i += 2) {
    const x0 = i * d, x1 = x0 + d;
    let k = 0;
    for (; k + 1 < K; k += 2) {
      const w0 = k * d, w1 = w0 + d;
      let a00 = 0, a01 = 0, a10 = 0, a11 = 0;
      for (let j = 0; j < d; j++) {
        const p = x[x0 + j], q = x[x1 + j], u = w[w0 + j], v = w[w1 + j];
        a00 += p * u;
        a01 += p * v;
        a10 += q * u;
        a11 += q * v;
      }
      z[i * K + k] = a00 + b[k];
      z[i * K + k + 1] = a01 + b[k + 1];
      z[(i + 1) * K + k] = a10 + b[k];
      z[(i + 1) * K + k + 1] = a11 + b[k + 1];
    }
    for (; k < K; k++) {
      const w0 = k * d;
      let a0 = 0, a1 = 0;
      for (let j = 0; j < d; j++) {
        a0 += x[x0 + j] * w[w0 + j];
        a1 += x[x1 + j] * w[w0 + j];
      }
      z[i * K + k] = a0 + b[k];
      z[(i + 1) * K + k] = a1 + b[k];
    }
  }
  for (; i < n; i++) {
    for (let k = 0; k < K; k++) {
      let a = 0;
      for (let j = 0; j < d; j++) a += x[i * d + j] * w[k * d + j];
      z[i * K + k] = a + b[k];
    }
  }
}

/** g[k, :] += sum_i r[i, k] x_i, two classes by two samples per pass over j. */
function accumulateGrad(
  x: Float64Array,
  n: number,
  d: number,
  r: Float64Array,
  K: number,
  g: Float64Array,
) {
  let k = 0;
  for (; k + 1 < K; k += 2) {
    const g0 = k * d, g1 = g0 + d;
    let i = 0;
    for (; i + 1 < n; i += 2) {
      const r00 = r[i * K + k], r01 = r[i * K + k + 1];
      const r10 = r[(i + 1) * K + k], r11 = r[(i + 1) * K + k + 1];
      const x0 = i * d, x1 = x0 + d;
      for (let j = 0; j < d; j++) {
        const p = x[x0 + j], q = x[x1 + j];
        g[g0 + j] += r00 * p + r10 * q;
        g[g1 + j] += r01 * p + r11 * q;
      }
    }
    for (; i < n; i++) {
      const r0 = r[i * K + k], r1 = r[i * K + k + 1];
      for (let j = 0; j < d; j++) {
        g[g0 + j] += r0 * x[i * d + j];
        g[g1 + j] += r1 * x[i * d + j];
      }
    }
  }
  for (; k < K; k++) {
    for (let i = 0; i < n; i++) {
      const a = r[i * K + k];
      for (let j = 0; j < d; j++) g[k * d + j] += a * x[i * d + j];
    }
  }
}

/**
 * Mean penalised log-loss at theta = [W (K*d), b (K)] and its gradient into `grad`. `z` is
 * [n, K] scratch; it ends holding (softmax - onehot) / n.
 */
function lossAndGrad(
  theta: Float64Array,
  grad: Float64Array,
  x: Float64Array,
  y: Int32Array,
  n: number,
  d: number,
  K: number,
  lambda: number,
  z: Float64Array,
): number {
  const w = theta.subarray(0, K * d), b = theta.subarray(K * d);
  logits(x, n, d, w, b, K, z);
  let loss = 0;
  const gb = grad.subarray(K * d);
  gb.fill(0);
  for (let i = 0; i < n; i++) {
    const row = i * K;
    let m = -Infinity;
    for (let k = 0; k < K; k++) m = Math.max(m, z[row + k]);
    const yi = y[i];
    // -log p_y = log(sum exp(z - m)) - (z_y - m): finite even when p_y underflows.
    loss -= z[row + yi] - m;
    let s = 0;
    for (let k = 0; k < K; k++) {
      const e = Math.exp(z[row + k] - m);
      z[row + k] = e;
      s += e;
    }
    loss += Math.log(s);
    const inv = 1 / (s * n);
    for (let k = 0; k < K; k++) {
      const r = z[row + k] * inv;
      z[row + k] = r;
      gb[k] += r;
    }
    z[row + yi] -= 1 / n;
    gb[yi] -= 1 / n;
  }
  const gw = grad.subarray(0, K * d);
  let sq = 0;
  for (let j = 0; j < K * d; j++) {
    sq += w[j] * w[j];
    gw[j] = lambda * w[j];
  }
  accumulateGrad(x, n, d, z, K, gw);
  return loss / n + 0.5 * lambda * sq;
}

function dotv(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function maxAbs(a: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * Minimises f by L-BFGS with a backtracking (Armijo) line search. Convex smooth objectives
 * only: pairs with s.y <= 0 are skipped rather than repaired by a Wolfe search.
 */
function lbfgs(
  fg: (theta: Float64Array, grad: Float64Array) => number,
  theta: Float64Array,
  maxIter: number,
  tol: number,
  memory: number,
): { f: number; iterations: number; converged: boolean } {
  const p = theta.length;
  let g = new Float64Array(p), gNew = new Float64Array(p);
  const dir = new Float64Array(p), next = new Float64Array(p);
  const S: Float64Array[] = [], Y: Float64Array[] = [], rho: number[] = [];
  const alpha = new Float64Array(memory);
  let f = fg(theta, g);
  for (let iter = 0; iter < maxIter; iter++) {
    if (maxAbs(g) <= tol) return { f, iterations: iter, converged: true };
    // Two-loop recursion: dir = -H g.
    for (let j = 0; j < p; j++) dir[j] = -g[j];
    for (let m = S.length - 1; m >= 0; m--) {
      alpha[m] = rho[m] * dotv(S[m], dir);
      const ym = Y[m];
      for (let j = 0; j < p; j++) dir[j] -= alpha[m] * ym[j];
    }
    const last = S.length - 1;
    const h0 = last >= 0 ? 1 / (rho[last] * dotv(Y[last], Y[last])) : 1 / Math.sqrt(dotv(g, g));
    for (let j = 0; j < p; j++) dir[j] *= h0;
    for (let m = 0; m < S.length; m++) {
      const beta = rho[m] * dotv(Y[m], dir);
      const sm = S[m];
      for (let j = 0; j < p; j++) dir[j] += (alpha[m] - beta) * sm[j];
    }
    let slope = dotv(g, dir);
    if (!(slope < 0)) {
      // Not a descent direction (numerical trouble): restart from steepest descent.
      S.length = Y.length = rho.length = 0;
      const norm = Math.sqrt(dotv(g, g));
      for (let j = 0; j < p; j++) dir[j] = -g[j] / norm;
      slope = dotv(g, dir);
    }
    let step = 1, fNew = 0;
    for (let tries = 0;; tries++) {
      for (let j = 0; j < p; j++) next[j] = theta[j] + step * dir[j];
      fNew = fg(next, gNew);
      if (fNew <= f + 1e-4 * step * slope) break;
      if (tries === 40) return { f, iterations: iter, converged: false };
      // Minimiser of the quadratic through f, slope and fNew, kept within [0.1, 0.5] x step.
      const q = -slope * step * step / (2 * (fNew - f - slope * step));
      step = Math.min(0.5 * step, Math.max(0.1 * step, Number.isFinite(q) ? q : 0.5 * step));
    }
    const s = new Float64Array(p), yv = new Float64Array(p);
    for (let j = 0; j < p; j++) {
      s[j] = next[j] - theta[j];
      yv[j] = gNew[j] - g[j];
    }
    const sy = dotv(s, yv);
    if (sy > 1e-12 * dotv(yv, yv)) {
      if (S.length === memory) {
        S.shift();
        Y.shift();
        rho.shift();
      }
      S.push(s);
      Y.push(yv);
      rho.push(1 / sy);
    }
    theta.set(next);
    [g, gNew] = [gNew, g];
    const decrease = f - fNew;
    f = fNew;
    // A step that no longer changes f in float64 cannot make further progress.
    if (decrease <= 1e-15 * Math.max(1, Math.abs(f))) {
      return { f, iterations: iter + 1, converged: true };
    }
  }
  return { f, iterations: maxIter, converged: maxAbs(g) <= tol };
}

/**
 * Fits multinomial logistic regression, L2-regularised as sklearn's (C, no intercept penalty),
 * by L-BFGS from zero weights. `y[i]` is a class index 0..K-1. With `standardize`, features are
 * centred and scaled by their (population) standard deviation before fitting, so the penalty
 * acts on standardised weights; the returned weights act on raw features either way.
 */
export function fitLogReg(
  x: readonly ArrayLike<number>[],
  y: readonly number[],
  opts: LogRegOptions = {},
): LogRegModel {
  const n = x.length;
  if (n === 0) throw new ClassifierInputError("fitLogReg: no samples");
  if (y.length !== n) throw new ClassifierInputError(`fitLogReg: ${n} rows in x, ${y.length} in y`);
  const d = x[0].length;
  let K = opts.numClasses ?? 0;
  for (const v of y) K = Math.max(K, v + 1);
  const yi = Int32Array.from(y);
  yi.forEach((v, i) => {
    if (!Number.isInteger(y[i]) || v < 0 || v >= K) {
      throw new ClassifierInputError(`fitLogReg: y[${i}] = ${y[i]} is not a class in 0..${K - 1}`);
    }
  });
  const c = opts.c ?? 1;
  if (!(c > 0)) throw new ClassifierInputError(`fitLogReg: C must be positive, got ${c}`);
  const xs = packRows(x, d, "fitLogReg");
  const mean = new Float64Array(d), scale = new Float64Array(d).fill(1);
  if (opts.standardize) {
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += xs[i * d + j] / n;
    const vr = new Float64Array(d);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < d; j++) vr[j] += (xs[i * d + j] - mean[j]) ** 2 / n;
    }
    // A constant feature keeps scale 1: it is centred to zero and carries no information.
    for (let j = 0; j < d; j++) scale[j] = vr[j] > 0 ? Math.sqrt(vr[j]) : 1;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < d; j++) xs[i * d + j] = (xs[i * d + j] - mean[j]) / scale[j];
    }
  }
  const theta = new Float64Array(K * d + K);
  const z = new Float64Array(n * K);
  const lambda = 1 / (c * n);
  const res = lbfgs(
    (t, g) => lossAndGrad(t, g, xs, yi, n, d, K, lambda, z),
    theta,
    opts.maxIter ?? 500,
    opts.tol ?? 1e-6,
    opts.memory ?? 10,
  );
  // Fold standardisation in: w.((x - mean) / scale) + b = (w / scale).x + (b - sum w mean / scale).
  const weights = theta.slice(0, K * d), bias = theta.slice(K * d);
  for (let k = 0; k < K; k++) {
    for (let j = 0; j < d; j++) {
      weights[k * d + j] /= scale[j];
      bias[k] -= weights[k * d + j] * mean[j];
    }
  }
  return {
    numClasses: K,
    dim: d,
    weights,
    bias,
    iterations: res.iterations,
    converged: res.converged,
    objective: res.f * n,
  };
}

/** Class scores W x + b, one [K] row per input. */
export function decisionFunction(
  model: LogRegModel,
  x: readonly ArrayLike<number>[],
): Float64Array[] {
  const { dim: d, numClasses: K } = model;
  const xs = packRows(x, d, "decisionFunction");
  const z = new Float64Array(x.length * K);
  logits(xs, x.length, d, model.weights, model.bias, K, z);
  return Array.from({ length: x.length }, (_, i) => z.subarray(i * K, (i + 1) * K));
}

/** Class probabilities (softmax of the scores), one [K] row per input. */
export function predictProba(model: LogRegModel, x: readonly ArrayLike<number>[]): Float64Array[] {
  return decisionFunction(model, x).map((z) => {
    const m = Math.max(...z);
    const e = z.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  });
}

/** Most likely class per input (lowest index on ties, as numpy's argmax). */
export function predict(model: LogRegModel, x: readonly ArrayLike<number>[]): number[] {
  return decisionFunction(model, x).map((z) => {
    let best = 0;
    for (let k = 1; k < z.length; k++) if (z[k] > z[best]) best = k;
    return best;
  });
}

function checkPair(yTrue: ArrayLike<unknown>, yPred: ArrayLike<unknown>, what: string) {
  if (yTrue.length !== yPred.length) {
    throw new ClassifierInputError(
      `${what}: ${yTrue.length} true labels, ${yPred.length} predicted`,
    );
  }
  if (yTrue.length === 0) throw new ClassifierInputError(`${what}: no labels`);
}

/** Fraction of predictions equal to the truth. */
export function accuracy<L>(yTrue: ArrayLike<L>, yPred: ArrayLike<L>): number {
  checkPair(yTrue, yPred, "accuracy");
  let hit = 0;
  for (let i = 0; i < yTrue.length; i++) if (yTrue[i] === yPred[i]) hit++;
  return hit / yTrue.length;
}

/**
 * Macro-averaged F1, as sklearn's f1_score(average="macro"): the unweighted mean of per-class
 * F1 over every label that occurs in yTrue or yPred; a class with no true and no correct
 * predictions scores 0 (sklearn's zero_division default).
 */
export function macroF1<L>(yTrue: ArrayLike<L>, yPred: ArrayLike<L>): number {
  checkPair(yTrue, yPred, "macroF1");
  const tp = new Map<L, number>(), nTrue = new Map<L, number>(), nPred = new Map<L, number>();
  for (let i = 0; i < yTrue.length; i++) {
    const t = yTrue[i], p = yPred[i];
    nTrue.set(t, (nTrue.get(t) ?? 0) + 1);
    nPred.set(p, (nPred.get(p) ?? 0) + 1);
    if (t === p) tp.set(t, (tp.get(t) ?? 0) + 1);
  }
  const labels = new Set([...nTrue.keys(), ...nPred.keys()]);
  let sum = 0;
  for (const l of labels) {
    // F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (true count + predicted count).
    sum += (2 * (tp.get(l) ?? 0)) / ((nTrue.get(l) ?? 0) + (nPred.get(l) ?? 0));
  }
  return sum / labels.size;
}

/**
 * Maps string labels to class indices. Without `names`, classes are the sorted distinct labels
 * (as sklearn's LabelEncoder); with `names`, a label outside them throws.
 */
export function indexLabels(
  labels: readonly string[],
  names?: readonly string[],
): { ids: number[]; names: string[] } {
  const classes = names ? [...names] : [...new Set(labels)].sort();
  const index = new Map(classes.map((c, i) => [c, i]));
  const ids = labels.map((l, i) => {
    const id = index.get(l);
    if (id === undefined) {
      throw new ClassifierInputError(`indexLabels: labels[${i}] "${l}" is not a known class`);
    }
    return id;
  });
  return { ids, names: classes };
}
