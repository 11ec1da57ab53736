"""Stratified group k-fold that returns the same folds on every installation.

The paper's splits were made with scikit-learn 1.6.1's
``StratifiedGroupKFold(shuffle=True, random_state=seed)``. scikit-learn later
changed what ``shuffle=True`` does (PR #32540, released in 1.8), so calling
today's scikit-learn returns different folds for the same data and seed.
:func:`stratified_group_kfold` is our own implementation of the 1.6.1
behaviour, written from its documented algorithm, so the published folds are
reproduced whatever scikit-learn version is installed (scikit-learn is not
called at all).

The algorithm, step by step:

1. Classes and groups are encoded by ``np.unique`` (sorted), giving a
   (groups x classes) table of sample counts per group.
2. With ``shuffle=True`` the rows of that table are permuted in place with
   ``numpy.random.RandomState(seed).shuffle``. In 1.6.1 the group each row
   belongs to is *not* permuted with it, so row ``j``'s counts drive where
   group ``j`` (in sorted order) is placed. This quirk is what produced the
   published folds, so it is kept on purpose.
3. Rows are visited in order of decreasing standard deviation of their class
   counts (stable sort, so ties keep the shuffled order).
4. Each row goes to the fold that minimises the mean over classes of the
   standard deviation over folds of ``fold class counts / class totals``;
   near-ties (``numpy.isclose``) go to the fold with fewer samples, then to
   the lower fold index.

``RandomState`` is NumPy's frozen legacy generator: its stream is guaranteed
not to change between NumPy versions. The scores are computed with the same
NumPy reductions, in the same order, as 1.6.1, so float ties break the same
way.
"""

from __future__ import annotations

import numpy as np

from sae1n.errors import ConfigError


def stratified_group_kfold(
    y, groups, n_splits: int = 5, *, shuffle: bool = True, seed: int | None = 42
) -> np.ndarray:
    """Fold index (0..n_splits-1) of every sample, as scikit-learn 1.6.1's
    ``StratifiedGroupKFold(n_splits, shuffle, random_state=seed)`` assigns them.

    ``y`` holds class labels (any sortable values), ``groups`` the group
    (patient) of each sample. Fold ``i`` is the i-th test fold the scikit-learn
    splitter yields.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    if y.ndim != 1 or groups.shape != y.shape:
        raise ConfigError(
            f"y and groups must be 1-D and the same length (got {y.shape} and {groups.shape})"
        )
    if int(n_splits) != n_splits or n_splits < 2:
        raise ConfigError(f"the number of folds must be an integer >= 2 (got {n_splits!r})")
    n_splits = int(n_splits)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    y_inv = y_inv.reshape(-1)
    groups_inv = groups_inv.reshape(-1)
    if len(groups_cnt) < n_splits:
        raise ConfigError(
            f"cannot make {n_splits} folds from {len(groups_cnt)} groups (patients): "
            f"use k <= {len(groups_cnt)} or add cases"
        )
    if np.all(n_splits > y_cnt):
        raise ConfigError(
            f"n_splits={n_splits} is larger than the number of members of every class ({y_cnt.tolist()})"
        )
    n_classes = len(y_cnt)

    y_counts_per_group = np.zeros((len(groups_cnt), n_classes))
    np.add.at(y_counts_per_group, (groups_inv, y_inv), 1)
    if shuffle:
        # RandomState (not default_rng): the stream the published folds came from.
        np.random.RandomState(seed).shuffle(y_counts_per_group)
    order = np.argsort(-np.std(y_counts_per_group, axis=1), kind="mergesort")

    y_counts_per_fold = np.zeros((n_splits, n_classes))
    fold_of_group = np.empty(len(groups_cnt), dtype=np.int64)
    scale = y_cnt.reshape(1, 1, -1)
    diag = np.arange(n_splits)
    for group_idx in order:
        group_counts = y_counts_per_group[group_idx]
        # candidates[i] = the fold table if this group joined fold i; one
        # vectorised pass gives bit-identical scores to the per-fold loop.
        candidates = np.repeat(y_counts_per_fold[None], n_splits, axis=0)
        candidates[diag, diag] += group_counts
        scores = np.mean(np.std(candidates / scale, axis=1), axis=1).tolist()
        sizes = y_counts_per_fold.sum(axis=1).tolist()
        best, best_score, best_size = 0, float("inf"), float("inf")
        for i in range(n_splits):
            score = scores[i]
            close = best_score != float("inf") and abs(score - best_score) <= 1e-8 + 1e-5 * abs(
                best_score
            )
            if score < best_score or (close and sizes[i] < best_size):
                best, best_score, best_size = i, score, sizes[i]
        y_counts_per_fold[best] += group_counts
        fold_of_group[group_idx] = best
    return fold_of_group[groups_inv]


def fold_indices(fold_of_sample: np.ndarray, n_splits: int) -> list[np.ndarray]:
    """Sample indices of each fold, in sample order (scikit-learn's test indices)."""
    fold_of_sample = np.asarray(fold_of_sample)
    return [np.flatnonzero(fold_of_sample == i) for i in range(n_splits)]
