"""The settings of a ``train-mil`` run as a frozen, typed config.

:class:`MILRunConfig` declares every key of ``configs/mil/_base.yaml`` (its
defaults are that file's values; a test keeps them equal) with its type,
allowed values and meaning, so ``docs/config_keys.md`` can be generated from
it. :func:`load_mil_config` loads an ``exp=NAME`` YAML with overrides and
builds it; :func:`build_mil_config` builds one from any mapping. Unknown keys
(in an override or in a YAML file), wrong types, values outside a key's
choices and model keys that the chosen ``model.type`` does not take are one
:class:`~sae1n.errors.ConfigError` naming the dotted key.

This module does not import torch (the model keys per type are listed here;
a test checks them against the models' signatures).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sae1n.configs.schema import build, section, setting, to_dict
from sae1n.errors import ConfigError

COMPAT = ("default", "paper")
PRELOADING = ("yes", "no", "auto")
OPTIMIZERS = ("adam", "adamw", "sgd")
FILE_TYPES = ("h5", "pt", "sparse")
MODEL_TYPES = ("max_mil", "mean_mil", "att_mil", "clam_sb", "clam_mb", "trans_mil", "mamba_mil")
MODEL_ALIASES = {
    "maxmil": "max_mil",
    "meanmil": "mean_mil",
    "abmil": "att_mil",
    "transmil": "trans_mil",
    "mambamil": "mamba_mil",
}
_CLAM_KEYS = ("hidden_dim", "attn_dim", "gated", "k_sample", "bag_weight", "subtyping")
# the model.* keys each model type takes besides type, in_dim, drop_out and act
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "max_mil": ("hidden_dim",),
    "mean_mil": ("hidden_dim",),
    "att_mil": ("hidden_dim", "attn_dim", "gated"),
    "clam_sb": _CLAM_KEYS,
    "clam_mb": _CLAM_KEYS,
    "trans_mil": ("hidden_dim", "heads", "num_landmarks", "attn_dropout", "exact_attention"),
    "mamba_mil": ("hidden_dim", "attn_dim", "layers", "rate", "d_state", "d_conv", "expand"),
}
COMMON_MODEL_KEYS = ("type", "in_dim", "drop_out", "act")


@dataclass(frozen=True)
class DatasetConfig:
    """Where the slides' labels and features are."""

    csv_path: str = setting(
        "./dataset_csv/camelyon16_metadata.csv",
        "dataset CSV with slide_id and label (or isup_grade) columns (sae1n create-metadata)",
    )
    data_dir: str = setting(
        "../features/camelyon16/clam_processed/",
        "feature root; bags are read from <data_dir>/<features.backbone>/{h5,pt,sparse}_files",
    )
    label_col: str | None = setting(
        None, "label column; null: `label` (normal/tumor), or isup_grade when n_classes > 2"
    )
    label_dict: dict | None = setting(
        None, "label string -> class index; null: {normal: 0, tumor: 1} for binary tasks"
    )


@dataclass(frozen=True)
class FeaturesConfig:
    """Which feature files and (for SAE variants) which SAE neurons."""

    backbone: str | None = setting(
        "features_conch_v1", "feature folder under dataset.data_dir (null: data_dir itself)"
    )
    patch_size: str = setting(
        "", "optional sub-folder of {h5,pt,sparse}_files holding the files ('' for none)"
    )
    file_type: str | None = setting(
        None, "feature file format; null: h5 if present, else pt, else sparse", choices=FILE_TYPES
    )
    use_sae_selected_units: bool = setting(
        True, "train on the top-ranked SAE neurons of features.sae_unit_summary_path only"
    )
    sae_unit_summary_path: str | None = setting(
        "./output/sae/camelyon16_conch_0/analysis/sae_analysis_t_test.csv",
        "neuron ranking CSV of sae1n analyze-sae (with use_sae_selected_units)",
    )
    num_top_sae_units: int = setting(2048, "how many top-ranked neurons to keep (1: SAE-1N)")
    sae_unit_selection_metric: str | None = setting(
        "p_value",
        "ranking column to sort by (p/q values ascending, others descending); null or rank: file order",
    )


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser of the MIL model."""

    type: str = setting("adam", "optimiser (sgd uses momentum 0.9)", choices=OPTIMIZERS)
    lr: float = setting(0.0001, "learning rate")
    reg: float = setting(0.00001, "weight decay")


@dataclass(frozen=True)
class ModelConfig:
    """The MIL model; a null model key means the model's own default."""

    type: str = setting(
        "att_mil",
        "MIL model (aliases maxmil, meanmil, abmil, transmil, mambamil)",
        choices=(*MODEL_TYPES, *MODEL_ALIASES),
    )
    in_dim: int | str | None = setting(
        512, "feature dimension; null or auto: inferred from the features (SAE units: their number)"
    )
    drop_out: float | bool = setting(
        0.25, "dropout rate after the patch MLP (true: 0.25, false: none)"
    )
    act: str = setting("relu", "activation of the patch MLP: relu, gelu or tanh")
    hidden_dim: int | None = setting(None, "width of the patch MLP (every model; default 512)")
    attn_dim: int | None = setting(
        None, "attention hidden size (att_mil, clam_*, mamba_mil; default 128, CLAM 256)"
    )
    gated: bool | None = setting(
        None, "gated attention (att_mil default true, clam_* default true)"
    )
    k_sample: int | None = setting(
        None, "top/bottom attended patches of CLAM's instance loss (clam_*; default 8)"
    )
    bag_weight: float | None = setting(
        None, "weight of the slide loss against CLAM's instance loss (clam_*; default 0.7)"
    )
    subtyping: bool | None = setting(
        None, "CLAM: other classes' top patches are instance negatives too (clam_*; default false)"
    )
    heads: int | None = setting(None, "attention heads (trans_mil; default 8)")
    num_landmarks: int | None = setting(
        None, "Nystrom landmarks (trans_mil; default null: hidden_dim / 2)"
    )
    attn_dropout: float | None = setting(None, "attention dropout (trans_mil; default 0.1)")
    exact_attention: bool | None = setting(
        None,
        "exact attention up to num_landmarks tokens, unpadded segment means above (trans_mil; default false)",
    )
    layers: int | None = setting(None, "SR-Mamba layers (mamba_mil; default 2)")
    rate: int | None = setting(None, "SR-Mamba sequence reordering rate (mamba_mil; default 10)")
    d_state: int | None = setting(None, "Mamba state size (mamba_mil; default 16)")
    d_conv: int | None = setting(None, "Mamba convolution width (mamba_mil; default 4)")
    expand: int | None = setting(None, "Mamba inner expansion factor (mamba_mil; default 2)")

    @property
    def canonical_type(self) -> str:
        """``type`` with its alias resolved (``abmil`` -> ``att_mil``)."""
        return MODEL_ALIASES.get(self.type, self.type)

    def set_keys(self) -> dict:
        """type (canonical), in_dim, drop_out, act and the model keys that are set:
        the ``model`` mapping the models, checkpoints and provenance use."""
        out = {k: getattr(self, k) for k in COMMON_MODEL_KEYS}
        out["type"] = self.canonical_type
        for f in dataclasses.fields(self):
            if f.name not in COMMON_MODEL_KEYS and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class MILRunConfig:
    """One ``sae1n train-mil`` run: k-fold MIL training and evaluation."""

    seed: int = setting(42, "seed of model init, epoch order and label_frac sampling")
    task: str = setting("camelyon16", "task name (informational; the paper's key)")
    n_classes: int = setting(2, "number of slide classes (>= 2; PANDA ISUP: 6)")
    experiment_code: str = setting(
        "mil", "results go to <results_dir_base>/<experiment_code>/<exp>/"
    )
    results_dir_base: str = setting("output", "root of the results folder")
    compat: str = setting(
        "default",
        "paper: train and evaluate exactly as the paper's code (see docs/paper_differences.md)",
        choices=COMPAT,
    )
    dataset: DatasetConfig = section(DatasetConfig, "slide labels and feature location")
    features: FeaturesConfig = section(FeaturesConfig, "feature files and SAE neuron selection")
    split_dir: str = setting(
        "./splits/camelyon16_42/", "folder of splits_<k>.csv (train/val/test columns)"
    )
    label_frac: float = setting(
        1.0, "fraction of each class's training slides to use, in (0, 1] (sampled with seed)"
    )
    max_epochs: int = setting(200, "training epochs per fold (at most)")
    preloading: str = setting(
        "auto",
        "load every bag into memory first; auto: when they fit in half the free memory",
        choices=PRELOADING,
    )
    log_data: bool = setting(False, "the paper's TensorBoard switch; unsupported (log.csv is written)")
    testing: bool = setting(False, "the paper's debug switch; ignored")
    early_stopping: bool = setting(True, "stop on the validation loss (see patience, stop_epoch)")
    patience: int = setting(20, "epochs without a lower validation loss before stopping ...")
    stop_epoch: int = setting(50, "... but never stop at or before this epoch")
    weighted_sample: bool = setting(
        False, "draw training bags with class-balanced weights (with replacement)"
    )
    save_patch_scores: bool = setting(
        True, "write fold_<k>/patch_scores/<slide>.h5 for val and test slides"
    )
    device: str = setting("auto", "cpu, cuda, cuda:1 ... or auto (CLI: --device)")
    amp: bool = setting(True, "mixed precision on CUDA (never with compat=paper)")
    allow_missing: bool = setting(
        False, "skip split slides without features or labels (CLI: --allow_missing)"
    )
    optimizer: OptimizerConfig = section(OptimizerConfig, "optimiser")
    model: ModelConfig = section(ModelConfig, "MIL model and its keyword arguments")
    k: int = setting(5, "number of folds (splits_0 .. splits_<k-1>)")
    k_start: int = setting(0, "first fold to train (-1: 0)")
    k_end: int = setting(5, "train folds k_start .. k_end-1 (-1: k)")
    exp_name: str = setting(
        "mil_experiment", "experiment name (set from exp=NAME): the results sub-folder"
    )


def build_mil_config(mapping: Mapping | None, where: str = "") -> MILRunConfig:
    """A :class:`MILRunConfig` from a mapping (OmegaConf node or dict), checked:
    unknown keys, types, choices, and model keys of another model type.
    ``where`` (e.g. ``" (in configs/mil/x.yaml)"``) is added to the messages."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(mapping, DictConfig):
        mapping = OmegaConf.to_container(mapping, resolve=True)
    mapping = dict(mapping or {})
    # YAML reads unquoted yes/no as booleans
    if isinstance(mapping.get("preloading"), bool):
        mapping["preloading"] = "yes" if mapping["preloading"] else "no"
    cfg = build(MILRunConfig, mapping, where=where)
    check_mil_config(cfg, where)
    return cfg


def check_mil_config(cfg: MILRunConfig, where: str = "") -> None:
    """Raise :class:`ConfigError` for a model key the chosen ``model.type`` does
    not take, or a ``model.in_dim`` that is neither a number nor auto/null."""
    model = cfg.model
    kind = model.canonical_type
    wrong = [
        k
        for k in model.set_keys()
        if k not in COMMON_MODEL_KEYS and k not in MODEL_KEYS[kind]
    ]
    if wrong:
        keys = ", ".join(f"model.{k}" for k in wrong)
        raise ConfigError(
            f"{keys} do{'es' if len(wrong) == 1 else ''} not apply to model.type={model.type}{where}; "
            f"its keys: {', '.join(f'model.{k}' for k in (*COMMON_MODEL_KEYS, *MODEL_KEYS[kind]))}. "
            "Remove the key or set it to null"
        )
    if isinstance(model.in_dim, str) and model.in_dim != "auto":
        raise ConfigError(
            f"model.in_dim{where}: expected an integer, auto or null, got {model.in_dim!r}"
        )


def model_in_dim(cfg: MILRunConfig) -> int | None:
    """``model.in_dim`` as a number, or None for auto/null (inferred)."""
    return None if cfg.model.in_dim in (None, "auto") else int(cfg.model.in_dim)


def as_mapping(cfg: MILRunConfig) -> dict:
    """The config as the plain mapping the YAML gave: every key, but only the
    model keys that are set (``model.type`` as written). Written to the results
    folder's config.yaml and hashed into the fold records."""
    out = to_dict(cfg)
    model = {k: v for k, v in out["model"].items() if k in COMMON_MODEL_KEYS or v is not None}
    out["model"] = model
    return out


def load_mil_config(
    exp: str,
    overrides: Sequence[str] = (),
    search_dirs: Sequence[str | os.PathLike] = (),
) -> MILRunConfig:
    """Load the ``exp`` MIL config (name or YAML path) with ``key=value``
    overrides and build it; errors name the YAML file."""
    from sae1n.configs import find_experiment_file, load_experiment

    cfg = load_experiment("mil", exp, overrides, search_dirs)
    return build_mil_config(cfg, where=f" (in {find_experiment_file('mil', exp, search_dirs)} or its overrides)")


__all__ = [
    "DatasetConfig",
    "FeaturesConfig",
    "MILRunConfig",
    "ModelConfig",
    "OptimizerConfig",
    "as_mapping",
    "build_mil_config",
    "check_mil_config",
    "load_mil_config",
    "model_in_dim",
]
