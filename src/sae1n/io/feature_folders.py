"""Finding the feature files of a folder (:func:`feature_paths`): slide id ->
file for CLAM, TRIDENT, STAMP, mopadi, LazySlide and sae1n layouts, detected
per folder or forced with ``feature_format=``. Reading them is
:mod:`sae1n.io.features`."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from sae1n.errors import InputFileError

FILE_TYPES = ("h5", "pt", "sparse")
_SUBDIR = {"h5": "h5_files", "pt": "pt_files", "sparse": "sparse_files"}
_SUFFIX = {"h5": ".h5", "pt": ".pt", "sparse": ".h5"}


def feature_paths(
    feat_dir: str | os.PathLike, file_type: str | None = None, *, feature_format: str | None = None
) -> dict[str, Path]:
    """Map slide id -> feature file in a CLAM, TRIDENT, STAMP, mopadi,
    LazySlide or sae1n folder.

    ``feat_dir`` may be the CLAM root (holding ``h5_files/`` and/or
    ``pt_files/``), one of those subfolders, a flat TRIDENT/STAMP folder of
    ``<slide>.h5``, a TRIDENT job folder with one ``features_<encoder>/``, a
    mopadi folder of ``<slide>/features.h5``, or a folder of LazySlide
    ``<slide>.zarr`` stores (or one store). ``file_type`` picks ``h5``, ``pt``
    or ``sparse``; by default h5 is preferred, then pt, then sparse.
    ``feature_format`` restricts the layout (default: detected).
    Hidden/temporary files are ignored.
    """
    from sae1n.io.feature_formats import parse_format

    root = Path(feat_dir)
    fmt, table = parse_format(feature_format)
    if root.is_dir() and root.suffix == ".zarr":
        return _with_table({root.stem: root}, table)
    if not root.is_dir():
        raise InputFileError(root, "feature folder does not exist", "pass the folder that holds h5_files/ and pt_files/ (or the .h5 files)")
    if file_type is not None and file_type not in FILE_TYPES:
        raise InputFileError(root, f"unknown file type {file_type!r}", f"use one of {', '.join(FILE_TYPES)}")
    if fmt == "lazyslide":
        found = _scan_zarr(root)
        if found:
            return _with_table(found, table)
        raise InputFileError(root, "holds no <slide>.zarr stores", "point to the folder with LazySlide's saved .zarr stores")
    order = [file_type] if file_type else ["h5", "pt", "sparse"]
    for ft in order:
        sub = root / _SUBDIR[ft]
        if sub.is_dir():
            return _scan(sub, _SUFFIX[ft])
    # flat folder (TRIDENT, or the subfolder itself)
    for ft in order:
        found = _scan(root, _SUFFIX[ft])
        if found:
            return found
    if file_type in (None, "h5"):
        found = _other_layouts(root)
        if found:
            return found
    raise InputFileError(
        root,
        f"no {'/'.join(dict.fromkeys(_SUFFIX[f] for f in order))} feature files found "
        "(nor TRIDENT features_*/, mopadi <slide>/features.h5 or LazySlide .zarr stores)",
        "run `sae1n extract-features` first, or point to the folder holding h5_files/ or pt_files/",
    )


def _scan(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob(f"*{suffix}")) if not p.name.startswith(".") and p.is_file()}


def _with_table(stores: dict[str, Path], table: str | None) -> dict[str, Path]:
    """Point at ``<slide>.zarr/tables/<table>`` so every reader (also those
    called without ``feature_format``) reads that table."""
    if table is None:
        return stores
    out = {}
    for sid, store in stores.items():
        t = store / "tables" / table
        if not t.is_dir():
            raise InputFileError(store, f"has no feature table {table!r}", "pick a table every slide's store has")
        out[sid] = t
    return out


def _scan_zarr(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.zarr")) if p.is_dir() and not p.name.startswith(".")}


def _other_layouts(root: Path) -> dict[str, Path]:
    """LazySlide stores, mopadi's per-slide folders, or a TRIDENT job folder."""
    found = _scan_zarr(root)
    if found:
        return found
    subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    found = {d.name: d / "features.h5" for d in subs if (d / "features.h5").is_file()}
    if found:
        return found
    trident = sorted({*root.glob("features_*"), *root.glob("*/features_*")})
    trident = [d for d in trident if d.is_dir() and _scan(d, ".h5")]
    if len(trident) > 1:
        raise InputFileError(
            root,
            f"holds {len(trident)} TRIDENT feature folders ({', '.join(str(d.relative_to(root)) for d in trident)})",
            "point to the one of the encoder you want",
        )
    if trident:
        return _scan(trident[0], ".h5")
    # STAMP's output folder: <output_dir>/<extractor>[-<hash>]/<slide>.h5
    stamp = [d for d in subs if _is_stamp_folder(d)]
    if len(stamp) > 1:
        raise InputFileError(
            root,
            f"holds {len(stamp)} STAMP feature folders ({', '.join(d.name for d in stamp)})",
            "point to the one of the extractor you want",
        )
    return _scan(stamp[0], ".h5") if stamp else {}


def _is_stamp_folder(folder: Path) -> bool:
    first = next(iter(_scan(folder, ".h5").values()), None)
    if first is None:
        return False
    try:
        with h5py.File(first, "r") as f:
            return "feats" in f and ("stamp_version" in f.attrs or "extractor" in f.attrs)
    except OSError:
        return False

