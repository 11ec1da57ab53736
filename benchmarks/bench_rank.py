"""Benchmark: neuron ranking from sparse SAE codes (issue 7's target: 400 slides
x 10^4 patches x 2048 neurons well under a minute).

Generates sparse code files once (cached under --data_dir), then times
``rank_neurons`` end to end (read + pool without densifying + vectorised
Welch test) against the paper's way on the same machine in the same run:
densify each slide and max-pool it, then one scipy t-test per neuron.
The paper's way is timed on --baseline_slides slides and scaled to all.

    .venv/bin/python benchmarks/bench_rank.py            # full size (~2 GB cache)
    .venv/bin/python benchmarks/bench_rank.py --slides 40 --patches 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def generate(
    data_dir: Path, slides: int, patches: int, neurons: int, k: int, seed: int = 0
) -> dict[str, int]:
    from sae1n.io import write_sparse_codes

    spec = {"slides": slides, "patches": patches, "neurons": neurons, "k": k, "seed": seed}
    marker = data_dir / "spec.json"
    folder = data_dir / "sparse_files"
    labels = {f"slide_{i:04d}": i % 2 for i in range(slides)}
    if (
        marker.is_file()
        and json.loads(marker.read_text()) == spec
        and len(list(folder.glob("*.h5"))) == slides
    ):
        return labels
    rng = np.random.default_rng(seed)
    step = max(1, neurons // k)
    coords = np.stack(np.divmod(np.arange(patches), 100), axis=1)[:, ::-1] * 256
    t0 = time.perf_counter()
    for i, sid in enumerate(labels):
        # k distinct neurons per patch: a random start, then a fixed stride
        start = rng.integers(0, neurons, size=(patches, 1))
        idx = np.sort((start + np.arange(k) * step) % neurons, axis=1).astype(np.int32)
        vals = rng.exponential(1.0, size=(patches, k)).astype(np.float32)
        if labels[sid]:  # neuron 7 fires harder on tumour slides' patches that use it
            vals[idx == 7] += 6.0
        write_sparse_codes(
            folder / f"{sid}.h5",
            np.arange(0, patches * k + 1, k),
            idx.ravel(),
            vals.ravel(),
            neurons,
            coords,
        )
        if i == 0:
            est = (time.perf_counter() - t0) * slides
            print(
                f"generating {slides} slides of sparse codes (~{est:.0f} s, once; cached in {data_dir})"
            )
    marker.write_text(json.dumps(spec))
    return labels


def paper_way(files: list[Path], labels: dict[str, int], neurons: int) -> float:
    """Seconds: densify + max-pool each slide, then one scipy t-test per neuron."""
    from scipy import stats

    from sae1n.io import read_bag

    t0 = time.perf_counter()
    pooled = np.stack([read_bag(f, dense=True).features.max(axis=0) for f in files]).astype(
        np.float64
    )
    y = np.array([labels[f.stem] for f in files], bool)
    for u in range(neurons):
        stats.ttest_ind(pooled[y, u], pooled[~y, u], equal_var=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slides", type=int, default=400)
    ap.add_argument("--patches", type=int, default=10_000)
    ap.add_argument("--neurons", type=int, default=2048)
    ap.add_argument("--k", type=int, default=64, help="non-zero codes per patch (TopK SAE)")
    ap.add_argument("--baseline_slides", type=int, default=8)
    ap.add_argument("--data_dir", type=Path, default=Path("/tmp/sae1n_bench_rank"))
    args = ap.parse_args()

    from sae1n.neurons.ranking import rank_neurons

    labels = generate(args.data_dir, args.slides, args.patches, args.neurons, args.k)
    folder = args.data_dir / "sparse_files"
    nnz = args.slides * args.patches * args.k
    print(
        f"{args.slides} slides x {args.patches} patches x {args.neurons} neurons, {args.k} non-zeros per patch ({nnz / 1e6:.0f} M stored codes)"
    )

    rank_neurons(
        {s: np.zeros((2, 2)) for s in list(labels)[:4]}, dict(list(labels.items())[:4])
    )  # warm imports
    t0 = time.perf_counter()
    df = rank_neurons(folder, labels, pooling="max")
    ours = time.perf_counter() - t0
    print(
        f"sae1n rank_neurons (sparse max pooling + vectorised Welch): {ours:.1f} s; rank 1 = neuron {int(df['unit_id'].iloc[0])}"
    )
    t0 = time.perf_counter()
    rank_neurons(folder, labels, pooling="mean")
    print(f"sae1n rank_neurons with mean pooling: {time.perf_counter() - t0:.1f} s")

    n_base = min(args.baseline_slides, args.slides)
    files = sorted(folder.glob("*.h5"))[:n_base]
    sub = {f.stem: labels[f.stem] for f in files}
    t_ours_sub = time.perf_counter()
    rank_neurons({s: folder / f"{s}.h5" for s in sub}, sub)
    t_ours_sub = time.perf_counter() - t_ours_sub
    t_paper_sub = paper_way(files, sub, args.neurons)
    # scale the per-slide part to all slides; the per-neuron loop is paid once
    from scipy import stats

    y = np.array(list(sub.values()), bool)
    pooled = np.random.default_rng(0).random((n_base, args.neurons))
    t0 = time.perf_counter()
    for u in range(args.neurons):
        stats.ttest_ind(pooled[y, u], pooled[~y, u], equal_var=False)
    loop = time.perf_counter() - t0
    paper_full = (t_paper_sub - loop) / n_base * args.slides + loop
    print(
        f"paper's way (densify + max, per-neuron scipy loop), measured on {n_base} slides: {t_paper_sub:.2f} s "
        f"(ours on the same slides: {t_ours_sub:.2f} s, ratio {t_paper_sub / t_ours_sub:.1f}x)"
    )
    print(
        f"paper's way scaled to {args.slides} slides: ~{paper_full:.0f} s; speed-up of sae1n: {paper_full / ours:.1f}x"
    )
    verdict = "PASS" if ours < 60 else "FAIL"
    print(f"target (< 60 s for the full ranking): {verdict} ({ours:.1f} s)")


if __name__ == "__main__":
    main()
