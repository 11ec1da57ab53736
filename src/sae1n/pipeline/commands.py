"""CLI glue for ``sae1n pipeline`` (:mod:`sae1n.pipeline`): parse, call, print."""

from __future__ import annotations

import argparse


def configure_pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML (see README: 'Your own cohort'; every key: docs/config_keys.md)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. encoder.batch_size=256")
    p.add_argument("--force", action="store_true", help="re-run stages even when complete")
    p.add_argument(
        "--stages", nargs="+", default=None, help="run only these stages, in pipeline order (train-sae or train_sae spellings; default: every stage)"
    )


def run_pipeline(args) -> int:
    from sae1n.pipeline.runner import run_pipeline as run

    results = run(args.config, args.overrides, force=args.force, stages=args.stages)
    for name, r in results.items():
        print(f"{name:18s} {r.status:8s} {r.seconds:7.1f} s  {r.info}")
    return 0
