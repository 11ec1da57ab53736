"""Seconds per training epoch of every MIL model on CPU, and the pure-PyTorch
selective scan against the naive sequential scan.

The target workload is an epoch of 270 bags of 8,000 x 512 features (one bag
per step: forward, cross-entropy (+ CLAM's instance loss), backward, Adam
step), with the paper's model sizes. ``--bags`` times fewer bags and scales
the mean to ``--epoch-bags``; ``--bags 270`` times a whole epoch.

    python benchmarks/bench_mil.py                # ~3 minutes: 2 bags per model
    python benchmarks/bench_mil.py --bags 270     # full epochs (MambaMIL dominates)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from sae1n.mil import MODEL_TYPES, build_model
from sae1n.mil.scan import selective_scan_chunked, selective_scan_reference

MODEL_ORDER = ["max_mil", "mean_mil", "att_mil", "clam_sb", "clam_mb", "trans_mil", "mamba_mil"]


def time_model(name: str, bags: list[torch.Tensor], n_steps: int) -> list[float]:
    """Seconds per training step (one bag), after one untimed warm-up step."""
    torch.manual_seed(0)
    model = build_model(
        {"type": name, "in_dim": bags[0].shape[1], "drop_out": 0.25, "act": "relu"}, 2
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    model.train()
    times = []
    for step in range(n_steps + 1):
        x, label = bags[step % len(bags)], torch.tensor([step % 2])
        start = time.perf_counter()
        out = model(x, label=label[0])
        loss = F.cross_entropy(out.logits, label)
        if out.aux_loss is not None:
            loss = model.bag_weight * loss + (1 - model.bag_weight) * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - start)
    return times


def time_scan(length: int, d_inner: int = 1024, d_state: int = 16) -> dict[str, float]:
    """Forward+backward seconds of one MambaMIL-sized scan, both implementations."""
    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(1, d_inner, length, generator=g),
        torch.rand(1, d_inner, length, generator=g) * 0.1,
        -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        torch.randn(1, d_state, length, generator=g),
        torch.randn(1, d_state, length, generator=g),
    ]
    out = {}
    for name, fn in (("chunked", selective_scan_chunked), ("reference", selective_scan_reference)):
        args = [t.clone().requires_grad_(True) for t in inputs]
        start = time.perf_counter()
        fn(*args).sum().backward()
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bags", type=int, default=2, help="bags timed per model (default 2)")
    p.add_argument(
        "--epoch-bags", type=int, default=270, help="bags per epoch to report (default 270)"
    )
    p.add_argument("--patches", type=int, default=8000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--models", nargs="+", default=MODEL_ORDER, choices=sorted(MODEL_TYPES))
    p.add_argument(
        "--scan-len",
        type=int,
        default=2000,
        help="sequence length of the scan comparison (0: skip)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"workload: {args.epoch_bags} bags of {args.patches} x {args.dim} per epoch; timing {args.bags} bag(s) per model\n"
    )
    g = torch.Generator().manual_seed(0)
    bags = [torch.randn(args.patches, args.dim, generator=g) for _ in range(2)]
    rows = []
    for name in args.models:
        times = time_model(name, bags, args.bags)
        per_bag = statistics.mean(times)
        rows.append((name, per_bag, per_bag * args.epoch_bags))
        print(
            f"  {name:10s} {per_bag:8.3f} s/bag  ->  {per_bag * args.epoch_bags:9.1f} s/epoch",
            flush=True,
        )
    base = dict((r[0], r[2]) for r in rows).get("max_mil", rows[0][2])
    print(
        f"\nseconds per epoch ({args.epoch_bags} bags), ratio to {'max_mil' if 'max_mil' in args.models else rows[0][0]}:"
    )
    print(f"  {'model':10s} {'s/epoch':>10s} {'ratio':>7s}")
    for name, _, epoch in rows:
        print(f"  {name:10s} {epoch:10.1f} {epoch / base:7.2f}")
    if args.scan_len:
        t = time_scan(args.scan_len)
        print(f"\nselective scan fwd+bwd, L={args.scan_len}, 1024 channels x 16 states:")
        print(
            f"  chunked {t['chunked']:.2f} s, naive sequential {t['reference']:.2f} s: chunked is {t['reference'] / t['chunked']:.1f}x faster"
        )


if __name__ == "__main__":
    main()
