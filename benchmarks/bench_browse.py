"""``sae1n browse`` speed: tile latency on a 60k x 60k slide with 100k patches,
and the time to open an experiment of 400 slides.

* Generates (once, reused from ``--workdir``) a 60,000 x 60,000 pyramidal TIFF
  with the demo's writer (``sae1n.wsi.writers.write_pyramidal_tiff``; level 0
  is built in a disk-backed memmap), 100,000 patches on it with sparse SAE codes
  (2,048 neurons, 32 active per patch), and a second experiment of 400 small
  slides with codes.
* Starts the real server (``sae1n browse`` in a subprocess, loopback) and fires
  requests from 4 concurrent clients (threads, one keep-alive HTTP connection
  each): slide tiles and neuron-overlay tiles spread over every zoom level.
  *Cold* = first request of each URL (nothing in the server's tile cache; the
  overlay's first tile also reads the slide's codes); *warm* = the same URLs again.
* Open time for 400 slides = ``Experiment(...)`` + app creation + the page's first
  requests (experiment, ranking table, slide info, one tile), measured in this process; the
  background neuron index (one pass over every code file) is timed separately.

Run:  python benchmarks/bench_browse.py [--workdir /tmp/sae1n-bench-browse] [--size 60000]
      [--patches 100000] [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DICT = 2048
K = 32


def make_big_slide(root: Path, size: int, n_patches: int, seed: int = 0) -> tuple[Path, Path]:
    """(experiment dir, slides dir) of one size x size slide with ``n_patches`` patches."""
    from sae1n.io import write_sparse_codes
    from sae1n.wsi.writers import write_pyramidal_tiff

    exp = root / "big" / "exp"
    slides = root / "big" / "slides"
    tif = slides / "big_001.tif"
    codes = exp / "encoded_features" / "bench" / "features_bench" / "sparse_files" / "big_001.h5"
    ps = int(np.floor(size / np.ceil(np.sqrt(n_patches))))
    if not tif.is_file():
        slides.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        tex = rng.integers(150, 235, size=(512, 512, 3), dtype=np.uint8)
        tex[..., 1] = (tex[..., 1] * 0.6).astype(np.uint8)  # pinkish
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            img = np.lib.format.open_memmap(Path(tmp) / "level0.npy", mode="w+", dtype=np.uint8, shape=(size, size, 3))
            for y in range(0, size, 512):
                h = min(512, size - y)
                row = np.tile(tex[:h], (1, size // 512 + 1, 1))[:, :size]
                img[y : y + h] = row
            img.flush()
            write_pyramidal_tiff(tif, img, levels=9, quality=80)
            del img
        print(f"wrote {tif} ({tif.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    if not codes.is_file():
        rng = np.random.default_rng(seed + 1)
        n_side = int(np.ceil(np.sqrt(n_patches)))
        ys, xs = np.divmod(np.arange(n_patches), n_side)
        coords = np.stack([xs * ps, ys * ps], 1).astype(np.int64)
        indices = np.concatenate([np.sort(rng.choice(DICT, K, replace=False)) for _ in range(n_patches)])
        values = rng.exponential(1.0, size=n_patches * K).astype(np.float32)
        indptr = np.arange(0, n_patches * K + 1, K)
        write_sparse_codes(codes, indptr, indices, values, DICT, coords,
                           {"patch_size_level0": ps, "patch_size": ps, "patch_level": 0, "level_dim": np.array([size, size])})
    return exp, slides


def make_many_slides(root: Path, n: int = 400, patches: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """An experiment of ``n`` small slides (512 x 512 TIFFs) with sparse codes."""
    from sae1n.io import write_sparse_codes
    from sae1n.wsi.writers import write_pyramidal_tiff

    exp = root / "many" / "exp"
    slides = root / "many" / "slides"
    sdir = exp / "encoded_features" / "bench" / "features_bench" / "sparse_files"
    if (sdir / f"s{n - 1:04d}.h5").is_file():
        return exp, slides
    slides.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(150, 235, size=(512, 512, 3), dtype=np.uint8)
    side = int(np.ceil(np.sqrt(patches)))
    ps = 512 // side
    ys, xs = np.divmod(np.arange(patches), side)
    coords = np.stack([xs * ps, ys * ps], 1).astype(np.int64)
    for i in range(n):
        sid = f"s{i:04d}"
        write_pyramidal_tiff(slides / f"{sid}.tif", img, levels=2)
        indices = np.concatenate([np.sort(rng.choice(DICT, K, replace=False)) for _ in range(patches)])
        values = rng.exponential(1.0, size=patches * K).astype(np.float32)
        write_sparse_codes(sdir / f"{sid}.h5", np.arange(0, patches * K + 1, K), indices, values, DICT, coords,
                           {"patch_size_level0": ps})
    return exp, slides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tile_urls(size: int, n: int, unit: int, seed: int = 0) -> list[str]:
    """``n`` distinct tile URLs (half slide, half overlay) spread over the zoom levels."""
    from sae1n.browse.tiles import TILE, pyramid_levels

    levels = pyramid_levels(size, size)
    top = len(levels) - 1
    rng = np.random.default_rng(seed)
    urls: set[str] = set()
    while len(urls) < n:
        z = int(top - min(rng.geometric(0.45) - 1, 9))  # most requests near full resolution, as when viewing
        lw, lh = levels[z]
        x = int(rng.integers(0, (lw + TILE - 1) // TILE))
        y = int(rng.integers(0, (lh + TILE - 1) // TILE))
        if len(urls) % 2:
            urls.add(f"/overlay/big_001/neuron/{z}/{x}/{y}.png?unit={unit}&cmap=viridis&thr=0")
        else:
            urls.add(f"/tiles/big_001/{z}/{x}/{y}.jpg")
    return sorted(urls, key=lambda u: rng.random())


def fire(base: str, urls: list[str], clients: int = 4) -> np.ndarray:
    """Latencies (s) of GET ``urls`` shared among ``clients`` concurrent keep-alive clients."""
    import httpx

    lat = np.zeros(len(urls))
    parts = [list(range(i, len(urls), clients)) for i in range(clients)]

    def run(idx):
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in idx:
                t = time.perf_counter()
                r = c.get(urls[i])
                lat[i] = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"{urls[i]}: {r.status_code}")

    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def bench_tiles(exp: Path, slides: Path, size: int, n_requests: int) -> dict:
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sae1n", "browse", str(exp), "--slides", str(slides), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(base + "/api/experiment", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        urls = tile_urls(size, n_requests, unit=7)
        cold = fire(base, urls)
        warm = fire(base, urls)
        out = {}
        for name, lat in (("cold", cold), ("warm", warm)):
            out[name] = {"p50_ms": 1e3 * float(np.percentile(lat, 50)), "p95_ms": 1e3 * float(np.percentile(lat, 95)),
                         "max_ms": 1e3 * float(lat.max()), "n": int(lat.size)}
        slide_cold = cold[[i for i, u in enumerate(urls) if u.startswith("/tiles/")]]
        ov_cold = cold[[i for i, u in enumerate(urls) if u.startswith("/overlay/")]]
        out["cold_slide_p95_ms"] = 1e3 * float(np.percentile(slide_cold, 95))
        out["cold_overlay_p95_ms"] = 1e3 * float(np.percentile(ov_cold, 95))
        return out
    finally:
        proc.terminate()
        proc.wait(20)


def bench_open(exp: Path, slides: Path) -> dict:
    from starlette.testclient import TestClient

    from sae1n.browse.app import create_app
    from sae1n.browse.experiment import Experiment

    t0 = time.perf_counter()
    e = Experiment(exp, slides)
    app = create_app(e, warm_index=False)
    c = TestClient(app)
    first = c.get("/api/experiment").json()["slides"][0]["slide_id"]
    info = c.get(f"/api/slide/{first}").json()
    assert c.get(f"/tiles/{first}/{info['max_level']}/0/0.jpg").status_code == 200
    assert len(c.get("/api/ranking").json()) == DICT
    t_open = time.perf_counter() - t0
    t1 = time.perf_counter()
    e.index()
    t_index = time.perf_counter() - t1
    t2 = time.perf_counter()
    c.get("/api/neuron/7")
    t_neuron = time.perf_counter() - t2
    return {"n_slides": len(e.slide_ids), "open_s": t_open, "index_s": t_index, "first_neuron_s": t_neuron}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sae1n-bench-browse")
    ap.add_argument("--size", type=int, default=60000)
    ap.add_argument("--patches", type=int, default=100000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--slides", type=int, default=400)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    exp, slides = make_big_slide(args.workdir, args.size, args.patches)
    tiles = bench_tiles(exp, slides, args.size, args.requests)
    mexp, mslides = make_many_slides(args.workdir, args.slides)
    opened = bench_open(mexp, mslides)
    print(f"slide {args.size} x {args.size}, {args.patches} patches, {DICT} neurons; "
          f"{args.requests} tile requests (half slide, half overlay) from 4 concurrent clients, {os.cpu_count()} CPUs")
    for name in ("cold", "warm"):
        t = tiles[name]
        target = 300 if name == "cold" else 100
        print(f"  {name}: p50 {t['p50_ms']:.1f} ms  p95 {t['p95_ms']:.1f} ms  max {t['max_ms']:.1f} ms  (target p95 < {target} ms)")
    print(f"  cold p95 by kind: slide tiles {tiles['cold_slide_p95_ms']:.1f} ms, overlay tiles {tiles['cold_overlay_p95_ms']:.1f} ms")
    print(f"open an experiment of {opened['n_slides']} slides (first page requests included): {opened['open_s']:.2f} s (target < 5 s)")
    print(f"  background neuron index over all slides: {opened['index_s']:.2f} s; first neuron panel after it: {opened['first_neuron_s']:.2f} s")
    print(json.dumps({"tiles": tiles, "open": opened}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
