#!/usr/bin/env python3
"""Reference values for gemkit's CPU evaluation code (src/eval/metrics.ts, classify.ts, cluster.ts).

Writes tests/goldens/eval_metrics.json. Rerun from the repository root with the system Python
(Debian python3-scipy, python3-sklearn; no torch needed):

    /usr/bin/python3 tests/goldens/make_eval_goldens.py

Deterministic: every draw comes from a fixed numpy seed, so a second run gives a byte-identical
file. All inputs that gemkit reads as float32 are rounded to float32 here first, and the
references are computed in float64 from those exact values.

Contents
  correlation  scipy.stats.spearmanr (average ranks for ties) and pearsonr on fixed arrays, some
               with many ties.
  retrieval    a toy run: per query a ranking (doc ids, best first) and graded judgments
               {doc: gain}; nDCG@10, MRR@10 and recall@100 by the explicit formulas below (not
               sklearn's ndcg_score, whose ideal ranking and tie handling differ):
                 DCG@k   = sum_{i=1..k} gain(doc at rank i) / log2(i + 1)   (unjudged: gain 0)
                 IDCG@k  = the same sum over the judged gains sorted in decreasing order
                 nDCG@k  = DCG@k / IDCG@k  (0 when IDCG = 0)
                 MRR@k   = 1 / rank of the first doc with gain > 0 within the top k, else 0
                 R@k     = |{gain > 0} in top k| / |{gain > 0}|  (0 when nothing is relevant)
               This is pytrec_eval's ndcg_cut / recip_rank / recall definition (trec_eval treats
               gain <= 0 as not relevant).
  logreg       sklearn LogisticRegression(C=1, lbfgs, multinomial, tol=1e-10, max_iter=10000) on
               make_blobs(300 points, 5 classes, 8 dims, cluster_std=6: overlapping), trained on
               the first 200 points, tested on the last 100: predictions on both parts, test
               accuracy, and the objective sum_i log-loss + ||W||^2 / 2 at sklearn's solution and
               the lower one reached by an independent scipy L-BFGS-B fit of the same objective
               with tighter stopping (sklearn stops ~1e-7 short, relatively).
  f1           sklearn accuracy_score and f1_score(average="macro", zero_division=0) on fixed
               label arrays, with a class that occurs only in the predictions.
  vmeasure     sklearn homogeneity_completeness_v_measure on fixed label arrays, edge cases
               included (single class, single cluster, permuted identical labels).
  kmeans       sklearn KMeans(4 clusters, n_init=10, random_state=0) on well-separated blobs:
               labels (equal up to a permutation) and inertia.
"""

import json
import os

import numpy as np
import scipy
import sklearn
from scipy import optimize, stats
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, homogeneity_completeness_v_measure

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_metrics.json")


def f32(a):
    """Rounds to float32 and back, so the test reads exactly the values used here."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def correlation_cases():
    rng = np.random.default_rng(1)
    cases = []
    # Continuous values with ties from rounding to one decimal.
    x = np.round(rng.normal(size=60), 1)
    y = np.round(x + rng.normal(scale=0.8, size=60), 1)
    cases.append(("rounded_normals_ties", x, y))
    # STS-like: gold scores on a 0-5 grid of 0.2 (many ties) vs model cosines.
    gold = np.round(rng.uniform(0, 5, size=80) * 5) / 5
    cos = f32(np.tanh(gold / 5 + rng.normal(scale=0.3, size=80)))
    cases.append(("sts_like_grid_ties", cos, gold))
    # Integers with heavy ties on both sides, negatively related.
    a = rng.integers(0, 4, size=40).astype(np.float64)
    b = (3 - a + rng.integers(0, 2, size=40)).astype(np.float64)
    cases.append(("integer_heavy_ties", a, b))
    # No ties: plain ranks.
    u = rng.normal(size=25)
    cases.append(("no_ties", u, u**3 + rng.normal(scale=0.5, size=25)))
    out = []
    for name, p, q in cases:
        out.append({
            "name": name,
            "x": [float(v) for v in p],
            "y": [float(v) for v in q],
            "spearman": float(stats.spearmanr(p, q).correlation),
            "pearson": float(stats.pearsonr(p, q)[0]),
        })
    return out


def dcg(gains):
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(gains)))


def retrieval_metrics(ranking, qrels, k_ndcg=10, k_mrr=10, k_rec=100):
    gains = [qrels.get(d, 0) for d in ranking[:k_ndcg]]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k_ndcg]
    idcg = dcg(ideal)
    ndcg = dcg(gains) / idcg if idcg > 0 else 0.0
    mrr = 0.0
    for i, d in enumerate(ranking[:k_mrr]):
        if qrels.get(d, 0) > 0:
            mrr = 1.0 / (i + 1)
            break
    relevant = {d for d, g in qrels.items() if g > 0}
    recall = len(relevant & set(ranking[:k_rec])) / len(relevant) if relevant else 0.0
    return ndcg, mrr, recall


def retrieval_cases():
    rng = np.random.default_rng(2)
    n_docs = 300
    queries = []
    for q in range(12):
        # Graded judgments (gains 1-4) on a few docs, plus judged-not-relevant docs (gain 0).
        judged = rng.choice(n_docs, size=int(rng.integers(1, 15)), replace=False)
        qrels = {int(d): int(rng.integers(0, 5)) for d in judged}
        if q == 0:
            qrels = {int(d): 0 for d in judged}  # nothing relevant: every metric is 0
        # A ranking that favours relevant docs a little; some runs are shorter than 100.
        noise = rng.normal(size=n_docs)
        score = noise + np.array([0.8 * qrels.get(d, 0) for d in range(n_docs)])
        ranking = [int(d) for d in np.argsort(-score, kind="stable")]
        length = [300, 150, 60, 8][q % 4]
        ranking = ranking[:length]
        if q == 5:
            # Best doc first: MRR 1; and a perfect run for nDCG when all judged docs fit in 10.
            ranking = [d for d, _ in sorted(qrels.items(), key=lambda t: (-t[1], t[0]))] + [
                d for d in ranking if d not in qrels
            ]
        ndcg, mrr, recall = retrieval_metrics(ranking, qrels)
        queries.append({
            "ranking": ranking,
            "qrels": [[d, g] for d, g in sorted(qrels.items())],
            "ndcg@10": ndcg,
            "mrr@10": mrr,
            "recall@100": recall,
        })
    # Hand-checked case: relevant docs at ranks 2 and 4 with gains 3 and 1, a third relevant doc
    # (gain 2) unretrieved; DCG = 3/log2(3) + 1/log2(5), IDCG = 3 + 2/log2(3) + 1/2.
    hand = {"ranking": [10, 11, 12, 13, 14], "qrels": [[11, 3], [13, 1], [99, 2], [10, 0]]}
    ndcg, mrr, recall = retrieval_metrics(hand["ranking"], dict(hand["qrels"]))
    assert abs(ndcg - (3 / np.log2(3) + 1 / np.log2(5)) / (3 + 2 / np.log2(3) + 0.5)) < 1e-15
    assert mrr == 0.5 and abs(recall - 2 / 3) < 1e-15
    queries.append({**hand, "ndcg@10": ndcg, "mrr@10": mrr, "recall@100": recall})
    return queries


def logreg_objective(w_flat, x, y, n_classes, C):
    """sum_i -log softmax(x W^T + b)[y_i] + ||W||^2 / (2C), and its gradient."""
    d = x.shape[1]
    W = w_flat[: n_classes * d].reshape(n_classes, d)
    b = w_flat[n_classes * d:]
    z = x @ W.T + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].sum() + (W**2).sum() / (2 * C)
    r = np.exp(logp)
    r[np.arange(len(y)), y] -= 1
    gW = r.T @ x + W / C
    gb = r.sum(axis=0)
    return loss, np.concatenate([gW.ravel(), gb])


def logreg_case():
    x, y = make_blobs(n_samples=300, centers=5, n_features=8, cluster_std=6.0, random_state=7)
    x = f32(x)
    xtr, ytr, xte, yte = x[:200], y[:200], x[200:], y[200:]
    clf = LogisticRegression(C=1.0, solver="lbfgs", multi_class="multinomial", tol=1e-10,
                             max_iter=10000)
    clf.fit(xtr, ytr)
    assert clf.n_iter_[0] < 10000, "sklearn did not converge"
    theta = np.concatenate([clf.coef_.ravel(), clf.intercept_])
    obj, _ = logreg_objective(theta, xtr, ytr, 5, 1.0)
    # Independent check: scipy's L-BFGS-B on the objective written above reaches the same value.
    res = optimize.minimize(logreg_objective, np.zeros_like(theta), args=(xtr, ytr, 5, 1.0),
                            jac=True, method="L-BFGS-B",
                            options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 100000})
    # sklearn stops on L-BFGS-B's default relative-decrease test (factr 1e7), ~1e-7 short.
    assert abs(res.fun - obj) < 1e-6 * abs(obj), (res.fun, obj)
    pred_tr, pred_te = clf.predict(xtr), clf.predict(xte)
    acc = float((pred_te == yte).mean())
    assert 0.6 < acc < 0.97, f"toy set should overlap but be learnable, got accuracy {acc}"
    return {
        "C": 1.0,
        "classes": 5,
        "x_train": xtr.tolist(),
        "y_train": ytr.tolist(),
        "x_test": xte.tolist(),
        "y_test": yte.tolist(),
        "pred_train": pred_tr.tolist(),
        "pred_test": pred_te.tolist(),
        "test_accuracy": acc,
        "test_macro_f1": float(f1_score(yte, pred_te, average="macro")),
        "train_accuracy": float((pred_tr == ytr).mean()),
        "objective_sklearn": float(obj),
        "objective_min": float(min(res.fun, obj)),
    }


def f1_cases():
    rng = np.random.default_rng(4)
    t = rng.integers(0, 6, 120)
    cases = [
        ("noisy", t, np.where(rng.random(120) < 0.3, rng.integers(0, 6, 120), t)),
        # Class 3 is only predicted, class 2 only true: both count, with F1 0.
        ("label_only_on_one_side", np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 3, 0])),
        ("perfect", np.array([4, 1, 1, 9]), np.array([4, 1, 1, 9])),
    ]
    return [{"name": name, "true": [int(a) for a in t], "pred": [int(a) for a in p],
             "accuracy": float(accuracy_score(t, p)),
             "macro_f1": float(f1_score(t, p, average="macro", zero_division=0))}
            for name, t, p in cases]


def vmeasure_cases():
    rng = np.random.default_rng(3)
    # A relabelled copy of 8 classes with 20% of the points moved to a random cluster.
    t = rng.integers(0, 8, 150)
    noisy = np.where(rng.random(150) < 0.2, rng.integers(0, 8, 150), (t * 3 + 1) % 8)
    cases = [
        ("random_6_vs_4", rng.integers(0, 6, 200), rng.integers(0, 4, 200)),
        ("noisy_copy", t, noisy),
        ("permuted_identical", np.array([0, 0, 1, 1, 2, 2, 2]), np.array([5, 5, 3, 3, 9, 9, 9])),
        ("single_cluster", np.array([0, 1, 2, 0, 1, 2]), np.zeros(6, dtype=int)),
        ("single_class", np.zeros(6, dtype=int), np.array([0, 1, 2, 0, 1, 2])),
        ("both_single", np.zeros(5, dtype=int), np.ones(5, dtype=int)),
        ("singletons", np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3])),
    ]
    out = []
    for name, t, p in cases:
        h, c, v = homogeneity_completeness_v_measure(t, p)
        out.append({"name": name, "true": [int(a) for a in t], "pred": [int(a) for a in p],
                    "homogeneity": float(h), "completeness": float(c), "v_measure": float(v)})
    return out


def kmeans_case():
    x, y = make_blobs(n_samples=200, centers=4, n_features=5, cluster_std=0.6, random_state=1)
    x = f32(x)
    km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(x)
    _, _, v = homogeneity_completeness_v_measure(y, km.labels_)
    assert v == 1.0, "blobs must be separated enough for an exact recovery"
    return {"k": 4, "x": x.tolist(), "true": y.tolist(), "sklearn_labels": km.labels_.tolist(),
            "inertia": float(km.inertia_)}


def main():
    golden = {
        "version": 1,
        "generator": "make_eval_goldens.py",
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "correlation": correlation_cases(),
        "retrieval": retrieval_cases(),
        "logreg": logreg_case(),
        "f1": f1_cases(),
        "vmeasure": vmeasure_cases(),
        "kmeans": kmeans_case(),
    }
    text = json.dumps(golden, separators=(",", ":")) + "\n"
    assert len(text) < 200_000, f"golden is {len(text)} bytes"
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
