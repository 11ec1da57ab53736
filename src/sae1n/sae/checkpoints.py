"""Save and load SAE weights: our ``.safetensors`` (self-describing: the
``sae`` config travels in the metadata) and the paper's ``sae_best.pt``
state dicts (read with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from sae1n.errors import InputFileError
from sae1n.io import atomic_path, atomic_write_json
from sae1n.io.provenance import Provenance, provenance_metadata
from sae1n.sae.model_config import SAEConfig
from sae1n.sae.models import BaseSAE, build_sae

log = logging.getLogger(__name__)

FORMAT = "sae1n-sae-v1"
CHECKPOINT_NAMES = ("best", "final")


def save_sae(
    model: BaseSAE,
    path: str | os.PathLike,
    *,
    config: Mapping | None = None,
    extra: Mapping | None = None,
    provenance: Provenance | None = None,
) -> Path:
    """Write ``model``'s weights and buffers to ``path`` (.safetensors) atomically
    (mode 0644); ``config`` (the full run config), when given, is also written
    beside it as ``config_<suffix>.json`` (the paper's layout: ``sae_best`` ->
    ``config_best.json``); ``provenance`` goes into the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "sae_config": json.dumps(model.cfg.to_dict())}
    for k, v in (extra or {}).items():
        meta[str(k)] = json.dumps(v)
    if provenance is not None:
        meta.update(provenance_metadata(provenance))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)
    if config is not None:
        payload = dict(config)
        if extra:
            payload["checkpoint_info"] = dict(extra)
        atomic_write_json(config_path_for(path), payload)
    return path


def write_paper_pt(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """The paper's checkpoint file: a plain state dict saved with ``torch.save``
    (CPU tensors), written atomically, mode 0644."""
    path = Path(path)
    state = {k: v.detach().to("cpu").clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)
    return path


def config_path_for(weights: Path) -> Path:
    """``.../sae_best.safetensors`` -> ``.../config_best.json``."""
    stem = weights.stem
    suffix = stem[4:] if stem.startswith("sae_") else stem
    return weights.with_name(f"config_{suffix}.json")


def find_checkpoint(path_or_dir: str | os.PathLike, which: str = "best") -> Path:
    """Resolve an experiment folder (or its ``checkpoints/``) to a weights file.

    Looks for ``sae_<which>.safetensors`` then the paper's ``sae_<which>.pt``;
    for ``which="best"`` falls back to the final checkpoint.
    """
    p = Path(path_or_dir)
    if p.is_file():
        return p
    if not p.is_dir():
        raise InputFileError(
            p,
            "no such SAE checkpoint or experiment folder",
            "pass output/sae/<exp> (or a .safetensors / .pt file)",
        )
    folders = [p / "checkpoints", p] if (p / "checkpoints").is_dir() else [p]
    names = [which] + (["final"] if which == "best" else [])
    for name in names:
        for folder in folders:
            for ext in (".safetensors", ".pt"):
                cand = folder / f"sae_{name}{ext}"
                if cand.is_file():
                    return cand
    raise InputFileError(
        p,
        f"no sae_{which}.safetensors or sae_{which}.pt checkpoint found",
        "train it first with `sae1n train-sae exp=...`, or pass the checkpoint file",
    )


def read_run_config(weights: Path) -> dict | None:
    """The run config saved beside a checkpoint (``config_<suffix>.json``), if any."""
    cfg_path = config_path_for(weights)
    if not cfg_path.is_file():
        return None
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(
            cfg_path, f"is not valid JSON ({exc})", "restore it or re-run training"
        ) from exc


def load_sae(
    path_or_exp_dir: str | os.PathLike, *, device: str | torch.device = "cpu", which: str = "best"
) -> BaseSAE:
    """Load a trained SAE in eval mode from an experiment folder or a checkpoint.

    Accepts ``output/sae/<exp>`` (best, else final checkpoint), a
    ``.safetensors`` file written by sae1n, or the paper's ``sae_best.pt``
    state dict with its ``config_best.json`` beside it.
    """
    weights = find_checkpoint(path_or_exp_dir, which)
    if weights.suffix == ".safetensors":
        state, sae_cfg = _read_safetensors(weights)
    elif weights.suffix in (".pt", ".pth"):
        state, sae_cfg = _read_paper_pt(weights)
    else:
        raise InputFileError(
            weights,
            f"unknown checkpoint type {weights.suffix!r}",
            "use a .safetensors or .pt SAE checkpoint",
        )
    model = build_sae(sae_cfg)
    load_state_into(model, state, weights)
    return model.to(device).eval()


def load_state_into(model: BaseSAE, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Copy a (possibly paper-made) state dict into ``model``, checking shapes.

    Buffers the paper did not save (dead-latent counters) keep their
    initial values."""
    own = model.state_dict()
    missing_params = [k for k, _ in model.named_parameters() if k not in state]
    if missing_params:
        raise InputFileError(
            source,
            f"checkpoint lacks {', '.join(missing_params)} (keys: {', '.join(sorted(state))})",
            "pass a checkpoint of the configured sae.model_type",
        )
    for k, v in state.items():
        if k not in own:
            log.debug("%s: ignoring unknown key %s", source, k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            raise InputFileError(
                source,
                f"{k} has shape {tuple(v.shape)}, the config implies {tuple(own[k].shape)}",
                "check sae.act_size / sae.dict_size in the config saved beside the checkpoint",
            )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise InputFileError(
            path,
            f"cannot be read as safetensors ({type(exc).__name__}: {exc})",
            "re-run training or restore the file",
        ) from exc
    if "sae_config" in meta:
        return state, SAEConfig.from_mapping(json.loads(meta["sae_config"]))
    run_cfg = read_run_config(path)
    if run_cfg is None or "sae" not in run_cfg:
        raise InputFileError(
            path,
            "has no SAE config in its metadata and no config json beside it",
            "keep config_<name>.json next to the weights",
        )
    return state, _sae_config_from_run(run_cfg, state, path)


def _read_paper_pt(path: Path):
    from sae1n.io.features import load_torch_file

    state = load_torch_file(
        path, "a state dict", "pass the paper's sae_best.pt (a state dict) or a sae1n .safetensors"
    )
    if not isinstance(state, Mapping) or "W_enc" not in state:
        raise InputFileError(
            path,
            "is not an SAE state dict (no W_enc)",
            "pass the paper's sae_best.pt or a sae1n .safetensors",
        )
    run_cfg = read_run_config(path)
    if run_cfg is None:
        raise InputFileError(
            config_path_for(path),
            "config missing next to the paper checkpoint",
            f"copy the config json saved with {path.name} next to it",
        )
    return dict(state), _sae_config_from_run(run_cfg, state, path)


def _sae_config_from_run(run_cfg: Mapping, state: Mapping, path: Path) -> SAEConfig:
    sae = dict(run_cfg.get("sae", run_cfg.get("exp", {}).get("sae", {})))
    if not sae:
        raise InputFileError(
            config_path_for(path),
            "has no 'sae' section",
            "restore the config saved with the checkpoint",
        )
    d, f = state["W_enc"].shape
    sae.setdefault("act_size", int(d))
    if sae.get("dict_size") is None:
        sae["dict_size"] = int(f)
    return SAEConfig.from_mapping(sae)
