"""The cohort's files besides the slides: the manifest (``cohort.json``) that
lets a rerun reuse intact slides and drop stale ones, and the CAMELYON16-style
test-set reference CSV."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.datasets.asap_writer import AnnotationPolygon
from sae1n.demo.synthetic import DEFAULT_MPP, SlideInfo
from sae1n.io.atomic import atomic_write_csv, atomic_write_json

MANIFEST = "cohort.json"
REFERENCE_COLUMNS = ("slide_name", "is_tumor", "category_1", "category_2", "truth")
SPLIT_CODES = {"normal": 0, "tumor": 1, "test": 2}


@dataclass(frozen=True)
class SlidePlan:
    slide_id: str
    tumor: bool
    seed: int



def write_manifest(
    out: Path, params: dict, plans: list[SlidePlan], infos: dict[str, SlideInfo]
) -> None:
    slides = []
    for p in plans:
        if p.slide_id in infos:
            info = infos[p.slide_id]
            entry = info.to_json()
            entry["path"] = (
                str(Path(info.path).relative_to(out))
                if Path(info.path).is_relative_to(out)
                else str(info.path)
            )
            if info.annotation is not None and Path(info.annotation).is_relative_to(out):
                entry["annotation"] = str(Path(info.annotation).relative_to(out))
            entry["polygons"] = [
                {"group": q.group, "vertices": np.round(q.vertices, 1).tolist()}
                for q in info.polygons
            ]
            slides.append(entry)
    atomic_write_json(out / MANIFEST, {"params": params, "slides": slides})


def reusable_slides(out: Path, params: dict, plans: list[SlidePlan]) -> dict[str, SlideInfo]:
    """Slides from an earlier run with the same parameters whose files are intact."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    old = manifest.get("params", {})
    counts = ("n_normal", "n_tumor", "n_test")
    if {k: v for k, v in old.items() if k not in counts} != {
        k: v for k, v in params.items() if k not in counts
    }:
        return {}
    wanted = {p.slide_id: p for p in plans}
    done = {}
    for entry in manifest.get("slides", []):
        sid = entry.get("slide_id")
        plan = wanted.get(sid)
        if plan is None or (entry.get("label") == "tumor") != plan.tumor:
            continue
        if sid.startswith("test_") and old.get("n_test") != params["n_test"]:
            continue  # which test slides carry tumour depends on n_test
        info = _info_from_entry(out, entry)
        if info is not None and _slide_file_ok(info):
            done[sid] = info
    return done


def _info_from_entry(out: Path, entry: dict) -> SlideInfo | None:
    try:
        ann = entry.get("annotation")
        return SlideInfo(
            slide_id=entry["slide_id"],
            path=out / entry["path"],
            label=entry["label"],
            annotation=None if ann is None else out / ann,
            size=tuple(entry["size"]),
            polygons=[
                AnnotationPolygon(np.asarray(q["vertices"], float), q["group"])
                for q in entry["polygons"]
            ],
            tissue_fraction=float(entry["tissue_fraction"]),
            tumor_fraction=float(entry["tumor_fraction"]),
            kind=entry.get("kind", "synthetic"),
            mpp=float(entry.get("mpp", DEFAULT_MPP)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _slide_file_ok(info: SlideInfo) -> bool:
    """The TIFF is readable with the expected level-0 size, and the tumour XML is there."""
    import tifffile

    if info.label == "tumor" and (info.annotation is None or not Path(info.annotation).is_file()):
        return False
    try:
        with tifffile.TiffFile(info.path) as tif:
            page = tif.pages[0]
            return (page.imagewidth, page.imagelength) == tuple(info.size) and len(tif.pages) >= 3
    except Exception:  # any unreadable file is simply regenerated
        return False


def remove_stale_slides(out: Path, slides_dir: Path, ann_dir: Path, plans: list[SlidePlan]) -> None:
    """Drop generated files that the new plan does not contain (fewer slides, or a
    test slide that is now normal), so later stages never see a stale slide."""
    wanted = {p.slide_id: p for p in plans}
    prefixes = tuple(f"{k}_" for k in SPLIT_CODES)
    for f in slides_dir.glob("*.tif"):
        if f.stem.startswith(prefixes) and f.stem not in wanted:
            f.unlink()
    for f in ann_dir.glob("*.xml"):
        if f.stem.startswith(prefixes) and (f.stem not in wanted or not wanted[f.stem].tumor):
            f.unlink()


# --------------------------------------------------------------------------- reference CSV
def write_reference_csv(path: str | os.PathLike, test_slides: list[SlideInfo]) -> Path:
    """The test-set reference in the layout of CAMELYON16's official reference
    (index, ``Unnamed: 0``, slide_name, is_tumor Tumor/Normal, category_1,
    category_2 Macro/Micro/ITC/None, truth 1/0)."""
    import pandas as pd

    rows = []
    for s in test_slides:
        tumor = s.label == "tumor"
        rows.append(
            {
                "slide_name": s.slide_id,
                "is_tumor": "Tumor" if tumor else "Normal",
                "category_1": "synthetic" if s.kind != "mosaic" else "mosaic",
                "category_2": _metastasis_size(s) if tumor else "None",
                "truth": int(tumor),
            }
        )
    frame = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    frame.insert(0, "Unnamed: 0", range(len(frame)))
    return atomic_write_csv(path, frame, index=True)


def _metastasis_size(slide: SlideInfo) -> str:
    """CAMELYON's size classes from the largest lesion's longest extent."""
    extents = [np.ptp(p.vertices, axis=0).max() for p in slide.polygons if not p.is_exclusion]
    if not extents:
        return "None"
    microns = max(extents) * slide.mpp
    return "Macro" if microns > 2000 else "Micro" if microns > 200 else "ITC"


