"""CLI glue for ``sae1n demo``: parse, call, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import option


def configure_demo(p: argparse.ArgumentParser) -> None:
    option(p, "--out", default="./sae1n-demo", help="work folder (default ./sae1n-demo)")
    p.add_argument(
        "--quick", action="store_true", help="a smaller run (under a minute), as CI uses"
    )
    p.add_argument(
        "--tiles",
        default=None,
        metavar="DIR",
        help="build mosaic slides from DIR/tumor/*.png and DIR/normal/*.png",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated slides")
    p.add_argument("--workers", type=int, default=2, help="processes generating slides")
    p.add_argument("--force", action="store_true", help="re-run stages even when complete")


def run_demo(args) -> int:
    from sae1n.demo.run import format_summary
    from sae1n.demo.run import run_demo as demo

    result = demo(
        args.out,
        quick=args.quick,
        tiles_dir=args.tiles,
        seed=args.seed,
        workers=args.workers,
        force=args.force,
    )
    print(format_summary(result))
    return 0
