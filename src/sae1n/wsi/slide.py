"""Slide reading behind one small interface, with two backends.

``openslide`` (openslide-python + openslide-bin) and ``tiffslide`` (pure
Python, tifffile-based) expose the same OpenSlide-style API, so one wrapper
serves both; ``backend="auto"`` tries OpenSlide first, then tiffslide.
Flat PNG/JPEG images are read with PIL as a single-level "slide".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".png",
    ".jpg",
    ".jpeg",
)
BACKENDS = ("auto", "openslide", "tiffslide")
_FLAT = (".png", ".jpg", ".jpeg")


class Slide:
    """An open slide. ``read_region`` returns an RGB uint8 (h, w, 3) array."""

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        self.path = Path(path)
        if backend not in BACKENDS:
            raise InputFileError(
                self.path, f"unknown slide backend {backend!r}", f"use one of {', '.join(BACKENDS)}"
            )
        if not self.path.is_file():
            raise InputFileError(
                self.path,
                "slide file not found",
                "check --source / --data_slide_dir and --slide_ext",
            )
        self._img = None
        self._osr = None
        if self.path.suffix.lower() in _FLAT:
            self._open_flat()
            self.backend = "pil"
        else:
            self.backend = self._open_pyramid(backend)
        if self._osr is not None:
            self.level_dimensions = tuple(
                tuple(int(v) for v in d) for d in self._osr.level_dimensions
            )
            self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            self.properties = dict(self._osr.properties)
        self.mpp = self._find_mpp()

    # --------------------------------------------------------------- opening
    def _open_pyramid(self, backend: str) -> str:
        errors = []
        order = ["openslide", "tiffslide"] if backend == "auto" else [backend]
        for name in order:
            try:
                if name == "openslide":
                    import openslide

                    self._osr = openslide.OpenSlide(str(self.path))
                else:
                    import tiffslide

                    self._osr = tiffslide.TiffSlide(str(self.path))
                # tiffslide parses lazily: touch the pyramid so a truncated file fails here
                _ = self._osr.level_dimensions, self._osr.properties
                return name
            except Exception as exc:  # each backend has its own error types
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        raise InputFileError(
            self.path,
            "cannot be opened as a slide (" + "; ".join(errors) + ")",
            "check that the file is a complete, supported WSI (re-copy it if it was truncated)",
        )

    def _open_flat(self) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                self._img = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise InputFileError(
                self.path,
                f"cannot be read as an image ({exc})",
                "re-export the image as PNG/JPEG/TIFF",
            ) from exc
        h, w = self._img.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties = {}

    def _find_mpp(self) -> float | None:
        for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
            v = self.properties.get(key)
            if v not in (None, ""):
                try:
                    mpp = float(v)
                except ValueError:
                    continue
                if mpp > 0:
                    return mpp
        return None

    # --------------------------------------------------------------- reading
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def magnification(self) -> float | None:
        for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
            v = self.properties.get(key)
            if v not in (None, ""):
                try:
                    return float(v)
                except ValueError:
                    continue
        return None

    def level_scale(self, level: int) -> tuple[float, float]:
        """Per-axis (x, y) level-0 pixels per pixel of ``level``, from the level
        dimensions (CLAM's estimate; the reported downsample is their mean)."""
        w0, h0 = self.level_dimensions[0]
        w, h = self.level_dimensions[level]
        return (w0 / float(w), h0 / float(h))

    def best_level_for_downsample(self, downsample: float) -> int:
        """The deepest level whose downsample does not exceed ``downsample``."""
        ds = np.asarray(self.level_downsamples)
        ok = np.nonzero(ds <= downsample * (1 + 1e-6))[0]
        return int(ok[-1]) if ok.size else 0

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` (w, h) at ``level``, top-left at level-0 ``location``.
        Pixels outside the slide are white."""
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if self._img is not None:
            out = np.full((h, w, 3), 255, np.uint8)
            H, W = self._img.shape[:2]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            if x1 > x0 and y1 > y0:
                out[y0 - y : y1 - y, x0 - x : x1 - x] = self._img[y0:y1, x0:x1]
            return out
        try:
            region = np.asarray(self._osr.read_region((x, y), level, (w, h)))
        except Exception as exc:  # backends raise their own types for bad tiles
            raise InputFileError(
                self.path,
                f"cannot read a region at level {level} ({type(exc).__name__}: {exc})",
                "the file is probably truncated or corrupt; re-copy or re-export it",
            ) from exc
        if region.shape[-1] == 4:  # composite transparent pixels onto white
            rgb = np.array(region[..., :3], dtype=np.uint8)
            alpha = region[..., 3]
            clear = alpha < 255
            if clear.any():
                a = alpha[clear].astype(np.uint16)[:, None]
                rgb[clear] = ((rgb[clear].astype(np.uint16) * a + 255 * (255 - a)) // 255).astype(
                    np.uint8
                )
            return rgb
        region = np.array(region[..., :3], dtype=np.uint8)
        if (
            self.backend == "tiffslide"
        ):  # it pads with black: paint the outside white, as OpenSlide's is
            lw, lh = self.level_dimensions[level]
            ds = self.level_downsamples[level]
            cols = int(x / ds) + np.arange(w)
            rows = int(y / ds) + np.arange(h)
            region[:, (cols < 0) | (cols >= lw)] = 255
            region[(rows < 0) | (rows >= lh)] = 255
        return region

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as RGB (use only on low-resolution levels)."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """(RGB image, level-0 pixels per thumbnail pixel) no larger than ``max_size``."""
        W, H = self.dimensions
        scale = max(W, H) / max_size if max(W, H) > max_size else 1.0
        level = self.best_level_for_downsample(scale)
        img = self.read_level(level)
        if scale > self.level_downsamples[level]:
            from PIL import Image

            tw, th = max(1, round(W / scale)), max(1, round(H / scale))
            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.BILINEAR))
        else:
            scale = self.level_downsamples[level]
        return img, scale

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
        self._img = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_slide(path: str | os.PathLike, backend: str = "auto") -> Slide:
    """Open a slide with the chosen backend (``auto``: OpenSlide, else tiffslide)."""
    return Slide(path, backend=backend)
