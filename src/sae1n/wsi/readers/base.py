"""The :class:`SlideReader` protocol and the base class every backend extends.

A backend opens a file and fills ``level_dimensions``, ``level_downsamples``
and ``properties``; it implements ``_read(x, y, level, w, h)`` (RGB or RGBA
array). Everything callers use on top of that (white outside the slide,
alpha composited onto white, thumbnails, level choice, mpp) lives here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sae1n.errors import InputFileError

MPP_KEYS = ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP")
MAGNIFICATION_KEYS = ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag")


@runtime_checkable
class SlideReader(Protocol):
    """What callers may use of an open slide (every backend offers all of it)."""

    path: Path
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict
    mpp: float | None

    @property
    def level_count(self) -> int: ...
    @property
    def dimensions(self) -> tuple[int, int]: ...
    @property
    def magnification(self) -> float | None: ...
    def level_scale(self, level: int) -> tuple[float, float]: ...
    def best_level_for_downsample(self, downsample: float) -> int: ...
    def read_region(self, location, level: int, size) -> np.ndarray: ...
    def read_level(self, level: int) -> np.ndarray: ...
    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]: ...
    def get_thumbnail(self, size): ...
    def close(self) -> None: ...
    def __enter__(self): ...
    def __exit__(self, *exc): ...


def _float_property(props: dict, keys, positive: bool = False) -> float | None:
    for key in keys:
        v = props.get(key)
        if v not in (None, ""):
            try:
                f = float(v)
            except ValueError:
                continue
            if not positive or f > 0:
                return f
    return None


def composite_on_white(region: np.ndarray) -> np.ndarray:
    """RGB uint8 from an RGB or RGBA region; transparent pixels become white."""
    if region.shape[-1] != 4:
        return np.array(region[..., :3], dtype=np.uint8)
    rgb = np.array(region[..., :3], dtype=np.uint8)
    alpha = region[..., 3]
    clear = alpha < 255
    if clear.any():
        a = alpha[clear].astype(np.uint16)[:, None]
        rgb[clear] = ((rgb[clear].astype(np.uint16) * a + 255 * (255 - a)) // 255).astype(np.uint8)
    return rgb


class _OpensByPath(type):
    def __call__(cls, *args, **kwargs):
        if cls is BaseReader:  # ``Slide(path, backend)``, the pre-readers constructor
            from sae1n.wsi.readers import open_reader

            return open_reader(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class BaseReader(metaclass=_OpensByPath):
    """Shared behaviour of every backend; a subclass sets the pyramid in
    ``__init__`` and implements :meth:`_read` (and :meth:`_close`).
    ``BaseReader(path, backend)`` itself opens ``path`` with :func:`open_reader`."""

    backend = "base"
    #: whether the reader opens a file on disk (the in-memory fake does not)
    needs_file = True

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.properties: dict = {}
        self.mpp: float | None = None

    def _finish(self) -> None:
        """Called by subclasses once the pyramid and properties are set."""
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self.level_downsamples)
        self.properties = dict(self.properties)
        if self.mpp is None:
            self.mpp = _float_property(self.properties, MPP_KEYS, positive=True)

    # ------------------------------------------------------------- backend
    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # ------------------------------------------------------------- geometry
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def magnification(self) -> float | None:
        return _float_property(self.properties, MAGNIFICATION_KEYS)

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

    # ------------------------------------------------------------- reading
    def read_region(self, location, level: int, size) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` (w, h) at ``level``, top-left at level-0 ``location``.
        Pixels outside the slide are white."""
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        try:
            region = np.asarray(self._read(x, y, int(level), w, h))
        except InputFileError:
            raise
        except Exception as exc:  # backends raise their own types for bad tiles
            raise InputFileError(
                self.path,
                f"cannot read a region at level {level} ({type(exc).__name__}: {exc})",
                "the file is probably truncated or corrupt; re-copy or re-export it",
            ) from exc
        return composite_on_white(region)

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

    def get_thumbnail(self, size):
        """OpenSlide-style: a PIL RGB image fitting in ``size`` (w, h)."""
        from PIL import Image

        W, H = self.dimensions
        # the longest side that keeps the image inside size, for this aspect
        fit = max(1, int(min(size[0] * max(W, H) / W, size[1] * max(W, H) / H)))
        img, _ = self.thumbnail(fit)
        return Image.fromarray(img)

    def close(self) -> None:
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} {self.dimensions} levels={self.level_count}>"
