"""Provenance: the record of what made an artifact, and the one rule for reuse.

Every artifact sae1n writes carries a :class:`Provenance` record: its kind and
schema version, the settings that shape it, the identity of each input (path +
size + mtime for large files, a content hash for small ones, the producing
checkpoint's hash for codes) and the sae1n version. Where the record lives
depends on the format, and is chosen here, never by a stage:

* ``.h5``: a file attribute ``sae1n_provenance`` (JSON);
* ``.safetensors``: a metadata entry ``sae1n_provenance`` (JSON);
* everything else (CSV, PNG, HTML, ``.pt``, folders): a JSON sidecar
  ``<name>.provenance.json`` beside it.

A stage reuses an existing output only when its recorded record *matches*
the one it would write now (kind, schema, settings and inputs; the sae1n
version is recorded but not compared). Otherwise it refuses with a
:class:`StaleOutputError` that names the file and the differing settings, or
recomputes when the user passed ``--overwrite``. :func:`plan_outputs` checks a
whole batch of outputs before anything is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae1n.errors import Sae1nError

PROVENANCE_KEY = "sae1n_provenance"
SIDECAR_SUFFIX = ".provenance.json"
# Inputs at or below this size are identified by content hash (a copy or a
# touch keeps them current); larger ones by resolved path + size + mtime.
HASH_LIMIT_BYTES = 4 * 1024 * 1024


def _version() -> str:
    from sae1n import __version__

    return __version__


def _normalise(value: Any) -> Any:
    """JSON-stable form of a settings value (tuples -> lists, paths -> str, numpy -> python)."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    try:  # numpy scalars, OmegaConf containers
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return _normalise(OmegaConf.to_container(value, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (or of a folder's files, names and bytes, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def input_identity(path: str | os.PathLike, *, hash_limit: int = HASH_LIMIT_BYTES) -> dict:
    """The identity of one input file: a content hash when small, else path + size + mtime."""
    p = Path(path)
    if not p.exists():
        return {"path": str(p), "missing": True}
    if p.is_dir():
        return {"path": str(p.resolve()), "sha256": content_hash(p)}
    st = p.stat()
    if st.st_size <= hash_limit:
        return {"name": p.name, "size": st.st_size, "sha256": content_hash(p)}
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class Provenance:
    """What made one artifact: kind + schema, settings, input identities, sae1n version."""

    kind: str
    schema: int
    settings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    sae1n_version: str = field(default_factory=_version)

    @classmethod
    def make(
        cls,
        kind: str,
        schema: int,
        settings: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Provenance:
        """Build a record. ``inputs`` values that are ``Path`` objects are identified
        here (:func:`input_identity`); anything else (a checkpoint hash, a dict of
        identities, an upstream fingerprint) is recorded as given."""
        ident = {}
        for name, value in (inputs or {}).items():
            if isinstance(value, os.PathLike):
                ident[name] = input_identity(value)
            else:
                ident[name] = _normalise(value)
        return cls(kind, int(schema), _normalise(dict(settings or {})), _normalise(ident))

    def compared(self) -> dict:
        """The part of the record that decides reuse (everything but the version)."""
        return {"kind": self.kind, "schema": self.schema, "settings": self.settings, "inputs": self.inputs}

    def fingerprint(self) -> str:
        """A short hash of :meth:`compared`, for pipeline state and file names."""
        blob = json.dumps(self.compared(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**self.compared(), "sae1n_version": self.sae1n_version, "fingerprint": self.fingerprint()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        return cls(
            str(d.get("kind", "")),
            int(d.get("schema", 0)),
            dict(d.get("settings") or {}),
            dict(d.get("inputs") or {}),
            str(d.get("sae1n_version", "")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Provenance:
        return cls.from_dict(json.loads(text))

    def matches(self, other: Provenance | None) -> bool:
        return other is not None and self.compared() == other.compared()

    def differences(self, recorded: Provenance | None) -> list[str]:
        """Human lines ``settings.patch_size: 256 -> 128`` from ``recorded`` to ``self``."""
        if recorded is None:
            return ["no provenance record (written by another tool or an older sae1n)"]
        out: list[str] = []
        if recorded.kind != self.kind:
            out.append(f"kind: {recorded.kind} -> {self.kind}")
        if recorded.schema != self.schema:
            out.append(f"schema: {recorded.schema} -> {self.schema}")
        _diff("settings", recorded.settings, self.settings, out)
        _diff("inputs", recorded.inputs, self.inputs, out)
        return out


_MISSING = object()


def _diff(prefix: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            _diff(f"{prefix}.{key}", old.get(key, _MISSING), new.get(key, _MISSING), out)
        return
    if old != new:
        show = lambda v: "(unset)" if v is _MISSING else json.dumps(v)  # noqa: E731
        out.append(f"{prefix}: {show(old)} -> {show(new)}")


class StaleOutputError(Sae1nError):
    """Existing outputs were made with other settings or inputs; nothing was changed."""

    def __init__(self, stale: Mapping[Path, list[str]], fix: str = ""):
        self.stale = {Path(k): v for k, v in stale.items()}
        first = next(iter(self.stale))
        lines = [
            f"{len(self.stale)} existing output(s) were made with other settings or inputs; "
            f"nothing was changed. First: {first}"
        ]
        for path, diffs in list(self.stale.items())[:5]:
            lines.append(f"  {path}:")
            lines.extend(f"    {d}" for d in diffs[:12])
        if len(self.stale) > 5:
            lines.append(f"  ... and {len(self.stale) - 5} more")
        lines.append(
            fix
            or "Fix: pass --overwrite to recompute these outputs (atomically), "
            "or choose another output folder."
        )
        super().__init__("\n".join(lines))


def fingerprint_of(*parts: Any) -> str:
    """A short stable hash of JSON-able values (settings, identities, upstream
    fingerprints): the one fingerprint function for things that are not a
    single artifact's record (pipeline stages, caches, packed stores)."""
    blob = json.dumps(_normalise(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- where records live -------------------------------------------------------


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<name>.provenance.json`` beside ``path`` (a file or a folder)."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def provenance_metadata(prov: Provenance) -> dict[str, str]:
    """The entry to put in an h5 file's attrs or a safetensors metadata dict."""
    return {PROVENANCE_KEY: prov.to_json()}


def write_sidecar(path: str | os.PathLike, prov: Provenance) -> Path:
    """Write the JSON sidecar of ``path`` atomically (after the artifact itself)."""
    from sae1n.io.atomic import atomic_write_text

    return atomic_write_text(sidecar_path(path), json.dumps(prov.to_dict(), indent=2, sort_keys=True) + "\n")


def write_h5_provenance(h5file, prov: Provenance) -> None:
    """Store ``prov`` on an open, writable ``h5py.File``."""
    h5file.attrs[PROVENANCE_KEY] = prov.to_json()


def read_provenance(path: str | os.PathLike) -> Provenance | None:
    """The record of an existing artifact, wherever its format keeps it; None if it has none."""
    p = Path(path)
    side = sidecar_path(p)
    try:
        if side.is_file():
            return Provenance.from_json(side.read_text())
        if p.suffix == ".h5" and p.is_file():
            import h5py

            with h5py.File(p, "r") as f:
                raw = f.attrs.get(PROVENANCE_KEY)
            if raw is None:
                return None
            return Provenance.from_json(raw.decode() if isinstance(raw, bytes) else str(raw))
        if p.suffix == ".safetensors" and p.is_file():
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as f:
                raw = (f.metadata() or {}).get(PROVENANCE_KEY)
            return None if raw is None else Provenance.from_json(raw)
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # unreadable record = no record; the caller treats it as stale
    return None


# --- the reuse rule -----------------------------------------------------------


def is_current(path: str | os.PathLike, expected: Provenance) -> bool:
    """True when ``path`` exists and its record matches ``expected``."""
    p = Path(path)
    return p.exists() and expected.matches(read_provenance(p))


def plan_outputs(
    expected: Mapping[str | os.PathLike, Provenance] | Iterable[tuple[str | os.PathLike, Provenance]],
    *,
    overwrite: bool = False,
    fix: str = "",
    valid: Callable[[Path], bool] | None = None,
) -> tuple[list[Path], list[Path]]:
    """Decide, before touching anything, which outputs to (re)compute and which to skip.

    Returns ``(todo, current)``: missing outputs (and, with ``overwrite``, stale
    ones) go to ``todo``; existing outputs whose record matches go to
    ``current``. Without ``overwrite``, any existing output whose record
    differs raises one :class:`StaleOutputError` listing every such file.
    ``valid(path)`` (optional) says whether an existing file is readable at
    all: one that is not (truncated, not the format) holds nothing to keep
    and is recomputed like a missing one.
    """
    items = expected.items() if isinstance(expected, Mapping) else expected
    todo: list[Path] = []
    current: list[Path] = []
    stale: dict[Path, list[str]] = {}
    for path, prov in items:
        p = Path(path)
        if not p.exists() or (valid is not None and not valid(p)):
            todo.append(p)
            continue
        recorded = read_provenance(p)
        if prov.matches(recorded):
            current.append(p)
        elif overwrite:
            todo.append(p)
        else:
            stale[p] = prov.differences(recorded)
    if stale:
        raise StaleOutputError(stale, fix)
    return todo, current


def check_output(
    path: str | os.PathLike,
    expected: Provenance,
    *,
    overwrite: bool = False,
    fix: str = "",
    valid: Callable[[Path], bool] | None = None,
) -> bool:
    """One output: True to skip (current), False to compute; raises when stale and not ``overwrite``."""
    todo, current = plan_outputs({path: expected}, overwrite=overwrite, fix=fix, valid=valid)
    return bool(current)
