"""Readers shared by ranking and evaluation: split and metadata CSVs, slide
labels, SAE code folders, patch-label and per-patch score files, coordinate
matching. Every problem is reported as one error naming the file and the fix."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from sae1n.errors import InputFileError
from sae1n.io import feature_paths, read_bag, validate_slide_id

TUMOR_LABELS = {"tumor", "tumour", "1", "1.0", "true", "positive", "cancer"}
NORMAL_LABELS = {"normal", "0", "0.0", "false", "negative", "benign"}
from sae1n.datasets.patch_labels import read_patch_label_file  # noqa: E402,F401 (the one reader)
from sae1n.datasets.splits import read_split, slide_id_of  # noqa: E402
from sae1n.io.tables import read_csv as _read_csv  # noqa: E402


def read_split_slides(split_csv_path: str | os.PathLike, column: str = "train") -> list[str]:
    """Slide ids of one column (``train``/``val``/``test``) of a CLAM split CSV."""
    return read_split(split_csv_path)[column]


def read_slide_table(dataset_csv: str | os.PathLike) -> pd.DataFrame:
    """The metadata CSV indexed by ``slide_id`` (string columns, blanks kept)."""
    fix = "pass the metadata CSV written by `sae1n create-metadata` (columns case_id, slide_id, label, ...)"
    df = _read_csv(dataset_csv, "dataset CSV", fix).fillna("")
    if "slide_id" not in df.columns:
        raise InputFileError(
            dataset_csv, f"has no 'slide_id' column (columns: {list(df.columns)})", fix
        )
    df["slide_id"] = [slide_id_of(validate_slide_id(s, dataset_csv)) for s in df["slide_id"]]
    dup = df["slide_id"][df["slide_id"].duplicated()].unique()
    if len(dup):
        raise InputFileError(
            dataset_csv,
            f"lists slide ids more than once: {', '.join(dup[:5])}",
            "keep one row per slide",
        )
    return df.set_index("slide_id", drop=False)


def read_slide_labels(dataset_csv: str | os.PathLike, column: str = "label") -> dict[str, str]:
    """slide_id -> label string (lower-cased, stripped) from the metadata CSV."""
    df = read_slide_table(dataset_csv)
    if column not in df.columns:
        raise InputFileError(
            dataset_csv,
            f"has no {column!r} column (columns: {list(df.columns)})",
            f"add the {column} column or choose another with --label_column/--grade_column",
        )
    return {sid: str(v).strip().lower() for sid, v in zip(df["slide_id"], df[column])}


def binarize_labels(
    labels: Mapping[str, object], source: str | os.PathLike = "labels"
) -> dict[str, int]:
    """Map tumour/normal style labels to 1/0; unknown labels raise naming the slides."""
    out: dict[str, int] = {}
    bad: list[str] = []
    for sid, lab in labels.items():
        key = str(lab).strip().lower()
        if isinstance(lab, bool | np.bool_):
            out[sid] = int(lab)
        elif key in TUMOR_LABELS:
            out[sid] = 1
        elif key in NORMAL_LABELS:
            out[sid] = 0
        else:
            bad.append(f"{sid}={lab!r}")
    if bad:
        raise InputFileError(
            source,
            f"{len(bad)} slide label(s) are neither tumour nor normal: {', '.join(bad[:5])}",
            "use labels 'tumor'/'normal' (or 1/0), or pass --multiclass for graded labels",
        )
    return out


def numeric_labels(
    labels: Mapping[str, object], source: str | os.PathLike = "labels"
) -> dict[str, float]:
    """Map graded labels (e.g. ISUP 0-5) to floats; non-numbers raise naming the slides."""
    out: dict[str, float] = {}
    bad: list[str] = []
    for sid, lab in labels.items():
        try:
            val = float(lab)
        except (TypeError, ValueError):
            bad.append(f"{sid}={lab!r}")
            continue
        if not np.isfinite(val):
            bad.append(f"{sid}={lab!r}")
            continue
        out[sid] = val
    if bad:
        raise InputFileError(
            source,
            f"{len(bad)} grade(s) are not numbers: {', '.join(bad[:5])}",
            "give every slide a numeric grade (e.g. isup_grade 0-5)",
        )
    return out


def code_files(feature_dir: str | os.PathLike, file_type: str | None = None) -> dict[str, Path]:
    """slide_id -> SAE code file. An encoded-features root prefers ``sparse_files/``
    (pooled without densifying), then h5, then pt; a subfolder or flat folder works too."""
    root = Path(feature_dir)
    if file_type is None and (root / "sparse_files").is_dir():
        found = feature_paths(root, "sparse")
        if found:
            return found
    return feature_paths(root, file_type)


def read_codes(path: str | os.PathLike, expected_dim: int | None = None):
    """(codes, coords, attrs) of one slide: codes is a CSR matrix for sparse files,
    else a dense (N, D) float32 array."""
    bag = read_bag(path, dense=False, expected_dim=expected_dim)
    return (bag.sparse if bag.sparse is not None else bag.features), bag.coords, bag.attrs


def neuron_columns(codes, units) -> np.ndarray:
    """Activations of the given neurons over the patches, float64 (N, len(units))."""
    from scipy import sparse

    units = [int(u) for u in units]
    if sparse.issparse(codes):
        return np.asarray(sparse.csr_matrix(codes)[:, units].toarray(), dtype=np.float64)
    return np.asarray(codes[:, units], dtype=np.float64)


def read_patch_scores(path: str | os.PathLike):
    """(coords, scores) of a per-patch score h5 (MIL attention / instance scores)."""
    path = Path(path)
    fix = "re-run `sae1n train-mil` so it writes patch_scores/, or drop the baseline"
    try:
        with h5py.File(path, "r") as f:
            for key in ("coords", "scores"):
                if key not in f:
                    raise InputFileError(path, f"lacks the {key!r} dataset", fix)
            coords = np.asarray(f["coords"][()], dtype=np.int64)
            scores = np.asarray(f["scores"][()], dtype=np.float64).reshape(-1)
    except OSError as exc:
        raise InputFileError(path, f"is not a readable HDF5 file ({exc})", fix) from exc
    if coords.ndim != 2 or coords.shape[1] != 2 or scores.shape[0] != coords.shape[0]:
        raise InputFileError(
            path, f"{scores.shape[0]} scores but coords of shape {coords.shape}", fix
        )
    if not np.isfinite(scores).all():
        raise InputFileError(path, "scores contain NaN/Inf", fix)
    return coords, scores


def match_coords(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) with a[ia] == b[ib] row-wise (first occurrence of repeats)."""
    ka = _coord_keys(a)
    kb = _coord_keys(b)
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=False, return_indices=True)
    order = np.argsort(ia, kind="stable")
    return ia[order], ib[order]


def _coord_keys(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.int64).reshape(-1, 2)
    return (c[:, 0] << np.int64(32)) ^ (c[:, 1] & np.int64(0xFFFFFFFF))


def missing_list(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
