"""Per-column statistics over all SAE neurons at once: Welch's t-test, ROC AUC,
Spearman's rho and Benjamini-Hochberg q-values (used by the ranking). Columns
that never vary get t = 0 / rho = 0 and p = 1 instead of NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def welch_t_test(tumor: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t-test (scipy, ``equal_var=False``) of every column at once.

    ``tumor`` (n1, D) and ``normal`` (n0, D) hold pooled activations. Columns
    constant across both groups get t = 0, p = 1 instead of NaN.
    """
    tumor = np.asarray(tumor, dtype=np.float64)
    normal = np.asarray(normal, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(tumor, normal, axis=0, equal_var=False)
    t = np.atleast_1d(np.asarray(res.statistic, dtype=np.float64)).copy()
    p = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64)).copy()
    undefined = np.isnan(t) | np.isnan(p)
    t[undefined] = 0.0
    p[undefined] = 1.0
    return t, p


def column_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of ``scores`` (n, D) for the binary ``positive`` (n,),
    via the rank-sum identity (ties count one half, as scikit-learn)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = stats.rankdata(scores, axis=0)
    return (ranks[positive].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def spearman_columns(scores: np.ndarray, grade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho of every column of ``scores`` (n, D) with ``grade`` (n,) and the
    two-sided p-value (t-distribution with n-2 df, as scipy). Constant columns: rho 0, p 1."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    rx = stats.rankdata(scores, axis=0)
    ry = stats.rankdata(np.asarray(grade, dtype=np.float64))
    rx -= rx.mean(axis=0)
    ry -= ry.mean()
    with np.errstate(all="ignore"):
        rho = (rx * ry[:, None]).sum(axis=0) / np.sqrt((rx**2).sum(axis=0) * (ry**2).sum())
        rho = np.clip(rho, -1.0, 1.0)
        dof = n - 2
        tval = rho * np.sqrt(dof / ((1.0 + rho) * (1.0 - rho)))
        p = 2.0 * stats.t.sf(np.abs(tval), dof)
    const = ~np.isfinite(rho)
    rho[const] = 0.0
    p[const] = 1.0
    p[np.isnan(p)] = 1.0
    return rho, p


def bh_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")
