"""``create_patches``: CLAM's ``create_patches_fp.py`` as a function.

For every slide in ``source``: segment tissue, write the patch grid to
``<save_dir>/patches/<slide>.h5``, the contours drawn on the slide to
``masks/<slide>.jpg``, the stitched patches to ``stitches/<slide>.jpg`` and
the contours as GeoJSON to ``geojson/<slide>.geojson``, and record a status
per slide in ``process_list_autogen.csv`` (CLAM's columns plus ``reason``,
``n_contours``, ``n_patches``, ``level0_mpp``). A slide that fails is recorded
with its reason and the batch goes on. Slides whose patch file exists are
skipped unless ``auto_skip=False``.

The process list (columns, statuses, reading, summary) is in
:mod:`sae1n.wsi.process_list`, the per-slide outputs and their provenance in
:mod:`sae1n.wsi.patch_outputs`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.wsi.patch_outputs import (
    PATCH_SCHEMA,
    existing_patch_count,
    output_readable,
    slide_outputs,
)
from sae1n.wsi.presets import SlideParams, load_preset
from sae1n.wsi.process_list import (
    ALREADY_EXIST,
    BUSY,
    EXTRA_COLUMNS,
    FAILED,
    FAILED_SEG,
    NO_TISSUE,
    PARAM_COLUMNS,
    PROCESS_LIST_NAME,
    PROCESSED,
    TO_BE_PROCESSED,
    WORK_STATUSES,
    initialize_process_list,
    list_slides,
    read_process_list,
    set_cells,
    summarize,
)

__all__ = [
    "ALREADY_EXIST", "BUSY", "EXTRA_COLUMNS", "FAILED", "FAILED_SEG", "MAX_SEG_PIXELS", "NO_TISSUE",
    "PARAM_COLUMNS", "PATCH_SCHEMA", "PROCESSED", "PROCESS_LIST_NAME", "TO_BE_PROCESSED",
    "WORK_STATUSES", "create_patches", "existing_patch_count", "initialize_process_list",
    "list_slides", "process_slide", "read_process_list", "slide_outputs", "summarize",
]

log = logging.getLogger(__name__)

MAX_SEG_PIXELS = 1e8  # CLAM refuses to segment a level larger than this


def process_slide(
    slide_path: str | os.PathLike,
    save_dir: str | os.PathLike,
    params: SlideParams,
    *,
    patch_size: int = 256,
    step_size: int | None = None,
    patch_level: int = 0,
    target_mpp: float | None = None,
    magnification: float | None = None,
    seg: bool = True,
    patch: bool = True,
    stitch: bool = True,
    save_mask: bool = True,
    save_geojson: bool = True,
    backend: str = "auto",
    provenance: dict | None = None,
) -> dict:
    """Segment, patch and draw one slide; return its process-list updates
    (``status``, ``reason``, resolved ``seg_level``/``vis_level``, counts).
    ``provenance`` maps output paths to the records to store with them
    (:func:`slide_outputs`). Errors propagate; :func:`create_patches` records them."""
    from sae1n.io import atomic_write_json
    from sae1n.io.provenance import sidecar_path, write_sidecar
    from sae1n.wsi.patch_files import make_patch_spec, write_patch_file
    from sae1n.wsi.patching import tissue_patch_coords, whole_slide_region
    from sae1n.wsi.segmentation import contours_to_geojson, resolve_level, segment_tissue
    from sae1n.wsi.slide import open_slide
    from sae1n.wsi.stitching import draw_tissue, read_overview, save_jpeg, stitch_patches

    save_dir = Path(save_dir)
    slide_path = Path(slide_path)
    slide_id = slide_path.stem
    prov = provenance or {}
    row: dict = {"reason": ""}

    for path in prov:  # an output being replaced loses its old record first
        sidecar_path(path).unlink(missing_ok=True)

    def record(path: Path) -> None:
        if path in prov:
            write_sidecar(path, prov[path])
    with open_slide(slide_path, backend=backend) as slide:
        row["level0_mpp"] = slide.mpp if slide.mpp is not None else np.nan
        seg_level = resolve_level(slide, params.seg_level)
        vis_level = resolve_level(slide, params.vis_level)
        row.update(seg_level=seg_level, vis_level=vis_level)
        w, h = slide.level_dimensions[seg_level]
        if seg and w * h > MAX_SEG_PIXELS:
            row.update(
                status=FAILED_SEG,
                reason=f"segmentation level {seg_level} is {w}x{h} pixels, too large to segment (limit {MAX_SEG_PIXELS:.0e}); convert the slide to a pyramidal TIFF or set seg_level in a process list",
            )
            return row
        spec = (
            make_patch_spec(slide, patch_size, step_size, patch_level, target_mpp, magnification)
            if patch
            else None
        )

        t0 = time.perf_counter()
        seg_rgb = slide.read_level(seg_level) if seg else None
        tissue = segment_tissue(slide, params, seg_level, level_rgb=seg_rgb) if seg else None
        row["n_contours"] = len(tissue) if tissue is not None else np.nan
        t1 = time.perf_counter()
        if tissue is not None and save_geojson:
            atomic_write_json(
                save_dir / "geojson" / f"{slide_id}.geojson",
                contours_to_geojson(tissue),
                indent=None,
            )
            record(save_dir / "geojson" / f"{slide_id}.geojson")

        coords = None
        if patch:
            region = tissue if tissue is not None else whole_slide_region(slide.dimensions)
            coords, _ = tissue_patch_coords(
                region,
                spec.patch_size_level0,
                spec.step_level0,
                slide.dimensions,
                params.contour_fn,
                params.use_padding,
            )
            row["n_patches"] = len(coords)
            if len(coords):
                h5 = save_dir / "patches" / f"{slide_id}.h5"
                write_patch_file(
                    h5, coords, spec.attrs(slide_id, save_dir / "patches"), prov.get(h5)
                )
            else:  # a redo that finds nothing must not leave an earlier run's outputs behind
                for stale in (
                    save_dir / "patches" / f"{slide_id}.h5",
                    save_dir / "stitches" / f"{slide_id}.jpg",
                ):
                    stale.unlink(missing_ok=True)
                    sidecar_path(stale).unlink(missing_ok=True)
        t2 = time.perf_counter()

        if save_mask or (stitch and coords is not None and len(coords)):
            overview, scale = read_overview(
                slide, vis_level, level_rgb=seg_rgb if vis_level == seg_level else None
            )
            if save_mask:
                save_jpeg(
                    save_dir / "masks" / f"{slide_id}.jpg",
                    draw_tissue(overview, scale, tissue, params.line_thickness),
                )
                record(save_dir / "masks" / f"{slide_id}.jpg")
            if stitch and coords is not None and len(coords):
                # CLAM stitches at the level closest to 64x, independent of vis_level.
                stitch_level = slide.best_level_for_downsample(64)
                if stitch_level != vis_level:
                    overview, scale = read_overview(
                        slide,
                        stitch_level,
                        level_rgb=seg_rgb if stitch_level == seg_level else None,
                    )
                save_jpeg(
                    save_dir / "stitches" / f"{slide_id}.jpg",
                    stitch_patches(overview, scale, coords, spec.patch_size_level0[0]),
                )
                record(save_dir / "stitches" / f"{slide_id}.jpg")
        log.debug(
            "%s: segmentation %.2fs, patching %.2fs, drawing %.2fs",
            slide_id,
            t1 - t0,
            t2 - t1,
            time.perf_counter() - t2,
        )

    if tissue is not None and len(tissue) == 0:
        row.update(
            status=NO_TISSUE,
            reason="no tissue contour passed the segmentation filters (a_t, sthresh)",
        )
    elif coords is not None and len(coords) == 0:
        row.update(
            status=NO_TISSUE,
            reason="tissue was found but no patch passed the contour check; try a smaller --patch_size or contour_fn",
        )
    else:
        row["status"] = PROCESSED
    return row




def create_patches(
    source: str | os.PathLike,
    save_dir: str | os.PathLike,
    patch_size: int = 256,
    step_size: int | None = None,
    patch_level: int = 0,
    preset: str | os.PathLike | None = None,
    seg: bool = True,
    patch: bool = True,
    stitch: bool = True,
    process_list: str | os.PathLike | pd.DataFrame | None = None,
    auto_skip: bool = True,
    target_mpp: float | None = None,
    magnification: float | None = None,
    backend: str = "auto",
    save_mask: bool = True,
    save_geojson: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Segment and patch every slide in ``source`` (a folder or one slide file)
    into ``save_dir``; return the process list (also written to
    ``save_dir/process_list_autogen.csv``). Per-slide parameters come from
    ``process_list`` (CLAM's CSV; rows with ``process`` = 1 are run), else
    from ``preset``.

    A slide is skipped only when every output it would get exists with the
    same provenance (settings and slide identity). If an existing output was
    made otherwise, :class:`~sae1n.io.provenance.StaleOutputError` is raised
    before anything is written, unless ``overwrite`` (recompute those slides)
    or ``auto_skip=False`` (recompute every slide). Several processes may run
    on one ``save_dir`` at once: per-slide lock files share the slides."""
    from sae1n.io import item_lock, remove_stale_temp_files, validate_slide_id
    from sae1n.io.folders import disk_error, is_disk_error, writable_dir
    from sae1n.io.provenance import Provenance, is_current, plan_outputs, write_sidecar
    from sae1n.io.tables import merge_status_csv
    from sae1n.utils import progress

    _check_options(patch_size, step_size, patch_level, target_mpp, magnification, backend)
    defaults = load_preset(preset)
    save_dir = Path(save_dir)
    source = Path(source)
    folder = source.parent if source.is_file() else source
    id_source: object = source
    if isinstance(process_list, pd.DataFrame):
        df = initialize_process_list(process_list, defaults)
        id_source = "the process list"
    elif process_list is not None:
        df = initialize_process_list(read_process_list(process_list, save_dir), defaults)
        id_source = process_list
    else:
        df = initialize_process_list(list_slides(source), defaults)
    for name in df["slide_id"]:
        validate_slide_id(name, id_source)
    writable_dir(save_dir, "--save_dir")
    out_csv = save_dir / PROCESS_LIST_NAME
    options = {
        "patch_size": int(patch_size),
        "step_size": None if step_size is None else int(step_size),
        "patch_level": int(patch_level),
        "target_mpp": target_mpp,
        "magnification": magnification,
        "seg": bool(seg),
        "patch": bool(patch),
        "stitch": bool(stitch),
        "save_mask": bool(save_mask),
        "save_geojson": bool(save_geojson),
    }
    list_prov = Provenance.make(
        "process_list", PATCH_SCHEMA, {**options, "preset": defaults.as_row()}, {}
    )

    todo = df.index[pd.to_numeric(df["process"], errors="coerce").fillna(0).astype(int) == 1]
    # Plan every slide before touching anything: a stale output stops the run here.
    planned: dict = {}
    for idx in todo:
        name = df.at[idx, "slide_id"]
        try:
            params = SlideParams.from_mapping(
                df.loc[idx].to_dict(), defaults, where=f"process list row {name}: "
            )
        except Sae1nError:
            continue  # recorded as failed below
        planned[idx] = (params, slide_outputs(save_dir, folder / name, params, options))
    current: set[Path] = set()
    if auto_skip:
        expected = {p: prov for _, outs in planned.values() for p, prov in outs.items()}
        expected[out_csv] = list_prov
        _, cur = plan_outputs(expected, overwrite=overwrite, valid=output_readable)
        current = set(cur)
    remove_stale_temp_files(save_dir)
    if not list_prov.matches(_read_prov(out_csv)):
        write_sidecar(out_csv, list_prov)  # before the list, so a parallel run sees it current

    done_here: list[str] = []

    def flush():
        merge_status_csv(out_csv, df, strong=done_here)

    try:
        for idx in progress(todo, desc="create-patches", total=len(todo)):
            flush()
            name = df.at[idx, "slide_id"]
            slide_path = folder / name
            slide_id = Path(name).stem
            df.at[idx, "process"] = 0
            outs = planned.get(idx, (None, {}))[1]
            if auto_skip and outs and all(p in current for p in outs):
                _set_existing(df, idx, save_dir / "patches" / f"{slide_id}.h5", patch)
                continue
            with item_lock(save_dir, slide_id) as mine:
                if not mine:
                    set_cells(df, idx, status=BUSY, reason="another process is working on this slide")
                    continue
                if auto_skip and outs and all(
                    is_current(p, prov) and output_readable(p) for p, prov in outs.items()
                ):
                    # another process finished it since the plan
                    _set_existing(df, idx, save_dir / "patches" / f"{slide_id}.h5", patch)
                    continue
                try:
                    if idx not in planned:
                        SlideParams.from_mapping(
                            df.loc[idx].to_dict(), defaults, where=f"process list row {name}: "
                        )
                    params = planned[idx][0]
                    if not slide_path.is_file():
                        raise InputFileError(
                            slide_path, "slide file not found", "check --source and the slide_id column"
                        )
                    row = process_slide(
                        slide_path,
                        save_dir,
                        params,
                        patch_size=patch_size,
                        step_size=step_size,
                        patch_level=patch_level,
                        target_mpp=target_mpp,
                        magnification=magnification,
                        seg=seg,
                        patch=patch,
                        stitch=stitch,
                        save_mask=save_mask,
                        save_geojson=save_geojson,
                        backend=backend,
                        provenance=outs,
                    )
                except Sae1nError as exc:
                    row = {"status": FAILED, "reason": str(exc)}
                except Exception as exc:  # one bad slide must not stop the batch
                    if is_disk_error(exc):
                        raise disk_error(save_dir, exc) from None
                    log.debug("slide %s failed", name, exc_info=True)
                    row = {"status": FAILED, "reason": f"{type(exc).__name__}: {exc}"}
                done_here.append(str(name))
            if row["status"] in (FAILED, FAILED_SEG):
                log.warning("%s: %s: %s", name, row["status"], row["reason"])
            set_cells(df, idx, **row)
    except Exception as exc:  # a full disk anywhere (locks, outputs, the list): one error
        if is_disk_error(exc):
            raise disk_error(save_dir, exc) from None
        raise
    finally:
        try:
            flush()
        except OSError as exc:  # the disk is full: the error above says so
            log.warning("could not write %s: %s", out_csv, exc)
    df.attrs["processed_here"] = list(done_here)
    return df


def _read_prov(path: Path):
    from sae1n.io.provenance import read_provenance

    return read_provenance(path)


def _set_existing(df, idx, h5: Path, patch: bool) -> None:
    n = existing_patch_count(h5) if patch else None
    set_cells(
        df,
        idx,
        status=ALREADY_EXIST,
        reason="outputs are current (same settings and slide); --overwrite or --no_auto_skip to redo",
        **({"n_patches": n} if n is not None else {}),
    )


def _check_options(patch_size, step_size, patch_level, target_mpp, magnification, backend) -> None:
    from sae1n.wsi.readers import BACKENDS

    if int(patch_size) <= 0 or (step_size is not None and int(step_size) <= 0):
        raise ConfigError(
            f"--patch_size and --step_size must be positive (got {patch_size}, {step_size})"
        )
    if int(patch_level) < 0:
        raise ConfigError(f"--patch_level must be >= 0, got {patch_level}")
    if target_mpp is not None and magnification is not None:
        raise ConfigError("give --target_mpp or --magnification, not both")
    if (target_mpp is not None and target_mpp <= 0) or (
        magnification is not None and magnification <= 0
    ):
        raise ConfigError("--target_mpp and --magnification must be positive")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


