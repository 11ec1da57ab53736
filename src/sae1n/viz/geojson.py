"""QuPath-readable GeoJSON export of per-patch scores: one square ``tile``
object per patch (level-0 pixel coordinates, origin top-left, as QuPath uses)
carrying the score as a measurement, so pathologists can colour by it
(Measure > Show measurement maps) in their own viewer."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from sae1n.errors import ConfigError
from sae1n.io import atomic_write_text


def patch_features(
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size: int,
    *,
    measurement: str = "activation",
    threshold: float | None = None,
    class_name: str = "Tumor",
    object_type: str = "tile",
) -> list[dict]:
    """GeoJSON Features (QuPath layout) for the patches; with ``threshold``,
    patches scoring at or above it are classified as ``class_name``."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(coords) != len(scores):
        raise ConfigError(f"{len(scores)} scores for {len(coords)} patch coords")
    if patch_size <= 0:
        raise ConfigError(f"patch size must be positive, got {patch_size}")
    if not np.isfinite(scores).all():
        raise ConfigError("scores contain NaN/Inf; cannot export them as measurements")
    ps = int(patch_size)
    feats = []
    for (x, y), s in zip(coords.tolist(), scores.tolist()):
        props = {"objectType": object_type, "measurements": {measurement: s}}
        if threshold is not None and s >= threshold:
            props["classification"] = {"name": class_name, "color": [200, 0, 0]}
        feats.append(
            {
                "type": "Feature",
                # stable ids: the same export twice gives the same file
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sae1n/{measurement}/{x}/{y}")),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x + ps, y], [x + ps, y + ps], [x, y + ps], [x, y]]],
                },
                "properties": props,
            }
        )
    return feats


def export_geojson(
    coords: np.ndarray,
    scores: np.ndarray,
    out_path: str | os.PathLike,
    patch_size: int,
    *,
    measurement: str = "activation",
    threshold: float | None = None,
    class_name: str = "Tumor",
) -> Path:
    """Write the patches as a QuPath GeoJSON FeatureCollection (atomically)."""
    collection = {
        "type": "FeatureCollection",
        "features": patch_features(
            coords,
            scores,
            patch_size,
            measurement=measurement,
            threshold=threshold,
            class_name=class_name,
        ),
    }
    return atomic_write_text(Path(out_path), json.dumps(collection, separators=(",", ":")))


def read_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """Exterior rings (level-0 x, y) of the Polygon/MultiPolygon features of a
    GeoJSON file, e.g. a QuPath annotation export, to outline on a heatmap."""
    from sae1n.errors import InputFileError

    path = Path(path)
    fix = "pass a GeoJSON FeatureCollection of Polygon/MultiPolygon annotations (level-0 pixels)"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputFileError(path, "annotation file not found", fix) from exc
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"is not valid JSON ({exc})", fix) from exc
    feats = (
        obj.get("features", []) if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    )
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        feats = [obj]
    rings = []
    for f in feats:
        geom = (f or {}).get("geometry") or {}
        if geom.get("type") == "Polygon":
            polys = [geom.get("coordinates", [])]
        elif geom.get("type") == "MultiPolygon":
            polys = geom.get("coordinates", [])
        else:
            continue
        for poly in polys:
            if poly and len(poly[0]) >= 3:
                rings.append(np.asarray(poly[0], dtype=np.float64)[:, :2])
    if not rings:
        raise InputFileError(path, "holds no Polygon or MultiPolygon geometry", fix)
    return rings
