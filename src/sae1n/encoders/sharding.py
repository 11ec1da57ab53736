"""Slide-sharded extraction under ``torchrun``: every process takes
``sorted(slides)[rank::world_size]`` (the same split on any node), writes
its slides atomically, and a final step checks that the ranks together
covered every slide exactly once.

``extract-features`` goes through :func:`extract_features_sharded`, a thin
wrapper around :func:`sae1n.encoders.extract.extract_features` and its
``shard=(rank, world_size)`` argument; ``save-sae-features`` shards inside
:func:`sae1n.sae.encode.save_sae_features`.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from sae1n.distributed import all_gather_objects, check_every_slide_done, rank_device, session
from sae1n.errors import ConfigError, Sae1nError

STATUS_COLUMNS = ["slide_id", "status", "n_patches", "seconds", "reason"]


def extract_features_sharded(**kwargs):
    """:func:`~sae1n.encoders.extract.extract_features` (same keyword
    arguments) over every process of a ``torchrun`` job; a plain call in a
    lone process.

    Each rank extracts its share on its own GPU (``cuda:<LOCAL_RANK>``) with
    its share of the node's CPUs as reader workers; then every rank gets the
    merged :class:`~sae1n.encoders.extract.ExtractionSummary`, rank 0 writes
    the merged ``extraction_status.csv`` (the per-rank files stay), and a
    slide missing or done twice raises :class:`~sae1n.errors.Sae1nError`.
    Slides that failed are in the summary's ``failed`` list, as without
    sharding."""
    from sae1n.encoders.extract import (
        STATUS_FILE,
        ExtractionSummary,
        SlideResult,
        extract_features,
        list_slides,
    )

    with session() as me:
        if not me.distributed:
            return extract_features(**kwargs)
        if kwargs.pop("shard", None) is not None:
            raise ConfigError(
                "--shard and a multi-process torchrun job both split the slides; use one of them"
            )
        from sae1n.utils import resolve_device

        kwargs["device"] = rank_device(resolve_device(kwargs.get("device", "auto")))
        if kwargs.get("num_workers") is None:
            per_rank = (os.cpu_count() or 1) // max(1, me.local_world_size)
            kwargs["num_workers"] = max(1, min(8, per_rank))
        summary, error = None, None
        try:
            summary = extract_features(shard=(me.rank, me.world_size), **kwargs)
        except Exception as exc:  # every rank must reach the gather below
            error, failure = f"{type(exc).__name__}: {exc}", exc
        gathered = all_gather_objects(
            None
            if summary is None
            else (
                summary.encoder,
                summary.dim,
                [asdict(r) for r in summary.results],
                summary.seconds,
            )
        )
        if error is not None:
            raise failure
        failed_ranks = [r for r, g in enumerate(gathered) if g is None]
        if failed_ranks:
            raise Sae1nError(
                f"extract-features stopped on rank(s) {failed_ranks}; see their error above, "
                "fix it and re-run (finished slides are skipped)"
            )
        feat_dir = Path(kwargs["feat_dir"])
        expected = [
            sid
            for sid, _ in list_slides(
                kwargs["data_h5_dir"], kwargs.get("csv_path"), kwargs.get("slide_ext", ".svs")
            )
        ]
        check_every_slide_done(
            expected,
            [[r["slide_id"] for r in g[2]] for g in gathered],
            what="extract-features",
            where=feat_dir,
        )
        order = {sid: i for i, sid in enumerate(expected)}
        rows = sorted((r for g in gathered for r in g[2]), key=lambda r: order[r["slide_id"]])
        merged = ExtractionSummary(
            feat_dir=feat_dir,
            encoder=summary.encoder,
            dim=summary.dim,
            results=[SlideResult(**r) for r in rows],
            status_csv=feat_dir / STATUS_FILE,
            seconds=max(g[3] for g in gathered),
        )
        if me.is_main:
            import pandas as pd

            from sae1n.io import atomic_write_csv

            atomic_write_csv(merged.status_csv, pd.DataFrame(rows, columns=STATUS_COLUMNS))
        return merged
