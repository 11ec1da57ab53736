"""Tissue segmentation with CLAM's semantics (``WholeSlideImage.segmentTissue``).

At the segmentation level: HSV saturation -> median blur (``mthresh``) ->
binary threshold (``sthresh``) or Otsu -> morphological close -> contours
with holes (``RETR_CCOMP``). A tissue contour is kept when its area minus its
holes' areas exceeds ``a_t``; at most ``max_n_holes`` of its largest holes
are kept, each larger than ``a_h`` (areas in 512x512 level-0 tiles, scaled to
the segmentation level). Contours are returned in level-0 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from sae1n.errors import ConfigError
from sae1n.wsi.presets import SlideParams

REF_PATCH_SIZE = 512  # a_t / a_h unit: one 512x512 level-0 tile
SEG_TARGET_DOWNSAMPLE = 64  # seg_level / vis_level -1


@dataclass
class TissueContours:
    """Tissue contours (int32 (K, 1, 2), level-0 pixels) and each one's holes,
    plus the level they were found at."""

    contours: list[np.ndarray] = field(default_factory=list)
    holes: list[list[np.ndarray]] = field(default_factory=list)
    seg_level: int = 0
    seg_downsample: tuple[float, float] = (1.0, 1.0)

    def __len__(self) -> int:
        return len(self.contours)


def tissue_mask(
    rgb: np.ndarray,
    sthresh: int = 8,
    mthresh: int = 7,
    close: int = 4,
    use_otsu: bool = False,
    sthresh_up: int = 255,
) -> np.ndarray:
    """Binary tissue mask (uint8, 0 or ``sthresh_up``) of an RGB image: HSV
    saturation, median blur, threshold (or Otsu), morphological close."""
    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3], dtype=np.uint8)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    blurred = cv2.medianBlur(saturation, int(mthresh))
    if use_otsu:
        _, mask = cv2.threshold(blurred, 0, sthresh_up, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
    else:
        _, mask = cv2.threshold(blurred, int(sthresh), sthresh_up, cv2.THRESH_BINARY)
    if close > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((int(close), int(close)), np.uint8))
    return mask


def find_tissue_contours(
    mask: np.ndarray,
    downsample: tuple[float, float] = (1.0, 1.0),
    a_t: float = 100,
    a_h: float = 16,
    max_n_holes: int = 8,
    keep_ids=(),
    exclude_ids=(),
    ref_patch_size: int = REF_PATCH_SIZE,
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Tissue contours and their holes from a binary mask found at a level
    with per-axis ``downsample``; returned in level-0 pixels (CLAM's
    truncating int32 scaling). ``keep_ids``/``exclude_ids`` index the
    contours that pass the area filter."""
    sx, sy = float(downsample[0]), float(downsample[1])
    scaled_ref_area = int(ref_patch_size**2 / (sx * sy))
    min_tissue, min_hole = a_t * scaled_ref_area, a_h * scaled_ref_area

    found, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE
    )
    tissue, holes = [], []
    if hierarchy is not None and len(found):
        parent = hierarchy.reshape(-1, 4)[:, 3]
        areas = np.array([cv2.contourArea(c) for c in found])
        for idx in np.flatnonzero(parent == -1):
            children = np.flatnonzero(parent == idx)
            area = areas[idx] - areas[children].sum()
            if area == 0 or not min_tissue < area:
                continue
            tissue.append(found[idx])
            # The largest holes first (stable sort: ties keep OpenCV's order).
            biggest = sorted(children, key=lambda c: -areas[c])[: int(max_n_holes)]
            holes.append([found[c] for c in biggest if areas[c] > min_hole])

    scale = np.array([sx, sy])
    tissue = [np.array(c * scale, dtype=np.int32) for c in tissue]
    holes = [[np.array(h * scale, dtype=np.int32) for h in hs] for hs in holes]

    keep = sorted(set(int(i) for i in keep_ids)) if len(keep_ids) else list(range(len(tissue)))
    bad = [i for i in keep if not 0 <= i < len(tissue)]
    if bad:
        raise ConfigError(
            f"keep_ids {bad} out of range: this slide has {len(tissue)} tissue contours (ids 0..{len(tissue) - 1})"
        )
    drop = set(int(i) for i in exclude_ids)
    keep = [i for i in keep if i not in drop]
    return [tissue[i] for i in keep], [holes[i] for i in keep]


def resolve_level(slide, level: int, target_downsample: float = SEG_TARGET_DOWNSAMPLE) -> int:
    """CLAM's level choice: ``-1`` means level 0 on single-level slides, else
    the deepest level whose downsample is at most ``target_downsample``."""
    if level < 0:
        return 0 if slide.level_count == 1 else slide.best_level_for_downsample(target_downsample)
    if level >= slide.level_count:
        raise ConfigError(
            f"{slide.path.name}: level {level} requested but the slide has {slide.level_count} level(s) (0..{slide.level_count - 1})"
        )
    return int(level)


def segment_tissue(
    slide,
    params: SlideParams | None = None,
    seg_level: int | None = None,
    level_rgb: np.ndarray | None = None,
) -> TissueContours:
    """Segment tissue on ``slide`` (a :class:`sae1n.wsi.slide.Slide`) with
    CLAM's algorithm and ``params`` (``seg_level`` overrides ``params.seg_level``;
    ``level_rgb`` is that level's image when already read)."""
    params = params or SlideParams()
    level = resolve_level(slide, params.seg_level if seg_level is None else seg_level)
    rgb = slide.read_level(level) if level_rgb is None else level_rgb
    mask = tissue_mask(rgb, params.sthresh, params.mthresh, params.close, params.use_otsu)
    downsample = slide.level_scale(level)
    contours, holes = find_tissue_contours(
        mask,
        downsample,
        params.a_t,
        params.a_h,
        params.max_n_holes,
        params.keep_ids,
        params.exclude_ids,
    )
    return TissueContours(contours, holes, level, downsample)


def contours_to_geojson(tissue: TissueContours, name: str = "Tissue", color=(0, 200, 0)) -> dict:
    """A GeoJSON FeatureCollection (level-0 pixels) of the tissue contours
    and their holes, in the layout QuPath imports as annotations."""
    features = []
    for idx, (contour, holes) in enumerate(zip(tissue.contours, tissue.holes)):
        rings = [_ring(contour)] + [_ring(h) for h in holes]
        rings = [r for r in rings if len(r) >= 4]
        if not rings:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": list(color)},
                    "contour_id": idx,
                    "n_holes": len(holes),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _ring(contour: np.ndarray) -> list[list[int]]:
    pts = np.asarray(contour).reshape(-1, 2).tolist()
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts
