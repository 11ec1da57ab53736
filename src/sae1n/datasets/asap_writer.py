"""Writing tumour annotations as CAMELYON16-style ASAP XML (the demo's generated
slides and tests): :class:`AnnotationPolygon` and :func:`write_asap_xml`. The
readers are in :mod:`sae1n.datasets.annotations`."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET  # writing only; reading uses defusedxml
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.io.atomic import atomic_write_bytes

_ANNOTATION_COLORS = {"_0": "#F4FA58", "_1": "#F4FA58", "_2": "#64FE2E"}


@dataclass(frozen=True)
class AnnotationPolygon:
    """One ASAP polygon in level-0 pixels. Groups ``_0``/``_1`` are tumour,
    ``_2`` an exclusion cut out of the tumour (CAMELYON16 convention)."""

    vertices: np.ndarray  # (V, 2) float64, (x, y)
    group: str = "_0"

    @property
    def is_exclusion(self) -> bool:
        return self.group == "_2"


def write_asap_xml(path: str | os.PathLike, polygons: list[AnnotationPolygon]) -> Path:
    """Write polygons as a CAMELYON16-style ASAP XML (groups ``_0``, ``_1``, ``_2``),
    level-0 pixel coordinates. Written atomically."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    for i, poly in enumerate(polygons):
        ann = ET.SubElement(
            annotations,
            "Annotation",
            Name=f"Annotation {i}",
            Type="Polygon",
            PartOfGroup=poly.group,
            Color=_ANNOTATION_COLORS.get(poly.group, "#F4FA58"),
        )
        coords = ET.SubElement(ann, "Coordinates")
        for order, (x, y) in enumerate(np.asarray(poly.vertices, dtype=float)):
            ET.SubElement(coords, "Coordinate", Order=str(order), X=f"{x:.1f}", Y=f"{y:.1f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    for name in ("_0", "_1", "_2"):
        grp = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color="#FF0000")
        ET.SubElement(grp, "Attributes")
    ET.indent(root, space="\t")
    data = b'<?xml version="1.0"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
    return atomic_write_bytes(path, data)
