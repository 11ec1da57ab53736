"""PIL backend: a flat PNG/JPEG image as a one-level slide (no mpp)."""

from __future__ import annotations

import numpy as np

from sae1n.errors import InputFileError
from sae1n.wsi.readers.base import BaseReader


def read_array(image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The (h, w) window at (x, y) of an RGB array, white outside it."""
    out = np.full((h, w, 3), 255, np.uint8)
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out


class PILReader(BaseReader):
    """A flat image read whole into memory with PIL."""

    backend = "pil"

    def __init__(self, path) -> None:
        super().__init__(path)
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
        self._finish()

    def _read(self, x, y, level, w, h):
        return read_array(self._img, x, y, w, h)

    def _close(self) -> None:
        self._img = None
