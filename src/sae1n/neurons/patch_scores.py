"""Per-patch scores of one split, matched to patch labels by level-0 coords:
the selected neurons' activations (signed), the MIL runs' per-patch scores and
the fitted feature baselines' scores, each also pooled per slide."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sae1n.datasets.patch_labels import read_patch_label_file
from sae1n.errors import InputFileError
from sae1n.io import read_bag
from sae1n.neurons.inputs import (
    match_coords,
    missing_list,
    neuron_columns,
    read_codes,
    read_patch_scores,
)
from sae1n.neurons.pooling import pool_activations
from sae1n.utils import progress

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


@dataclass
class SplitScores:
    """Per-patch scores (matched to labels) and per-slide pooled scores of one split."""

    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # method -> per-slide arrays
    labels: list[np.ndarray] = field(default_factory=list)  # per-slide patch labels
    slide_ids: list[str] = field(default_factory=list)
    slide_scores: dict[str, list[float]] = field(default_factory=dict)
    n_unmatched: int = 0

    def patch_scores(self, method: str) -> np.ndarray:
        parts = self.scores.get(method, [])
        return np.concatenate(parts) if parts else np.empty(0)

    def patch_labels(self) -> np.ndarray:
        return np.concatenate(self.labels).astype(bool) if self.labels else np.empty(0, bool)


def fold_of_split(split_csv_path) -> int:
    m = re.search(r"splits_(\d+)", Path(split_csv_path).stem)
    return int(m.group(1)) if m else 0


def slide_patch_labels(
    sid: str,
    coords: np.ndarray,
    label_dir: Path,
    threshold: float | None,
    slide_label: int | None,
    allow_missing: bool,
):
    """(index into coords, labels) of the patches that have a label, or None to skip."""
    path = label_dir / f"{sid}.h5"
    if not path.is_file():
        if slide_label == 0:  # a normal slide without annotations: every patch is normal
            return np.arange(len(coords)), np.zeros(len(coords), bool), 0
        if allow_missing:
            log.warning("no patch labels for %s; skipped", sid)
            return None
        raise InputFileError(
            path,
            "patch-label file not found",
            "run `sae1n patch-labels` for this slide, give --dataset_csv so normal slides need none, or pass --allow_missing",
        )
    lab_coords, frac, file_thr = read_patch_label_file(path)
    thr = (
        threshold
        if threshold is not None
        else (file_thr if file_thr is not None else DEFAULT_THRESHOLD)
    )
    ia, ib = match_coords(coords, lab_coords)
    if len(ia) == 0:
        raise InputFileError(
            path,
            f"none of its {len(lab_coords)} patch coords match the {len(coords)} coords of the SAE codes",
            "make patch labels from the same patch coordinates (patches/<slide>.h5) the features were extracted from",
        )
    return ia, frac[ib] >= thr, len(coords) - len(ia)


def collect_split_scores(
    split_name: str,
    slides: list[str],
    files: dict[str, Path],
    units: list[int],
    signs: dict[int, float],
    label_dir: Path,
    threshold: float | None,
    slide_labels: dict[str, int] | None,
    mil_dirs: dict[str, Path],
    pooling: str,
    topk: int,
    quantile: float,
    allow_missing: bool,
    raw_files: dict[str, Path] | None = None,
    baselines: list | None = None,
) -> SplitScores:
    out = SplitScores()
    missing = [s for s in slides if s not in files]
    if missing:
        if not allow_missing:
            raise InputFileError(
                next(iter(files.values())).parent,
                f"no SAE codes for {len(missing)} {split_name} slide(s): {missing_list(missing)}",
                "run `sae1n save-sae-features` for them, or pass --allow_missing",
            )
        slides = [s for s in slides if s in files]
    for sid in progress(slides, desc=f"{split_name} slides", total=len(slides)):
        codes, coords, _ = read_codes(files[sid])
        if coords is None:
            raise InputFileError(
                files[sid],
                "has no coords",
                "use h5 or sparse code files (they keep coords), not pt files",
            )
        known = None if slide_labels is None else slide_labels.get(sid)
        got = slide_patch_labels(sid, coords, label_dir, threshold, known, allow_missing)
        if got is None:
            continue
        idx, lab, unmatched = got
        out.n_unmatched += unmatched
        out.slide_ids.append(sid)
        out.labels.append(lab)
        sl = int(lab.any()) if known is None else int(known)
        out.slide_scores.setdefault("_label", []).append(sl)
        acts = neuron_columns(codes, units)
        for j, u in enumerate(units):
            act = acts[:, j]
            key = f"unit_{u}"
            out.scores.setdefault(key, []).append(signs[u] * act[idx])
            pooled = pool_activations(act[:, None], pooling, topk=topk, quantile=quantile)[0]
            out.slide_scores.setdefault(key, []).append(signs[u] * pooled)
        for method, folder in mil_dirs.items():
            part, pooled = _mil_scores(folder / f"{sid}.h5", coords[idx])
            out.scores.setdefault(method, []).append(part)
            out.slide_scores.setdefault(method, []).append(pooled)
        if baselines:
            if sid not in raw_files:
                raise InputFileError(
                    Path(next(iter(raw_files.values()))).parent,
                    f"no input features for {split_name} slide {sid}",
                    "pass the --input_feature_dir the SAE was trained on",
                )
            raw = read_bag(raw_files[sid])
            ja, jb = _raw_match(raw, coords, raw_files[sid])
            for b in baselines:
                full = np.full(len(coords), np.nan)
                sc = b.score(raw.features)
                full[ja] = sc[jb]
                out.scores.setdefault(b.method, []).append(full[idx])
                pooled = pool_activations(sc[:, None], pooling, topk=topk, quantile=quantile)[0]
                out.slide_scores.setdefault(b.method, []).append(float(pooled))
    return out


def _mil_scores(path: Path, coords: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-patch MIL scores matched to ``coords`` (NaN where absent) and their max."""
    full = np.full(len(coords), np.nan)
    if not path.is_file():
        return full, math.nan
    bcoords, bscores = read_patch_scores(path)
    ja, jb = match_coords(coords, bcoords)
    full[ja] = bscores[jb]
    return full, (float(bscores.max()) if bscores.size else math.nan)


def _raw_match(raw, coords: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if raw.coords is None:
        if len(raw.features) != len(coords):
            raise InputFileError(path, "has no coords and not one row per SAE-code row", "use h5 input features (they keep coords)")
        ar = np.arange(len(coords))
        return ar, ar
    return match_coords(coords, raw.coords)


def mil_method_name(folder: str | os.PathLike) -> str:
    """Method name of a MIL experiment folder's per-patch scores:
    ``abmil_attention`` (ABMIL), ``maxmil_scores`` (MaxMIL), else ``<exp>_scores``."""
    name = Path(folder).name.lower()
    if "abmil" in name:
        return "abmil_attention"
    if "maxmil" in name and "sae" not in name:
        return "maxmil_scores"
    return f"{Path(folder).name}_scores"

