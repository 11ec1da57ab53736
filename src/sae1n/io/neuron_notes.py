"""Neuron notes (name, rating, tags, free text) kept in ``<exp_dir>/neuron_notes.json``.

Every save re-reads the file under a lock, changes only the one neuron, and
writes the whole file atomically, so two browser tabs (or two servers) editing
different neurons never lose each other's edits. Each note carries a
``version``: a save made from an older version of the same neuron is refused
(:class:`NoteConflict`) instead of silently overwriting the newer edit.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from pathlib import Path

from sae1n.errors import InputFileError, Sae1nError
from sae1n.io.atomic import atomic_write_text

NOTES_JSON = "neuron_notes.json"
SCHEMA = 1
TAGS = ("tumour", "immune", "stroma", "necrosis", "normal tissue", "artifact", "background")
MAX_TEXT = 4000
CSV_COLUMNS = ("unit_id", "name", "rating", "tags", "text", "updated", "version")


class NoteConflict(Sae1nError):
    """The note changed since the client read it; carries the stored note."""

    def __init__(self, current: dict):
        self.current = current
        super().__init__(f"neuron {current.get('unit_id')}: note changed elsewhere (version {current.get('version')})")


def notes_path(exp_dir: str | os.PathLike) -> Path:
    return Path(exp_dir) / NOTES_JSON


def read_notes(exp_dir: str | os.PathLike) -> dict[int, dict]:
    """unit id -> note from ``<exp_dir>/neuron_notes.json`` ({} when there is none)."""
    path = notes_path(exp_dir)
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"is not valid JSON ({exc})", "restore it from a backup or delete it") from exc
    notes = obj.get("notes", {}) if isinstance(obj, dict) else {}
    if not isinstance(notes, dict):
        raise InputFileError(path, "has no 'notes' object", "restore it from a backup or delete it")
    out = {}
    for k, v in notes.items():
        try:
            out[int(k)] = v if isinstance(v, dict) else {}
        except ValueError:
            continue
    return out


def clean_note(unit: int, raw: dict) -> dict:
    """Validate and normalise a note sent by a client (plain strings and numbers only)."""
    from sae1n.errors import ConfigError

    if not isinstance(raw, dict):
        raise ConfigError("a note must be a JSON object")
    name = str(raw.get("name") or "").strip()[:200]
    text = str(raw.get("text") or "").strip()[:MAX_TEXT]
    rating = raw.get("rating")
    if rating in (None, "", 0):
        rating = None
    else:
        try:
            rating = int(rating)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"rating must be 1-5, got {rating!r}") from exc
        if not 1 <= rating <= 5:
            raise ConfigError(f"rating must be 1-5, got {rating}")
    tags = raw.get("tags") or []
    if not isinstance(tags, list):
        raise ConfigError("tags must be a list")
    tags = sorted({str(t).strip().lower()[:40] for t in tags if str(t).strip()})
    return {"unit_id": int(unit), "name": name, "rating": rating, "tags": tags, "text": text}


class NotesStore:
    """Read and merge-save the notes of one experiment."""

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, exp_dir: str | os.PathLike):
        self.path = notes_path(exp_dir)
        self._lock = NotesStore._locks.setdefault(str(self.path.resolve()), threading.Lock())

    def all(self) -> dict[int, dict]:
        return read_notes(self.path.parent)

    def save(self, unit: int, raw: dict, base_version: int | None = None) -> dict:
        """Merge one neuron's note into the file; refuse when ``base_version`` is stale."""
        note = clean_note(unit, raw)
        with self._lock, _file_lock(self.path):
            notes = read_notes(self.path.parent)
            old = notes.get(int(unit))
            old_version = int(old.get("version", 0)) if old else 0
            if base_version is not None and int(base_version) != old_version:
                raise NoteConflict({**(old or {}), "unit_id": int(unit), "version": old_version})
            note["version"] = old_version + 1
            note["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            notes[int(unit)] = note
            body = {"schema": SCHEMA, "notes": {str(k): notes[k] for k in sorted(notes)}}
            atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        return note

    def to_csv(self) -> str:
        """The notes as CSV text (unit_id, name, rating, tags, text, updated, version)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for unit, note in sorted(self.all().items()):
            w.writerow({**note, "unit_id": unit, "tags": ";".join(note.get("tags") or [])})
        return buf.getvalue()


class _file_lock:
    """An exclusive lock on ``<notes>.lock`` (POSIX flock) across processes."""

    def __init__(self, path: Path):
        self.lock = path.with_name(path.name + ".lock")

    def __enter__(self):
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.lock, "a")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: the thread lock still holds
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()
