"""A fake, array-backed reader for tests: an RGB array with a 2x pyramid,
opened by name like a file (``backend="memory"``, or ``"auto"`` once the
name is registered with :func:`register_memory_slide`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.wsi.readers.base import BaseReader
from sae1n.wsi.readers.pil_reader import read_array

_SLIDES: dict[str, dict] = {}


def _key(path) -> str:
    return os.path.abspath(os.fspath(path))


def register_memory_slide(
    path, image: np.ndarray, levels: int = 3, mpp: float | None = None, properties: dict | None = None
) -> Path:
    """Make ``image`` (h, w, 3 uint8) openable as the slide ``path`` (no file
    is written). Level ``i`` is the image mean-pooled by ``2**i``. Returns the path."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"need an (h, w, 3) uint8 image, got {image.shape} {image.dtype}")
    pyramid = [image]
    for _ in range(1, levels):
        prev = pyramid[-1]
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        if h < 1 or w < 1:
            break
        pooled = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
        pyramid.append(np.rint(pooled).astype(np.uint8))
    props = dict(properties or {})
    if mpp is not None:
        props.setdefault("openslide.mpp-x", str(mpp))
        props.setdefault("openslide.mpp-y", str(mpp))
    _SLIDES[_key(path)] = {"pyramid": pyramid, "properties": props}
    return Path(path)


def unregister_memory_slide(path) -> None:
    """Forget a slide registered with :func:`register_memory_slide`."""
    _SLIDES.pop(_key(path), None)


def is_memory_slide(path) -> bool:
    return _key(path) in _SLIDES


class MemoryReader(BaseReader):
    """A registered array pyramid. Reads at a level take the stored level's
    pixels from ``location / downsample`` (rounded down), white outside."""

    backend = "memory"
    needs_file = False

    def __init__(self, path) -> None:
        super().__init__(path)
        entry = _SLIDES.get(_key(path))
        if entry is None:
            raise InputFileError(
                self.path,
                "is not a registered in-memory slide",
                "call sae1n.wsi.readers.memory.register_memory_slide(path, image) first",
            )
        self._pyramid = entry["pyramid"]
        w0, h0 = self._pyramid[0].shape[1], self._pyramid[0].shape[0]
        self.level_dimensions = tuple((im.shape[1], im.shape[0]) for im in self._pyramid)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.properties = entry["properties"]
        self._finish()

    def _read(self, x, y, level, w, h):
        ds = self.level_downsamples[level]
        return read_array(self._pyramid[level], int(x // ds), int(y // ds), w, h)
