"""The slides of each fold: split CSV rows checked against the dataset CSV and
the feature files, the label fraction, a usable training set, and whether
to preload their bags."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sae1n.errors import ConfigError, InputFileError
from sae1n.mil.data import BagSource, available_memory_bytes

log = logging.getLogger("sae1n.mil.train")

PRELOAD_FRACTION = 0.5  # preload when the bags need at most this share of free memory


def fold_range(k: int, k_start: int, k_end: int) -> list[int]:
    """Folds ``k_start .. k_end-1`` (``-1``: 0 and ``k``)."""
    start = 0 if k_start == -1 else k_start
    end = k if k_end == -1 else k_end
    if not 0 <= start < end:
        raise ConfigError(f"need 0 <= k_start < k_end (got k_start={start}, k_end={end})")
    return list(range(start, end))


def fold_sets(
    split: Mapping[str, list[str]],
    split_csv: Path,
    fold: int,
    *,
    labels: Mapping[str, int],
    feature_paths: Mapping[str, Path],
    dataset_csv: Path,
    feature_dir: Path,
    allow_missing: bool,
    paper: bool,
) -> dict[str, list[str]]:
    """train/val/test slide ids of one split: slides without a label or a
    feature file are an error (or skipped with ``allow_missing``); with
    ``paper`` each set follows the dataset CSV's row order, as the paper's."""
    sets, unknown, missing = {}, [], []
    for key, ids in split.items():
        keep = []
        for sid in ids:
            if sid not in labels:
                unknown.append(sid)
            elif sid not in feature_paths:
                missing.append(sid)
            else:
                keep.append(sid)
        sets[key] = keep
    if paper:  # the paper's splits follow the metadata CSV's row order
        sets = {key: [s for s in labels if s in set(ids)] for key, ids in sets.items()}
    for problem, ids, where in (
        ("not in the dataset CSV", unknown, dataset_csv),
        ("without a feature file", missing, feature_dir),
    ):
        if not ids:
            continue
        names = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        if not allow_missing:
            raise InputFileError(
                where,
                f"{len(ids)} slide(s) listed in {split_csv} are {problem}: {names}",
                "add them (extract their features / re-create the metadata), remove them from the split, or pass --allow_missing to skip them",
            )
        log.warning("fold %d: skipping %d slide(s) %s: %s", fold, len(ids), problem, names)
    return sets


def label_fraction(
    ids: list[str], labels: Mapping[str, int], frac: float, n_classes: int, seed: int
) -> list[str]:
    """``ceil(frac * n)`` slides of each class (drawn with ``seed``), in ``ids`` order."""
    if frac >= 1.0:
        return ids
    if frac <= 0:
        raise ConfigError(f"label_frac must be in (0, 1] (got {frac})")
    rng = np.random.default_rng(seed)
    keep = set()
    for c in range(n_classes):
        members = [s for s in ids if labels[s] == c]
        if members:
            keep.update(
                rng.choice(members, size=math.ceil(frac * len(members)), replace=False).tolist()
            )
    return [s for s in ids if s in keep]


def check_training_set(ids: list[str], labels: Mapping[str, int], split_csv: Path, fold: int) -> None:
    """A classifier needs training slides of at least two classes."""
    if not ids:
        raise InputFileError(
            split_csv, "has no usable training slides", "check the split and the feature folder"
        )
    classes = sorted({labels[s] for s in ids})
    if len(classes) < 2:
        raise InputFileError(
            split_csv,
            f"the training slides of fold {fold} all have class {classes[0]}: a classifier cannot be trained",
            "re-create the splits (sae1n create-splits stratifies by label) or check the dataset CSV labels",
        )


def maybe_preload(source: BagSource, sets: Mapping[str, list[str]], mode: str, noted: bool) -> bool:
    """``preloading``: yes / no / auto (when the bags fit in half the free
    memory). Returns whether "not preloading" has been logged (``noted``: once)."""
    if mode == "no":
        return noted
    ids = sorted({s for v in sets.values() for s in v} - source.cached_ids)
    if not ids:
        return noted
    if mode == "auto":
        need, free = source.estimate_bytes(ids), available_memory_bytes()
        if not free or need > PRELOAD_FRACTION * free:
            if not noted:
                log.info(
                    "not preloading: bags need ~%.1f GB, %.1f GB free; reading from disk each epoch",
                    need / 1e9,
                    free / 1e9,
                )
            source.preload = False
            return True
    source.preload_all(ids)
    return noted
