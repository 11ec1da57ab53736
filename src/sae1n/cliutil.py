"""Helpers for the stage ``commands`` modules: the paper's underscore flags
work verbatim and every one also has a dashed alias."""

from __future__ import annotations

import argparse


def option(parser: argparse.ArgumentParser, flag: str, *more: str, **kw):
    """Add ``--some_flag`` plus its ``--some-flag`` alias (or vice versa)."""
    names = [flag, *more]
    alt = flag.replace("_", "-") if "_" in flag else flag.replace("-", "_").replace("__", "--", 1)
    if alt not in names:
        names.append(alt)
    kw.setdefault("dest", flag.lstrip("-").replace("-", "_"))
    return parser.add_argument(*names, **kw)


def not_implemented(command: str, issue: int) -> int:
    from sae1n.errors import Sae1nError

    raise Sae1nError(f"`sae1n {command}` is not implemented yet: see issue {issue}")
