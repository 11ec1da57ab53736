"""Tumour annotation readers: CAMELYON16 ASAP XML, QuPath GeoJSON, PANDA masks.

Vector formats become one shapely (Multi)Polygon in level-0 pixel
coordinates (tumour minus exclusions); PANDA label masks become a
:class:`TumorMask` (a boolean raster plus its scale to level 0). The ASAP
writer is in :mod:`sae1n.datasets.asap_writer` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from sae1n.datasets.asap_writer import AnnotationPolygon, write_asap_xml
from sae1n.errors import ConfigError, InputFileError

__all__ = [
    "ASAP_EXCLUSION_GROUPS", "ASAP_TUMOR_GROUPS", "FORMATS", "GEOJSON_EXCLUSION_CLASSES",
    "GEOJSON_TUMOR_CLASSES", "PANDA_MASK_DOWNSAMPLE", "PANDA_TUMOR_VALUES", "Annotation",
    "AnnotationPolygon", "TumorMask", "annotated_slide_ids", "annotation_format", "annotation_outlines",
    "find_annotation", "read_annotation", "read_asap_xml", "read_geojson", "read_panda_mask",
    "write_asap_xml",
]

log = logging.getLogger(__name__)

FORMATS = ("auto", "asap", "geojson", "panda_mask")
ASAP_TUMOR_GROUPS = ("_0", "_1", "tumor", "metastases")
ASAP_EXCLUSION_GROUPS = ("_2", "exclusion")
GEOJSON_TUMOR_CLASSES = ("Tumor",)
GEOJSON_EXCLUSION_CLASSES = ("Exclusion",)
# PANDA label masks (red channel): Radboud 3/4/5 = Gleason 3/4/5, Karolinska 2 = cancer.
PANDA_TUMOR_VALUES = {"radboud": (3, 4, 5), "karolinska": (2,)}
# PANDA masks ship with pyramid downsamples 1, 4, 16: read the 16x level by default.
PANDA_MASK_DOWNSAMPLE = 16.0
_SUFFIXES = {
    "asap": (".xml",),
    "geojson": (".geojson", ".json"),
    "panda_mask": ("_mask.tiff", "_mask.tif", "_mask.png"),
}


@dataclass
class TumorMask:
    """A boolean tumour raster; ``scale`` = level-0 pixels per raster pixel (x, y)."""

    tumor: np.ndarray
    scale: tuple[float, float]
    path: Path | None = None


Annotation = BaseGeometry | TumorMask


# ----------------------------------------------------------------------------- ASAP XML


def read_asap_xml(
    path: str | os.PathLike,
    tumor_groups: tuple[str, ...] = ASAP_TUMOR_GROUPS,
    exclusion_groups: tuple[str, ...] = ASAP_EXCLUSION_GROUPS,
) -> BaseGeometry:
    """Tumour region of an ASAP XML file (CAMELYON16): the union of polygons in
    ``tumor_groups`` minus those in ``exclusion_groups`` (names compared
    case-insensitively), in level-0 pixels."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    path = Path(path)
    _require_file(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise InputFileError(
            path, f"not a valid ASAP XML file ({exc})", "re-export the annotation from ASAP"
        ) from exc
    tumor_keys = {g.lower() for g in tumor_groups}
    exclusion_keys = {g.lower() for g in exclusion_groups}
    tumor, exclusion, ignored = [], [], set()
    for element in root.iter("Annotation"):
        group = (element.get("PartOfGroup") or "").strip()
        kind = (element.get("Type") or "Polygon").strip().lower()
        key = group.lower()
        if key not in tumor_keys and key not in exclusion_keys:
            ignored.add(group or "<none>")
            continue
        if kind in ("dot", "pointset", "measurement"):
            ignored.add(f"{group} ({kind})")
            continue
        points = []
        for coord in element.iter("Coordinate"):
            try:
                points.append(
                    (
                        float(coord.get("Order", len(points))),
                        float(coord.get("X")),
                        float(coord.get("Y")),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise InputFileError(
                    path,
                    f"annotation {element.get('Name')!r} has a coordinate without numeric X/Y",
                    "fix or re-export the file",
                ) from exc
        points.sort(key=lambda p: p[0])
        polygon = _polygon(path, [(x, y) for _, x, y in points], element.get("Name"))
        if polygon is not None:
            (tumor if key in tumor_keys else exclusion).append(polygon)
    if ignored:
        log.info("%s: ignored annotations in group(s) %s", path.name, sorted(ignored))
    if not tumor:
        log.warning(
            "%s: no tumour polygons (groups %s): the slide counts as all normal",
            path,
            list(tumor_groups),
        )
    return _tumor_minus_exclusion(tumor, exclusion)


# ----------------------------------------------------------------------------- GeoJSON


def read_geojson(
    path: str | os.PathLike,
    classification: tuple[str, ...] | str = GEOJSON_TUMOR_CLASSES,
    exclusion: tuple[str, ...] | str = GEOJSON_EXCLUSION_CLASSES,
) -> BaseGeometry:
    """Tumour region of a QuPath/GeoJSON export: polygons whose classification
    name is in ``classification`` minus those in ``exclusion``
    (case-insensitive), in level-0 pixels."""
    from shapely.geometry import shape

    path = Path(path)
    _require_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(
            path, f"not valid JSON ({exc})", "export the annotations from QuPath as GeoJSON"
        ) from exc
    tumor_keys = {c.lower() for c in _as_tuple(classification)}
    exclusion_keys = {c.lower() for c in _as_tuple(exclusion)}
    tumor, excluded, seen = [], [], set()
    for feature in _features(data, path):
        name = _classification_name(feature.get("properties") or {})
        seen.add(name)
        key = (name or "").lower()
        if key not in tumor_keys and key not in exclusion_keys:
            continue
        try:
            geometry = shape(feature["geometry"])
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            shapely.errors.GEOSException,
        ) as exc:
            raise InputFileError(
                path,
                f"a {name!r} feature has an invalid geometry ({exc})",
                "re-export the annotations",
            ) from exc
        if not geometry.is_valid:
            log.warning(
                "%s: a %r polygon is invalid (%s); repaired with shapely.make_valid "
                "(a self-intersecting outline becomes its enclosed areas)",
                path,
                name,
                shapely.is_valid_reason(geometry),
            )
        parts = _polygonal(shapely.make_valid(geometry))
        (tumor if key in tumor_keys else excluded).extend(parts)
    names = {n for n in seen if n}
    if not tumor and names and not ({n.lower() for n in names} & (tumor_keys | exclusion_keys)):
        # Classified objects, none of them ours: almost surely a different class name.
        raise InputFileError(
            path,
            f"no feature classified as {list(_as_tuple(classification))}; classifications found: {sorted(names)}",
            "pass --classification with the tumour class name used in this file",
        )
    if not tumor:
        log.warning("%s: no tumour polygons: the slide counts as all normal", path)
    return _tumor_minus_exclusion(tumor, excluded)


def _features(data, path: Path) -> list[dict]:
    if isinstance(data, list):
        return [_as_feature(item, path) for item in data]
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            return [_as_feature(item, path) for item in data.get("features", [])]
        if kind == "Feature":
            return [data]
        if kind in ("Polygon", "MultiPolygon"):
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise InputFileError(
        path,
        "not a GeoJSON FeatureCollection, Feature or list of features",
        "export the annotations from QuPath as GeoJSON",
    )


def _as_feature(item, path: Path) -> dict:
    if not isinstance(item, dict) or "geometry" not in item:
        raise InputFileError(
            path, "a feature has no geometry", "export the annotations from QuPath as GeoJSON"
        )
    return item


def _classification_name(properties: dict) -> str | None:
    value = properties.get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    if value is None:
        value = properties.get("class_name") or properties.get("label")
    return None if value is None else str(value)


# ----------------------------------------------------------------------------- PANDA masks


def read_panda_mask(
    path: str | os.PathLike,
    data_provider: str | None = None,
    *,
    tumor_values: tuple[int, ...] | None = None,
    level: int | None = None,
    max_downsample: float = PANDA_MASK_DOWNSAMPLE,
) -> TumorMask:
    """Tumour raster of a PANDA label mask (label in the red channel).

    Tumour values come from ``data_provider`` (Radboud: 3, 4, 5; Karolinska:
    2) unless ``tumor_values`` is given. The mask is read at ``level``, or by
    default at the coarsest pyramid level whose downsample is at most
    ``max_downsample``.
    """
    from sae1n.wsi.slide import open_slide

    path = Path(path)
    _require_file(path)
    if tumor_values is None:
        provider = (data_provider or "").strip().lower()
        if provider not in PANDA_TUMOR_VALUES:
            raise ConfigError(
                f"{path}: PANDA mask values depend on the data provider, got {data_provider!r}: "
                f"give one of {sorted(PANDA_TUMOR_VALUES)} (--panda_csv with a data_provider column, or --data_provider)"
            )
        tumor_values = PANDA_TUMOR_VALUES[provider]
    try:
        slide = open_slide(path)
    except InputFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad mask file
        raise InputFileError(
            path, f"cannot open the mask ({exc})", "check the file is a PANDA label mask TIFF"
        ) from exc
    with slide:
        if level is None:
            fine_enough = [
                i for i, ds in enumerate(slide.level_downsamples) if ds <= max_downsample + 1e-6
            ]
            level = max(fine_enough) if fine_enough else 0
        if not 0 <= level < slide.level_count:
            raise ConfigError(
                f"{path}: mask level {level} does not exist (the mask has {slide.level_count} levels)"
            )
        labels = np.asarray(slide.read_level(level))
        width0, height0 = slide.dimensions
    if labels.ndim == 3:
        labels = labels[..., 0]
    height, width = labels.shape
    scale = (width0 / width, height0 / height)
    return TumorMask(np.isin(labels, np.asarray(tumor_values)), scale, path)


# ----------------------------------------------------------------------------- dispatch


def annotation_format(path: str | os.PathLike) -> str:
    """``asap``, ``geojson`` or ``panda_mask`` from a file name."""
    name = Path(path).name.lower()
    for fmt, suffixes in _SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    if name.endswith((".tif", ".tiff", ".png")):
        return "panda_mask"
    raise InputFileError(
        path,
        "unknown annotation format",
        "use .xml (ASAP), .geojson/.json (QuPath) or *_mask.tiff (PANDA), or pass --annotation_format",
    )


def find_annotation(
    annotation_dir: str | os.PathLike, slide_id: str, fmt: str = "auto"
) -> Path | None:
    """The annotation file of ``slide_id`` in ``annotation_dir``, or ``None``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown annotation format {fmt!r}: use one of {', '.join(FORMATS)}")
    folder = Path(annotation_dir)
    formats = list(_SUFFIXES) if fmt == "auto" else [fmt]
    for f in formats:
        for suffix in _SUFFIXES[f]:
            candidate = folder / f"{slide_id}{suffix}"
            if candidate.is_file():
                return candidate
    if fmt == "panda_mask":
        for suffix in (".tiff", ".tif"):
            if (folder / f"{slide_id}{suffix}").is_file():
                return folder / f"{slide_id}{suffix}"
    return None


def annotated_slide_ids(
    annotation_dir: str | os.PathLike, formats: tuple[str, ...] = ("asap", "geojson")
) -> set[str]:
    """Slide ids that have an annotation file of one of ``formats`` in ``annotation_dir``."""
    folder = Path(annotation_dir)
    suffixes = tuple(s for f in formats for s in _SUFFIXES[f])
    out = set()
    for p in folder.iterdir():
        low = p.name.lower()
        for suffix in suffixes:
            if p.is_file() and low.endswith(suffix):
                out.add(p.name[: -len(suffix)])
                break
    return out


def read_annotation(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    classification: tuple[str, ...] | str = GEOJSON_TUMOR_CLASSES,
    data_provider: str | None = None,
    mask_level: int | None = None,
) -> Annotation:
    """Read any supported annotation file: a shapely geometry or a :class:`TumorMask`."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown annotation format {fmt!r}: use one of {', '.join(FORMATS)}")
    fmt = annotation_format(path) if fmt == "auto" else fmt
    if fmt == "asap":
        return read_asap_xml(path)
    if fmt == "geojson":
        return read_geojson(path, classification)
    return read_panda_mask(path, data_provider, level=mask_level)


def annotation_outlines(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    classification: tuple[str, ...] | str = GEOJSON_TUMOR_CLASSES,
) -> list[np.ndarray]:
    """The tumour region's boundary rings (level-0 (K, 2) x, y arrays): the same
    region the patch labels are scored against (tumour minus exclusions, so an
    exclusion inside a tumour is drawn as a hole). A PANDA mask has no outline
    (empty list)."""
    fmt = annotation_format(path) if fmt == "auto" else fmt
    if fmt == "panda_mask":
        return []
    region = read_annotation(path, fmt, classification=classification)
    rings: list[np.ndarray] = []
    for poly in shapely.get_parts(region):
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        rings.append(np.asarray(poly.exterior.coords, dtype=np.float64)[:-1])
        rings.extend(np.asarray(r.coords, dtype=np.float64)[:-1] for r in poly.interiors)
    return rings


# ----------------------------------------------------------------------------- helpers


def _polygon(path: Path, points, name) -> BaseGeometry | None:
    if len(points) < 3:
        log.warning("%s: annotation %r has %d point(s), skipped", path.name, name, len(points))
        return None
    polygon = shapely.Polygon(points)
    if not polygon.is_valid:
        log.warning(
            "%s: annotation %r is invalid (%s); repaired with shapely.make_valid "
            "(a self-intersecting outline becomes its enclosed areas)",
            path.name,
            name,
            shapely.is_valid_reason(polygon),
        )
    parts = _polygonal(shapely.make_valid(polygon))
    return shapely.union_all(parts) if parts else None


def _polygonal(geometry: BaseGeometry) -> list[BaseGeometry]:
    # make_valid may return collections with stray lines or points: keep the areas.
    return [
        g
        for g in shapely.get_parts(geometry)
        if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0
    ]


def _tumor_minus_exclusion(tumor, exclusion) -> BaseGeometry:
    region = shapely.union_all(tumor) if tumor else shapely.Polygon()
    if exclusion and not region.is_empty:
        region = shapely.difference(region, shapely.union_all(exclusion))
    parts = _polygonal(region)
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _as_tuple(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputFileError(
            path, "annotation file not found", "check --annotation_dir and the slide name"
        )
