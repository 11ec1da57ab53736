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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sae1n.configs import load_experiment
from sae1n.configs.schema import build, section, setting
from sae1n.errors import ConfigError

_UNUSED = "unused: accepted for the paper's configs, no effect (the packed feature store replaces its buffered loader)"


@dataclass(frozen=True)
class SAEDataSettings:
    """``data.*``: where the patch features and the split come from."""

    feature_dir: str = setting(
        "../features/camelyon16/clam_processed/features_conch_v1/",
        "folder of per-slide feature files (CLAM h5_files/pt_files, or the files themselves)",
    )
    file_type: str | None = setting(
        "pt", "pt or h5 (falls back to the other when absent; null: whichever is there)", choices=("pt", "h5")
    )
    h5_dataset_name: str = setting("features", "h5 dataset to read (features and feats are both read)")
    num_batches_in_buffer: int = setting(128, _UNUSED)
    num_workers: int = setting(8, _UNUSED)
    cache_maxsize: int = setting(512, _UNUSED)
    prefetch_factor: int = setting(2, _UNUSED)
    split_csv_path: str | None = setting(
        "./splits/camelyon16_42/splits_0.csv",
        "CLAM split CSV (train/val columns); null: every slide trains, no validation",
    )
    wsi_dir: str | None = setting("../data/CAMELYON16/images/", "slide folder (recorded only, as the paper's)")
    store_dir: str | None = setting(None, "packed feature store (null: <output_dir>/.stores/...)")
    store_dtype: str = setting("float32", "dtype of the packed store (float16 halves it)", choices=("float32", "float16"))
    allow_missing: bool = setting(False, "train without split slides that lack features")
    prefetch: str | bool = setting(
        "auto", "load the next batch in a thread (auto: on GPU, or with a spare core)"
    )


@dataclass(frozen=True)
class SAEModelSettings:
    """``sae.*``: architecture and loss of the SAE (see :class:`sae1n.sae.models.SAEConfig`)."""

    model_type: str = setting(
        "BatchTopKSAE",
        "BatchTopKSAE, TopKSAE, VanillaSAE, JumpReLUSAE or MatryoshkaBatchTopKSAE (short aliases accepted)",
    )
    act_size: int | None = setting(512, "feature width, checked against the features (null: taken from them)")
    dict_size_ratio: float = setting(4, "latents per feature dimension")
    dict_size: int | None = setting(None, "number of latents (null: act_size * dict_size_ratio)")
    l1_coeff: float = setting(0, "L1 penalty on the codes (VanillaSAE, JumpReLUSAE)")
    dtype: str = setting("float32", "parameter dtype (only float32 is supported)")
    device: str = setting("auto", "auto: cuda when available, else cpu; or cpu, cuda, cuda:N")
    input_unit_norm: bool = setting(False, "scale each input to unit norm before encoding")
    n_batches_to_dead: int = setting(5, "a latent silent this many batches counts as dead (AuxK revives it)")
    top_k: int = setting(16, "active latents per patch (TopK) or per patch on average (BatchTopK)")
    top_k_aux: int = setting(512, "dead latents used by the auxiliary loss")
    aux_penalty: float = setting(0.03125, "weight of the auxiliary (AuxK) loss")
    bandwidth: float = setting(0.001, "JumpReLU straight-through width")
    threshold_lr: float = setting(0.01, "BatchTopK inference-threshold EMA rate")
    paper_compat_no_b_enc: bool = setting(False, "TopK/BatchTopK encoders ignore b_enc, as the paper's code does")
    paper_compat_update_in_eval: bool = setting(
        False, "threshold and dead counters also update in validation, as in the paper"
    )
    fast_kernels: bool = setting(True, "exact sparse TopK/BatchTopK step (false: the dense reference path)")
    b_dec_init: str = setting(
        "zeros",
        "decoder bias start: zeros (the paper), or the mean / coordinate median of the first 65,536 train patches",
        choices=("zeros", "mean", "median"),
    )
    group_sizes: tuple[int, ...] | None = setting(
        None, "MatryoshkaBatchTopKSAE prefix group sizes (null: halving)"
    )
    init_weights: str | None = setting(
        None, "compat=paper: a state-dict file loaded as the initial weights (reproduces a recorded run)"
    )


@dataclass(frozen=True)
class SAETrainingSettings:
    """``training.*``: optimiser, length, validation, logging and resume."""

    num_epochs: int | None = setting(100, "passes over the train patches")
    num_tokens: int | None = setting(None, "train on this many patches instead of num_epochs (the paper's)")
    batch_size: int = setting(4096, "patches per step")
    lr: float = setting(1.0e-3, "Adam learning rate")
    beta1: float = setting(0.9, "Adam beta1")
    beta2: float = setting(0.99, "Adam beta2")
    max_grad_norm: float = setting(100000, "gradient-norm clip")
    wandb_project: str | None = setting("camelyon16-sae", "W&B project (with use_wandb)")
    wandb_entity: str | None = setting(None, "W&B entity (with use_wandb)")
    use_wandb: bool = setting(False, "log to Weights & Biases (when installed)")
    tensorboard: bool = setting(True, "log to <run>/logs/tensorboard when tensorboard is installed")
    checkpoint_freq: int = setting(10000, "steps between checkpoints (0: only the best and the last)")
    validation_freq: int = setting(500, "steps between validations (0: none)")
    resume: bool = setting(True, "continue from checkpoints/resume_state.pt when present")
    dense_latent_freq: float = setting(0.1, "a latent firing on more validation patches than this is dense")
    num_threads: int | None = setting(
        None, "torch threads (null: every usable core on CPU, torch's default on GPU)"
    )
    progress_every: int = setting(10, "progress-bar refresh, in steps")


@dataclass(frozen=True)
class SAECheckpointSettings:
    """``checkpoint.*``: extra checkpoint formats."""

    paper_pt: bool = setting(
        False, "also write the paper's sae_best.pt / sae_<step>.pt state dicts (always with compat=paper)"
    )


@dataclass(frozen=True)
class SAERunConfig:
    """Every key of a ``train-sae`` experiment (``configs/sae/_base.yaml``).

    :func:`load_sae_config` checks a loaded experiment against it (unknown
    keys, types, choices) and returns the OmegaConf tree the trainer reads."""

    seed: int = setting(42, "seed of every random draw (init, batch order)")
    debug: bool = setting(False, "the paper's debug flag (recorded only)")
    output_dir: str = setting("./output/sae", "outputs go to <output_dir>/<exp>/")
    compat: str = setting(
        "default",
        "paper: train exactly as the paper's code (sae1n.sae.paper_exact)",
        choices=("default", "paper"),
    )
    data: SAEDataSettings = section(SAEDataSettings, "features and split")
    sae: SAEModelSettings = section(SAEModelSettings, "architecture and loss")
    training: SAETrainingSettings = section(SAETrainingSettings, "optimiser, length, logging")
    checkpoint: SAECheckpointSettings = section(SAECheckpointSettings, "extra checkpoint formats")
    sweep: Any = setting(
        None,
        "train several SAEs on one pass: {sae: {top_k: [8, 16, 32]}} (a grid) or a list of partial configs",
    )
    exp_name: str | None = setting(None, "the experiment's name (set from exp=NAME)")
    exp_group_name: str | None = setting(None, "the paper's Hydra group name (in its saved configs; recorded only)")
    exp_run_name: str | None = setting(None, "the paper's Hydra run name (in its saved configs; recorded only)")
    sweep_tag: str | None = setting(None, "set per run of a sweep")


def check_sae_config(cfg, source: str | None = None) -> SAERunConfig:
    """The typed view of an SAE config; unknown keys, wrong types and values
    outside a key's choices are one :class:`ConfigError` naming the key."""
    if isinstance(cfg, SAERunConfig):
        return cfg
    where = f" (in {source})" if source else ""
    return build(SAERunConfig, cfg, where=where)


def training_settings(training) -> SAETrainingSettings:
    """``training.*`` as typed settings (a mapping may give only some keys)."""
    if isinstance(training, SAETrainingSettings):
        return training
    return build(SAETrainingSettings, training, prefix="training.")

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
    check_sae_config(cfg, source=f"sae config {exp!r}")
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
    for part, free in _RESUME_FREE.items():
        keep[part] = {k: v for k, v in (c.get(part) or {}).items() if k not in free}
    return keep


def resume_fingerprint(cfg: DictConfig) -> str:
    """Hash of :func:`resume_settings`."""
    keep = resume_settings(cfg)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
