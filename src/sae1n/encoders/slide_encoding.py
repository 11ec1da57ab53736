"""Encoding one slide: find its file, read its patches in region batches with
DataLoader workers and encode them under ``inference_mode`` (autocast on GPU)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from sae1n.encoders.patches import (
    PatchBatchDataset,
    RegionReadError,
    choose_backend,
    plan_batches,
    read_geometry,
)
from sae1n.errors import InputFileError
from sae1n.utils import progress


def find_slide(slide_dir: Path, sid: str, slide_ext: str) -> Path:
    """``<slide_dir>/<sid><slide_ext>``, with a hint when it is missing."""
    path = slide_dir / f"{sid}{slide_ext}"
    if path.is_file():
        return path
    others = sorted(p.name for p in slide_dir.glob(f"{glob.escape(sid)}.*"))
    hint = (
        f"found {', '.join(others)}: set --slide_ext accordingly"
        if others
        else "check --data_slide_dir and --slide_ext"
    )
    raise InputFileError(path, "slide file not found", hint)


def encode_slide(
    encoder,
    pc,
    slide_path: str | os.PathLike,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    backend: str = "auto",
    max_region: int = 2048,
) -> np.ndarray:
    """(N, dim) float32 features of one slide's patches, in patch-file order."""
    import torch
    from torch.utils.data import DataLoader

    from sae1n.wsi.slide import open_slide

    with open_slide(slide_path, backend=backend) as slide:
        geom = read_geometry(pc, slide.level_downsamples)
    backend = choose_backend(slide_path, backend, pc.coords, geom.downsample)
    batches = plan_batches(pc.coords, geom, batch_size, max_region=max_region)
    # on the CPU the workers transform; on a GPU the device does (cheaper there)
    on_cpu = encoder.device.type == "cpu"
    dataset = PatchBatchDataset(
        slide_path, geom, batches, backend=backend, transform=encoder.transform if on_cpu else None
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None,
    )
    n = len(pc.coords)
    bar = progress(total=n, desc=pc.slide_id, unit="patch")
    try:
        with torch.inference_mode():
            out = torch.empty((n, encoder.dim), dtype=torch.float32, device=encoder.device)
            for item in loader:
                if item["error"]:
                    raise RegionReadError(f"{slide_path}: {item['error']}")
                idx = item["indices"].to(encoder.device, non_blocking=True)
                out[idx] = encoder.encode(item["patches"], preprocessed=on_cpu)
                bar.update(len(idx))
        return out.cpu().numpy()
    finally:
        bar.close()
        dataset.close()
