"""SAE training on 1 vs 2 processes (torchrun, gloo on CPU or NCCL on GPUs).

Measured in one run, same machine, same generated features and settings (the
paper's CONCH shapes by default: D=512, 4x dictionary, k=16, batch 4096):

* ``sae1n train-sae`` in one process with all threads, in one process with
  one thread, and under ``torchrun --nproc_per_node 2`` with one thread per
  process (on GPUs: one process vs one process per GPU);
* the training rate is read from the trainer's own ``logs/metrics.csv``
  (tokens between the first and the last validation / seconds between them),
  so start-up (imports, rendezvous) is not counted;
* the loss curves of the 1- and 2-process runs are compared (same seed,
  same global batch: they must agree to float rounding);
* the CPU time of one training step per process, 1 vs 2 processes (one
  thread each), which a busy machine inflates far less than wall time, and
  the two per-step collectives (the gradient all-reduce and the BatchTopK
  candidate exchange) timed alone on gloo over loopback.

Run:  .venv/bin/python benchmarks/bench_dist.py [--patches 120000] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _cohort import write_bench_split  # benchmarks/ is on sys.path when run as a script


def make_features(root: Path, n_patches: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """Sparse sums of random atoms in a CLAM folder: 40 train slides and two
    small validation slides, plus a split CSV."""
    from sae1n.io import write_bag

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * dim, dim)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    feat_dir = root / "features" / "bench" / "features_bench"
    per_slide = n_patches // 40
    split = {"train": [], "val": []}
    for i in range(42):
        kind = "train" if i < 40 else "val"
        n = per_slide if kind == "train" else 256
        idx = rng.integers(0, len(atoms), size=(n, 8))
        w = rng.exponential(1.0, size=(n, 8)).astype(np.float32)
        x = np.einsum("nk,nkd->nd", w, atoms[idx]) + 0.05 * rng.normal(size=(n, dim))
        coords = np.stack([np.arange(n) * 224, np.full(n, i * 224)], axis=1)
        sid = f"{kind}_{i:02d}"
        write_bag(feat_dir, sid, x.astype(np.float32), coords, formats=("h5",))
        split[kind].append(sid)
    csv = write_bench_split(root, split)
    return feat_dir, csv


def overrides(args, feat_dir: Path, csv: Path, out: Path, threads: int) -> list[str]:
    tokens = args.steps * args.batch
    return [
        f"data.feature_dir={feat_dir}",
        f"data.split_csv_path={csv}",
        "data.file_type=h5",
        f"data.store_dir={out.parent / 'store'}",
        f"output_dir={out}",
        f"sae.act_size={args.dim}",
        f"sae.dict_size_ratio={args.ratio}",
        f"sae.top_k={args.k}",
        f"sae.device={args.device}",
        f"training.batch_size={args.batch}",
        f"training.num_tokens={tokens}",
        f"training.validation_freq={max(1, args.steps // 4)}",
        "training.checkpoint_freq=0",
        f"training.num_threads={threads}",
        "training.tensorboard=false",
    ]


def run(label: str, cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def rate(exp: Path) -> tuple[float, pd.DataFrame]:
    m = pd.read_csv(exp / "logs" / "metrics.csv")
    first, last = m.iloc[0], m.iloc[-1]
    return (last.tokens - first.tokens) / (last.elapsed_s - first.elapsed_s), m


def _steps(rank: int, world: int, port: int, shape: dict, steps: int, share: int, q) -> None:
    """Time ``steps`` training steps of this rank's share of one global batch
    (alone: ``1 / share`` of it): wall and CPU seconds per step, and the
    collectives alone."""
    import torch
    import torch.distributed as tdist
    from omegaconf import OmegaConf

    from sae1n.sae.models import build_sae
    from sae1n.sae.train import make_optimizer, train_step

    torch.set_num_threads(1)
    if world > 1:
        tdist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    b, d, f, k = shape["batch"], shape["dim"], shape["dim"] * shape["ratio"], shape["k"]
    torch.manual_seed(0)
    model = build_sae({"act_size": d, "dict_size": f, "top_k": k})
    opt = make_optimizer(model, OmegaConf.create({"lr": 1e-3}))
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(1))
    x = x[rank :: max(world, share)].contiguous()
    hook = None
    if world > 1:
        from sae1n.sae.distributed import BatchStatsSync, GradientAllReduce

        model.batch_sync = BatchStatsSync()
        model.batch_sync.global_rows = b
        hook = GradientAllReduce()
        hook.set_rows(x.shape[0], b)
    wall, cpu = [], []
    for i in range(steps + 2):
        if world > 1:
            tdist.barrier()
        t, c = time.perf_counter(), time.process_time()
        train_step(model, opt, x, 1e5, after_backward=hook)
        if i >= 2:  # warm-up steps are not counted
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    comm = {}
    if world > 1:
        grad = torch.randn(2 * d * f + d + f)
        cand = torch.randn(k * b)
        parts = [torch.empty_like(cand) for _ in range(world)]
        times = {"all-reduce": [], "all-gather": []}
        for _ in range(10):
            tdist.barrier()
            t = time.perf_counter()
            tdist.all_reduce(grad)
            times["all-reduce"].append(time.perf_counter() - t)
            tdist.barrier()
            t = time.perf_counter()
            tdist.all_gather(parts, cand)
            times["all-gather"].append(time.perf_counter() - t)
        comm = {key: float(np.median(v[2:])) for key, v in times.items()}
        tdist.destroy_process_group()
    q.put((rank, float(np.median(wall)), float(np.median(cpu)), comm))


def step_costs(shape: dict, world: int, steps: int, share: int = 1) -> list[tuple]:
    """Per-rank (rank, wall s/step, CPU s/step, collectives) in ``world``
    processes (one process with ``share``: a 1/share slice of the batch)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        _steps, args=(world, port, shape, steps, share, q), nprocs=world, start_method="spawn"
    )
    return sorted(q.get() for _ in range(world))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patches", type=int, default=120_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ratio", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (one process per GPU)")
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "SAE1N_PROGRESS": "0"}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        root = Path(tmp)
        feat_dir, csv = make_features(root, args.patches, args.dim)
        print(
            f"{args.patches:,} generated patches, D={args.dim}, F={args.dim * args.ratio}, "
            f"k={args.k}, global batch {args.batch}, {args.steps} steps, {cores} CPU cores, "
            f"device {args.device}, load average {os.getloadavg()[0]:.1f} before the runs"
        )
        if args.device == "cpu":
            plans = [
                (f"1 process x {cores} threads", 1, cores),
                ("1 process x 1 thread", 1, 1),
                (
                    f"{args.nproc} processes x {max(1, cores // args.nproc)} thread(s)",
                    args.nproc,
                    max(1, cores // args.nproc),
                ),
            ]
        else:
            plans = [
                ("1 process, 1 GPU", 1, 4),
                (f"{args.nproc} processes, 1 GPU each", args.nproc, 4),
            ]
        results = {}
        # the store is built once, before anything is timed
        from sae1n.io import feature_paths, open_packed_store

        open_packed_store(feature_paths(feat_dir, "h5"), root / "store")
        for label, nproc, threads in plans:
            out = root / f"out_{nproc}_{threads}"
            cli = ["-m", "sae1n", "train-sae", "exp=camelyon16_conch_0"]
            cli += overrides(args, feat_dir, csv, out, threads)
            if nproc == 1:
                cmd = [py, *cli]
            else:
                cmd = [py, "-m", "torch.distributed.run", "--standalone"]
                cmd += [f"--nproc_per_node={nproc}", *cli]
            wall = run(label, cmd, env)
            tok_s, m = rate(out / "camelyon16_conch_0")
            results[label] = (nproc, tok_s, wall, m)
        base_label = plans[0][0]
        base = results[base_label][1]
        print(f"\n{'run':<34}{'tokens/s':>12}{'vs first':>10}{'wall s':>9}")
        for label, (_, tok_s, wall, _) in results.items():
            print(f"{label:<34}{tok_s:>12,.0f}{tok_s / base:>9.2f}x{wall:>9.1f}")
        m1, m2 = results[plans[0][0]][3], results[plans[-1][0]][3]
        rel = np.max(np.abs(m1.train_loss - m2.train_loss) / np.abs(m1.train_loss))
        print(f"\nloss curves, 1 vs {args.nproc} processes: max relative difference {rel:.1e}")
        shape = {"batch": args.batch, "dim": args.dim, "ratio": args.ratio, "k": args.k}
        one = step_costs(shape, 1, steps=8)[0]
        if args.device == "cpu":
            n = args.nproc
            half = step_costs(shape, 1, steps=8, share=n)[0]
            two = step_costs(shape, n, steps=8)
            d, f = args.dim, args.dim * args.ratio
            comm = two[0][3]
            comm_s = comm["all-reduce"] + comm["all-gather"]
            print(
                f"\nper-step CPU time, 1 thread per process: whole batch {one[2] * 1e3:.0f} ms; "
                f"one rank's 1/{n} alone {half[2] * 1e3:.0f} ms; {n} processes together "
                f"{', '.join(f'{r[2] * 1e3:.0f}' for r in two)} ms each"
            )
            print(
                f"per-step collectives (gloo, loopback): gradient all-reduce of "
                f"{(2 * d * f + d + f) * 4 / 2**20:.1f} MiB {comm['all-reduce'] * 1e3:.1f} ms, "
                f"BatchTopK candidate all-gather of {args.k * args.batch * 4 / 2**10:.0f} KiB "
                f"per rank {comm['all-gather'] * 1e3:.1f} ms"
            )
            print(
                f"speed-up with {n} processes on {n} otherwise idle cores, from these parts: "
                f"{one[2] / (half[2] + comm_s):.2f}x (whole-batch step / (1/{n} step + collectives))"
            )
        best = max(tok_s for _, tok_s, _, _ in results.values())
        print(
            f"projected: 10^8 patches x 10 epochs (10^9 tokens) at the best rate here "
            f"({best:,.0f} tokens/s): {1e9 / best / 3600:.1f} h"
        )


if __name__ == "__main__":
    main()
