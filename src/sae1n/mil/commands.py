"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import not_implemented


def configure_train_mil(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_train_mil(args) -> int:
    return not_implemented('train-mil', 8)
