"""``extract-features``: encode every patch of every slide into CLAM folders.

For each slide, ``<data_h5_dir>/patches/<slide>.h5`` gives the coordinates;
patches are read in region batches by DataLoader workers
(:mod:`sae1n.encoders.patches`), encoded under ``inference_mode`` (autocast
on GPU) and written with :func:`sae1n.io.write_bag` to
``<feat_dir>/h5_files/<slide>.h5`` and ``<feat_dir>/pt_files/<slide>.pt``
(coords and their attributes copied). Outputs that exist and validate are
skipped; a slide that fails is recorded with its reason and the batch goes
on; ``<feat_dir>/extraction_status.csv`` lists every slide's outcome.

One slide is encoded by :mod:`sae1n.encoders.slide_encoding`; the outputs' settings,
provenance and validity are in :mod:`sae1n.encoders.feature_outputs`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sae1n.encoders.feature_outputs import (
    EXTRACT_SCHEMA,
    bag_readable,
    encoder_info,
    encoder_settings,
    feature_provenance,
    h5_feature_rows,
    outputs_valid,
)
from sae1n.encoders.patches import RegionReadError, read_patch_coords
from sae1n.encoders.slide_encoding import encode_slide, find_slide
from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import (
    atomic_write_json,
    item_lock,
    remove_stale_temp_files,
    write_bag,
    write_sidecar,
)
from sae1n.io.folders import disk_error, is_disk_error, writable_dir
from sae1n.io.provenance import PROVENANCE_KEY, Provenance, is_current, plan_outputs
from sae1n.utils import progress

__all__ = [
    "EXTRACT_SCHEMA", "INFO_FILE", "STATUS_FILE", "WORK_STATUSES", "ExtractionSummary", "SlideResult",
    "encode_slide", "encoder_settings", "extract_features", "feature_provenance", "find_slide",
    "list_slides", "outputs_valid", "patch_dir",
]

log = logging.getLogger(__name__)

STATUS_FILE = "extraction_status.csv"
INFO_FILE = "extraction_info.json"


@dataclass
class SlideResult:
    """Outcome of one slide: ``extracted``, ``skipped`` (valid output
    existed), ``empty`` (no patches: a (0, D) file), ``no_patches`` (the
    patching step recorded none) or ``failed``."""

    slide_id: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass
class ExtractionSummary:
    feat_dir: Path
    encoder: str
    dim: int
    results: list[SlideResult] = field(default_factory=list)
    status_csv: Path | None = None
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def patches_per_second(self) -> float:
        done = [r for r in self.results if r.status == "extracted"]
        secs = sum(r.seconds for r in done)
        return sum(r.n_patches for r in done) / secs if secs > 0 else 0.0


def patch_dir(data_h5_dir: str | os.PathLike) -> Path:
    """``<data_h5_dir>/patches`` (CLAM layout), or ``data_h5_dir`` itself
    when it directly holds the patch ``.h5`` files."""
    root = Path(data_h5_dir)
    if (root / "patches").is_dir():
        return root / "patches"
    if root.is_dir() and any(root.glob("*.h5")):
        return root
    raise InputFileError(
        root,
        "no patches/ folder with patch .h5 files",
        "pass the --save_dir of `sae1n create-patches` (it holds patches/<slide>.h5)",
    )


def list_slides(
    data_h5_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    slide_ext: str = ".svs",
) -> list[tuple[str, str]]:
    """(slide id, create-patches status or '') in processing order: the CSV's
    ``slide_id`` column (CLAM process list or metadata CSV; extensions
    stripped) or every patch file, sorted."""
    from sae1n.io import validate_slide_id
    from sae1n.io.tables import read_csv
    from sae1n.wsi.readers import SLIDE_EXTENSIONS

    if csv_path is None:
        pdir = patch_dir(data_h5_dir)
        found = sorted(p.stem for p in pdir.glob("*.h5") if not p.name.startswith("."))
        return [(validate_slide_id(s, pdir), "") for s in found]
    csv_path = Path(csv_path)
    fix = "pass CLAM's process_list_autogen.csv or a CSV with a slide_id column"
    df = read_csv(csv_path, "slide list CSV", fix).fillna("")
    if "slide_id" not in df.columns:
        raise InputFileError(
            csv_path,
            f"has no 'slide_id' column (columns: {list(df.columns)})",
            "pass CLAM's process_list_autogen.csv or a CSV with a slide_id column",
        )
    statuses = df["status"] if "status" in df.columns else [""] * len(df)
    out, seen = [], set()
    for raw, status in zip(df["slide_id"], statuses):
        sid = raw.strip()
        if not sid:
            continue
        validate_slide_id(sid, csv_path)
        if slide_ext and sid.lower().endswith(slide_ext.lower()):
            sid = sid[: -len(slide_ext)]
        elif Path(sid).suffix.lower() in SLIDE_EXTENSIONS:
            sid = Path(sid).stem
        if sid not in seen:
            seen.add(sid)
            out.append((sid, str(status).strip()))
    return out


def extract_features(
    data_h5_dir: str | os.PathLike,
    data_slide_dir: str | os.PathLike,
    feat_dir: str | os.PathLike,
    model_name: str = "resnet50_trunc",
    csv_path: str | os.PathLike | None = None,
    slide_ext: str = ".svs",
    batch_size: int = 256,
    checkpoint: str | os.PathLike | None = None,
    auto_skip: bool = True,
    num_workers: int | None = None,
    device: str = "auto",
    backend: str = "auto",
    target_patch_size: int | None = None,
    shard: tuple[int, int] | None = None,
    encoder=None,
    max_region: int = 2048,
    overwrite: bool = False,
) -> ExtractionSummary:
    """Extract features for every slide listed in ``csv_path`` (or every
    patch file in ``<data_h5_dir>/patches``) with the registry encoder
    ``model_name``; see the module doc. ``target_patch_size`` overrides the
    encoder's input size; ``shard=(rank, world_size)`` processes
    ``sorted(slides)[rank::world_size]``; ``encoder`` reuses an already built
    :class:`~sae1n.encoders.base.Encoder`. Returns an
    :class:`ExtractionSummary`.

    Every output carries its provenance (encoder, weights, input size, the
    patch file and slide it came from). A slide is skipped only when both of
    its outputs are current; an output made otherwise stops the run before
    anything is written (:class:`~sae1n.io.provenance.StaleOutputError`)
    unless ``overwrite``; ``auto_skip=False`` recomputes every slide. Per-slide
    lock files let several processes share one ``feat_dir``."""
    from sae1n.encoders.registry import get_encoder

    if batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {batch_size}")
    slide_dir = Path(data_slide_dir)
    if not slide_dir.is_dir():
        raise InputFileError(
            slide_dir,
            "slide folder does not exist",
            "pass the folder holding the slides with --data_slide_dir",
        )
    slides = list_slides(data_h5_dir, csv_path, slide_ext)
    pdir = patch_dir(data_h5_dir)
    if not slides:
        raise InputFileError(
            csv_path or pdir, "lists no slides", "check --csv_path / --data_h5_dir"
        )
    status_name = STATUS_FILE
    if shard is not None:
        rank, world = (int(v) for v in shard)
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(
                f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}"
            )
        slides = sorted(slides)[rank::world]
        if world > 1:
            status_name = f"extraction_status.rank{rank}-of-{world}.csv"
    if encoder is None:
        encoder = get_encoder(
            model_name, checkpoint=checkpoint, device=device, input_size=target_patch_size
        )
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    feat_dir = writable_dir(feat_dir, "--feat_dir")
    info_path = feat_dir / INFO_FILE
    info_prov = Provenance.make("extraction_info", EXTRACT_SCHEMA, encoder_settings(encoder))
    # Plan every slide before writing anything: a stale output stops the run here.
    expected: dict[str, dict[Path, Provenance]] = {}
    for sid, _ in slides:
        patch_path = pdir / f"{sid}.h5"
        if patch_path.is_file():
            expected[sid] = feature_provenance(encoder, feat_dir, sid, patch_path, slide_dir, slide_ext)
    current: set[Path] = set()
    plan = {p: prov for outs in expected.values() for p, prov in outs.items()}
    plan[info_path] = info_prov
    if auto_skip:
        _, cur = plan_outputs(plan, overwrite=overwrite, valid=bag_readable)
        current = set(cur)
    elif info_path.is_file() and not overwrite:
        plan_outputs({info_path: info_prov})  # a forced redo still refuses another encoder's folder
    remove_stale_temp_files(feat_dir)
    summary = ExtractionSummary(
        feat_dir=feat_dir, encoder=encoder.name, dim=encoder.dim, status_csv=feat_dir / status_name
    )
    t_start, last_write = time.perf_counter(), time.perf_counter()
    try:
        try:
            for sid, patch_status in progress(slides, desc="slides", total=len(slides), leave=True):
                t0 = time.perf_counter()
                outs = expected.get(sid, {})
                if auto_skip and outs and all(p in current for p in outs):
                    summary.results.append(SlideResult(sid, "skipped", n_patches=h5_feature_rows(outs)))
                    continue
                with item_lock(feat_dir, sid) as mine:
                    if not mine:
                        summary.results.append(
                            SlideResult(sid, "busy", reason="another process is extracting this slide")
                        )
                        continue
                    if auto_skip and outs and all(
                        is_current(p, prov) and bag_readable(p) for p, prov in outs.items()
                    ):
                        summary.results.append(SlideResult(sid, "skipped", n_patches=h5_feature_rows(outs)))
                        continue
                    try:
                        res = _extract_one(
                            encoder,
                            sid,
                            patch_status,
                            pdir,
                            slide_dir,
                            slide_ext,
                            feat_dir,
                            batch_size=batch_size,
                            num_workers=num_workers,
                            backend=backend,
                            max_region=max_region,
                            provenance=next(iter(outs.values()), None),
                        )
                    except Exception as exc:  # one slide's failure never stops the batch
                        if is_disk_error(exc):
                            raise disk_error(feat_dir, exc) from None
                        reason = (
                            str(exc)
                            if isinstance(exc, Sae1nError | RegionReadError)
                            else f"{type(exc).__name__}: {exc}"
                        )
                        log.warning("slide %s failed: %s", sid, reason)
                        log.debug("slide %s traceback", sid, exc_info=True)
                        res = SlideResult(sid, "failed", reason=reason)
                res.seconds = time.perf_counter() - t0
                summary.results.append(res)
                if res.status in ("extracted", "empty") and not is_current(info_path, info_prov):
                    atomic_write_json(info_path, encoder_info(encoder))
                    write_sidecar(info_path, info_prov)
                if time.perf_counter() - last_write > 5:
                    _write_status(summary)
                    last_write = time.perf_counter()
            if any(r.status == "skipped" for r in summary.results) and not is_current(
                info_path, info_prov
            ):
                atomic_write_json(info_path, encoder_info(encoder))
                write_sidecar(info_path, info_prov)
        finally:
            summary.seconds = time.perf_counter() - t_start
            try:
                _write_status(summary)
            except OSError as exc:  # the disk is full: the error above says so
                log.warning("could not write %s: %s", summary.status_csv, exc)
    except Exception as exc:  # a full disk anywhere (locks, outputs, status): one error
        if is_disk_error(exc):
            raise disk_error(feat_dir, exc) from None
        raise
    return summary


WORK_STATUSES = ("extracted", "empty", "failed", "no_patches")


def _write_status(summary: ExtractionSummary) -> None:
    """Merge this run's rows into the status CSV: slides this process did replace
    their rows; skips never hide another process's work."""
    import pandas as pd

    from sae1n.io.tables import merge_status_csv

    rows = [asdict(r) for r in summary.results]
    frame = pd.DataFrame(rows, columns=["slide_id", "status", "n_patches", "seconds", "reason"])
    strong = [r.slide_id for r in summary.results if r.status in WORK_STATUSES]
    merge_status_csv(summary.status_csv, frame, strong=strong, weak_statuses=("",))


def _extract_one(
    encoder,
    sid,
    patch_status,
    pdir,
    slide_dir,
    slide_ext,
    feat_dir,
    *,
    batch_size,
    num_workers,
    backend,
    max_region,
    provenance=None,
) -> SlideResult:
    patch_path = pdir / f"{sid}.h5"
    if not patch_path.is_file() and patch_status and patch_status != "processed":
        return SlideResult(
            sid, "no_patches", reason=f"create-patches status {patch_status!r}, no patch file"
        )
    pc = read_patch_coords(patch_path)
    n = len(pc.coords)
    attrs = {
        **{k: v for k, v in pc.attrs.items() if k != PROVENANCE_KEY},
        "encoder": encoder.name,
        "encoder_dim": encoder.dim,
    }
    if n == 0:
        log.warning(
            "slide %s has no patches: writing an empty (0, %d) feature file", sid, encoder.dim
        )
        write_bag(
            feat_dir, sid, np.zeros((0, encoder.dim), np.float32), pc.coords, attrs,
            provenance=provenance,
        )
        return SlideResult(sid, "empty", reason="patch file has no coordinates")
    slide_path = find_slide(slide_dir, sid, slide_ext)
    feats = encode_slide(
        encoder,
        pc,
        slide_path,
        batch_size=batch_size,
        num_workers=num_workers,
        backend=backend,
        max_region=max_region,
    )
    write_bag(feat_dir, sid, feats, pc.coords, attrs, provenance=provenance)
    return SlideResult(sid, "extracted", n_patches=n)


