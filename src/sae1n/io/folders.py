"""Output folders: one check that a folder can be written, and one error for
a disk that fills up (or turns read-only) in the middle of a run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sae1n.errors import InputFileError

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# h5py and torch report a full disk in their own exception texts
_DISK_TEXTS = ("No space left on device", "errno = 28", "Disk quota exceeded", "Read-only file system")


def writable_dir(path: str | os.PathLike, option: str = "--save_dir") -> Path:
    """Create ``path`` if needed and check it can be written; else one
    :class:`InputFileError` naming it (a file, read-only, no permission)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputFileError(folder, "is a file, not a folder", f"pass a folder for {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".sae1n-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputFileError(
            folder,
            f"cannot be written ({exc.strerror or exc})",
            f"choose a writable folder for {option} (check permissions and free space)",
        ) from exc
    return folder


def is_disk_error(exc: BaseException) -> bool:
    """True for 'no space left', 'quota exceeded' and 'read-only file system'."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return True
        if any(t in str(exc) for t in _DISK_TEXTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_error(folder: str | os.PathLike, exc: BaseException) -> InputFileError:
    """The one error for a full (or read-only) output folder; finished work is kept."""
    inner, why = exc, ""
    while inner is not None and not why:
        if isinstance(inner, OSError) and inner.errno in DISK_ERRNOS and inner.strerror:
            why = inner.strerror
        else:
            why = next((t for t in _DISK_TEXTS[:1] + _DISK_TEXTS[2:] if t in str(inner)), "")
            if not why and "errno = 28" in str(inner):
                why = "No space left on device"
        inner = inner.__cause__ or inner.__context__
    why = why or "disk error"
    return InputFileError(
        folder,
        f"cannot be written any more ({why}); the slides finished so far are kept",
        "free disk space (or choose another output folder) and run the same command again: finished slides are skipped",
    )
