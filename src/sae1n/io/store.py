"""A packed, memory-mapped feature store for fast training.

The patch features of a set of slides are copied once into one ``.npy`` array
(memory-mapped, so it may be larger than RAM) with an index of slide ids, row
ranges and coords. The store records a fingerprint of its inputs (path, size,
mtime) and is rebuilt only when they change. Building streams one slide at a
time and happens in a temporary folder renamed into place at the end.

Integrity: at build time ``store.json`` records, for each array file, its
size, mtime and a SHA-256 of sampled blocks (the first, the last and evenly
spaced ones, ``CHECK_BLOCKS`` x ``CHECK_BLOCK_BYTES``). Reuse re-checks all
three (milliseconds for any size): any write into the store changes its
mtime, and damage in a sampled block changes the hash, so a corrupted store
of the same size is rebuilt instead of trained on. ``verify="full"`` also
compares a hash of every byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae1n.errors import InputFileError
from sae1n.io.atomic import atomic_path
from sae1n.io.features import read_bag

log = logging.getLogger(__name__)

STORE_VERSION = 2
ARRAYS = ("features.npy", "coords.npy")
CHECK_BLOCKS = 64
CHECK_BLOCK_BYTES = 1 << 16


def _fingerprint(paths: Mapping[str, Path], dtype: str) -> str:
    from sae1n.io.provenance import Provenance

    inputs = {sid: {"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "mtime_ns": Path(p).stat().st_mtime_ns} for sid, p in paths.items()}
    return Provenance.make("packed_store", STORE_VERSION, {"dtype": dtype}, inputs).fingerprint()


def sampled_checksum(path: str | os.PathLike, full: bool = False) -> dict:
    """Size, mtime and SHA-256 of sampled blocks of ``path`` (of every byte with ``full``)."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256(str(st.st_size).encode())
    with open(p, "rb") as fh:
        if full:
            while block := fh.read(1 << 20):
                h.update(block)
        else:
            last = max(0, st.st_size - CHECK_BLOCK_BYTES)
            offsets = sorted({int(round(i * last / (CHECK_BLOCKS - 1))) for i in range(CHECK_BLOCKS)})
            for off in offsets:
                fh.seek(off)
                h.update(fh.read(CHECK_BLOCK_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, ("sha256_full" if full else "sha256_sampled"): h.hexdigest()}


def verify_store(root: str | os.PathLike, *, full: bool = False) -> list[str]:
    """Problems found in the store at ``root`` against its recorded checksums ([] = intact)."""
    root = Path(root)
    try:
        meta = json.loads((root / "store.json").read_text())
    except (OSError, ValueError):
        return ["store.json is missing or unreadable"]
    recorded = meta.get("checksums") or {}
    problems = []
    for name in ARRAYS:
        want = recorded.get(name)
        if not want:
            problems.append(f"{name}: no checksum recorded (store built by an older sae1n)")
            continue
        try:
            got = sampled_checksum(root / name)
        except OSError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for key in ("size", "mtime_ns", "sha256_sampled"):
            if got[key] != want.get(key):
                problems.append(f"{name}: {key} {want.get(key)} -> {got[key]}")
        if full and "sha256_full" in want:
            if sampled_checksum(root / name, full=True)["sha256_full"] != want["sha256_full"]:
                problems.append(f"{name}: full hash differs")
    return problems


@dataclass
class PackedStore:
    """An opened store: ``features`` is a read-only (N, D) memmap."""

    root: Path
    features: np.ndarray
    slide_ids: list[str]
    offsets: np.ndarray  # (S+1,) row offsets
    coords: np.ndarray  # (N, 2) int64
    fingerprint: str

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def rows(self, slide_id: str) -> slice:
        i = self.slide_ids.index(slide_id)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def slide(self, slide_id: str) -> np.ndarray:
        """The rows of one slide (a memmap view, no copy)."""
        return self.features[self.rows(slide_id)]

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """float32 copy of rows ``idx`` (sorted internally for sequential reads)."""
        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.shape[0], self.dim), dtype=np.float32)
        out[order] = self.features[idx[order]]
        return out

    def iter_chunks(self, chunk_rows: int = 65536):
        """Yield consecutive float32 chunks of the whole store."""
        for start in range(0, len(self), chunk_rows):
            yield np.asarray(self.features[start : start + chunk_rows], dtype=np.float32)

    @classmethod
    def open(cls, root: str | os.PathLike) -> PackedStore:
        root = Path(root)
        meta_path = root / "store.json"
        if not meta_path.is_file():
            raise InputFileError(root, "is not a packed feature store (no store.json)", "build it with open_packed_store()")
        meta = json.loads(meta_path.read_text())
        feats = np.load(root / "features.npy", mmap_mode="r")
        coords = np.load(root / "coords.npy", mmap_mode="r")
        return cls(
            root=root,
            features=feats,
            slide_ids=list(meta["slide_ids"]),
            offsets=np.asarray(meta["offsets"], dtype=np.int64),
            coords=coords,
            fingerprint=meta["fingerprint"],
        )


def open_packed_store(
    paths: Mapping[str, str | os.PathLike],
    store_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    rebuild: bool = False,
    expected_dim: int | None = None,
    progress_desc: str = "packing features",
    verify: str = "sampled",
) -> PackedStore:
    """Open the store at ``store_dir`` for these slide files, building it if
    it is missing or its inputs changed (sizes/mtimes), or ``rebuild`` is set.

    ``paths`` maps slide id -> feature file (see :func:`feature_paths`).
    Slides are stored in sorted id order; empty slides hold zero rows. A
    store whose files fail :func:`verify_store` (``verify``: ``"sampled"``,
    ``"full"`` or ``"none"``) is rebuilt with a warning.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
    store_dir = Path(store_dir)
    paths = {sid: Path(p) for sid, p in paths.items()}
    if not paths:
        raise InputFileError(store_dir, "no slides to pack", "check that the split's slides have feature files")
    fp = _fingerprint(paths, dtype)
    if not rebuild and (store_dir / "store.json").is_file():
        try:
            store = PackedStore.open(store_dir)
            if store.fingerprint == fp:
                problems = [] if verify == "none" else verify_store(store_dir, full=verify == "full")
                if not problems:
                    return store
                del store
                log.warning(
                    "packed feature store %s is damaged (%s); rebuilding it",
                    store_dir,
                    "; ".join(problems[:3]),
                )
        except (OSError, ValueError, KeyError):
            pass  # unreadable store: rebuild it below
    _build(paths, store_dir, dtype, fp, expected_dim, progress_desc)
    return PackedStore.open(store_dir)


def _build(paths, store_dir: Path, dtype: str, fp: str, expected_dim, desc: str) -> None:
    from sae1n.utils import progress

    ids = sorted(paths)
    # pass 1: shapes only (h5 without loading; pt must be loaded)
    counts, dim = [], expected_dim
    for sid in ids:
        n, d = _shape_of(paths[sid])
        if dim is None:
            dim = d
        elif d != dim and n > 0:
            raise InputFileError(paths[sid], f"feature dimension {d} differs from the other slides' {dim}", "all slides must come from the same encoder; re-extract this slide")
        counts.append(n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    with atomic_path(store_dir) as tmp:
        tmp.mkdir(parents=True)
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=(total, dim))
        coords = np.lib.format.open_memmap(tmp / "coords.npy", mode="w+", dtype=np.int64, shape=(total, 2))
        for i, sid in enumerate(progress(ids, desc=desc)):
            bag = read_bag(paths[sid], expected_dim=dim, allow_empty=True)
            a, b = offsets[i], offsets[i + 1]
            feats[a:b] = bag.dense().astype(dtype, copy=False)
            coords[a:b] = bag.coords if bag.coords is not None else -1
        feats.flush()
        coords.flush()
        del feats, coords
        checksums = {}
        for name in ARRAYS:
            checksums[name] = {
                **sampled_checksum(tmp / name),
                "sha256_full": sampled_checksum(tmp / name, full=True)["sha256_full"],
            }
        meta = {"version": STORE_VERSION, "fingerprint": fp, "dtype": dtype, "dim": dim, "slide_ids": ids, "offsets": offsets.tolist(), "sources": {sid: str(paths[sid]) for sid in ids}, "checksums": checksums}
        (tmp / "store.json").write_text(json.dumps(meta))


def _shape_of(path: Path) -> tuple[int, int]:
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "features" in f:
                    shp = f["features"].shape
                    if len(shp) == 3 and shp[0] == 1:
                        shp = shp[1:]
                    if len(shp) == 2:
                        return int(shp[0]), int(shp[1])
        except OSError:
            pass  # read_bag below gives the proper error
    bag = read_bag(path, allow_empty=True)
    return bag.n, bag.dim
