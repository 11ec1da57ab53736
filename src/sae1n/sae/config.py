"""SAE experiment configs: loading with overrides, sweeps, derived values.

Keys are the paper's (``seed``, ``data.feature_dir``, ``sae.model_type``,
``training.batch_size``, ...) plus a few of ours, documented in
``configs/sae/_base.yaml``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from sae1n.configs import load_experiment
from sae1n.errors import ConfigError

# what a sweep may vary: everything of the model, and the optimiser's settings
_SWEEPABLE_TRAINING = {"lr", "beta1", "beta2", "max_grad_norm"}


def load_sae_config(exp: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load ``exp`` with ``key=value`` overrides; ``sweep.<key>=[v1,v2]`` tokens
    (or ``sweep=<yaml list/dict>``) define a sweep without the ``+`` prefix."""
    plain, sweep_tokens = [], []
    for tok in overrides:
        key = tok.split("=", 1)[0].lstrip("+")
        (sweep_tokens if key == "sweep" or key.startswith("sweep.") else plain).append(
            tok.lstrip("+")
        )
    cfg = load_experiment("sae", exp, plain)
    for tok in sweep_tokens:
        if "=" not in tok:
            raise ConfigError(f"override {tok!r} is not key=value")
        if tok.startswith("sweep="):
            cfg.sweep = OmegaConf.create(OmegaConf.from_dotlist([tok]).sweep)
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([tok]))
    return cfg


def _flatten(node, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(node, DictConfig | dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = node
    return out


def _check_sweep_key(key: str) -> None:
    head, _, rest = key.partition(".")
    if head == "sae" and rest and rest not in ("act_size", "device", "dtype"):
        return
    if head == "training" and rest in _SWEEPABLE_TRAINING:
        return
    raise ConfigError(
        f"sweep key {key!r} cannot vary within one pass over the data; sweep sae.* (not act_size/device) or training.{{{', '.join(sorted(_SWEEPABLE_TRAINING))}}}"
    )


def _tag_value(v) -> str:
    s = f"{v:g}" if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", s)


def expand_sweep(cfg: DictConfig) -> list[tuple[str | None, DictConfig]]:
    """One (tag, config) per SAE to train. Without ``sweep``: ``[(None, cfg)]``.

    ``sweep`` is either a mapping whose list-valued leaves span a grid
    (``{sae: {top_k: [8, 16, 32], dict_size_ratio: [2, 4, 8]}}`` -> 9 runs)
    or a list of partial configs, one per run.
    """
    sweep = cfg.get("sweep")
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(base, False)
    base.pop("sweep", None)
    if sweep is None or (
        isinstance(sweep, DictConfig | ListConfig | dict | list) and len(sweep) == 0
    ):
        return [(None, base)]
    combos: list[dict[str, object]] = []
    if isinstance(sweep, ListConfig | list):
        for item in sweep:
            if not isinstance(item, DictConfig | dict):
                raise ConfigError(
                    f"each sweep list entry must be a mapping like {{sae: {{top_k: 8}}}}, got {item!r}"
                )
            combos.append(_flatten(item))
    elif isinstance(sweep, DictConfig | dict):
        flat = _flatten(sweep)
        keys = list(flat)
        values = [list(v) if isinstance(v, ListConfig | list) else [v] for v in flat.values()]
        if any(len(v) == 0 for v in values):
            raise ConfigError("a sweep key has an empty list of values")
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*values)]
    else:
        raise ConfigError(f"sweep must be a mapping of lists or a list of mappings, got {sweep!r}")
    runs, seen = [], set()
    for combo in combos:
        for k in combo:
            _check_sweep_key(k)
        for k in combo:
            if OmegaConf.select(base, k, default="__missing__") == "__missing__":
                raise ConfigError(f"sweep key {k!r} is not a config key")
        tag = "_".join(f"{k.split('.')[-1]}-{_tag_value(v)}" for k, v in combo.items()) or "default"
        if tag in seen:
            raise ConfigError(f"sweep has two runs with the same settings ({tag})")
        seen.add(tag)
        run = base.copy()
        for k, v in combo.items():
            OmegaConf.update(run, k, v, merge=False)
        run.sweep_tag = tag
        runs.append((tag, run))
    return runs


def experiment_dir(cfg: DictConfig) -> Path:
    """``<output_dir>/<exp_name>`` (``output_dir`` defaults to ``./output/sae``)."""
    root = cfg.get("output_dir") or "./output/sae"
    name = cfg.get("exp_name") or "sae"
    return Path(str(root)) / str(name)


def run_dir(cfg: DictConfig, tag: str | None) -> Path:
    """The output folder of one run: the experiment folder, or ``sweep/<tag>``."""
    return experiment_dir(cfg) if tag is None else experiment_dir(cfg) / "sweep" / tag


# keys that may change between an interrupted run and its resumption
_RESUME_FREE = {
    "training": {
        "resume",
        "checkpoint_freq",
        "validation_freq",
        "num_epochs",
        "num_tokens",
        "wandb_project",
        "wandb_entity",
        "use_wandb",
        "tensorboard",
        "num_threads",
        "progress_every",
        "dense_latent_freq",
    },
    "sae": {"device", "fast_kernels"},
}


def resume_settings(cfg: DictConfig) -> dict:
    """The settings that shape a run's weights (and must match for it to be
    resumed): seed, the data keys, ``sae.*`` and ``training.*`` but the
    bookkeeping keys (frequencies, length, loggers, threads)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    keep = {
        "seed": c.get("seed"),
        "data": {
            k: c.get("data", {}).get(k) for k in ("feature_dir", "file_type", "split_csv_path")
        },
    }
    for section, free in _RESUME_FREE.items():
        keep[section] = {k: v for k, v in (c.get(section) or {}).items() if k not in free}
    return keep


def resume_fingerprint(cfg: DictConfig) -> str:
    """Hash of :func:`resume_settings`."""
    keep = resume_settings(cfg)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
