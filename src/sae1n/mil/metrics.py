"""Slide-level metrics of a MIL classifier."""

from __future__ import annotations

import warnings

import numpy as np


def slide_metrics(labels, probs, n_classes: int) -> dict[str, float]:
    """AUC, accuracy, balanced accuracy and F1 (+ quadratic weighted kappa
    for multi-class) from true labels (S,) and class probabilities (S, C).

    Binary AUC uses the positive-class probability; multi-class AUC is the
    mean one-vs-rest AUC over the classes present (as the paper's code).
    Metrics that are undefined (e.g. one class only) are NaN.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(labels), n_classes)
    out = {"auc": float("nan"), "acc": float("nan"), "bacc": float("nan"), "f1": float("nan")}
    if n_classes > 2:
        out["qwk"] = float("nan")
    if len(labels) == 0:
        return out
    preds = probs.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        present = np.unique(labels)
        if n_classes == 2:
            if len(present) == 2:
                out["auc"] = float(roc_auc_score(labels, probs[:, 1]))
        else:
            aucs = [
                roc_auc_score(labels == c, probs[:, c])
                for c in range(n_classes)
                if c in present and len(present) > 1
            ]
            if aucs:
                out["auc"] = float(np.mean(aucs))
        out["acc"] = float(accuracy_score(labels, preds))
        out["bacc"] = float(balanced_accuracy_score(labels, preds))
        if n_classes == 2:
            out["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0))
        else:
            out["f1"] = float(
                f1_score(
                    labels, preds, average="macro", labels=list(range(n_classes)), zero_division=0
                )
            )
            if len(present) > 1 or len(np.unique(preds)) > 1:
                out["qwk"] = float(
                    cohen_kappa_score(
                        labels, preds, weights="quadratic", labels=list(range(n_classes))
                    )
                )
    return out
