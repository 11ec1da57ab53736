"""Safe weight loading shared by the encoder families.

State dicts are read with safetensors or ``torch.load(weights_only=True)``
(never arbitrary pickles), and a checkpoint that leaves any parameter
uninitialised is an error, not a silently half-random model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from sae1n.errors import InputFileError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")


def find_weight_file(path: str | os.PathLike, candidates: Sequence[str], what: str) -> Path:
    """``path`` itself when it is a file; else the first of ``candidates``
    inside the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    for name in candidates:
        if (path / name).is_file():
            return path / name
    raise InputFileError(
        path,
        f"no {what} weight file in this folder (looked for {', '.join(candidates)})",
        "pass the weight file itself with --checkpoint",
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (weights only).
    Unwraps ``{"state_dict": ...}``-style containers and ``module.`` prefixes."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many error types
        raise InputFileError(
            path,
            f"cannot be read as a weight file ({type(exc).__name__}: {str(exc)[:200]})",
            "re-download it; pickled full models are not loaded, save a state dict (or .safetensors)",
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputFileError(
            path,
            "does not hold a state dict of tensors",
            "save model.state_dict() (or a .safetensors file)",
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_weights(
    module: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    what: str,
    ignore_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``; every parameter must be covered
    (except keys starting with an ``ignore_missing`` prefix). Unexpected
    keys outside ``ignore_unexpected`` are logged."""
    ignore_missing, ignore_unexpected = tuple(ignore_missing), tuple(ignore_unexpected)
    own = module.state_dict()
    bad_shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad_shapes:
        raise InputFileError(
            path,
            f"is not a {what} checkpoint: {len(bad_shapes)} tensors have other shapes (e.g. {bad_shapes[0]})",
            f"pass the {what} weights that match this encoder",
        )
    result = module.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignore_missing)]
    if missing:
        raise InputFileError(
            path,
            f"is not a complete {what} checkpoint: {len(missing)} parameters missing (e.g. {', '.join(missing[:3])})",
            f"pass the {what} weights (the loader never leaves parameters random)",
        )
    unexpected = [k for k in result.unexpected_keys if not k.startswith(ignore_unexpected)]
    if unexpected:
        log.warning(
            "%s: %d unexpected keys ignored (e.g. %s)",
            path,
            len(unexpected),
            ", ".join(unexpected[:3]),
        )
