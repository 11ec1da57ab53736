"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash (or an exception) mid-write never leaves a file under the final name,
so a later run that trusts existing outputs never trusts a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Some writers (safetensors) create their file with mode 0600; every artifact
# gets the usual mode of a new file instead (0644 under the common umask 022).
_FILE_MODE = 0o666 & ~_umask()


def _temp_sibling(final: Path) -> Path:
    # Keep the real suffix last: PIL, h5py, torch and pandas pick formats from it.
    return final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    Works for files and folders: whatever the block creates at the yielded
    path replaces ``final`` only when the block exits without an exception.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write to {final}: nothing was written to {tmp}")
        if tmp.is_dir() and final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        if tmp.is_file():
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write JSON atomically (NaN is written as null-safe ``NaN`` like pandas)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame, **to_csv_kw) -> Path:
    """Write a pandas DataFrame to CSV atomically (``index=False`` by default)."""
    to_csv_kw.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **to_csv_kw)
    return Path(path)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
