"""Inputs of MIL training: slide labels, CLAM split CSVs, SAE unit selection
and the bags themselves (optionally preloaded into memory)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from sae1n.datasets.splits import read_split  # noqa: F401  (re-exported)
from sae1n.errors import InputFileError
from sae1n.io import feature_paths, read_bag

log = logging.getLogger(__name__)

BINARY_LABELS = {"normal": 0, "tumor": 1}
SPLIT_KEYS = ("train", "val", "test")


# ----------------------------------------------------------------------------- labels and splits


def read_slide_labels(
    csv_path: str | os.PathLike,
    n_classes: int,
    label_col: str | None = None,
    label_dict: Mapping | None = None,
) -> dict[str, int]:
    """Map slide_id -> class index from a dataset CSV.

    Binary tasks read ``label`` (normal/tumor); multi-class tasks read
    ``isup_grade`` when present (PANDA), else ``label``. ``label_dict`` maps
    label strings to classes; integer labels in [0, n_classes) are used as is.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputFileError(
            path,
            "dataset CSV not found",
            "run `sae1n create-metadata`, or set dataset.csv_path=...",
        )
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    except Exception as exc:
        raise InputFileError(
            path, f"cannot be read as CSV ({exc})", "re-create it with `sae1n create-metadata`"
        ) from exc
    if label_col is None:
        label_col = "isup_grade" if n_classes > 2 and "isup_grade" in df.columns else "label"
    for col in ("slide_id", label_col):
        if col not in df.columns:
            raise InputFileError(
                path,
                f"has no {col!r} column (columns: {', '.join(map(str, df.columns))})",
                "use a CSV written by `sae1n create-metadata`, or set dataset.label_col",
            )
    df = df.dropna(subset=["slide_id"])
    dupes = df["slide_id"][df["slide_id"].duplicated()].unique()
    if len(dupes):
        raise InputFileError(
            path,
            f"slide ids appear more than once: {', '.join(map(str, dupes[:5]))}",
            "keep one row per slide",
        )
    mapping = {
        str(k).lower(): int(v)
        for k, v in (label_dict or (BINARY_LABELS if n_classes == 2 else {})).items()
    }
    labels: dict[str, int] = {}
    for sid, raw in zip(df["slide_id"].astype(str), df[label_col]):
        labels[sid] = _to_class(raw, mapping, n_classes, path, sid, label_col)
    if not labels:
        raise InputFileError(path, "has no slides", "check the CSV")
    return labels


def _to_class(raw, mapping: dict, n_classes: int, path: Path, sid: str, col: str) -> int:
    key = str(raw).strip().lower()
    if key in mapping:
        return mapping[key]
    try:
        value = float(key)
    except ValueError:
        value = None
    if value is not None and value.is_integer() and 0 <= value < n_classes:
        return int(value)
    known = ", ".join(sorted(mapping)) or f"integers 0..{n_classes - 1}"
    raise InputFileError(
        path,
        f"slide {sid!r} has unknown {col} {raw!r} (expected {known})",
        "fix the label, or set dataset.label_dict / n_classes to match the CSV",
    )


def select_sae_units(
    summary_csv: str | os.PathLike,
    num_units: int,
    metric: str | None = "p_value",
    compat: str = "default",
) -> np.ndarray:
    """The ``num_units`` top-ranked SAE neurons of a neuron-ranking CSV, read by
    the one ranking reader (:func:`sae1n.neurons.ranking.select_units`): stable
    re-sort by ``metric`` by default, the paper's unstable one with
    ``compat="paper"``."""
    from sae1n.neurons.ranking_csv import select_units

    return select_units(summary_csv, num_units, metric, compat=compat)


# ----------------------------------------------------------------------------- bags


@dataclass
class Bag:
    """One slide's patch features (N, D) and level-0 coords (N, 2) or None."""

    slide_id: str
    features: torch.Tensor
    coords: np.ndarray | None


class BagSource:
    """Reads slides' bags from a feature folder, keeping only ``units``
    columns, and caches them in memory when ``preload`` is on."""

    def __init__(
        self,
        paths: Mapping[str, Path],
        units: np.ndarray | None = None,
        expected_dim: int | None = None,
    ):
        self.paths = dict(paths)
        self.units = None if units is None else np.asarray(units, dtype=np.int64)
        self.expected_dim = expected_dim
        self._cache: dict[str, Bag] = {}
        self.preload = False

    def load(self, slide_id: str) -> Bag:
        """The bag of one slide (may have 0 patches)."""
        if slide_id in self._cache:
            return self._cache[slide_id]
        path = self.paths[slide_id]
        bag = read_bag(path, dense=False, allow_empty=True)
        mat = bag.sparse if bag.features is None else bag.features
        if self.units is not None:
            if mat.shape[1] and self.units.max() >= mat.shape[1]:
                raise InputFileError(
                    path,
                    f"has {mat.shape[1]} feature dims but SAE unit {int(self.units.max())} was selected",
                    "use the encoded features of the SAE that the neuron ranking was computed on",
                )
            mat = mat[:, self.units]
        feats = np.asarray(mat.toarray() if hasattr(mat, "toarray") else mat, dtype=np.float32)
        if self.expected_dim is not None and feats.shape[0] and feats.shape[1] != self.expected_dim:
            raise InputFileError(
                path,
                f"feature dimension {feats.shape[1]} differs from model.in_dim={self.expected_dim}",
                f"set model.in_dim={feats.shape[1]} (or null to infer it), or use features from the configured encoder",
            )
        coords = bag.coords if bag.coords is not None else _sibling_coords(path, feats.shape[0])
        out = Bag(slide_id, torch.from_numpy(np.ascontiguousarray(feats)), coords)
        if self.preload:
            self._cache[slide_id] = out
        return out

    @property
    def cached_ids(self) -> set[str]:
        """Slides already held in memory."""
        return set(self._cache)

    def estimate_bytes(self, slide_ids: Sequence[str]) -> int:
        """Rough float32 size of these bags after unit selection."""
        total = 0
        for sid in slide_ids:
            path = self.paths[sid]
            rows, dim = _shape_hint(path)
            if rows is None:
                total += path.stat().st_size
                continue
            total += rows * (len(self.units) if self.units is not None else dim) * 4
        return total

    def preload_all(self, slide_ids: Sequence[str], desc: str = "preloading") -> None:
        """Read every bag once and keep it in memory."""
        from sae1n.utils import progress

        self.preload = True
        for sid in progress(slide_ids, desc=desc):
            self.load(sid)


def _shape_hint(path: Path) -> tuple[int | None, int]:
    if path.suffix != ".h5":
        return None, 0
    try:
        with h5py.File(path, "r") as f:
            if "indptr" in f:
                return int(f["indptr"].shape[0] - 1), int(f.attrs.get("dict_size", 0))
            key = "features" if "features" in f else "feats"
            shape = f[key].shape
            return int(np.prod(shape[:-1])), int(shape[-1])
    except (OSError, KeyError):
        return None, 0


def _sibling_coords(path: Path, n: int) -> np.ndarray | None:
    """Coords for a .pt bag from the same slide's .h5 in a sibling folder."""
    root = (
        path.parent.parent
        if path.parent.name in ("pt_files", "h5_files", "sparse_files")
        else path.parent
    )
    for sub in ("h5_files", "sparse_files", "."):
        cand = root / sub / f"{path.stem}.h5"
        if cand != path and cand.is_file():
            try:
                with h5py.File(cand, "r") as f:
                    if "coords" in f and f["coords"].shape == (n, 2):
                        return f["coords"][()].astype(np.int64)
            except OSError:
                continue
    return None


def available_memory_bytes() -> int:
    """Memory available to this process (MemAvailable, else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def resolve_feature_paths(
    data_dir: str | os.PathLike, backbone: str | None, patch_size="", file_type: str | None = None
) -> tuple[Path, dict[str, Path]]:
    """The feature folder ``data_dir/backbone[/patch_size]`` (the paper's
    layout; ``data_dir`` alone when it already holds the files) and its
    slide -> file map."""
    root = Path(data_dir)
    folder = root / backbone if backbone else root
    if backbone and not folder.is_dir() and root.is_dir():
        folder = root
    if not folder.is_dir():
        raise InputFileError(
            folder,
            "feature folder does not exist",
            "run `sae1n extract-features` (or `sae1n save-sae-features`), or set dataset.data_dir=... and "
            "features.backbone=... (features are read from <data_dir>/<backbone>/)",
        )
    if patch_size not in (None, ""):
        subs = {"h5": "h5_files", "pt": "pt_files", "sparse": "sparse_files"}
        for sub in [subs[file_type]] if file_type in subs else subs.values():
            cand = folder / sub / str(patch_size)
            if cand.is_dir():
                return folder, feature_paths(cand, file_type=file_type or None)
    return folder, feature_paths(folder, file_type=file_type or None)
