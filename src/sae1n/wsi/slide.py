"""Compatibility names over :mod:`sae1n.wsi.readers`: ``open_slide`` and
``Slide`` (the type of every open slide, whatever its backend).

``backend="auto"`` means what it means everywhere (see
:data:`sae1n.wsi.readers.AUTO_HELP`); reads here are not known in advance,
so "auto" opens pyramids with OpenSlide, else tiffslide, and PNG/JPEG with PIL.
"""

from __future__ import annotations

import os

from sae1n.wsi.readers import BACKENDS, SLIDE_EXTENSIONS, BaseReader, open_reader

__all__ = ["BACKENDS", "SLIDE_EXTENSIONS", "Slide", "open_slide"]


#: the type of every open slide; ``Slide(path, backend)`` opens one, as before
Slide = BaseReader


def open_slide(path: str | os.PathLike, backend: str = "auto") -> BaseReader:
    """Open a slide with the chosen backend (``auto``: OpenSlide, else tiffslide;
    PIL for PNG/JPEG)."""
    return open_reader(path, backend)
