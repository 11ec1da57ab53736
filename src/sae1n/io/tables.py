"""The one CSV reader for sae1n's own tables and the ones users hand it
(process lists, metadata, splits, reference labels, status files), and the
merge of per-slide status CSVs written by several processes at once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from sae1n.errors import InputFileError, Sae1nError


def read_csv(
    path: str | os.PathLike,
    what: str = "file",
    fix: str = "check the path",
    *,
    strings: bool = True,
) -> pd.DataFrame:
    """Read ``path`` as a table of strings (ids stay strings: PANDA's hex ids
    like ``1e10..`` must not become floats); blanks are NaN. One
    :class:`InputFileError` naming the file for a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"{what} not found", fix)
    try:
        if strings:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot be read as CSV ({exc})", fix) from exc


def slide_ids_column(frame: pd.DataFrame, path: str | os.PathLike, column: str = "slide_id") -> list[str]:
    """The validated slide ids of ``column`` (no path separators, no ``..``)."""
    from sae1n.io.slide_ids import validate_slide_id

    if column not in frame.columns:
        raise InputFileError(path, f"has no {column!r} column (columns: {list(frame.columns)})", f"add a {column} column")
    return [validate_slide_id(s, path) for s in frame[column].fillna("").astype(str) if str(s).strip()]


def merge_status_csv(
    path: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    key: str = "slide_id",
    strong: Iterable[str] | None = None,
    status_column: str = "status",
    weak_statuses: Iterable[str] = ("", "tbp"),
    timeout_s: float = 120.0,
) -> pd.DataFrame:
    """Write a per-slide status table that several processes update at once.

    Under a lock file beside ``path``, a row of ``frame`` replaces the file's
    row of the same ``key`` when its key is in ``strong`` (this process did
    that slide's work; default: every row), when the file's row has a weak
    status (``weak_statuses``: not yet done) or when the file has no such row
    (appended). Every other row of the file (slides another process did) is
    kept. Written atomically; returns the merged table."""
    from sae1n.io.atomic import atomic_write_csv
    from sae1n.io.locks import release_lock, try_lock

    path = Path(path)
    strong_set = set(map(str, frame[key])) if strong is None else set(map(str, strong))
    weak = {str(w) for w in weak_statuses}
    deadline = time.monotonic() + timeout_s
    while (lock := try_lock(path.parent, path.name)) is None:
        if time.monotonic() > deadline:
            raise Sae1nError(
                f"{path}: another process has held its lock for over {timeout_s:.0f} s; "
                f"delete {path.parent / ('.' + path.name + '.lock')} if no run is active"
            )
        time.sleep(0.02)
    try:
        merged = frame
        old = None
        if path.is_file():
            try:
                old = pd.read_csv(path, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                old = None  # a broken status file is replaced
        if old is not None and key in old.columns and len(old):
            ours = {str(r[key]): r for r in frame.to_dict("records")}
            rows, seen = [], set()
            for row in old.to_dict("records"):
                k = str(row[key])
                seen.add(k)
                new = ours.get(k)
                old_status = str(row.get(status_column, "")).strip()
                if new is not None and (k in strong_set or old_status in weak):
                    rows.append(new)
                else:
                    rows.append(row)
            rows.extend(r for k, r in ours.items() if k not in seen)
            cols = list(frame.columns) + [c for c in old.columns if c not in frame.columns]
            merged = pd.DataFrame(rows, columns=cols)
        atomic_write_csv(path, merged)
        return merged
    finally:
        release_lock(lock)
