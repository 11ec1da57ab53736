"""Patch-level ground truth: the tumour fraction of every patch of a slide.

A patch's tumour fraction is the area of its level-0 square covered by the
annotated tumour divided by the square's area; its label is
``fraction >= threshold``. Output per slide (``<output_dir>/<slide>.h5``):
datasets ``coords`` (N, 2) int64, ``tumor_fraction`` (N,) float32,
``label`` (N,) uint8, and the attribute ``threshold``. Consumers match
patches to features by coords. The covered fractions are computed by
:mod:`sae1n.datasets.patch_coverage`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from sae1n.datasets.annotations import (
    FORMATS,
    GEOJSON_TUMOR_CLASSES,
    find_annotation,
    read_annotation,
)
from sae1n.datasets.annotations import annotation_format as annotation_kind
from sae1n.datasets.patch_coverage import patch_size_pair, tumor_fractions
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_path, atomic_write_csv, validate_slide_id
from sae1n.io.provenance import Provenance, plan_outputs, write_h5_provenance

__all__ = [
    "LABELS_SCHEMA", "SUMMARY_NAME", "coords_files", "create_patch_labels", "patch_size_level0",
    "read_coords", "read_patch_label_file", "read_patch_labels", "tumor_fractions",
    "warn_if_outside", "write_patch_labels",
]

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
LABELS_SCHEMA = 1


# ----------------------------------------------------------------------------- coords input


def coords_files(
    coords_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike],
) -> dict[str, Path]:
    """slide id -> coords h5, from a create-patches folder (its ``patches/``),
    a feature folder (its ``h5_files/``), a folder of .h5 files, or a list of files."""
    if isinstance(coords_dir_or_files, (str, os.PathLike)):
        root = Path(coords_dir_or_files)
        if root.is_file():
            return {root.stem: root}
        if not root.is_dir():
            raise InputFileError(
                root,
                "coords folder does not exist",
                "pass the create-patches output (or its patches/ folder) or a feature h5_files/ folder",
            )
        for sub in ("patches", "h5_files"):
            if (root / sub).is_dir():
                root = root / sub
                break
        found = {p.stem: p for p in sorted(root.glob("*.h5")) if not p.name.startswith(".")}
        if not found:
            raise InputFileError(
                root,
                "no .h5 coords files found",
                "run `sae1n create-patches` (or extract-features) first",
            )
        return found
    files = [Path(p) for p in coords_dir_or_files]
    if not files:
        raise ConfigError("no coords files given")
    return {p.stem: p for p in files}


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(coords (N, 2) int64, attrs) from a patch or feature h5 file with at least one patch."""
    from sae1n.wsi.patch_files import read_patch_file

    coords, attrs = read_patch_file(path)
    if coords.shape[0] == 0:
        raise InputFileError(
            path,
            "the slide has no patches",
            "drop this slide, or re-run create-patches with other segmentation settings",
        )
    return coords, attrs


def patch_size_level0(
    attrs: Mapping, override=None, path: str | os.PathLike | None = None
) -> tuple[float, float]:
    """Patch (width, height) in level-0 pixels: ``override``, else the file's
    :class:`~sae1n.wsi.patch_files.PatchGeometry` (``patch_size_level0``, or
    CLAM's ``patch_size * int(downsample)``)."""
    from sae1n.wsi.patch_files import PatchGeometry

    if override is not None:
        return patch_size_pair(override)
    try:
        geom = PatchGeometry.from_attrs(attrs, path)
    except InputFileError as exc:
        raise InputFileError(
            path or "<coords>",
            "no patch size attributes (patch_size_level0, or patch_size with downsample/patch_level)",
            "pass --patch_size with the patch side in level-0 pixels",
        ) from exc
    return patch_size_pair(geom.size_level0)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------- the stage


def create_patch_labels(
    coords_dir_or_files,
    annotation_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    threshold: float = 0.5,
    *,
    annotation_format: str = "auto",
    classification: tuple[str, ...] | str = GEOJSON_TUMOR_CLASSES,
    patch_size=None,
    data_provider: str | None = None,
    data_providers: Mapping[str, str] | None = None,
    panda_csv: str | os.PathLike | None = None,
    mask_level: int | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Label every patch of every slide and write ``<output_dir>/<slide>.h5``.

    Slides without an annotation file are normal (all fractions 0); this is
    logged and recorded in ``<output_dir>/summary.csv`` (column
    ``annotation`` empty). PANDA masks need each slide's data provider:
    ``data_providers`` (slide -> provider), ``panda_csv`` (a CSV with
    ``image_id``/``slide_id`` and ``data_provider``) or one ``data_provider``.
    Each output records its provenance (threshold, level-0 patch size,
    annotation format/classes, the coords and annotation files' identity).
    Current outputs are kept; an output made otherwise is refused before
    anything is written (:class:`~sae1n.io.provenance.StaleOutputError`)
    unless ``overwrite`` (recompute it). Returns the summary rows.
    """
    from sae1n.utils import progress

    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"--threshold must be in (0, 1], got {threshold}")
    if annotation_format not in FORMATS:
        raise ConfigError(
            f"unknown --annotation_format {annotation_format!r}: use one of {', '.join(FORMATS)}"
        )
    annotation_dir = Path(annotation_dir)
    if not annotation_dir.is_dir():
        raise InputFileError(
            annotation_dir,
            "annotation folder does not exist",
            "pass --annotation_dir with the annotation files",
        )
    providers = dict(data_providers or {})
    if panda_csv is not None:
        providers = {**_providers_from_csv(Path(panda_csv)), **providers}
    files = coords_files(coords_dir_or_files)
    for slide_id in files:
        validate_slide_id(slide_id, coords_dir_or_files if isinstance(coords_dir_or_files, (str, os.PathLike)) else "coords files")
    output_dir = Path(output_dir)
    classes = tuple(_as_classes(classification))
    # Plan every slide first: a stale output stops the run before anything is written.
    plans = {}
    for slide_id, coords_path in files.items():
        coords, attrs = read_coords(coords_path)
        size = patch_size_level0(attrs, patch_size, coords_path)
        annotation_path = find_annotation(annotation_dir, slide_id, annotation_format)
        fmt = (
            None
            if annotation_path is None
            else (annotation_format if annotation_format != "auto" else annotation_kind(annotation_path))
        )
        settings = {"threshold": threshold, "patch_size_level0": list(size), "format": fmt}
        if fmt == "geojson":
            settings["classification"] = list(classes)
        if fmt == "panda_mask":
            settings["data_provider"] = providers.get(slide_id, data_provider)
            settings["mask_level"] = mask_level
        prov = Provenance.make(
            "patch_labels",
            LABELS_SCHEMA,
            settings,
            {"coords": coords_path, "annotation": annotation_path},
        )
        plans[slide_id] = (coords, size, annotation_path, prov)
    _, current = plan_outputs(
        {output_dir / f"{sid}.h5": plan[3] for sid, plan in plans.items()},
        overwrite=overwrite,
        valid=_readable_labels,
    )
    current = set(current)
    rows = []
    for slide_id, (coords, size, annotation_path, prov) in progress(
        plans.items(), desc="patch labels", total=len(plans)
    ):
        out = output_dir / f"{slide_id}.h5"
        if out in current:
            status = "kept"
            _, fraction, label = read_patch_labels(out)
        else:
            if annotation_path is None:
                log.info(
                    "%s: no annotation file in %s: every patch is normal (fraction 0)",
                    slide_id,
                    annotation_dir,
                )
                fraction = np.zeros(len(coords))
            else:
                annotation = read_annotation(
                    annotation_path,
                    annotation_format,
                    classification=classes,
                    data_provider=providers.get(slide_id, data_provider),
                    mask_level=mask_level,
                )
                fraction = tumor_fractions(coords, size, annotation)
                if not np.any(fraction > 0):
                    warn_if_outside(annotation, coords, size, annotation_path)
            fraction, label = write_patch_labels(
                out, coords, fraction, threshold, size=size, provenance=prov
            )
            status = "written"
        rows.append(
            {
                "slide_id": slide_id,
                "n_patches": len(coords),
                "n_tumor": int(label.sum()),
                "mean_tumor_fraction": float(fraction.mean()),
                "annotation": annotation_path.name if annotation_path else "",
                "status": status,
            }
        )
    summary = pd.DataFrame(
        rows,
        columns=["slide_id", "n_patches", "n_tumor", "mean_tumor_fraction", "annotation", "status"],
    )
    missing = summary.loc[summary["annotation"] == "", "slide_id"].tolist()
    if missing:
        log.warning(
            "%d slide(s) have no annotation and were labelled all normal: %s",
            len(missing),
            ", ".join(missing[:10]),
        )
    atomic_write_csv(output_dir / SUMMARY_NAME, summary)
    return summary


def write_patch_labels(path, coords, fraction, threshold: float, *, size=None, provenance=None):
    """Write one slide's labels atomically (with its provenance record as a
    file attribute); returns the stored (fraction, label)."""
    fraction = np.clip(np.asarray(fraction, dtype=np.float32), 0.0, 1.0)
    # The label is computed from the stored float32 value so readers can recompute it.
    label = (fraction >= np.float32(threshold)).astype(np.uint8)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        f.create_dataset("tumor_fraction", data=fraction)
        f.create_dataset("label", data=label)
        f.attrs["threshold"] = float(threshold)
        if size is not None:
            f.attrs["patch_size_level0"] = np.asarray(size, dtype=np.float64)
        if provenance is not None:
            write_h5_provenance(f, provenance)
    return fraction, label


def read_patch_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coords (N, 2) int64, tumor_fraction (N,) float32, label (N,) uint8) of one slide."""
    coords, fraction, label, _ = _read_labels(path, need_label=True)
    return coords, fraction, label


def read_patch_label_file(path: str | os.PathLike):
    """(coords (N, 2) int64, tumor_fraction (N,) float64, threshold attribute or None)
    of one slide's patch-label file (the form evaluation and heatmaps use)."""
    coords, fraction, _, threshold = _read_labels(path, need_label=False)
    return coords, fraction.astype(np.float64), threshold


def _read_labels(path, need_label: bool):
    """The one reader of ``<slide>.h5`` patch-label files; every problem is one
    error naming the file."""
    path = Path(path)
    fix = "re-create it with `sae1n patch-labels`"
    if not path.is_file():
        raise InputFileError(path, "patch-label file not found", "run `sae1n patch-labels` first")
    try:
        with h5py.File(path, "r") as f:
            needed = ("coords", "tumor_fraction", "label") if need_label else ("coords", "tumor_fraction")
            missing = [k for k in needed if k not in f]
            if missing:
                raise InputFileError(
                    path, f"missing dataset(s) {missing} (datasets: {sorted(f.keys())})", fix
                )
            coords = np.asarray(f["coords"][()], dtype=np.int64)
            fraction = np.asarray(f["tumor_fraction"][()], dtype=np.float32)
            label = np.asarray(f["label"][()], dtype=np.uint8) if "label" in f else None
            thr = f.attrs.get("threshold")
    except OSError as exc:
        raise InputFileError(path, f"cannot be read as HDF5 ({exc})", fix) from exc
    n = len(fraction)
    if coords.shape != (n, 2) or (label is not None and label.shape != (n,)):
        raise InputFileError(
            path,
            f"inconsistent shapes coords {coords.shape}, tumor_fraction {fraction.shape}"
            + ("" if label is None else f", label {label.shape}"),
            fix,
        )
    if (
        not np.all(np.isfinite(fraction))
        or fraction.min(initial=0) < 0
        or fraction.max(initial=0) > 1
    ):
        raise InputFileError(path, "tumor_fraction has values outside [0, 1] or NaN", fix)
    return coords, fraction, label, (None if thr is None else float(thr))


def _readable_labels(path: Path) -> bool:
    try:
        read_patch_labels(path)
    except InputFileError:
        return False
    return True


def _as_classes(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def warn_if_outside(annotation, coords, size, path) -> None:
    """Warn when an annotation covers no patch because it lies outside the patched
    area (wrong slide, wrong level or units): the slide would silently count as normal."""
    if not isinstance(annotation, BaseGeometry) or annotation.is_empty or len(coords) == 0:
        return
    w, h = patch_size_pair(size)
    x0, y0 = np.min(coords, axis=0)
    x1, y1 = np.max(coords, axis=0) + [w, h]
    if not annotation.intersects(shapely.box(x0, y0, x1, y1)):
        bx = tuple(round(v) for v in annotation.bounds)
        log.warning(
            "%s: the tumour annotation (bounds %s) lies outside the patched area of the slide "
            "(%d, %d)-(%d, %d): no patch is labelled tumour; check that it belongs to this slide "
            "and is in level-0 pixels",
            path,
            bx,
            x0,
            y0,
            x1,
            y1,
        )


def _providers_from_csv(path: Path) -> dict[str, str]:
    from sae1n.io.tables import read_csv

    table = read_csv(path, "file", "pass PANDA's train.csv or the panda metadata CSV").fillna("")
    id_column = next((c for c in ("image_id", "slide_id") if c in table.columns), None)
    if id_column is None or "data_provider" not in table.columns:
        raise InputFileError(
            path,
            "needs columns image_id (or slide_id) and data_provider",
            "pass PANDA's train.csv or the panda metadata CSV",
        )
    return dict(zip(table[id_column], table["data_provider"]))
