"""Generated H&E-like whole-slide images for the demo and for other stages' tests.

This module only paints: the files are written by :mod:`sae1n.wsi.writers`
(pyramidal TIFF) and :mod:`sae1n.datasets.asap_writer` (ASAP XML).

Slides are painted in optical-density space (Beer-Lambert): a haematoxylin and an
eosin concentration map are mixed with fixed stain vectors and turned into RGB,
so colour deconvolution of a generated slide recovers roughly what was painted.
Tissue pieces hold pink collagen stroma with elongated nuclei, fat (white
vacuoles with pink membranes) and lymphocyte-dense areas (small dark round
nuclei); tumour regions hold large, pleomorphic, vesicular nuclei packed densely
in pale purple cytoplasm. Germinal centres (paler, larger nuclei inside lymphoid
areas) are the normal look-alike that keeps the task from being trivial, and
each lesion has its own grade (nuclear size, density, darkness, infiltrating
lymphocytes). Every tumour region is an explicit polygon, painted
exactly and written to a CAMELYON16-style ASAP XML, so annotation and pixels agree.

All randomness comes from one ``numpy`` generator seeded per slide; the same
seed gives the same pixels and the same bytes on disk.

The colour model and drawing primitives are in :mod:`sae1n.demo.paint_tools`,
the painter in :mod:`sae1n.demo.painter`; this module holds the slide records
and the functions that render and write a slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sae1n.datasets.asap_writer import AnnotationPolygon, write_asap_xml
from sae1n.demo.paint_tools import (
    BACKGROUND,
    CLASS_NAMES,
    FAT,
    GERMINAL,
    LYMPH,
    STROMA,
    TUMOR,
    od_to_rgb,
)
from sae1n.demo.painter import SlidePainter
from sae1n.errors import ConfigError
from sae1n.io.atomic import atomic_write_bytes
from sae1n.wsi.writers import write_pyramidal_tiff

__all__ = [
    "BACKGROUND", "CLASS_NAMES", "DEFAULT_MAGNIFICATION", "DEFAULT_MPP", "DEFAULT_SIZE", "FAT",
    "GERMINAL", "LYMPH", "STROMA", "TUMOR", "SlideInfo", "SlideLayout", "generate_slide",
    "render_slide", "write_corrupt_slide",
]

DEFAULT_SIZE = (4096, 4096)
DEFAULT_MPP = 0.5
DEFAULT_MAGNIFICATION = 20.0




@dataclass
class SlideLayout:
    """What was painted: annotation polygons and area fractions."""

    size: tuple[int, int]
    polygons: list[AnnotationPolygon] = field(default_factory=list)
    tissue_fraction: float = 0.0  # of the slide
    class_fractions: dict[str, float] = field(default_factory=dict)  # of the tissue
    # (H, W) uint8 class ids (indices of CLASS_NAMES): ground truth for tests
    label_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def tumor_fraction(self) -> float:
        """Tumour area as a fraction of the tissue area."""
        return self.class_fractions.get("tumor", 0.0)


@dataclass
class SlideInfo:
    """A generated slide on disk."""

    slide_id: str
    path: Path
    label: str  # "tumor" or "normal"
    annotation: Path | None
    size: tuple[int, int]
    polygons: list[AnnotationPolygon]
    tissue_fraction: float
    tumor_fraction: float  # of the tissue
    kind: str = "synthetic"  # synthetic | mosaic | empty
    mpp: float = DEFAULT_MPP

    def to_json(self) -> dict:
        return {
            "slide_id": self.slide_id,
            "path": str(self.path),
            "label": self.label,
            "annotation": None if self.annotation is None else str(self.annotation),
            "size": list(self.size),
            "n_regions": sum(not p.is_exclusion for p in self.polygons),
            "n_exclusions": sum(p.is_exclusion for p in self.polygons),
            "tissue_fraction": round(self.tissue_fraction, 4),
            "tumor_fraction": round(self.tumor_fraction, 4),
            "kind": self.kind,
            "mpp": self.mpp,
        }


# --------------------------------------------------------------------------- rendering
def render_slide(
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    tumor: bool = False,
    seed: int | np.random.Generator = 0,
    empty: bool = False,
) -> tuple[np.ndarray, SlideLayout]:
    """Paint one H&E-like slide: ``(rgb uint8 (H, W, 3), layout)``.

    ``tumor`` adds one to three tumour regions (some small), ``empty`` gives a
    slide with no tissue at all (glass only). ``layout`` holds the annotation
    polygons, area fractions and the full-resolution class map (ground truth
    for tests). Deterministic for a given seed.
    """
    width, height = (int(v) for v in size)
    if width < 256 or height < 256:
        raise ConfigError(f"slide size must be at least 256x256 pixels, got {width}x{height}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if empty and tumor:
        raise ConfigError("a slide cannot be both empty and a tumour slide")
    layout = SlideLayout(size=(width, height))
    if empty:
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[:] = od_to_rgb(np.zeros(3))
        layout.label_map = np.zeros((height, width), np.uint8)
        return rgb, layout

    painter = SlidePainter(width, height, rng)
    painter.paint_tissue()
    if tumor:
        layout.polygons = painter.paint_tumor_regions()
        if not layout.polygons:  # only possible for a slide too small to hold tissue
            raise ConfigError(
                f"no room for a tumour region on a {width}x{height} slide; use a larger size"
            )
    rgb = painter.compose()
    layout.tissue_fraction = painter.tissue_fraction
    layout.class_fractions = painter.class_fractions()
    layout.label_map = np.minimum(painter.labels, TUMOR)
    return rgb, layout



# --------------------------------------------------------------------------- files
def generate_slide(
    path: str | os.PathLike,
    *,
    tumor: bool = False,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    annotation_path: str | os.PathLike | None = None,
    empty: bool = False,
    quality: int = 90,
) -> SlideInfo:
    """Paint one slide and write it as a pyramidal TIFF (JPEG tiles, 3 levels,
    mpp 0.5, 20x); for a tumour slide with ``annotation_path``, also its ASAP XML."""
    path = Path(path)
    rgb, layout = render_slide(size, tumor=tumor, seed=seed, empty=empty)
    write_pyramidal_tiff(
        path, rgb, mpp=DEFAULT_MPP, magnification=DEFAULT_MAGNIFICATION, quality=quality
    )
    ann = None
    if layout.polygons and annotation_path is not None:
        ann = write_asap_xml(annotation_path, layout.polygons)
    return SlideInfo(
        slide_id=path.stem,
        path=path,
        label="tumor" if tumor else "normal",
        annotation=ann,
        size=layout.size,
        polygons=layout.polygons,
        tissue_fraction=layout.tissue_fraction,
        tumor_fraction=layout.tumor_fraction,
        kind="empty" if empty else "synthetic",
    )


def write_corrupt_slide(path: str | os.PathLike, *, keep_bytes: int = 200, seed: int = 0) -> Path:
    """Write a truncated TIFF (a real generated slide cut after ``keep_bytes``
    bytes, mid-directory by default) for tests of bad-input handling: neither
    slide backend can open it."""
    import tempfile

    rgb, _ = render_slide((512, 512), seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        full = write_pyramidal_tiff(Path(tmp) / "full.tif", rgb)
        data = full.read_bytes()
    return atomic_write_bytes(path, data[:keep_bytes])
