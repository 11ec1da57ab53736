"""Slide-like bags from labelled patches (``sae1n make-bags``).

Public patch datasets (NCT-CRC-HE, PCam, BRACS ...) have a class per patch but
no slides. :func:`make_bags` turns such patches into a weakly labelled cohort
that every later stage reads as if it came from slides:

* each patch is assigned to exactly one of train / val / test (stratified by
  class), so no patch is ever in bags of two splits;
* a *positive* bag holds a fraction ``witness_rate`` of positive-class patches
  among negatives; a *negative* bag holds none. Within a split, patches are
  drawn by cycling through shuffled pools, so each is used before any repeats;
* each bag gets level-0 grid coords, so patch labels match by coords as for
  real slides.

Written under ``out_dir``::

    features/h5_files/<bag>.h5, pt_files/<bag>.pt   CLAM layout (features + coords)
    patch_labels/<bag>.h5                           coords, tumor_fraction (1 = positive class), label
    dataset_csv/bags.csv                            case_id, slide_id, label (tumor = has the class) ...
    splits/splits_0.csv (+ _bool, _descriptor)      the create-splits format
    patches.csv                                     bag, coords, source patch, class, split
    bags.json                                       settings and counts

Everything is deterministic for a seed and carries one provenance record
(sidecars ``<name>.provenance.json``). The patch sources (feature matrix,
CLAM folder, tiles) are read by :mod:`sae1n.datasets.patch_sources`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.datasets.patch_labels import write_patch_labels
from sae1n.datasets.patch_sources import (
    CLASS_COLUMNS,
    IMAGE_SUFFIXES,
    encode_tiles,
    list_tiles,
    load_clam_folder,
    load_patch_features,
)
from sae1n.datasets.splits import write_split
from sae1n.errors import ConfigError
from sae1n.io import (
    Provenance,
    atomic_write_csv,
    atomic_write_json,
    plan_outputs,
    write_bag,
    write_sidecar,
)
from sae1n.utils import progress

__all__ = [
    "CLASS_COLUMNS", "IMAGE_SUFFIXES", "SCHEMA", "SPLITS", "BagSet", "encode_tiles", "list_tiles",
    "load_clam_folder", "load_patch_features", "make_bags", "parse_fractions", "parse_range",
]

log = logging.getLogger(__name__)

SCHEMA = 1
SPLITS = ("train", "val", "test")


@dataclass
class BagSet:
    """Where :func:`make_bags` wrote the cohort, and what it holds."""

    out_dir: Path
    feature_dir: Path
    patch_label_dir: Path
    dataset_csv: Path
    split_csv: Path
    patches_csv: Path
    bags: pd.DataFrame  # one row per bag (the dataset CSV)
    patches: pd.DataFrame  # one row per (bag, patch)
    reused: bool = False


# ----------------------------------------------------------------------------- parsing options


def parse_range(value, kind=float, name: str = "value") -> tuple:
    """``0.2`` -> (0.2, 0.2); ``"0.1:0.4"`` -> (0.1, 0.4) (a uniform range)."""
    if isinstance(value, tuple | list):
        lo, hi = value
    else:
        text = str(value).strip()
        lo, _, hi = text.partition(":")
        hi = hi or lo
    try:
        lo, hi = kind(lo), kind(hi)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number or a range lo:hi, got {value!r}") from exc
    if hi < lo:
        raise ConfigError(f"{name} range {value!r} has its upper end below its lower end")
    return lo, hi


def parse_fractions(value) -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` -> train/val/test fractions (normalised to sum 1)."""
    parts = value if isinstance(value, tuple | list) else str(value).split(",")
    try:
        f = [float(x) for x in parts]
    except ValueError as exc:
        raise ConfigError(f"--split must be three numbers train,val,test, got {value!r}") from exc
    if len(f) != 3 or min(f) < 0 or f[0] <= 0 or f[2] <= 0:
        raise ConfigError(
            f"--split needs train,val,test fractions with train and test > 0, got {value!r}"
        )
    s = sum(f)
    return f[0] / s, f[1] / s, f[2] / s


# ----------------------------------------------------------------------------- making bags


class _Cycler:
    """Draws from a pool by cycling through fresh permutations: every item is
    used before any repeats, and one draw of k <= len(pool) has no repeats."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator):
        self.pool = np.asarray(pool)
        self.rng = rng
        self.queue: list = []

    def take(self, k: int) -> list:
        if k > len(self.pool):
            raise ConfigError(
                f"a bag needs {k} distinct patches of a kind but its split holds only {len(self.pool)}; "
                "lower --bag_size / --witness_rate or give the split more patches (--split)"
            )
        if len(self.queue) < k:
            held = set(self.queue)
            perm = self.rng.permutation(self.pool).tolist()
            self.queue += [x for x in perm if x not in held] + [x for x in perm if x in held]
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


def _split_patches(classes: np.ndarray, fractions, positive: np.ndarray, rng) -> np.ndarray:
    """Split name of each patch, stratified by class (every split gets at
    least one positive patch when the class has enough)."""
    split = np.empty(len(classes), dtype=object)
    for cls in sorted(set(classes.tolist())):
        idx = rng.permutation(np.nonzero(classes == cls)[0])
        n = len(idx)
        n_tr = int(round(fractions[0] * n))
        n_va = int(round(fractions[1] * n))
        if positive[idx[0]] or n >= 3:  # keep train, val (if wanted), test non-empty
            n_tr = min(max(n_tr, 1), n - (2 if fractions[1] > 0 else 1))
            n_va = min(max(n_va, 1 if fractions[1] > 0 else 0), n - n_tr - 1)
        split[idx[:n_tr]] = "train"
        split[idx[n_tr : n_tr + n_va]] = "val"
        split[idx[n_tr + n_va :]] = "test"
    return split


def make_bags(
    features,
    classes,
    out_dir: str | os.PathLike,
    *,
    positive_class: str,
    bag_size=16,
    witness_rate=0.2,
    n_bags: int = 60,
    seed: int = 0,
    split=(0.6, 0.2, 0.2),
    positive_bag_fraction: float = 0.5,
    patch_size: int = 224,
    patch_ids=None,
    inputs: dict | None = None,
    overwrite: bool = False,
) -> BagSet:
    """Write a weakly labelled cohort of slide-like bags (see the module doc).

    ``features`` (N, D) and ``classes`` (N,) describe the patches;
    ``positive_class`` is the class whose presence makes a bag positive
    (``label`` tumor). ``bag_size`` and ``witness_rate`` (the fraction of
    positive patches in a positive bag) take a number or a ``lo:hi`` range,
    drawn per bag. ``n_bags`` bags in all are shared between the splits by
    ``split`` fractions (at least 2 positive and 2 negative bags each).
    ``inputs`` (name -> Path or identity) goes into the provenance record.
    """
    x = np.asarray(features, dtype=np.float32)
    cls = np.asarray(classes).astype(str)
    if x.ndim != 2 or len(x) != len(cls):
        raise ConfigError(f"features {x.shape} and classes ({len(cls)}) must have one row per patch")
    ids = np.arange(len(x)).astype(str) if patch_ids is None else np.asarray(patch_ids).astype(str)
    positive_class = str(positive_class)
    if positive_class not in set(cls.tolist()):
        raise ConfigError(
            f"--positive_class {positive_class!r} is not among the patch classes: {', '.join(sorted(set(cls.tolist())))}"
        )
    pos = cls == positive_class
    if pos.sum() < 3 or (~pos).sum() < 3:
        raise ConfigError(
            f"need at least 3 patches of {positive_class} and 3 others, got {int(pos.sum())} and {int((~pos).sum())}"
        )
    size_lo, size_hi = parse_range(bag_size, int, "--bag_size")
    w_lo, w_hi = parse_range(witness_rate, float, "--witness_rate")
    if size_lo < 1:
        raise ConfigError(f"--bag_size must be >= 1, got {bag_size!r}")
    if not 0.0 < w_lo <= w_hi <= 1.0:
        raise ConfigError(f"--witness_rate must lie in (0, 1], got {witness_rate!r}")
    if not 0.0 < positive_bag_fraction < 1.0:
        raise ConfigError(f"--positive_bag_fraction must lie in (0, 1), got {positive_bag_fraction}")
    fractions = parse_fractions(split)
    if int(n_bags) < 4:
        raise ConfigError(f"--n_bags must be >= 4, got {n_bags}")

    out = Path(out_dir)
    settings = {
        "positive_class": positive_class,
        "bag_size": [size_lo, size_hi],
        "witness_rate": [w_lo, w_hi],
        "n_bags": int(n_bags),
        "seed": int(seed),
        "split": list(fractions),
        "positive_bag_fraction": float(positive_bag_fraction),
        "patch_size": int(patch_size),
        "n_patches": int(len(x)),
        "dim": int(x.shape[1]),
    }
    if inputs is None:
        import hashlib

        inputs = {"features_sha256": hashlib.sha256(x.tobytes() + "\0".join(cls).encode()).hexdigest()}
    prov = Provenance.make("bags", SCHEMA, settings=settings, inputs=inputs)
    paths = _paths(out)
    todo, _current = plan_outputs({p: prov for p in paths.values()}, overwrite=overwrite)
    if not todo:
        log.info("%s: bags are current; nothing to do", out)
        return _bagset(out, paths, reused=True)

    rng = np.random.default_rng(int(seed))
    patch_split = _split_patches(cls, fractions, pos, rng)
    rows, bag_rows = [], []
    bag_no = 0
    for name, frac in zip(SPLITS, fractions):
        if frac == 0:
            continue
        in_split = patch_split == name
        n_split = max(4, int(round(int(n_bags) * frac)))
        n_pos = max(2, int(round(n_split * positive_bag_fraction)))
        n_neg = max(2, n_split - n_pos)
        pos_pool = _Cycler(np.nonzero(in_split & pos)[0], rng)
        neg_pool = _Cycler(np.nonzero(in_split & ~pos)[0], rng)
        kinds = rng.permutation([1] * n_pos + [0] * n_neg)
        for is_pos in kinds:
            size = int(rng.integers(size_lo, size_hi + 1))
            w = float(rng.uniform(w_lo, w_hi)) if is_pos else 0.0
            k_pos = min(max(1, int(round(w * size))), size) if is_pos else 0
            members = np.array(pos_pool.take(k_pos) + neg_pool.take(size - k_pos), dtype=np.int64)
            members = members[rng.permutation(len(members))]
            sid = f"bag_{bag_no:04d}"
            bag_no += 1
            bag_rows.append(
                {
                    "case_id": sid,
                    "slide_id": sid,
                    "label": "tumor" if is_pos else "normal",
                    "positive_class": positive_class,
                    "n_patches": int(size),
                    "n_positive": int(k_pos),
                    "witness_rate": k_pos / size,
                    "split": name,
                }
            )
            cols = max(1, math.ceil(math.sqrt(size)))
            for j, m in enumerate(members):
                rows.append(
                    {
                        "slide_id": sid,
                        "x": (j % cols) * int(patch_size),
                        "y": (j // cols) * int(patch_size),
                        "patch": ids[m],
                        "row": int(m),
                        "class": cls[m],
                        "positive": bool(pos[m]),
                        "split": name,
                    }
                )
    bags = pd.DataFrame(bag_rows)
    patches = pd.DataFrame(rows)
    _write(out, paths, prov, x, bags, patches)
    return _bagset(out, paths)


def _paths(out: Path) -> dict[str, Path]:
    return {
        "features": out / "features",
        "patch_labels": out / "patch_labels",
        "dataset_csv": out / "dataset_csv" / "bags.csv",
        "split_csv": out / "splits" / "splits_0.csv",
        "patches_csv": out / "patches.csv",
        "summary": out / "bags.json",
    }


def _write(out, paths, prov, x, bags, patches) -> None:
    for key in ("features", "patch_labels"):  # no bag of an older run may survive
        for sub in ("h5_files", "pt_files", "") if key == "features" else ("",):
            folder = paths[key] / sub
            if folder.is_dir():
                for p in folder.glob("bag_*"):
                    p.unlink()
    for sid, grp in progress(patches.groupby("slide_id", sort=True), desc="writing bags"):
        coords = grp[["x", "y"]].to_numpy(np.int64)
        write_bag(paths["features"], sid, x[grp["row"].to_numpy()], coords, attrs={"patch_size": int(prov.settings["patch_size"]), "patch_level": 0})
        write_patch_labels(
            paths["patch_labels"] / f"{sid}.h5",
            coords,
            grp["positive"].to_numpy(np.float32),
            0.5,
            size=(prov.settings["patch_size"],) * 2,
            provenance=prov,
        )
    atomic_write_csv(paths["dataset_csv"], bags)
    sets = {s: bags.loc[bags["split"] == s, "slide_id"].tolist() for s in SPLITS}
    split_dir = paths["split_csv"].parent
    if split_dir.is_dir():
        shutil.rmtree(split_dir)
    write_split(split_dir, 0, sets, bags, ["normal", "tumor"])
    atomic_write_csv(paths["patches_csv"], patches)
    summary = {
        "settings": prov.settings,
        "n_bags": {s: int((bags["split"] == s).sum()) for s in SPLITS},
        "n_positive_bags": {s: int(((bags["split"] == s) & (bags["label"] == "tumor")).sum()) for s in SPLITS},
        "n_distinct_patches": {s: int(patches.loc[patches["split"] == s, "row"].nunique()) for s in SPLITS},
        "files": {k: str(v.relative_to(out)) for k, v in paths.items()},
    }
    atomic_write_json(paths["summary"], summary)
    for p in paths.values():
        write_sidecar(p, prov)


def _bagset(out: Path, paths: dict[str, Path], reused: bool = False) -> BagSet:
    return BagSet(
        out_dir=out,
        feature_dir=paths["features"],
        patch_label_dir=paths["patch_labels"],
        dataset_csv=paths["dataset_csv"],
        split_csv=paths["split_csv"],
        patches_csv=paths["patches_csv"],
        bags=pd.read_csv(paths["dataset_csv"]),
        patches=pd.read_csv(paths["patches_csv"]),
        reused=reused,
    )
