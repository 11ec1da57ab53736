"""Line plots saved as PNG: ROC and precision-recall curves, SAE training curves.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot
state, no display backend needed) and written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.io import atomic_path

X_COLUMNS = ("step", "global_step", "iteration", "iter", "tokens", "samples", "epoch")
_SKIP = {"lr_scale", "time", "wall_time", "timestamp", "seed"}


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib Figure to PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def _figure(w: float = 4.6, h: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Path:
    """ROC curves of several scorers; ``curves`` maps a legend name to (labels, scores)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (y, s) in curves.items():
        y = np.asarray(y, bool)
        if y.size == 0 or y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="Patch-level ROC (test)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Path:
    """Precision-recall curves; ``curves`` maps a legend name to (labels, scores)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    prevalence = None
    for name, (y, s) in curves.items():
        y = np.asarray(y, bool)
        if y.size == 0 or not y.any():
            continue
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, lw=1.8, label=f"{name} (AP {average_precision_score(y, s):.3f})")
        prevalence = float(y.mean())
    if prevalence is not None:
        ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="Patch-level precision-recall (test)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def read_training_log(path: str | os.PathLike) -> pd.DataFrame | None:
    """The SAE training log as a DataFrame, or None when absent/unreadable/empty."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except Exception:  # a damaged log must not break the report
        return None
    return df if len(df) else None


def training_metric_columns(df: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(x column or None for the row number, numeric metric columns to plot)."""
    x = next((c for c in X_COLUMNS if c in df.columns), None)
    metrics = []
    for c in df.columns:
        if c == x or c in X_COLUMNS or c in _SKIP:
            continue
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.notna().sum() >= 1:
            metrics.append(c)
    return x, metrics


_PRIORITY = ("loss", "fvu", "mse", "dead", "dense", "l0", "explained", "l1")
_LAST = ("elapsed", "tokens_per_s", "n_tokens", "best_step", "threshold", "lr")


def _panel_priority(name: str) -> tuple[int, int]:
    """Panels most worth seeing first: losses, FVU, dead/dense fractions, L0; timing last."""
    low = name.lower()
    if any(k in low for k in _LAST):
        return (2, 0)
    for i, key in enumerate(_PRIORITY):
        if key in low:
            return (0, i)
    return (1, 0)


def plot_training_curves(
    log: pd.DataFrame, path: str | os.PathLike, max_panels: int = 12
) -> Path | None:
    """One small panel per numeric column of the training log (train and
    val rows alike, whatever columns exist). None when nothing is plottable."""
    x, metrics = training_metric_columns(log)
    metrics = sorted(metrics, key=_panel_priority)[:max_panels]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(3.6 * cols, 2.6 * rows)
    xs = pd.to_numeric(log[x], errors="coerce") if x else pd.Series(np.arange(len(log)))
    for i, name in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        ys = pd.to_numeric(log[name], errors="coerce")
        ok = ys.notna() & xs.notna()
        ax.plot(xs[ok], ys[ok], lw=1.3, marker="." if ok.sum() < 30 else None)
        if (ys[ok] > 0).all() and ok.sum() > 1 and ys[ok].max() / max(ys[ok].min(), 1e-30) > 100:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x or "row", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
