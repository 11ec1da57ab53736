"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import not_implemented


def configure_train_sae(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_train_sae(args) -> int:
    return not_implemented('train-sae', 6)


def configure_save_sae_features(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_save_sae_features(args) -> int:
    return not_implemented('save-sae-features', 6)
