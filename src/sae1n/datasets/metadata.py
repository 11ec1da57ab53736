"""Dataset metadata CSVs (``case_id, slide_id, label, split``) for Camelyon16
and PANDA, built from a feature folder, as the paper's ``create_metadata.py``.

Camelyon16 rows follow the file names: ``normal_*`` and ``tumor_*`` are
training slides with those labels; ``test_*`` slides are the official test set,
labelled from the official reference CSV when given, else (as the paper does)
tumour when ``<annotation_dir>/<slide>.xml`` exists. PANDA rows take their label
from ``train.csv`` (``isup_grade == 0`` is normal) and keep ``data_provider``
and ``isup_grade``. Rows are sorted by slide id, like the paper's files.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_csv, feature_paths, validate_slide_id
from sae1n.io.folders import writable_dir
from sae1n.io.provenance import (
    Provenance,
    check_output,
    fingerprint_of,
    sidecar_path,
    write_sidecar,
)
from sae1n.io.tables import read_csv

log = logging.getLogger(__name__)

TASKS = ("camelyon16", "panda")
LABELS = ("normal", "tumor")
REQUIRED_COLUMNS = ("case_id", "slide_id", "label")
CAMELYON16_PREFIXES = ("normal", "tumor", "test")
METADATA_SCHEMA = 1


def create_metadata(
    task: str,
    feature_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_filename: str | None = None,
    *,
    annotation_dir: str | os.PathLike | None = None,
    panda_csv: str | os.PathLike | None = None,
    reference_csv: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write ``<output_dir>/<output_filename>`` and return its rows.

    The CSV's sidecar records the task, the slides found and the identity of
    the label sources; an existing CSV made from other inputs is refused
    (:class:`~sae1n.io.provenance.StaleOutputError`) unless ``overwrite``, and
    a current one is left untouched.

    ``feature_dir`` is a CLAM feature root, its ``h5_files/``/``pt_files/``
    subfolder, or a flat folder: one row per slide file found. The returned
    frame's ``attrs`` hold ``path`` (the CSV written), ``skipped`` (slide ids
    left out: unknown Camelyon16 prefixes or slides missing from the PANDA CSV)
    and ``skip_reason``.
    """
    task = task.lower()
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    slide_ids = sorted(feature_paths(feature_dir))
    for sid in slide_ids:
        validate_slide_id(sid, feature_dir)
    if task == "camelyon16":
        frame, skipped, reason = _camelyon16_rows(slide_ids, annotation_dir, reference_csv)
    else:
        if panda_csv is None:
            raise ConfigError("--panda_csv is required for task panda: pass PANDA's train.csv")
        frame, skipped, reason = _panda_rows(slide_ids, Path(panda_csv))
    if frame.empty:
        raise InputFileError(
            feature_dir,
            f"none of the {len(slide_ids)} slides could be labelled ({reason}: {_preview(skipped)})",
            "check --task and the feature folder",
        )
    if skipped:
        log.warning("%d slide(s) left out (%s): %s", len(skipped), reason, _preview(skipped))
    path = Path(output_dir) / (output_filename or f"{task}_metadata.csv")
    prov = Provenance.make(
        "metadata_csv",
        METADATA_SCHEMA,
        {"task": task},
        {
            "slides": fingerprint_of(slide_ids),
            "annotations": None
            if annotation_dir is None
            else fingerprint_of(sorted(_annotated_slides(Path(annotation_dir)))),
            "reference_csv": None if reference_csv is None else Path(reference_csv),
            "panda_csv": None if panda_csv is None else Path(panda_csv),
        },
    )
    if not check_output(path, prov, overwrite=overwrite):
        writable_dir(Path(output_dir), "--output_dir")
        sidecar_path(path).unlink(missing_ok=True)
        atomic_write_csv(path, frame)
        write_sidecar(path, prov)
    frame.attrs.update(path=str(path), skipped=list(skipped), skip_reason=reason)
    return frame


def _camelyon16_rows(slide_ids, annotation_dir, reference_csv):
    reference = _read_reference_labels(Path(reference_csv)) if reference_csv is not None else None
    annotated = _annotated_slides(Path(annotation_dir)) if annotation_dir is not None else None
    rows, skipped = [], []
    for slide_id in slide_ids:
        prefix = slide_id.split("_", 1)[0]
        if prefix not in CAMELYON16_PREFIXES:
            skipped.append(slide_id)
            continue
        match = re.search(rf"{prefix}_(\d+)", slide_id)
        case_id = f"{prefix}_{match.group(1)}" if match else slide_id
        if prefix != "test":
            rows.append((case_id, slide_id, prefix, "train"))
            continue
        if reference is not None:
            if slide_id not in reference:
                raise InputFileError(
                    reference_csv,
                    f"test slide {slide_id} is not listed",
                    "use the official CAMELYON16 reference CSV, or drop --reference_csv to label by annotation files",
                )
            label = reference[slide_id]
        elif annotated is not None:
            label = "tumor" if slide_id in annotated else "normal"
        else:
            raise ConfigError(
                f"test slide {slide_id} needs a label: pass --reference_csv (official reference) "
                "or --annotation_dir (slides with an annotation file are tumour)"
            )
        rows.append((case_id, slide_id, label, "test"))
    frame = pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "split"])
    return frame, skipped, "unknown Camelyon16 prefix (expected normal_, tumor_ or test_)"


def _annotated_slides(annotation_dir: Path) -> set[str]:
    if not annotation_dir.is_dir():
        raise InputFileError(
            annotation_dir,
            "annotation folder does not exist",
            "pass the folder holding the <slide>.xml files",
        )
    from sae1n.datasets.annotations import annotated_slide_ids

    return annotated_slide_ids(annotation_dir, formats=("asap", "geojson"))


def _read_reference_labels(path: Path) -> dict[str, str]:
    """slide id -> normal/tumor from an official-reference-style CSV."""
    frame = _read_csv(path)
    slide_col = _pick_column(frame, path, ("slide_name", "slide_id", "image", "name"), "slide name")
    label_col = _pick_column(
        frame, path, ("is_tumor", "label", "class", "type"), "Tumor/Normal label"
    )
    labels = {}
    for slide, raw in zip(frame[slide_col].astype(str), frame[label_col].astype(str)):
        value = raw.strip().lower()
        if value not in LABELS:
            raise InputFileError(
                path,
                f"unknown label {raw!r} for slide {slide} in column {label_col!r}",
                "labels must be Tumor or Normal",
            )
        labels[Path(slide.strip()).stem] = value
    return labels


def _panda_rows(slide_ids, panda_csv: Path):
    table = _read_csv(panda_csv)
    missing = {"image_id", "isup_grade"} - set(table.columns)
    if missing:
        raise InputFileError(
            panda_csv,
            f"missing column(s) {sorted(missing)}",
            "pass PANDA's train.csv (image_id, data_provider, isup_grade, gleason_score)",
        )
    if "data_provider" not in table.columns:
        log.warning("%s has no data_provider column: every slide gets 'unknown'", panda_csv)
        table["data_provider"] = "unknown"
    grades = pd.to_numeric(table["isup_grade"], errors="coerce")
    bad = table.loc[grades.isna() | (grades % 1 != 0), "image_id"].tolist()
    if bad:
        raise InputFileError(
            panda_csv,
            f"isup_grade is not an integer for {_preview(bad)}",
            "fix those rows (ISUP grades are 0-5)",
        )
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].tolist()
        raise InputFileError(
            panda_csv, f"duplicate image_id {_preview(dup)}", "keep one row per slide"
        )
    info = dict(zip(table["image_id"], zip(table["data_provider"], grades.astype(int))))
    rows, skipped = [], []
    for slide_id in slide_ids:
        if slide_id not in info:
            skipped.append(slide_id)
            continue
        provider, grade = info[slide_id]
        rows.append((slide_id, slide_id, "normal" if grade == 0 else "tumor", provider, grade))
    columns = ["case_id", "slide_id", "label", "data_provider", "isup_grade"]
    return pd.DataFrame(rows, columns=columns), skipped, f"not in {panda_csv.name}"


def load_metadata(path: str | os.PathLike, labels: tuple[str, ...] | None = LABELS) -> pd.DataFrame:
    """Read and validate a metadata CSV.

    Requires ``case_id, slide_id, label`` with no blanks and unique slide ids;
    ``labels`` (default normal/tumor; ``None`` accepts any) lists the allowed
    labels. A missing ``split`` column (PANDA, as in the paper) means every
    slide is a training-pool slide and is filled with ``train``.
    """
    path = Path(path)
    frame = _read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputFileError(
            path,
            f"missing column(s) {missing}",
            "make it with `sae1n create-metadata` (columns case_id, slide_id, label, split)",
        )
    for column in REQUIRED_COLUMNS:
        blank = frame[column].isna() | (frame[column].str.strip() == "")
        if blank.any():
            raise InputFileError(
                path,
                f"blank {column} on line(s) {_preview((blank[blank].index + 2).tolist())}",
                "fill or remove those rows",
            )
    for sid in frame["slide_id"]:
        validate_slide_id(sid, path)
    if frame["slide_id"].duplicated().any():
        dup = frame.loc[frame["slide_id"].duplicated(), "slide_id"].tolist()
        raise InputFileError(path, f"duplicate slide_id {_preview(dup)}", "keep one row per slide")
    if labels is not None:
        unknown = sorted(set(frame["label"]) - set(labels))
        if unknown:
            raise InputFileError(
                path, f"unknown label(s) {unknown}", f"labels must be one of {list(labels)}"
            )
    if "split" not in frame.columns:
        frame["split"] = "train"
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    return read_csv(path, "file", "check the path")


def _pick_column(frame: pd.DataFrame, path: Path, candidates, what: str) -> str:
    for name in candidates:
        if name in frame.columns:
            return name
    raise InputFileError(
        path,
        f"no {what} column (looked for {list(candidates)})",
        "use the official reference CSV layout",
    )


def _preview(items, n: int = 5) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more
