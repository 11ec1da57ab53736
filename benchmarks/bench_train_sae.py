"""SAE training end to end vs its step: ``train_sae`` as the CLI calls it.

Measured in one run, same machine, same generated features and settings (the
paper's CONCH config by default: BatchTopK 512 -> 2048, k 16, batch 4096,
validation every 500 steps, checkpoints every 10,000, the exp's val split):

* ``end to end``: :func:`sae1n.sae.train.train_sae` on ``camelyon16_conch_0``
  with ``key=value`` overrides pointing it at the generated store, exactly as
  ``sae1n train-sae`` builds the config (store packed beforehand and timed
  apart); tokens/s = trained tokens / wall seconds of the call;
* ``step alone``: :func:`sae1n.sae.train.train_step` alone on the same run
  replayed (same initialisation, same batches in the same order, each batch
  gathered outside the clock), nothing else; one replayed step runs after
  each end-to-end step (a ``train_sae`` callback whose time is taken out of
  the end-to-end figure), so on a shared machine both see the same load;
* ``paper-style dense loop``: the dense reference step of ``bench_sae.py``
  fed by a gather per step (as a DataLoader would), on the same batches;
* peak RSS of the process.

Each rate is given per wall second and per CPU second of this process (all
its threads): on a machine shared with other jobs the wall figures of two
phases run minutes apart see different loads; CPU seconds much less so.

Data: ``--slides`` train slides of ``--patches`` patches (plus ``--val-slides``)
of clustered sparse features (each patch a few atoms with positive weights
around one of a few cluster centres).

Run:  .venv/bin/python benchmarks/bench_train_sae.py [--slides 24 --patches 20000]
      [--epochs 6] [--device cuda] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _cohort import write_bench_split  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_features(root: Path, args) -> tuple[Path, Path]:
    """Clustered sparse features in a CLAM folder plus a split CSV."""
    from sae1n.io import write_bag

    rng = np.random.default_rng(args.seed)
    d = args.dim
    atoms = rng.normal(size=(args.atoms, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    centres = rng.normal(size=(8, d)).astype(np.float32)
    feat = root / "features" / "bench" / "clam_processed" / "features_bench"
    split: dict[str, list] = {"train": [], "val": []}
    n_slides = args.slides + args.val_slides
    for i in range(n_slides):
        kind = "train" if i < args.slides else "val"
        n = args.patches
        idx = rng.integers(0, args.atoms, size=(n, args.active))
        w = rng.exponential(1.0, size=(n, args.active)).astype(np.float32)
        c = centres[rng.integers(0, len(centres), size=n)]
        x = np.einsum("nk,nkd->nd", w, atoms[idx]) + 0.3 * c
        x += 0.05 * rng.standard_normal(size=x.shape, dtype=np.float32)
        coords = np.stack([np.arange(n) * 224, np.full(n, i * 224)], axis=1)
        sid = f"{kind}_{i:03d}"
        write_bag(feat, sid, x.astype(np.float32), coords, formats=("h5",))
        split[kind].append(sid)
    csv = write_bench_split(root, split)
    return feat, csv


def overrides(args, feat: Path, csv: Path, out: Path) -> list[str]:
    over = [
        f"data.feature_dir={feat}",
        f"data.split_csv_path={csv}",
        "data.file_type=h5",
        f"data.store_dir={out / 'store'}",
        f"output_dir={out}",
        f"sae.act_size={args.dim}",
        f"sae.dict_size_ratio={args.ratio}",
        f"sae.top_k={args.k}",
        f"sae.device={args.device}",
        f"training.batch_size={args.batch}",
        f"training.num_epochs={args.epochs}",
        "training.tensorboard=false",
    ]
    if args.threads:
        over.append(f"training.num_threads={args.threads}")
    return over + list(args.override)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(args) -> dict:
    import torch

    # torch imports its compiler stack on the first optimiser step (seconds);
    # a one-time cost of any torch program, kept out of both timings
    import torch._dynamo  # noqa: F401
    from bench_sae import PaperStyleStep

    from sae1n.sae.config import load_sae_config
    from sae1n.sae.data import prepare_data
    from sae1n.sae.models import build_sae
    from sae1n.sae.train import (
        batch_rows,
        epoch_permutation,
        train_sae,
        train_step,
    )

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        feat, csv = make_features(root, args)
        t_gen = time.perf_counter() - t
        out = root / "out"
        cfg = load_sae_config("camelyon16_conch_0", overrides(args, feat, csv, out))
        cfg.exp_name = "bench"
        t = time.perf_counter()
        data = prepare_data(cfg)  # packs the store (once; train_sae reopens it)
        t_pack = time.perf_counter() - t
        n_train, n_val = len(data.train_rows), len(data.val_rows)
        steps_per_epoch = -(-n_train // args.batch)
        total = steps_per_epoch * args.epochs

        # ---- the step alone: the same run replayed (same init, same batches in
        # the same order, each batch gathered outside the clock), one replayed
        # step after each end-to-end step (a callback of train_sae, its time
        # taken out of the end-to-end figure), so both see the same machine load
        from sae1n.sae.config import expand_sweep
        from sae1n.sae.data import Batches
        from sae1n.sae.step import default_threads
        from sae1n.sae.trainer import SAETrainer

        device = str(cfg.sae.device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = args.threads or default_threads(device)
        tr = SAETrainer(cfg, device)
        tr.data = data
        tr.steps_per_epoch, tr.total = tr.schedule(n_train)
        tr.batches = Batches(data, int(cfg.seed), args.batch, device)
        ((tag, run_cfg),) = expand_sweep(cfg)
        run = tr.build_run(tag, run_cfg)
        tr.init_from_data(run)
        n_replay = total if args.step_steps <= 0 else min(total, args.step_steps)
        clip = float(cfg.training.max_grad_norm)
        acc = {"times": [], "cpu": 0.0, "cb_wall": 0.0, "cb_cpu": 0.0}

        def replay(step: int) -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            if step <= n_replay:
                x = tr.batches.fetch(step - 1).to(device)
                _sync(device)
                t, c = time.perf_counter(), time.process_time()
                train_step(run.model, run.optimizer, x, clip)
                _sync(device)
                acc["times"].append(time.perf_counter() - t)
                acc["cpu"] += time.process_time() - c
            acc["cb_wall"] += time.perf_counter() - t0
            acc["cb_cpu"] += time.process_time() - c0

        # ---- end to end, as the CLI calls it (plus the replay callback)
        t, c = time.perf_counter(), time.process_time()
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            exp = train_sae(cfg, callbacks=[replay])
            prof.disable()
            prof.dump_stats(args.profile)
        else:
            exp = train_sae(cfg, callbacks=[replay])
        t_e2e = time.perf_counter() - t - acc["cb_wall"]
        cpu_e2e = time.process_time() - c - acc["cb_cpu"]
        metrics = pd.read_csv(exp / "logs" / "metrics.csv")
        last = metrics.iloc[-1]
        times = acc["times"]
        replay_tokens = sum(tr.batches.global_rows(s) for s in range(n_replay))
        step_tok_s = replay_tokens / sum(times)
        step_cpu_tok_s = replay_tokens / acc["cpu"]
        step_median_tok_s = args.batch / statistics.median(times)
        sae_cfg = dict(run.cfg.sae)
        order = data.train_rows[epoch_permutation(n_train, int(cfg.seed), 0)]

        # ---- the paper-style dense loop (gather per step + dense step)
        torch.manual_seed(int(cfg.seed))
        ref_model = build_sae(sae_cfg).to(device)
        ref = PaperStyleStep(ref_model)
        n_ref = min(args.ref_steps, steps_per_epoch)
        ref.step(data.gather(batch_rows(order, 0, args.batch)).to(device))
        _sync(device)
        t = time.perf_counter()
        for i in range(n_ref):
            x = data.gather(batch_rows(order, i, args.batch)).to(device)
            ref.step(x)
        _sync(device)
        ref_tok_s = n_ref * args.batch / (time.perf_counter() - t)
        enc = bench_encode(args, exp, feat, device) if args.encode else None
        e2e_tok_s = args.epochs * n_train / t_e2e
        e2e_cpu_tok_s = args.epochs * n_train / cpu_e2e
    return {
        "n_train": n_train,
        "n_val": n_val,
        "steps": total,
        "gen_s": t_gen,
        "pack_s": t_pack,
        "e2e_s": t_e2e,
        "e2e_tok_s": e2e_tok_s,
        "e2e_cpu_tok_s": e2e_cpu_tok_s,
        "step_tok_s": step_tok_s,
        "step_cpu_tok_s": step_cpu_tok_s,
        "step_median_tok_s": step_median_tok_s,
        "replayed": n_replay,
        "threads": threads,
        "ref_tok_s": ref_tok_s,
        "encode": enc,
        "val_fvu": float(last.get("val_fvu", float("nan"))),
        "val_dead_frac": float(last.get("val_dead_frac", float("nan"))),
        "device": device,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_encode(args, exp: Path, feat: Path, device: str) -> dict:
    """``save-sae-features`` on the generated slides (sparse codes only, as a
    second pass would; then dense + sparse, the paper's layout) vs the
    encoder matmul alone over the same rows."""
    import torch

    from sae1n.sae.checkpoints import load_sae
    from sae1n.sae.encode import save_sae_features

    out = {}
    for label, dense in (("sparse only", False), ("dense + sparse", True)):
        t = time.perf_counter()
        s = save_sae_features(
            exp, feat, dense=dense, sparse=True, device=device, out_dir=exp / f"enc_{dense}"
        )
        wall = time.perf_counter() - t
        out[label] = (len(s.encoded), wall)
    n = (args.slides + args.val_slides) * args.patches
    model = load_sae(exp, device=device)
    x = torch.randn(8192, args.dim, device=device)
    w = model.W_enc.detach()
    buf = torch.empty(8192, model.dict_size, device=device)
    torch.mm(x, w, out=buf)
    _sync(device)
    t = time.perf_counter()
    reps = max(1, n // 8192)
    for _ in range(reps):
        torch.mm(x, w, out=buf)
    _sync(device)
    gemm_rows_s = reps * 8192 / (time.perf_counter() - t)
    return {"patches": n, "runs": out, "gemm_rows_s": gemm_rows_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--slides", type=int, default=24, help="train slides")
    p.add_argument("--val-slides", type=int, default=4)
    p.add_argument("--patches", type=int, default=20000, help="patches per slide")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ratio", type=int, default=4)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--atoms", type=int, default=4096)
    p.add_argument("--active", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="0: the trainer's default")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument(
        "--step-steps", type=int, default=0, help="steps replayed for the step alone (0: all)"
    )
    p.add_argument("--ref-steps", type=int, default=8, help="steps of the dense loop")
    p.add_argument("--tmp", default=None, help="folder for the generated data")
    p.add_argument("--profile", default=None, help="write a cProfile of train_sae here")
    p.add_argument(
        "--encode", action="store_true", help="also time save-sae-features vs its matmul"
    )
    p.add_argument("override", nargs="*", help="extra key=value config overrides")
    args = p.parse_args(argv)
    import torch

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    r = bench(args)
    print(f"torch {torch.__version__}, {r['threads']} threads, device {r['device']} ({where})")
    print(
        f"\nSAE training end to end: {r['n_train']:,} train / {r['n_val']:,} val tokens, "
        f"{args.dim} -> {args.dim * args.ratio}, k {args.k}, batch {args.batch}, "
        f"{args.epochs} epochs = {r['steps']} steps"
    )
    print(f"  generate {r['gen_s']:.1f} s, pack store {r['pack_s']:.1f} s (not counted)")
    print("                             wall tokens/s   CPU tokens/s (tokens per CPU-second)")
    print(
        f"  train_sae end to end   : {r['e2e_tok_s']:12,.0f}   {r['e2e_cpu_tok_s']:12,.0f}"
        f"   ({r['e2e_s']:.1f} s)"
    )
    print(
        f"  train_step alone       : {r['step_tok_s']:12,.0f}   {r['step_cpu_tok_s']:12,.0f}"
        f"   (same run replayed step by step alongside, {r['replayed']} steps; "
        f"median step {r['step_median_tok_s']:,.0f})"
    )
    print(f"  paper-style dense loop : {r['ref_tok_s']:12,.0f}")
    print(
        f"  end to end / step      : {r['e2e_tok_s'] / r['step_tok_s']:12.3f}   "
        f"{r['e2e_cpu_tok_s'] / r['step_cpu_tok_s']:12.3f}"
    )
    print(f"  end to end / dense loop: {r['e2e_tok_s'] / r['ref_tok_s']:8.2f} x")
    print(f"  final val FVU {r['val_fvu']:.4f}, val dead fraction {r['val_dead_frac']:.3f}")
    enc = r["encode"]
    if enc:
        print(f"\nsave-sae-features on {enc['patches']:,} patches:")
        for label, (n_slides, wall) in enc["runs"].items():
            rate = enc["patches"] / wall
            print(
                f"  {label:15s}: {wall:7.1f} s  {rate:10,.0f} patches/s "
                f"({rate / enc['gemm_rows_s']:.2f} of the encoder matmul alone, {n_slides} slides)"
            )
        print(f"  encoder matmul alone : {enc['gemm_rows_s']:10,.0f} rows/s")
    print(f"  peak RSS               : {r['peak_rss_mib']:8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
