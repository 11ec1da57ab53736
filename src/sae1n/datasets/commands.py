"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import not_implemented


def configure_create_metadata(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_create_metadata(args) -> int:
    return not_implemented('create-metadata', 5)


def configure_create_splits(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_create_splits(args) -> int:
    return not_implemented('create-splits', 5)


def configure_patch_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_patch_labels(args) -> int:
    return not_implemented('patch-labels', 5)
