"""Patch- and slide-level metrics of per-patch scores: AUROC, AP, the best-F1
threshold and precision/recall/F1 at a threshold (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold``; NaNs when undefined."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels, bool)
    if labels.size == 0 or not labels.any():
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[
            :-1
        ]
    i = int(np.argmax(f1))
    return float(thresholds[i]), float(f1[i])


def patch_metrics(
    test_labels: np.ndarray, test_scores: np.ndarray, threshold: float | None = None
) -> dict:
    """AUROC, AP and (given a threshold) precision/recall/F1 of per-patch scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(test_labels, bool)
    s = np.asarray(test_scores, float)
    out = {
        "n_patches": int(y.size),
        "n_positive": int(y.sum()),
        "patch_auroc": math.nan,
        "patch_ap": math.nan,
    }
    if y.size and 0 < y.sum() < y.size:
        out["patch_auroc"] = float(roc_auc_score(y, s))
        out["patch_ap"] = float(average_precision_score(y, s))
    out["threshold"] = math.nan if threshold is None else float(threshold)
    out.update(precision=math.nan, recall=math.nan, f1=math.nan)
    if threshold is not None and np.isfinite(threshold) and y.size:
        pred = s >= threshold
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else math.nan
        p, r = out["precision"], out["recall"]
        out["f1"] = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    return out


def slide_auroc(slide_labels, slide_scores) -> float:
    """ROC AUC of pooled slide scores; NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(slide_labels, bool)
    if y.size == 0 or y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(slide_scores, float)))

