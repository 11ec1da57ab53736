"""The labelled patches :func:`sae1n.datasets.bags.make_bags` draws from, read
from any of three sources: a feature matrix with a labels CSV, a CLAM feature
folder with per-patch labels at coords, or a folder of labelled image tiles
(encoded here with a registry encoder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import InputFileError
from sae1n.io import read_bag
from sae1n.utils import progress

CLASS_COLUMNS = ("tissue_class", "class", "label", "target")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _class_column(frame: pd.DataFrame, column: str | None, path) -> str:
    if column:
        if column not in frame.columns:
            raise InputFileError(
                path,
                f"has no {column!r} column (columns: {list(frame.columns)})",
                "pass --class_column with the column holding each patch's class",
            )
        return column
    for c in CLASS_COLUMNS:
        if c in frame.columns:
            return c
    raise InputFileError(
        path,
        f"has no class column (looked for {', '.join(CLASS_COLUMNS)}; columns: {list(frame.columns)})",
        "pass --class_column",
    )


def _read_csv(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "labels CSV not found", "pass --labels with one row per patch")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise InputFileError(path, f"cannot be read as CSV ({exc})", "fix the CSV") from exc


def load_patch_features(
    features_npy: str | os.PathLike, labels_csv: str | os.PathLike, class_column: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D) float32, classes (N,) str, patch ids (N,) str) from an
    ``.npy`` matrix and a CSV with one row per matrix row (a ``row`` column,
    when present, gives the matrix row of each CSV row)."""
    features_npy = Path(features_npy)
    if not features_npy.is_file():
        raise InputFileError(features_npy, "features file not found", "pass --features X.npy")
    try:
        x = np.load(features_npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputFileError(features_npy, f"is not a readable .npy matrix ({exc})", "save it with numpy.save") from exc
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InputFileError(features_npy, f"must be a finite (N, D) matrix, got shape {x.shape}", "save one feature row per patch")
    frame = _read_csv(labels_csv)
    col = _class_column(frame, class_column, labels_csv)
    if "row" in frame.columns:
        try:
            rows = frame["row"].astype(int).to_numpy()
        except ValueError as exc:
            raise InputFileError(labels_csv, "its 'row' column is not integer", "give matrix row numbers") from exc
        if rows.min(initial=0) < 0 or rows.max(initial=0) >= len(x) or len(set(rows)) != len(rows):
            raise InputFileError(labels_csv, f"'row' values must be distinct rows of the {len(x)}-row matrix", "fix the row column")
    else:
        if len(frame) != len(x):
            raise InputFileError(labels_csv, f"has {len(frame)} rows but {features_npy.name} has {len(x)}", "give one CSV row per feature row (or a row column)")
        rows = np.arange(len(x))
    return x[rows].astype(np.float32), frame[col].astype(str).to_numpy(), rows.astype(str)


def _match_rows(coords: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Row of ``coords`` for each (x, y) in ``xy``; -1 when absent."""
    key = {(int(a), int(b)): i for i, (a, b) in enumerate(np.asarray(coords).reshape(-1, 2))}
    return np.array([key.get((int(a), int(b)), -1) for a, b in xy], dtype=np.int64)


def load_clam_folder(
    feature_dir: str | os.PathLike, labels_csv: str | os.PathLike, class_column: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches of a CLAM feature folder with classes from a CSV of
    ``slide_id, x, y, <class>`` (level-0 coords of each labelled patch)."""
    from sae1n.io import feature_paths

    paths = feature_paths(feature_dir)
    frame = _read_csv(labels_csv)
    col = _class_column(frame, class_column, labels_csv)
    for c in ("slide_id", "x", "y"):
        if c not in frame.columns:
            raise InputFileError(labels_csv, f"has no {c!r} column", "give slide_id, x, y and the class of each patch")
    feats, classes, ids = [], [], []
    for sid, rows in frame.groupby("slide_id", sort=True):
        if sid not in paths:
            raise InputFileError(labels_csv, f"names slide {sid!r}, which has no feature file in {feature_dir}", "extract its features or drop its rows")
        bag = read_bag(paths[sid])
        if bag.coords is None:
            raise InputFileError(paths[sid], "has no coords", "use h5 feature files (they keep coords)")
        xy = rows[["x", "y"]].astype(int).to_numpy()
        idx = _match_rows(bag.coords, xy)
        if (idx < 0).any():
            bad = xy[idx < 0][0]
            raise InputFileError(labels_csv, f"patch ({bad[0]}, {bad[1]}) of {sid} is not among its feature coords", "label patches at the coords the features were extracted at")
        feats.append(bag.features[idx])
        classes.extend(rows[col].astype(str))
        ids.extend(f"{sid}:{a}:{b}" for a, b in xy)
    if not feats:
        raise InputFileError(labels_csv, "has no rows", "give one row per labelled patch")
    return np.concatenate(feats).astype(np.float32), np.asarray(classes), np.asarray(ids)


def list_tiles(tiles_dir: str | os.PathLike, labels_csv=None, class_column: str | None = None):
    """(image paths, classes) of a tile folder: from ``labels_csv`` (a file
    column, relative to the CSV), else every ``labels.csv`` below ``tiles_dir``,
    else the sub-folder name of each image (``DIR/<class>/*.png``)."""
    root = Path(tiles_dir)
    if not root.is_dir():
        raise InputFileError(root, "tile folder not found", "pass --tiles DIR")
    csvs = [Path(labels_csv)] if labels_csv else sorted(root.rglob("labels.csv"))
    files, classes = [], []
    if csvs:
        for csv in csvs:
            frame = _read_csv(csv)
            col = _class_column(frame, class_column, csv)
            fcol = next((c for c in ("file", "filename", "path", "image") if c in frame.columns), None)
            if fcol is None:
                raise InputFileError(csv, "has no file column (file, filename, path or image)", "name each tile's image file")
            for name, cls in zip(frame[fcol], frame[col].astype(str)):
                p = csv.parent / name
                if not p.is_file():
                    raise InputFileError(csv, f"lists {name}, which is not in {csv.parent}", "fix the file column")
                files.append(p)
                classes.append(cls)
    else:
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.parent != root:
                files.append(p)
                classes.append(p.parent.name)
    if not files:
        raise InputFileError(root, "holds no labelled tiles", "add labels.csv (file, class) or DIR/<class>/*.png")
    return files, np.asarray(classes)


def encode_tiles(
    files, encoder: str = "handcrafted", *, checkpoint=None, device: str = "cpu", batch_size: int = 64
) -> np.ndarray:
    """Features (N, D) of image tiles (RGB; alpha dropped) through a registered
    encoder; tiles of unequal size in one batch are cropped to the smallest side
    (the encoder resizes to its input size)."""
    from PIL import Image

    from sae1n.encoders import get_encoder

    enc = get_encoder(encoder, checkpoint, device=device)
    out = []
    files = list(files)
    for s in progress(range(0, len(files), batch_size), desc=f"encoding tiles ({encoder})"):
        imgs = []
        for p in files[s : s + batch_size]:
            try:
                with Image.open(p) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
            except OSError as exc:
                raise InputFileError(p, f"is not a readable image ({exc})", "remove or replace it") from exc
        shapes = {a.shape for a in imgs}
        if len(shapes) > 1:
            side = min(min(a.shape[:2]) for a in imgs)
            imgs = [a[:side, :side] for a in imgs]
        out.append(enc.encode_numpy(np.stack(imgs)))
    return np.concatenate(out).astype(np.float32)

