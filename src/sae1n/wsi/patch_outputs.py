"""The outputs of one slide in ``create_patches`` and the provenance record
each carries (:func:`slide_outputs`), and whether an existing output is worth
keeping (:func:`existing_patch_count`, a readable patch file)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sae1n.errors import InputFileError
from sae1n.wsi.presets import SlideParams

log = logging.getLogger("sae1n.wsi.patch_slides")  # the logger name of the messages before this module was split out

PATCH_SCHEMA = 1
# per-slide parameters that only change the drawings, not the segmentation or the grid
_DRAWING_PARAMS = ("vis_level", "line_thickness")


def existing_patch_count(path: Path) -> int | None:
    """Number of patches in ``path`` if it is a readable patch file, else None (resume check)."""
    from sae1n.wsi.patch_files import read_patch_file

    if not path.is_file():
        return None
    try:
        coords, _ = read_patch_file(path)
    except InputFileError as exc:
        log.warning("%s; it will be recreated", exc)
        return None
    return len(coords)


def slide_outputs(
    save_dir: str | os.PathLike,
    slide_path: str | os.PathLike,
    params: SlideParams,
    options: dict,
) -> dict[Path, object]:
    """The outputs one slide will have and the provenance record each carries.

    ``options`` holds the run's ``patch_size, step_size, patch_level,
    target_mpp, magnification, seg, patch, stitch, save_mask, save_geojson``.
    Each record names only what shapes that output: the tissue GeoJSON the
    segmentation parameters, the coordinates also the grid options, masks
    and stitches also the drawing parameters."""
    from sae1n.io.provenance import Provenance

    save_dir, slide_path = Path(save_dir), Path(slide_path)
    sid = slide_path.stem
    row = params.as_row()
    seg_settings = {"seg": bool(options["seg"]), **{k: v for k, v in row.items() if k not in _DRAWING_PARAMS}}
    grid = {k: options[k] for k in ("patch_size", "step_size", "patch_level", "target_mpp", "magnification")}
    draw = {k: row[k] for k in _DRAWING_PARAMS}
    inputs = {"slide": slide_path}
    out: dict[Path, object] = {}
    if options["patch"]:
        out[save_dir / "patches" / f"{sid}.h5"] = Provenance.make(
            "patch_coords", PATCH_SCHEMA, {**seg_settings, **grid}, inputs
        )
        if options["stitch"]:
            out[save_dir / "stitches" / f"{sid}.jpg"] = Provenance.make(
                "patch_stitch", PATCH_SCHEMA, {**seg_settings, **grid}, inputs
            )
    if options["save_mask"]:
        out[save_dir / "masks" / f"{sid}.jpg"] = Provenance.make(
            "tissue_mask", PATCH_SCHEMA, {**seg_settings, **draw}, inputs
        )
    if options["seg"] and options["save_geojson"]:
        out[save_dir / "geojson" / f"{sid}.geojson"] = Provenance.make(
            "tissue_geojson", PATCH_SCHEMA, seg_settings, inputs
        )
    return out


def output_readable(path: Path) -> bool:
    """Whether an existing output holds anything worth keeping (a broken h5 is redone)."""
    if path.suffix == ".h5":
        return existing_patch_count(path) is not None
    return path.stat().st_size > 0

