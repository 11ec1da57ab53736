"""Benchmark: patch reading and feature extraction (issue 4's target: region
reading at least 2x faster than one ``read_region`` per patch).

On a generated pyramidal JPEG TIFF (512 px tiles as in CAMELYON16's .tif;
``--tile``), with CLAM's grid offset from the tiles as it is on real
slides, in one run on the same machine:

1. reading + transform alone (patches/s): CLAM's loader (a DataLoader whose
   workers call OpenSlide ``read_region`` once per patch, then PIL Resize(224)
   + ToTensor + Normalize per patch) against sae1n's (region-batched reads
   in the same number of workers, batched resize + normalise);
2. full extraction with ``handcrafted`` and with a random-weight ViT-B/16
   (the CLIP ViT-B/16 image tower), through both loaders.

The ViT is slow on CPU (~0.2 s per patch here), so it runs on
``--vit_patches`` patches only. ``--models conch_v1,uni_v1 --device cuda``
also times full-size random-weight CONCH/UNI-shaped models at
``--batch_size`` (512) with autocast (model-only and full extraction).

    .venv/bin/python benchmarks/bench_extract.py
    .venv/bin/python benchmarks/bench_extract.py --size 16384 --device cuda --batch_size 512 --models conch_v1,uni_v1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_slide(path: Path, width: int, height: int, tile: int, seed: int = 0) -> None:
    """An H&E-like mosaic: pink stroma, white fat, purple nuclei."""
    from sae1n.wsi.writers import write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    cell = 64
    base = np.array([[235, 170, 200], [245, 240, 245], [200, 160, 210]], np.float32)
    kinds = rng.integers(0, 3, (height // cell, width // cell))
    img = np.repeat(np.repeat(base[kinds], cell, 0), cell, 1)
    nuclei = rng.random(img.shape[:2]) < 0.004
    img[nuclei] = (70, 30, 110)
    from scipy.ndimage import grey_dilation

    dark = grey_dilation(nuclei.astype(np.uint8), size=(5, 5)).astype(bool)
    img[dark] = (80, 40, 120)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    write_pyramidal_tiff(path, np.clip(img, 0, 255).astype(np.uint8), mpp=0.5, levels=3, tile=tile)


class ClamLoader:
    """CLAM's Whole_Slide_Bag_FP: one OpenSlide read_region per patch, PIL
    transforms per patch, in DataLoader workers."""

    def __init__(self, slide_path, coords, level, size, transform):
        self.slide_path, self.coords, self.level, self.size, self.transform = (
            str(slide_path),
            coords,
            level,
            size,
            transform,
        )
        self.wsi = None

    def __len__(self):
        return len(self.coords)

    def __getitem__(self, i):
        import openslide

        if self.wsi is None:
            self.wsi = openslide.OpenSlide(self.slide_path)
        x, y = self.coords[i]
        img = self.wsi.read_region((int(x), int(y)), self.level, (self.size, self.size)).convert(
            "RGB"
        )
        return self.transform(img)

    def __getstate__(self):
        return {**self.__dict__, "wsi": None}


def clam_transform(mean, std, size=224):
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader
    workers): unlike wall time, not inflated by other load on the machine."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Timer:
    """(patches/s, CPU ms per patch) of the block, for ``n`` patches."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def result(self, n: int, device=None) -> tuple[float, float]:
        import torch

        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - self.wall), 1000 * (cpu_seconds() - self.cpu) / n

    def __exit__(self, *exc):
        return False


def time_clam(slide_path, coords, model, transform, batch_size, workers, device):
    """CLAM's loader (+ model forward when ``model`` is given)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ClamLoader(slide_path, coords, 0, 256, transform),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    n = 0
    with Timer() as t, torch.inference_mode():
        for batch in loader:
            n += len(batch)
            if model is not None:
                model(batch.to(device))
        del loader  # joins the workers, so their CPU time is counted
        return t.result(n, device)


def time_sae1n_read(slide_path, pc, encoder, batch_size, workers, backend="auto"):
    """Region-batched reading + the encoder's batched transform."""
    from torch.utils.data import DataLoader

    from sae1n.encoders.patches import (
        PatchBatchDataset,
        choose_backend,
        plan_batches,
        read_geometry,
    )
    from sae1n.wsi.slide import open_slide

    with open_slide(slide_path) as s:
        geom = read_geometry(pc, s.level_downsamples)
    backend = choose_backend(slide_path, backend, pc.coords, geom.downsample)
    on_cpu = encoder.device.type == "cpu"
    batches = plan_batches(pc.coords, geom, batch_size)
    transform = encoder.transform if on_cpu else None
    ds = PatchBatchDataset(slide_path, geom, batches, backend=backend, transform=transform)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=not on_cpu)
    n = 0
    with Timer() as t:
        for item in loader:
            if not on_cpu:
                encoder.preprocess(item["patches"])
            n += len(item["indices"])
        del loader
        return t.result(n, encoder.device)


def time_sae1n_extract(slide_path, pc, encoder, batch_size, workers, backend="auto"):
    from sae1n.encoders.slide_encoding import encode_slide

    with Timer() as t:
        encode_slide(
            encoder, pc, slide_path, batch_size=batch_size, num_workers=workers, backend=backend
        )
        return t.result(len(pc.coords), encoder.device)


def model_only(encoder, batch_size, repeats=5):
    """patches/s of the model alone on a resident uint8 batch (GPU sizing)."""
    import torch

    x = torch.randint(0, 256, (batch_size, 3, 256, 256), dtype=torch.uint8, device=encoder.device)
    encoder.encode(x)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(x)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - t)


def best(fn, repeats: int) -> tuple[float, float]:
    """Best (highest patches/s, lowest CPU ms/patch) of ``repeats`` runs:
    other load on a shared machine only ever makes a run slower."""
    runs = [fn() for _ in range(repeats)]
    return max(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size",
        default="24576x2048",
        help="slide WxH (default: a strip as wide as a real slide, ~530 patches)",
    )
    ap.add_argument(
        "--tile",
        type=int,
        default=512,
        help="JPEG tile size (512: CAMELYON16 .tif; Aperio .svs uses 240)",
    )
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs of each reading stage; the best is shown"
    )
    ap.add_argument(
        "--vit_patches", type=int, default=24, help="patches for the ViT-B/16 runs (slow on CPU)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--models",
        default="",
        help="comma list of full-size random-weight models to time too (e.g. conch_v1,uni_v1)",
    )
    args = ap.parse_args()

    import shutil

    import torch

    from sae1n.encoders import get_encoder
    from sae1n.encoders.patches import PatchCoords
    from sae1n.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    slide_path = tmp / "bench.tif"
    t = time.perf_counter()
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_slide(slide_path, width, height, args.tile)
    print(
        f"generated {width}x{height} slide, {args.tile} px JPEG tiles, in {time.perf_counter() - t:.1f} s"
    )
    # CLAM's grid starts at each tissue contour's corner, so it is not aligned with the JPEG tiles
    step, x0, y0 = 256, 37, 91
    grid = [
        (x, y)
        for y in range(y0, height - step + 1, step)
        for x in range(x0, width - step + 1, step)
    ]
    coords = np.array(grid, np.int64)
    coords = coords[np.random.default_rng(1).random(len(coords)) < 0.8]  # tissue-like gaps
    attrs = {"patch_size": 256, "patch_level": 0}
    pc = PatchCoords(path=slide_path.with_suffix(".h5"), coords=coords, attrs=attrs)
    print(
        f"{len(coords)} patches of 256 px, batch {args.batch_size}, {args.workers} workers, torch threads {torch.get_num_threads()}"
    )

    hand = get_encoder("handcrafted", device=args.device)
    device = hand.device
    vit = get_encoder("clip_vit_b16", random_weights=True, device=args.device)
    tf = clam_transform(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    bs, w, rep = args.batch_size, args.workers, args.repeats
    rows = []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process, one thread: pure CPU cost per patch
    rows.append(
        (
            "read + transform, 1 process",
            best(lambda: time_clam(slide_path, coords, None, tf, bs, 0, device), rep),
            best(lambda: time_sae1n_read(slide_path, pc, vit, bs, 0), rep),
        )
    )
    torch.set_num_threads(threads)
    clam = best(lambda: time_clam(slide_path, coords, None, tf, bs, w, device), rep)
    rows.append(
        (
            f"read + transform, {w} workers",
            clam,
            best(lambda: time_sae1n_read(slide_path, pc, vit, bs, w), rep),
        )
    )
    rows.append(
        (
            "  same, --backend openslide",
            clam,
            best(lambda: time_sae1n_read(slide_path, pc, vit, bs, w, backend="openslide"), rep),
        )
    )

    # handcrafted behind CLAM's loader gets CLAM's 224-px ImageNet tensors, un-normalised back to [0, 1]
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def hand_model(x):
        return hand.encode((x.to(device) * std + mean).clamp(0, 1), preprocessed=False)

    imagenet_tf = clam_transform(IMAGENET_MEAN, IMAGENET_STD)
    rows.append(
        (
            "extract handcrafted",
            time_clam(slide_path, coords, hand_model, imagenet_tf, bs, w, device),
            time_sae1n_extract(slide_path, pc, hand, bs, w),
        )
    )

    sub = PatchCoords(path=pc.path, coords=coords[: args.vit_patches], attrs=attrs)
    vbs = min(bs, 8) if device.type == "cpu" else bs
    rows.append(
        (
            f"extract ViT-B/16, {len(sub.coords)} patches",
            time_clam(
                slide_path, sub.coords, lambda x: vit.model(x.to(device)), tf, vbs, w, device
            ),
            time_sae1n_extract(slide_path, sub, vit, vbs, w),
        )
    )

    print(f"\n{'':<36}{'patches/s (wall)':^30}{'CPU ms per patch':^30}")
    print(
        f"{'stage':<36}{'CLAM-style':>10}{'sae1n':>10}{'ratio':>9}{'CLAM-style':>13}{'sae1n':>9}{'ratio':>8}"
    )
    for name, (a, ca), (b, cb) in rows:
        print(f"{name:<36}{a:>10.1f}{b:>10.1f}{b / a:>8.2f}x{ca:>13.2f}{cb:>9.2f}{ca / cb:>7.2f}x")
    print("ratio > 1: sae1n faster. CPU ms: this process plus its DataLoader workers.")

    for name in [m for m in args.models.split(",") if m]:
        enc = get_encoder(name, random_weights=True, device=args.device)
        mo = model_only(enc, args.batch_size)
        full = time_sae1n_extract(slide_path, pc, enc, args.batch_size, args.workers)[0]
        print(
            f"{name} (full size, random weights, batch {args.batch_size}, autocast {enc.autocast_dtype}): model {mo:.0f} patches/s, full extraction {full:.0f} patches/s"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
