"""The pictures of one neuron over a set of slides, as ``sae1n heatmap`` makes
them: a heatmap per slide (beside ABMIL attention when given), a QuPath
GeoJSON per slide, and one gallery of the top-activating patches."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from sae1n.errors import ConfigError, InputFileError
from sae1n.utils import progress

log = logging.getLogger(__name__)


def find_slide_files(
    slide_dir: str | os.PathLike, slide_ids: Sequence[str], slide_ext: str | None = None
) -> dict[str, Path]:
    """slide id -> slide file in ``slide_dir`` (``<id><ext>``, or any known slide extension)."""
    from sae1n.wsi.readers import SLIDE_EXTENSIONS

    root = Path(slide_dir)
    if not root.is_dir():
        raise InputFileError(
            root, "slide folder not found", "pass the folder holding the slides (--data_slide_dir)"
        )
    exts = (
        [slide_ext if slide_ext.startswith(".") else f".{slide_ext}"]
        if slide_ext
        else list(SLIDE_EXTENSIONS)
    )
    found = {}
    for sid in slide_ids:
        for ext in exts:
            for cand in (root / f"{sid}{ext}", root / f"{sid}{ext.upper()}"):
                if cand.is_file():
                    found[sid] = cand
                    break
            if sid in found:
                break
    return found


def choose_unit(
    unit: int | None, ranking_csv: str | os.PathLike | None, rank: int = 1
) -> tuple[int, bool]:
    """(neuron id, fires-on-normal) from ``unit`` or the ``rank``-th row of a ranking CSV."""
    from sae1n.neurons.ranking_csv import read_ranking

    if unit is not None and ranking_csv is None:
        return int(unit), False
    if ranking_csv is None:
        raise ConfigError(
            "pass --unit, or --ranking_csv/--exp_dir to take the neuron from analyze-sae's ranking"
        )
    df = read_ranking(ranking_csv)
    if unit is not None:
        row = df.loc[df["unit_id"] == int(unit)]
    else:
        if not 1 <= rank <= len(df):
            raise ConfigError(f"--rank must be in 1..{len(df)}, got {rank}")
        row = df.iloc[[rank - 1]]
    if row.empty:
        return int(unit), False
    direction = str(row["direction"].iloc[0]) if "direction" in row else ""
    return int(row["unit_id"].iloc[0]), direction in ("normal", "lower_grade")


def neuron_figures(
    feature_dir: str | os.PathLike,
    slide_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    unit: int | None = None,
    ranking_csv: str | os.PathLike | None = None,
    rank: int = 1,
    slide_ids: Sequence[str] | None = None,
    slide_ext: str | None = None,
    attention_dir: str | os.PathLike | None = None,
    patch_label_dir: str | os.PathLike | None = None,
    annotation_dir: str | os.PathLike | None = None,
    gallery_n: int = 0,
    geojson: bool = False,
    overwrite: bool = False,
    file_type: str | None = None,
    split_csv: str | os.PathLike | None = None,
    **heatmap_kw,
) -> dict:
    """Heatmaps (``<out_dir>/heatmaps/<slide>_unit<U>.png``), optional GeoJSON
    (``geojson/``) and gallery (``galleries/unit<U>_top<N>.png``) of one neuron.
    Each picture gets a provenance sidecar (neuron, slide, ``split_csv``, drawing
    settings, input files): current ones are kept, ones made for another neuron,
    split or setting are refused (:class:`StaleOutputError`) unless ``overwrite``.
    Returns the paths."""
    from sae1n.datasets.annotations import annotation_outlines, find_annotation
    from sae1n.neurons.inputs import code_files, neuron_columns, read_codes
    from sae1n.viz.galleries import neuron_gallery
    from sae1n.viz.geojson import export_geojson
    from sae1n.viz.heatmaps import infer_patch_size, neuron_heatmap

    u, _ = choose_unit(unit, ranking_csv, rank)
    codes = code_files(feature_dir, file_type)
    wanted = list(slide_ids) if slide_ids else sorted(codes)
    lacking = [s for s in wanted if s not in codes]
    if lacking:
        raise InputFileError(
            feature_dir,
            f"no SAE codes for slide(s) {', '.join(lacking[:5])}",
            "check --slide_ids and --feature_dir",
        )
    slides = find_slide_files(slide_dir, wanted, slide_ext)
    if not slides:
        raise InputFileError(
            slide_dir,
            f"none of the {len(wanted)} slide(s) found (e.g. {wanted[0]})",
            "check --data_slide_dir and --slide_ext",
        )
    for s in wanted:
        if s not in slides:
            log.warning("slide file for %s not found in %s; skipped", s, slide_dir)
    from sae1n.io.provenance import Provenance, input_identity, plan_outputs, write_sidecar

    out = Path(out_dir)
    result: dict = {"unit": u, "heatmaps": [], "geojson": [], "gallery": None}
    shared = {
        "unit": u,
        "split_csv": str(split_csv) if split_csv else None,
        "settings": {k: v for k, v in sorted(heatmap_kw.items()) if isinstance(v, int | float | str | bool | type(None))},
    }
    expected: dict[Path, Provenance] = {}
    per_slide = {}
    for sid in slides:
        att = Path(attention_dir) / f"{sid}.h5" if attention_dir else None
        lab = Path(patch_label_dir) / f"{sid}.h5" if patch_label_dir else None
        ann = find_annotation(annotation_dir, sid) if annotation_dir else None
        att = att if att is not None and att.is_file() else None
        lab = lab if lab is not None and lab.is_file() else None
        per_slide[sid] = (att, lab, ann)
        inputs = {"codes": Path(codes[sid]), "slide": Path(slides[sid])}
        for name, f in (("attention", att), ("patch_labels", lab), ("annotation", ann)):
            inputs[name] = Path(f) if f is not None else None
        png = out / "heatmaps" / f"{sid}_unit{u}.png"
        expected[png] = Provenance.make("heatmap", 1, settings={**shared, "slide_id": sid}, inputs=inputs)
        if geojson:
            gj = out / "geojson" / f"{sid}_unit{u}.geojson"
            expected[gj] = Provenance.make(
                "geojson", 1, settings={"unit": u, "slide_id": sid}, inputs={"codes": Path(codes[sid])}
            )
    gpath = out / "galleries" / f"unit{u}_top{gallery_n}.png" if gallery_n else None
    if gpath is not None:
        expected[gpath] = Provenance.make(
            "gallery",
            1,
            settings={**shared, "n": int(gallery_n), "slide_ids": sorted(slides)},
            inputs={"codes": {s: input_identity(codes[s]) for s in sorted(slides)}},
        )
    # every output is checked before anything is drawn: stale pictures (another
    # neuron, split, setting or input) are refused unless overwrite
    todo, _ = plan_outputs(expected, overwrite=overwrite, fix="Fix: pass --overwrite to redraw these pictures, or choose another --output_dir.")
    todo = set(todo)
    for sid in progress(list(slides), desc="heatmaps", total=len(slides)):
        att, lab, ann = per_slide[sid]
        png = out / "heatmaps" / f"{sid}_unit{u}.png"
        if png in todo:
            neuron_heatmap(
                slides[sid],
                codes[sid],
                u,
                png,
                attention_file=att,
                patch_label_file=lab,
                polygons=annotation_outlines(ann) if ann is not None else None,
                **heatmap_kw,
            )
            write_sidecar(png, expected[png])
        result["heatmaps"].append(png)
        if geojson:
            gj = out / "geojson" / f"{sid}_unit{u}.geojson"
            if gj in todo:
                mat, coords, attrs = read_codes(codes[sid])
                export_geojson(
                    coords,
                    neuron_columns(mat, [u])[:, 0],
                    gj,
                    infer_patch_size(coords, attrs),
                    measurement=f"SAE neuron {u}",
                )
                write_sidecar(gj, expected[gj])
            result["geojson"].append(gj)
    if gpath is not None:
        if gpath in todo:
            neuron_gallery(u, {s: codes[s] for s in slides}, slides, gpath, n=gallery_n)
            write_sidecar(gpath, expected[gpath])
        result["gallery"] = gpath
    return result
