"""How well an identity assignment matches the ground truth, over the same samples.

Pairwise precision: of the sample pairs put in one identity, the fraction that are one
person; recall: of the pairs that are one person, the fraction put together; F1 their harmonic
mean. NMI: mutual information normalised by the mean of the two entropies (arithmetic mean, as
scikit-learn's default). All from the contingency table, O(n log n).
"""
from __future__ import annotations

import numpy as np


def _contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    pairs, counts = np.unique(t.astype(np.int64) * (p.max() + 1) + p, return_counts=True)
    return counts, np.bincount(t), np.bincount(p)


def _pairs(c: np.ndarray) -> float:
    c = c.astype(np.float64)
    return float((c * (c - 1) / 2).sum())


def pairwise_prf(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """true, pred: (n,) labels -> precision, recall, f1 over sample pairs."""
    true, pred = np.asarray(true), np.asarray(pred)
    if len(true) != len(pred):
        raise ValueError("label arrays differ in length")
    if len(true) == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    joint, t, p = _contingency(true, pred)
    tp, pred_pairs, true_pairs = _pairs(joint), _pairs(p), _pairs(t)
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def nmi(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true), np.asarray(pred)
    n = len(true)
    if n == 0:
        return float("nan")
    joint, t, p = _contingency(true, pred)
    _, ti = np.unique(true, return_inverse=True)
    _, pi = np.unique(pred, return_inverse=True)
    keys = ti.astype(np.int64) * (pi.max() + 1) + pi
    uk, first = np.unique(keys, return_index=True)
    pt, pp = t[ti[first]] / n, p[pi[first]] / n
    pj = joint / n
    mi = float((pj * np.log(pj / (pt * pp))).sum())
    h = lambda c: float(-(c / n * np.log(c / n)).sum())  # noqa: E731
    ht, hp = h(t), h(p)
    if ht == 0 and hp == 0:
        return 1.0
    denom = (ht + hp) / 2
    return mi / denom if denom > 0 else 0.0


def assignment_quality(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {**pairwise_prf(true, pred), "nmi": nmi(true, pred), "samples": int(len(true)),
            "identities": int(len(np.unique(pred))) if len(pred) else 0}
