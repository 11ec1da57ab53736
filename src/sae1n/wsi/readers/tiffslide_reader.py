"""tiffslide backend (pure Python over tifffile): same API as OpenSlide, and
flat strip TIFFs that OpenSlide refuses."""

from __future__ import annotations

import numpy as np

from sae1n.wsi.readers.base import BaseReader


class TiffSlideReader(BaseReader):
    """A slide opened with tiffslide. It pads reads past the edge with black;
    those pixels are painted white here, as OpenSlide's are."""

    backend = "tiffslide"

    def __init__(self, path) -> None:
        super().__init__(path)
        import tiffslide

        self._osr = tiffslide.TiffSlide(str(self.path))
        try:
            # tiffslide parses lazily: touch the pyramid so a truncated file fails here
            self.level_dimensions = self._osr.level_dimensions
            self.level_downsamples = self._osr.level_downsamples
            self.properties = self._osr.properties
        except Exception:
            self._osr.close()
            raise
        self._finish()

    def _read(self, x, y, level, w, h):
        region = np.asarray(self._osr.read_region((x, y), level, (w, h)))
        if region.shape[-1] == 4:  # RGBA: composited by the base class
            return region
        region = np.array(region[..., :3], dtype=np.uint8)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        cols = int(x / ds) + np.arange(w)
        rows = int(y / ds) + np.arange(h)
        region[:, (cols < 0) | (cols >= lw)] = 255
        region[(rows < 0) | (rows >= lh)] = 255
        return region

    def _close(self) -> None:
        self._osr.close()
