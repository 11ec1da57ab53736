"""Lazy package exports: heavy modules (torch, pandas) load on first use, so
that `sae1n --help`, which imports every stage's commands module, stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package`` serving ``exports``
    (name -> module, absolute ``sae1n....`` or relative to the package)."""

    def __getattr__(name: str):
        if name in exports:
            module = exports[name]
            if not module.startswith("sae1n."):
                module = f"{package}.{module}"
            return getattr(importlib.import_module(module), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
