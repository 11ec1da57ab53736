"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import not_implemented


def configure_create_patches(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_create_patches(args) -> int:
    return not_implemented('create-patches', 3)
