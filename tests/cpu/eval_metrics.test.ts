/**
 * Evaluation metrics, logistic regression and clustering against scipy/sklearn goldens
 * (tests/goldens/eval_metrics.json, made by make_eval_goldens.py).
 */

import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import {
  accuracy,
  ClassifierInputError,
  fitLogReg,
  indexLabels,
  macroF1,
  predict,
  predictProba,
} from "../../src/eval/classify.ts";
import { ClusterInputError, kmeans, vMeasure } from "../../src/eval/cluster.ts";
import { mrrAtK, ndcgAtK, pearson, recallAtK, spearman } from "../../src/eval/metrics.ts";

interface Golden {
  version: number;
  correlation: { name: string; x: number[]; y: number[]; spearman: number; pearson: number }[];
  retrieval: {
    ranking: number[];
    qrels: [number, number][];
    "ndcg@10": number;
    "mrr@10": number;
    "recall@100": number;
  }[];
  logreg: {
    C: number;
    classes: number;
    x_train: number[][];
    y_train: number[];
    x_test: number[][];
    y_test: number[];
    pred_train: number[];
    pred_test: number[];
    test_accuracy: number;
    test_macro_f1: number;
    objective_sklearn: number;
    objective_min: number;
  };
  f1: { name: string; true: number[]; pred: number[]; accuracy: number; macro_f1: number }[];
  vmeasure: {
    name: string;
    true: number[];
    pred: number[];
    homogeneity: number;
    completeness: number;
    v_measure: number;
  }[];
  kmeans: { k: number; x: number[][]; true: number[]; sklearn_labels: number[]; inertia: number };
}

const G: Golden = JSON.parse(
  readFileSync(new URL("../goldens/eval_metrics.json", import.meta.url), "utf8"),
);
assert.equal(G.version, 1);

const f32rows = (rows: number[][]) => rows.map((r) => Float32Array.from(r));

function close(actual: number, expected: number, tol: number, what: string) {
  assert.ok(
    Math.abs(actual - expected) <= tol,
    `${what}: got ${actual}, expected ${expected} (|diff| ${Math.abs(actual - expected)})`,
  );
}

function agreement(a: readonly number[], b: readonly number[]): number {
  return a.filter((v, i) => v === b[i]).length / a.length;
}

test("spearman (average ranks for ties) and pearson equal scipy", () => {
  for (const c of G.correlation) {
    close(spearman(c.x, c.y), c.spearman, 1e-12, `${c.name} spearman`);
    close(pearson(c.x, c.y), c.pearson, 1e-12, `${c.name} pearson`);
  }
});

test("nDCG@10, MRR@10, recall@100 equal the explicit pytrec_eval-style formulas", () => {
  G.retrieval.forEach((q, i) => {
    const gains = new Map(q.qrels);
    close(ndcgAtK(q.ranking, gains, 10), q["ndcg@10"], 1e-12, `query ${i} nDCG@10`);
    close(mrrAtK(q.ranking, gains, 10), q["mrr@10"], 1e-12, `query ${i} MRR@10`);
    close(recallAtK(q.ranking, gains, 100), q["recall@100"], 1e-12, `query ${i} recall@100`);
  });
});

test("accuracy and macro-F1 equal sklearn, labels on one side only included", () => {
  for (const c of G.f1) {
    close(accuracy(c.true, c.pred), c.accuracy, 1e-12, `${c.name} accuracy`);
    close(macroF1(c.true, c.pred), c.macro_f1, 1e-12, `${c.name} macro-F1`);
  }
  assert.equal(macroF1(["a", "b"], ["a", "b"]), 1);
  assert.throws(() => accuracy([1, 2], [1]), ClassifierInputError);
});

test("logistic regression reaches sklearn's optimum and predictions on the toy set", () => {
  const L = G.logreg;
  const xtr = f32rows(L.x_train), xte = f32rows(L.x_test);
  // Tight tolerance: the objective must match the reference minimum closely.
  const tight = fitLogReg(xtr, L.y_train, { c: L.C, tol: 1e-9, maxIter: 2000 });
  assert.ok(tight.converged, `not converged after ${tight.iterations} iterations`);
  close(tight.objective, L.objective_min, 1e-7 * L.objective_min, "objective vs scipy minimum");
  assert.ok(tight.objective <= L.objective_sklearn * (1 + 1e-9), "worse than sklearn's optimum");
  // Default options, as the harness will use them.
  const model = fitLogReg(xtr, L.y_train);
  const predTe = predict(model, xte), predTr = predict(model, xtr);
  close(accuracy(L.y_test, predTe), L.test_accuracy, 0.01, "test accuracy");
  close(macroF1(L.y_test, predTe), L.test_macro_f1, 0.02, "test macro-F1");
  assert.ok(
    agreement(predTe, L.pred_test) >= 0.98,
    `test agreement ${agreement(predTe, L.pred_test)}`,
  );
  assert.ok(
    agreement(predTr, L.pred_train) >= 0.98,
    `train agreement ${agreement(predTr, L.pred_train)}`,
  );
  const p = predictProba(model, xte.slice(0, 3));
  for (const row of p) close(row.reduce((a, b) => a + b, 0), 1, 1e-12, "probabilities sum");
});

test("logistic regression: standardisation is scale-invariant and folded into the weights", () => {
  const L = G.logreg;
  const x = f32rows(L.x_train);
  // Column 0 x 1000 and column 1 + 50: standardised fits must not notice.
  const warped = x.map((r) => r.map((v, j) => (j === 0 ? v * 1000 : j === 1 ? v + 50 : v)));
  const a = fitLogReg(x, L.y_train, { standardize: true, tol: 1e-9 });
  const b = fitLogReg(warped, L.y_train, { standardize: true, tol: 1e-9 });
  close(a.objective, b.objective, 1e-6 * a.objective, "objective under rescaling");
  assert.ok(agreement(predict(a, x), predict(b, warped)) >= 0.99);
  close(a.weights[0], b.weights[0] * 1000, 1e-4 * Math.abs(a.weights[0]) + 1e-9, "folded weight");
  // Deterministic: the same inputs give bit-identical weights.
  assert.deepEqual(fitLogReg(x, L.y_train).weights, fitLogReg(x, L.y_train).weights);
});

test("logistic regression rejects bad inputs and maps string labels", () => {
  const x = [new Float32Array([1, 2]), new Float32Array([3, 4])];
  assert.throws(() => fitLogReg(x, [0]), ClassifierInputError);
  assert.throws(() => fitLogReg(x, [0, -1]), ClassifierInputError);
  assert.throws(() => fitLogReg([x[0], new Float32Array(3)], [0, 1]), /x\[1\] has 3 values/);
  assert.deepEqual(indexLabels(["b", "a", "b"]), { ids: [1, 0, 1], names: ["a", "b"] });
  assert.throws(() => indexLabels(["c"], ["a", "b"]), ClassifierInputError);
});

test("V-measure, homogeneity, completeness equal sklearn to 1e-9", () => {
  for (const c of G.vmeasure) {
    const v = vMeasure(c.true, c.pred);
    close(v.homogeneity, c.homogeneity, 1e-9, `${c.name} homogeneity`);
    close(v.completeness, c.completeness, 1e-9, `${c.name} completeness`);
    close(v.vMeasure, c.v_measure, 1e-9, `${c.name} V-measure`);
  }
  // Any label type: strings against numbers.
  close(vMeasure(["x", "x", "y"], [7, 7, 2]).vMeasure, 1, 1e-12, "string labels");
  assert.throws(() => vMeasure([1, 2], [1]), ClusterInputError);
});

test("k-means recovers sklearn's clustering of separated blobs, same inertia", () => {
  const K = G.kmeans;
  const x = f32rows(K.x);
  const res = kmeans(x, K.k, { seed: 0 });
  close(vMeasure(K.sklearn_labels, res.labels).vMeasure, 1, 1e-9, "V-measure vs sklearn labels");
  close(vMeasure(K.true, res.labels).vMeasure, 1, 1e-9, "V-measure vs true blobs");
  close(res.inertia, K.inertia, 1e-9 * K.inertia, "inertia");
  // Same seed, same answer; centroids are the means of their points.
  assert.deepEqual(kmeans(x, K.k, { seed: 0 }).labels, res.labels);
  const members = x.filter((_, i) => res.labels[i] === 0);
  close(res.centroids[0][2], members.reduce((a, r) => a + r[2], 0) / members.length, 1e-9, "mean");
  assert.throws(() => kmeans(x, 0), ClusterInputError);
  assert.throws(() => kmeans(x.slice(0, 3), 4), ClusterInputError);
});

test("k-means: one restart per seed is deterministic; more restarts never raise inertia", () => {
  const x = f32rows(G.logreg.x_train); // overlapping blobs: starts matter
  const one = kmeans(x, 5, { seed: 3, restarts: 1 });
  assert.deepEqual(kmeans(x, 5, { seed: 3, restarts: 1 }), one);
  const many = kmeans(x, 5, { seed: 3, restarts: 8 });
  // The first of the 8 starts is the single start above: the best can only be lower.
  assert.ok(many.inertia <= one.inertia);
  assert.equal(new Set(many.labels).size, 5);
});
