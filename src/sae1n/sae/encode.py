"""Encode every slide with a trained SAE (``sae1n save-sae-features``).

Layout (the paper's, plus the compact sparse form)::

    <exp_dir>/encoded_features/<dataset>/<feature_set>/
        h5_files/<slide>.h5      dense codes (N, F) + coords (+ coords attrs)
        pt_files/<slide>.pt      dense codes tensor (N, F)
        sparse_files/<slide>.h5  CSR codes (indptr, indices, values) + coords

The inference rule is used (BatchTopK: the learned threshold) and no
training statistic changes. Every file is written atomically.

Provenance: ``<feature_set>/codes.provenance.json`` records, per slide, the
settings and inputs that made its codes (the source file's identity and the
checkpoint's content hash). A slide is skipped only when its record equals
what would be written now; an existing output made otherwise stops the run
before anything is written (``StaleOutputError``) unless ``overwrite``. So a
retrained SAE makes old codes stale instead of silently reused.

``compat="paper"`` computes and writes what the paper's
``save_sae_features.py`` does: every ``*.h5`` of ``feature_dir/h5_files``
(whatever the split), ``features`` read and cast to float32, the model in eval
mode (BatchTopK: ``acts > threshold``, a varying number of active units per
row), dense codes to ``h5_files`` (``features`` float32 and ``coords`` only
when present with one row per patch, no attributes) and ``pt_files``; slides
with no rows ("Invalid data") or no ``features`` dataset ("Dataset not found")
are skipped with a warning; no sparse files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from sae1n import distributed as dist
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_json, feature_paths, read_bag, write_bag, write_sparse_codes
from sae1n.io.provenance import Provenance, StaleOutputError, content_hash, input_identity
from sae1n.sae.checkpoints import find_checkpoint, load_sae, read_run_config
from sae1n.utils import progress, resolve_device

log = logging.getLogger(__name__)

CODES_KIND = "sae-codes"
CODES_SCHEMA = 1
MANIFEST = "codes.provenance.json"
COMPAT = ("default", "paper")


@dataclass
class EncodeSummary:
    """What :func:`save_sae_features` did."""

    out_dir: Path
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # paper mode: empty / no features
    dense_bytes: int = 0
    sparse_bytes: int = 0


def dataset_and_feature_set(feature_dir: str | os.PathLike) -> tuple[str, str]:
    """``../features/camelyon16/clam_processed/features_conch_v1/`` ->
    ``("camelyon16", "features_conch_v1")``.

    The dataset is the folder after ``features`` in the path; otherwise the
    parent (skipping a ``clam_processed`` level)."""
    p = Path(os.path.normpath(str(feature_dir)))
    if p.name in ("h5_files", "pt_files", "sparse_files"):
        p = p.parent
    feature_set = p.name
    parts = p.parts
    if "features" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("features", 1)
        if i + 1 < len(parts) - 1:
            return parts[i + 1], feature_set
    parent = p.parent
    if parent.name in ("clam_processed", "trident_processed") and parent.parent.name:
        parent = parent.parent
    return (parent.name or "dataset"), feature_set


def _outputs(base: Path, sid: str, dense: bool, sparse: bool) -> dict[str, Path]:
    out = {}
    if dense:
        out["h5"] = base / "h5_files" / f"{sid}.h5"
        out["pt"] = base / "pt_files" / f"{sid}.pt"
    if sparse:
        out["sparse"] = base / "sparse_files" / f"{sid}.h5"
    return out


def _n_rows(src: Path) -> int | None:
    if src.suffix == ".h5":
        try:
            with h5py.File(src, "r") as f:
                key = "features" if "features" in f else ("feats" if "feats" in f else None)
                if key is not None:
                    shp = f[key].shape
                    return int(shp[-2] if len(shp) == 3 else shp[0])
        except OSError:
            return None
    return None


def _valid(outputs: dict[str, Path], n_src: int | None, dict_size: int) -> bool:
    """Outputs exist and (for h5) have the expected shape; files are written
    atomically, so an existing .pt is complete."""
    for kind, p in outputs.items():
        if not p.is_file() or p.stat().st_size == 0:
            return False
        if kind == "pt":
            continue
        try:
            with h5py.File(p, "r") as f:
                if kind == "h5":
                    shp = f["features"].shape
                    if shp[1] != dict_size or (n_src is not None and shp[0] != n_src):
                        return False
                else:
                    if int(f.attrs.get("dict_size", -1)) != dict_size:
                        return False
                    if n_src is not None and f["indptr"].shape[0] != n_src + 1:
                        return False
        except (OSError, KeyError, IndexError):
            return False
    return True


@torch.no_grad()
def encode_features(model, features: np.ndarray, batch_size: int = 8192, device: str = "cpu"):
    """CSR codes ``(indptr, indices, values)`` (numpy) of an (N, D) matrix."""
    n = features.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    idx_parts, val_parts = [], []
    for s in range(0, n, batch_size):
        x = torch.from_numpy(
            np.ascontiguousarray(features[s : s + batch_size], dtype=np.float32)
        ).to(device)
        ptr, ind, val = model.encode_sparse(x)
        indptr[s + 1 : s + 1 + x.shape[0]] = ptr[1:].cpu().numpy() + indptr[s]
        idx_parts.append(ind.cpu().numpy())
        val_parts.append(val.cpu().numpy())
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    values = np.concatenate(val_parts) if val_parts else np.zeros(0, dtype=np.float32)
    return indptr, indices.astype(np.int32), values.astype(np.float32)


def csr_to_dense(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, dict_size: int
) -> np.ndarray:
    """Dense (N, dict_size) float32 matrix of CSR codes."""
    n = indptr.shape[0] - 1
    out = np.zeros((n, dict_size), dtype=np.float32)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    out[rows, indices] = values
    return out


@dist.session()
def save_sae_features(
    exp_dir: str | os.PathLike,
    feature_dir: str | os.PathLike | None = None,
    *,
    file_type: str | None = None,
    dense: bool = True,
    sparse: bool = True,
    batch_size: int = 8192,
    device: str = "auto",
    checkpoint: str = "best",
    out_dir: str | os.PathLike | None = None,
    compat: str = "default",
    overwrite: bool = False,
) -> EncodeSummary:
    """Encode every slide of ``feature_dir`` (default: the one the SAE was
    trained on) with the SAE of ``exp_dir``; return what was written.

    Under ``torchrun`` each process encodes ``sorted(slides)[rank::world]``
    and the returned summary covers every rank's slides.

    ``compat="paper"``: the paper's semantics and layout (see the module doc);
    ``overwrite``: recompute outputs whose provenance differs instead of
    refusing."""
    if compat not in COMPAT:
        raise ConfigError(f"--compat must be one of {', '.join(COMPAT)}, got {compat!r}")
    paper = compat == "paper"
    if paper:
        sparse, dense = False, True
        file_type = "h5"
    if not (dense or sparse):
        raise ConfigError("nothing to write: both the dense and the sparse outputs are disabled")
    exp_dir = Path(exp_dir)
    weights = find_checkpoint(exp_dir, checkpoint)
    run_cfg = read_run_config(weights) or {}
    if feature_dir is None:
        feature_dir = (run_cfg.get("data") or {}).get("feature_dir")
        if not feature_dir:
            raise ConfigError(
                f"{weights}: the saved config names no data.feature_dir; pass --feature_dir"
            )
    feature_dir = Path(feature_dir)
    dev = dist.rank_device(resolve_device(device))
    model = load_sae(weights, device=dev)
    if paper:  # the paper's encoders never add b_enc, whatever the saved config says
        model.cfg.paper_compat_no_b_enc = True
    dataset, feature_set = dataset_and_feature_set(feature_dir)
    base = (
        Path(out_dir)
        if out_dir is not None
        else (exp_dir if exp_dir.is_dir() else weights.parent.parent)
        / "encoded_features"
        / dataset
        / feature_set
    )
    if paper:
        folder = feature_dir / "h5_files" if (feature_dir / "h5_files").is_dir() else feature_dir
        paths = {p.stem: p for p in sorted(folder.glob("*.h5"))}
        if not paths:
            raise InputFileError(folder, "no .h5 feature files", "check --feature_dir (the paper reads h5_files/)")
    else:
        paths = feature_paths(feature_dir, file_type)
    summary = EncodeSummary(out_dir=base)
    attrs_common = {
        "sae_checkpoint": str(weights.resolve()),
        "sae_model_type": model.cfg.model_type,
    }
    settings = {
        "compat": compat,
        "dense": dense,
        "sparse": sparse,
        "model_type": model.cfg.model_type,
        "dict_size": model.dict_size,
    }
    ckpt_id = {"name": weights.name, "sha256": content_hash(weights)}
    expected = {
        sid: Provenance.make(
            CODES_KIND, CODES_SCHEMA, settings, {"features": input_identity(src), "checkpoint": ckpt_id}
        )
        for sid, src in paths.items()
    }
    me = dist.info()
    mine = dict(dist.shard(paths.items()))
    manifest = _read_manifest(base)
    # every rank checks every slide, so a stale output stops all ranks alike
    todo = _plan(
        base,
        expected,
        manifest,
        dense,
        sparse,
        overwrite,
        complete=lambda sid, outs: _valid(outs, _n_rows(paths[sid]), model.dict_size),
    )
    for sid, src in progress(list(mine.items()), desc="save-sae-features"):
        outs = _outputs(base, sid, dense, sparse)
        if sid not in todo:
            summary.skipped.append(sid)
            continue
        if paper:
            feats, coords = _read_paper_input(src)
            if feats is None:
                summary.invalid.append(sid)
                continue
            codes = _encode_dense(model, feats, max(1, feats.shape[0]), dev)  # one block, as the paper
            write_bag(base, sid, codes, coords, attrs={}, formats=("h5", "pt"))
            summary.dense_bytes += outs["h5"].stat().st_size + outs["pt"].stat().st_size
        else:
            bag = read_bag(src, expected_dim=model.act_size, allow_empty=True)
            indptr, indices, values = encode_features(
                model, bag.dense(), batch_size=batch_size, device=dev
            )
            coords = bag.coords
            coord_attrs = {k: v for k, v in bag.attrs.items() if _h5_attr_ok(v)}
            if sparse:
                write_sparse_codes(
                    outs["sparse"],
                    indptr,
                    indices,
                    values,
                    model.dict_size,
                    coords=coords,
                    attrs={**coord_attrs, **attrs_common},
                )
                summary.sparse_bytes += outs["sparse"].stat().st_size
            if dense:
                write_bag(
                    base,
                    sid,
                    csr_to_dense(indptr, indices, values, model.dict_size),
                    coords,
                    attrs=coord_attrs,
                    formats=("h5", "pt"),
                )
                summary.dense_bytes += outs["h5"].stat().st_size + outs["pt"].stat().st_size
        manifest[sid] = expected[sid].to_dict()
        if not me.distributed:
            _write_manifest(base, manifest)
        summary.encoded.append(sid)
    if me.distributed:
        parts = dist.all_gather_objects({k: v for k, v in manifest.items() if k in mine})
        if me.is_main:
            merged = _read_manifest(base)
            for part in parts:
                merged.update(part)
            _write_manifest(base, merged)
    if me.distributed:
        _merge_ranks(summary, sorted(paths), base)
    meta = {
        "checkpoint": str(weights.resolve()),
        "feature_dir": str(feature_dir.resolve()),
        "dict_size": model.dict_size,
        "model_type": model.cfg.model_type,
        "n_slides": len(paths),
        "compat": compat,
        "checkpoint_sha256": ckpt_id["sha256"],
    }
    if me.is_main:
        atomic_write_json(base / "encoding.json", meta)
    log.info(
        "encoded %d slides, skipped %d complete ones -> %s",
        len(summary.encoded),
        len(summary.skipped),
        base,
    )
    return summary


def _merge_ranks(summary: EncodeSummary, slide_ids: list[str], base: Path) -> None:
    """Every rank's slides in ``summary``; raise unless each slide was done once."""
    parts = dist.all_gather_objects(
        (summary.encoded, summary.skipped, summary.dense_bytes, summary.sparse_bytes)
    )
    dist.check_every_slide_done(
        slide_ids, [e + s for e, s, _, _ in parts], what="save-sae-features", where=base
    )
    summary.encoded = sorted(sid for p in parts for sid in p[0])
    summary.skipped = sorted(sid for p in parts for sid in p[1])
    summary.dense_bytes = sum(p[2] for p in parts)
    summary.sparse_bytes = sum(p[3] for p in parts)


def _h5_attr_ok(v) -> bool:
    return isinstance(v, int | float | str | bool | np.generic) or (
        isinstance(v, list) and all(isinstance(e, int | float) for e in v)
    )


def _read_manifest(base: Path) -> dict:
    import json

    p = base / MANIFEST
    if not p.is_file():
        return {}
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return {}  # an unreadable record means: nothing is provably current


def _write_manifest(base: Path, manifest: dict) -> None:
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_json(base / MANIFEST, manifest)


def _plan(
    base: Path,
    expected: dict,
    manifest: dict,
    dense: bool,
    sparse: bool,
    overwrite: bool,
    complete=lambda sid, outs: True,
) -> set[str]:
    """Slides to (re)compute; raises :class:`StaleOutputError` (before any write)
    when an existing output was made with other settings or inputs."""
    todo, stale = set(), {}
    for sid, prov in expected.items():
        outs = _outputs(base, sid, dense, sparse)
        existing = [p for p in outs.values() if p.exists()]
        rec = manifest.get(sid)
        recorded = Provenance.from_dict(rec) if rec else None
        if not existing:
            todo.add(sid)
        elif prov.matches(recorded) and len(existing) == len(outs) and complete(sid, outs):
            continue
        elif overwrite or prov.matches(recorded):  # current but incomplete: redo it
            todo.add(sid)
        else:
            stale[existing[0]] = prov.differences(recorded)
    if stale:
        raise StaleOutputError(
            stale,
            "Fix: pass --overwrite to re-encode these slides (atomically), or choose another --out_dir.",
        )
    return todo


def _read_paper_input(src: Path):
    """``features`` as float32 and ``coords`` when present with one row per
    patch, as the paper reads them; ``(None, None)`` for a file the paper
    skips (no ``features`` dataset, or no rows)."""
    try:
        with h5py.File(src, "r") as f:
            if "features" not in f:
                log.warning("%s: Dataset not found (no 'features'); skipped", src)
                return None, None
            feats = torch.from_numpy(np.asarray(f["features"][:])).to(torch.float32)
            coords = np.asarray(f["coords"][:]) if "coords" in f else None
    except OSError as exc:
        raise InputFileError(src, f"is not a readable HDF5 file ({exc})", "re-extract its features") from exc
    if feats.ndim != 2 or feats.shape[0] == 0:
        log.warning("%s: Invalid data (shape %s); skipped", src, tuple(feats.shape))
        return None, None
    if coords is not None and coords.shape[0] != feats.shape[0]:
        coords = None
    return feats, coords


@torch.no_grad()
def _encode_dense(model, feats: torch.Tensor, batch_size: int, device) -> np.ndarray:
    """Dense eval-mode codes (the paper's ``sae.encode``), row blocks of ``batch_size``."""
    model.eval()
    parts = [model.encode(feats[s : s + batch_size].to(device)).cpu() for s in range(0, feats.shape[0], batch_size)]
    return torch.cat(parts).contiguous().numpy()
