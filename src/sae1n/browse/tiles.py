"""Deep-zoom tiles of a slide and per-patch overlay tiles on the same grid.

Slide tiles come from OpenSlide's :class:`DeepZoomGenerator` run over sae1n's
own slide reader (so both backends, OpenSlide and tiffslide, work). Level
``z`` of the pyramid is ``2 ** (max_level - z)`` times smaller than level 0,
tiles are ``TILE`` pixels without overlap, which is the grid a Leaflet tile
layer in ``CRS.Simple`` asks for. Overlay tiles paint each patch's value
(a neuron's activation, ABMIL attention, patch labels) into that grid as an
RGBA PNG; a slide without its file gets a blank canvas of the patches' extent.
"""

from __future__ import annotations

import io
import math
import threading

import numpy as np

TILE = 256
JPEG_QUALITY = 80
COLORMAPS = ("viridis", "cividis", "magma", "inferno", "plasma", "jet")
DEFAULT_CMAP = "viridis"
BLANK_RGB = (240, 240, 240)


class _SlideAdapter:
    """The OpenSlide-like API DeepZoomGenerator needs, over :class:`sae1n.wsi.slide.Slide`."""

    def __init__(self, slide):
        self._s = slide
        self.level_count = slide.level_count
        self.level_dimensions = slide.level_dimensions
        self.level_downsamples = slide.level_downsamples
        self.dimensions = slide.dimensions
        self.properties = dict(slide.properties)
        self.properties.pop("openslide.background-color", None)
        # OpenSlide is thread-safe; other readers get one lock per slide.
        self._lock = None if slide.backend == "openslide" else threading.Lock()

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return self._s.best_level_for_downsample(downsample)

    def read_region(self, location, level, size):
        from PIL import Image

        if self._lock is None:
            arr = self._s.read_region(location, level, size)
        else:
            with self._lock:
                arr = self._s.read_region(location, level, size)
        return Image.fromarray(arr).convert("RGBA")


def pyramid_levels(width: int, height: int) -> list[tuple[int, int]]:
    """Deep-zoom level sizes, level 0 = 1 x 1 ... last = full resolution (as DeepZoomGenerator)."""
    dims = [(int(width), int(height))]
    while dims[-1] != (1, 1):
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return dims[::-1]


class SlideTiles:
    """Tiles of one slide (or of a blank canvas of ``size`` when there is no file)."""

    def __init__(self, path=None, size: tuple[int, int] | None = None):
        self.path = path
        self._dz = None
        self._slide = None
        if path is not None:
            from openslide.deepzoom import DeepZoomGenerator

            from sae1n.wsi.slide import open_slide

            self._slide = open_slide(path)
            self._dz = DeepZoomGenerator(_SlideAdapter(self._slide), tile_size=TILE, overlap=0)
            self.width, self.height = (int(v) for v in self._slide.dimensions)
            self.mpp = self._slide.mpp
        else:
            self.width, self.height = (int(v) for v in size)
            self.mpp = None
        self.levels = pyramid_levels(self.width, self.height)
        self.max_level = len(self.levels) - 1

    @property
    def has_file(self) -> bool:
        return self._dz is not None

    def downsample(self, z: int) -> float:
        return float(2 ** (self.max_level - int(z)))

    def tile_box(self, z: int, col: int, row: int) -> tuple[int, int] | None:
        """(w, h) of tile (col, row) at level z in level-z pixels, None when outside."""
        if not 0 <= z <= self.max_level:
            return None
        lw, lh = self.levels[z]
        if col < 0 or row < 0 or col * TILE >= lw or row * TILE >= lh:
            return None
        return min(TILE, lw - col * TILE), min(TILE, lh - row * TILE)

    def tile_jpeg(self, z: int, col: int, row: int) -> bytes | None:
        """JPEG bytes of the tile, or None when it lies outside the pyramid."""
        from PIL import Image

        box = self.tile_box(z, col, row)
        if box is None:
            return None
        if self._dz is not None:
            img = self._dz.get_tile(int(z), (int(col), int(row)))
        else:
            img = Image.new("RGB", box, BLANK_RGB)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def read_patch(self, x: int, y: int, attrs: dict, patch_size: int) -> np.ndarray:
        """The RGB patch at level-0 (x, y) as the patch file defines it (blank without a file)."""
        if self._slide is None:
            return np.full((patch_size, patch_size, 3), BLANK_RGB, np.uint8)
        from sae1n.wsi.patch_files import read_patch

        if "patch_size" not in attrs:
            attrs = {**attrs, "patch_size": patch_size, "patch_level": 0}
        return read_patch(self._slide, (x, y), attrs)

    def close(self):
        if self._slide is not None:
            self._slide.close()


def colormap_lut(name: str = DEFAULT_CMAP) -> np.ndarray:
    """(256, 4) uint8 RGBA look-up table of a matplotlib colour map from :data:`COLORMAPS`."""
    import matplotlib

    if name not in COLORMAPS:
        raise KeyError(name)
    lut = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return (lut * 255).round().astype(np.uint8)


def paint_tile(
    coords: np.ndarray,
    values: np.ndarray,
    patch_size: int,
    origin: tuple[float, float],
    downsample: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """(h, w) float canvas, NaN where no patch: each patch's square filled with its value
    (the highest value wins where squares overlap). ``origin`` is the tile's level-0
    top-left, ``downsample`` level-0 pixels per canvas pixel."""
    h, w = shape
    canvas = np.full(h * w, np.nan, np.float32)
    if len(coords) == 0:
        return canvas.reshape(h, w)
    ox, oy = origin
    x0 = np.floor((coords[:, 0] - ox) / downsample).astype(np.int64)
    y0 = np.floor((coords[:, 1] - oy) / downsample).astype(np.int64)
    x1 = np.maximum(np.ceil((coords[:, 0] + patch_size - ox) / downsample).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((coords[:, 1] + patch_size - oy) / downsample).astype(np.int64), y0 + 1)
    np.clip(x0, 0, w, out=x0)
    np.clip(x1, 0, w, out=x1)
    np.clip(y0, 0, h, out=y0)
    np.clip(y1, 0, h, out=y1)
    vals = np.asarray(values, np.float32)
    if len(coords) <= 64:  # few large squares: fill slices, lowest first
        c2 = canvas.reshape(h, w)
        for i in np.argsort(vals, kind="stable"):
            c2[y0[i] : y1[i], x0[i] : x1[i]] = vals[i]
        return c2
    # many small squares: scatter every covered pixel at once, max wins
    bw = int((x1 - x0).max())
    bh = int((y1 - y0).max())
    ox_ = np.arange(bw)
    oy_ = np.arange(bh)
    xs = x0[:, None] + ox_[None, :]
    ys = y0[:, None] + oy_[None, :]
    okx = xs < x1[:, None]
    oky = ys < y1[:, None]
    flat = ys[:, :, None] * w + xs[:, None, :]
    ok = oky[:, :, None] & okx[:, None, :]
    vv = np.broadcast_to(vals[:, None, None], ok.shape)
    np.fmax.at(canvas, flat[ok], vv[ok])
    return canvas.reshape(h, w)


def colorize(canvas: np.ndarray, lut: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """RGBA uint8 of a [0, 1] canvas; NaN and values below ``threshold`` are transparent."""
    painted = np.isfinite(canvas)
    v = np.clip(np.nan_to_num(canvas), 0.0, 1.0)
    rgba = lut[(v * 255).astype(np.uint8)].copy()
    rgba[..., 3] = np.where(painted & (v >= threshold), 255, 0)
    return rgba


def outline_rgba(mask: np.ndarray, color=(220, 30, 30), width: int = 2) -> np.ndarray:
    """RGBA uint8: the outline of a boolean mask's regions, transparent elsewhere."""
    from sae1n.viz.heatmaps import outline_mask

    edge = outline_mask(mask, width) if mask.any() else mask
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[edge] = (*color, 255)
    return rgba


def png_bytes(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGBA array (fast compression: tiles are served, not archived)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()
