"""Slide readers: one module per backend behind the :class:`SlideReader`
protocol, and the one policy that resolves ``backend="auto"``.

Backends: ``openslide`` (the reference pixels), ``tiffslide`` (pure Python,
also flat strip TIFFs), ``pil`` (PNG/JPEG as one level) and ``memory`` (an
array-backed fake for tests). Later backends go in their own module and one
line of ``_READERS``: cuCIM (GPU decoding, ``cucim.CuImage`` has
``read_region``/``resolutions``) and DICOM WSI via ``wsidicom``
(``WsiDicom.open`` reads levels/mpp from the DICOM metadata); neither is
written yet.

"auto" has one meaning everywhere (:data:`AUTO_HELP`): the fastest reader
known to give OpenSlide's pixels for the reads asked. See :func:`choose_reader`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.wsi.readers.base import BaseReader, SlideReader

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
FLAT_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: what --backend accepts on the command line
BACKENDS = ("auto", "openslide", "tiffslide")
#: OpenSlide vendors whose files tiffslide decodes to the same pixels (plain
#: tiled TIFF tiles, no overlaps or stitching), and faster for large regions.
TIFFSLIDE_SAFE_VENDORS = ("aperio", "generic-tiff")
#: the one help text of every --backend option
AUTO_HELP = (
    "slide reader (auto: PIL for PNG/JPEG; tiffslide for Aperio/generic tiled TIFF when the reads "
    "are known to start on whole pixels of their level, as extract-features' patch reads: same "
    "pixels as OpenSlide, faster; otherwise OpenSlide, else tiffslide if OpenSlide cannot open it)"
)

#: backend name -> (module, class); registered readers are imported on first use
_READERS: dict[str, tuple[str, str]] = {
    "openslide": ("sae1n.wsi.readers.openslide_reader", "OpenSlideReader"),
    "tiffslide": ("sae1n.wsi.readers.tiffslide_reader", "TiffSlideReader"),
    "pil": ("sae1n.wsi.readers.pil_reader", "PILReader"),
    "memory": ("sae1n.wsi.readers.memory", "MemoryReader"),
}

__all__ = [
    "AUTO_HELP",
    "BACKENDS",
    "SLIDE_EXTENSIONS",
    "BaseReader",
    "SlideReader",
    "choose_reader",
    "open_reader",
    "reader_class",
    "reader_names",
    "register_reader",
]


def register_reader(name: str, module: str, cls: str) -> None:
    """Add a backend: ``module.cls(path)`` opens a slide (a :class:`BaseReader`)."""
    _READERS[name] = (module, cls)


def reader_names() -> tuple[str, ...]:
    return tuple(_READERS)


def reader_class(name: str) -> type[BaseReader]:
    module, cls = _READERS[name]
    return getattr(importlib.import_module(module), cls)


def _aligned(coords, downsample: float) -> bool:
    di = round(downsample)
    if abs(downsample - di) > 1e-9:
        return False
    return coords is None or di <= 1 or not np.any(np.asarray(coords) % di)


def _tiffslide_gives_openslide_pixels(path: Path) -> bool:
    try:
        import openslide
        import tiffslide

        if openslide.OpenSlide.detect_format(str(path)) not in TIFFSLIDE_SAFE_VENDORS:
            return False
        tiffslide.TiffSlide(str(path)).close()
    except Exception:  # a reader missing or a file tiffslide rejects: not this one
        return False
    return True


def choose_reader(
    path: str | os.PathLike, backend: str = "auto", *, coords=None, downsample: float | None = None
) -> tuple[str, ...]:
    """The readers to try, in order, for ``path``: the one policy behind "auto".

    PNG/JPEG are read with PIL (neither slide reader opens them); another
    named backend is used as given. "auto": a registered in-memory slide is
    read from memory; tiffslide for Aperio and generic
    tiled TIFF when the reads are known to start on whole pixels of the read
    level (``downsample`` given, and every level-0 ``coords`` a multiple of
    it; always at level 0): there both readers give the same pixels and
    tiffslide is about twice as fast for large regions. Otherwise OpenSlide,
    which also renders CLAM's sub-pixel origins at deeper levels as CLAM saw
    them, then tiffslide when OpenSlide is missing or refuses the file.
    ``downsample=None`` means the reads are not known (any level, any origin)."""
    if backend in BACKENDS and Path(path).suffix.lower() in FLAT_EXTENSIONS:
        from sae1n.wsi.readers.memory import is_memory_slide

        if not is_memory_slide(path):
            return ("pil",)  # neither slide reader opens PNG/JPEG
    if backend != "auto":
        if backend not in _READERS:
            raise InputFileError(
                Path(path),
                f"unknown slide backend {backend!r}",
                f"use one of {', '.join(BACKENDS)}",
            )
        return (backend,)
    from sae1n.wsi.readers.memory import is_memory_slide

    if is_memory_slide(path):
        return ("memory",)
    if (
        downsample is not None
        and _aligned(coords, downsample)
        and _tiffslide_gives_openslide_pixels(Path(path))
    ):
        return ("tiffslide",)
    return ("openslide", "tiffslide")


def open_reader(
    path: str | os.PathLike, backend: str = "auto", *, coords=None, downsample: float | None = None
) -> BaseReader:
    """Open ``path`` with the reader :func:`choose_reader` picks (trying the
    next one when a reader cannot open the file). One clear error if none can."""
    path = Path(path)
    order = choose_reader(path, backend, coords=coords, downsample=downsample)
    classes = [reader_class(name) for name in order]
    if any(c.needs_file for c in classes) and not path.is_file():
        raise InputFileError(
            path,
            "slide file not found",
            "check --source / --data_slide_dir and --slide_ext",
        )
    errors = []
    for name, cls in zip(order, classes):
        try:
            return cls(path)
        except InputFileError as exc:
            if len(order) == 1:
                raise
            errors.append(f"{name}: {exc}")
        except Exception as exc:  # each backend has its own error types
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise InputFileError(
        path,
        "cannot be opened as a slide (" + "; ".join(errors) + ")",
        "check that the file is a complete, supported WSI (re-copy it if it was truncated)",
    )
