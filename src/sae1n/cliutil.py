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


def experiments_epilog(kind: str) -> str:
    """Help text listing the shipped ``exp=`` names of ``kind`` (sae or mil)
    and where their keys are described."""
    import textwrap

    from sae1n.configs import available_experiments

    names = textwrap.fill(", ".join(available_experiments(kind)) or "none", width=76, initial_indent="  ", subsequent_indent="  ")
    return (
        f"experiments (exp=NAME; also YAMLs in ./experiments/{kind}/exp/ or ./configs/{kind}/):\n{names}\n\n"
        "every key and its default: docs/config_keys.md; one experiment resolved, with your\n"
        f"overrides applied: `sae1n config show exp=NAME --kind {kind} [key=value ...]`"
    )


def not_implemented(command: str, issue: int) -> int:
    from sae1n.errors import Sae1nError

    raise Sae1nError(f"`sae1n {command}` is not implemented yet: see issue {issue}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every
    option whose help does not already name its default (flags and unset
    ``None`` defaults are left alone: their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or text == argparse.SUPPRESS
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or "default" in text.lower()
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})".strip()
