"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import not_implemented


def configure_analyze_sae(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_analyze_sae(args) -> int:
    return not_implemented('analyze-sae', 7)


def configure_evaluate_patches(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_evaluate_patches(args) -> int:
    return not_implemented('evaluate-patches', 7)
