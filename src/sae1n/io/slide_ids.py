"""Slide ids are file stems, never paths: one check for every CSV and folder
listing that hands sae1n a slide id, and one way to put an id under an output
folder that can never leave it."""

from __future__ import annotations

import os
from pathlib import Path

from sae1n.errors import InputFileError

_FORBIDDEN = ("/", "\\", "\0")


def validate_slide_id(slide_id, source: str | os.PathLike = "<input>") -> str:
    """Return ``slide_id`` as a str, or raise naming ``source`` when it could act as a path."""
    sid = str(slide_id).strip()
    bad = (
        not sid
        or sid in (".", "..")
        or sid.startswith("..")
        or any(c in sid for c in _FORBIDDEN)
        or os.path.isabs(sid)
        or (len(sid) > 1 and sid[1] == ":")
    )
    if bad:
        raise InputFileError(
            source,
            f"slide id {sid!r} is not a plain file stem (path separators, '..' or an absolute path)",
            "use the slide's file name without folders, e.g. 'tumor_001' or 'tumor_001.tif'",
        )
    return sid


def path_within(root: str | os.PathLike, *parts: str) -> Path:
    """``root/parts...``, refusing any result that resolves outside ``root``."""
    base = Path(root).resolve()
    out = base.joinpath(*parts).resolve()
    if out != base and base not in out.parents:
        raise InputFileError(
            Path(root).joinpath(*parts),
            f"resolves outside the output folder {base}",
            "use plain slide ids (no '..' or absolute paths)",
        )
    return out
