"""Classification and retrieval metrics in NumPy (no extra dependency)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_report(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix (rows = truth).

    Macro averages are over classes present in `y_true`.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
            if present[i]
        },
        "confusion_matrix": cm.tolist(),
    }


def precision_at_k(embeddings: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k nearest neighbours (cosine, self excluded) that share its group."""
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(embeddings) - 1)
    nearest = np.argpartition(-sims, k, axis=1)[:, :k]
    return float((groups[nearest] == groups[:, None]).mean())


def auroc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Probability a positive scores above a negative (ties count half): the Mann-Whitney AUROC."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_vals = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
