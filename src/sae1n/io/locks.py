"""Per-item lock files, so N processes (or nodes) on one output folder share the
work without doing any item twice, and clean-up of a killed run's temp files.

A lock is a file ``.<item>.lock`` created atomically (``O_CREAT | O_EXCL``)
holding the owner's pid, host and start time. A lock whose process is gone
(same host) or that is older than ``stale_after`` seconds is taken over with a
warning. Locks live in the output folder, so they work on any shared
filesystem that honours exclusive create.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 6 * 3600.0
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}(\..*)?$")


def lock_path(folder: str | os.PathLike, item: str) -> Path:
    return Path(folder) / f".{item}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def _is_stale(path: Path, stale_after: float) -> tuple[bool, str]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True, "vanished"
    if age > stale_after:
        return True, f"older than {stale_after:.0f} s"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        if not _pid_alive(info["pid"]):
            return True, f"its process {info['pid']} is gone"
    elif not info and age > 60:
        return True, "unreadable and over a minute old"
    return False, ""


def try_lock(folder: str | os.PathLike, item: str, *, stale_after: float = DEFAULT_STALE_AFTER_S) -> Path | None:
    """Take the lock of ``item`` in ``folder``; its path, or None when another live process holds it."""
    path = lock_path(folder, item)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale, why = _is_stale(path, stale_after)
            if not stale:
                return None
            log.warning("taking over the lock %s (%s)", path, why)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(_owner(), fh)
        return path
    return None


def release_lock(path: Path | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)


@contextmanager
def item_lock(folder: str | os.PathLike, item: str, *, stale_after: float = DEFAULT_STALE_AFTER_S) -> Iterator[bool]:
    """``with item_lock(dir, slide_id) as mine:`` -- ``mine`` is False when another process has it."""
    path = try_lock(folder, item, stale_after=stale_after)
    try:
        yield path is not None
    finally:
        release_lock(path)


def remove_stale_temp_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete ``.<stem>.tmp-<pid>-<hex>`` leftovers (see :mod:`sae1n.io.atomic`) of dead processes."""
    import shutil

    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    walker = root.rglob(".*.tmp-*") if recursive else root.glob(".*.tmp-*")
    for p in list(walker):
        m = _TEMP_RE.match(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue  # ours, or a live writer's
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) left by a killed run in %s", len(removed), root)
    return removed
