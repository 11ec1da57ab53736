"""Tumour outlines to draw on heatmaps: level-0 polygons from a GeoJSON
(QuPath export) or an ASAP XML (CAMELYON16) annotation file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError

ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
EXCLUSION_GROUPS = {"_2", "exclusion", "Exclusion"}


def read_asap_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """Polygons (level-0 x, y) of an ASAP XML file, skipping exclusion groups (``_2``)."""
    from defusedxml import ElementTree

    path = Path(path)
    fix = "pass an ASAP XML annotation (Annotations/Annotation/Coordinates/Coordinate X= Y=)"
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError as exc:
        raise InputFileError(path, "annotation file not found", fix) from exc
    except Exception as exc:  # defusedxml/expat raise several types
        raise InputFileError(path, f"is not valid XML ({exc})", fix) from exc
    polys = []
    for ann in root.iter("Annotation"):
        if ann.get("PartOfGroup") in EXCLUSION_GROUPS:
            continue
        pts = sorted(
            (int(float(c.get("Order", i))), float(c.get("X")), float(c.get("Y")))
            for i, c in enumerate(ann.iter("Coordinate"))
            if c.get("X") is not None and c.get("Y") is not None
        )
        if len(pts) >= 3:
            polys.append(np.array([(x, y) for _, x, y in pts]))
    if not polys:
        raise InputFileError(path, "holds no polygon annotations", fix)
    return polys


def read_outline_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """Level-0 polygons from a ``.geojson``/``.json`` or ASAP ``.xml`` file."""
    from sae1n.viz.geojson import read_polygons

    path = Path(path)
    if path.suffix.lower() == ".xml":
        return read_asap_polygons(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return read_polygons(path)
    raise InputFileError(
        path,
        f"unsupported annotation type {path.suffix!r}",
        "use GeoJSON (.geojson) or ASAP XML (.xml)",
    )


def find_annotation(folder: str | os.PathLike, slide_id: str) -> Path | None:
    """``<folder>/<slide_id>.{geojson,json,xml}`` if one exists."""
    for suffix in ANNOTATION_SUFFIXES:
        cand = Path(folder) / f"{slide_id}{suffix}"
        if cand.is_file():
            return cand
    return None
