"""OpenSlide backend (openslide-python + openslide-bin): the reference reader."""

from __future__ import annotations

from sae1n.wsi.readers.base import BaseReader


class OpenSlideReader(BaseReader):
    """A slide opened with OpenSlide; pixels outside the slide come back white."""

    backend = "openslide"

    def __init__(self, path) -> None:
        super().__init__(path)
        import openslide

        self._osr = openslide.OpenSlide(str(self.path))
        self.level_dimensions = self._osr.level_dimensions
        self.level_downsamples = self._osr.level_downsamples
        self.properties = self._osr.properties
        self._finish()

    def _read(self, x, y, level, w, h):
        return self._osr.read_region((x, y), level, (w, h))

    def _close(self) -> None:
        self._osr.close()
