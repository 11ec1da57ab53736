"""The pipeline config: frozen dataclasses built from one YAML.

:class:`PipelineConfig` lists every key ``sae1n pipeline CONFIG.yaml`` accepts
(``docs/config_keys.md`` is generated from these classes with
:func:`sae1n.configs.schema.describe`). :func:`load_pipeline_config` merges the
defaults, an optional base mapping, the YAML and ``key=value`` overrides and
builds the typed config: an unknown key at any level is one
:class:`~sae1n.errors.ConfigError` naming it by its dotted path, a value of the
wrong type or outside a key's choices likewise.

The choice tuples are spelt out here (so that importing the config stays
cheap: no numpy/shapely); tests/pipeline/test_config.py checks that they equal
the stages' own lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sae1n.configs.schema import build, defaults, section, setting
from sae1n.errors import ConfigError

TASKS = ("camelyon16", "panda")  # sae1n.datasets.metadata.TASKS
COMPAT = ("default", "paper")
BACKENDS = ("auto", "openslide", "tiffslide")  # sae1n.wsi.readers.BACKENDS
ANNOTATION_FORMATS = ("auto", "asap", "geojson", "panda_mask")  # sae1n.datasets.annotations.FORMATS
POOLINGS = ("max", "mean", "topk_mean", "quantile")  # sae1n.neurons.pooling.POOLINGS


@dataclass(frozen=True)
class SlidesConfig:
    dir: str | None = setting(None, "folder of the whole-slide images (required)")
    ext: str = setting(".tif", "file extension of the slides in slides.dir")
    backend: str = setting(
        "auto",
        "slide reader for patching and feature extraction (auto: the fastest reader known to give "
        "OpenSlide's pixels, see sae1n.wsi.readers)",
        choices=BACKENDS,
    )


@dataclass(frozen=True)
class AnnotationsConfig:
    dir: str | None = setting(
        None, "folder of tumour annotations (needed for patch labels and patch-level evaluation)"
    )
    format: str = setting(
        "auto", "annotation file format (auto: from each file's extension)", choices=ANNOTATION_FORMATS
    )
    threshold: float = setting(
        0.5, "a patch is labelled tumour when at least this fraction of its area is annotated tumour (0-1]"
    )


@dataclass(frozen=True)
class PatchingConfig:
    patch_size: int = setting(256, "patch side in pixels at the patch level")
    step_size: int | None = setting(None, "grid step in pixels at patch_level (null: patch_size)")
    patch_level: int = setting(1, "pyramid level the patches are cut at (0: full resolution)")
    preset: str = setting(
        "bwh_biopsy", "tissue segmentation preset: bwh_biopsy, bwh_resection, tcga or a CLAM preset CSV"
    )
    target_mpp: float | None = setting(
        None, "patch at this microns-per-pixel instead of patch_level (null: use patch_level)"
    )
    magnification: float | None = setting(
        None, "patch at this objective magnification instead of patch_level (null: use patch_level)"
    )


@dataclass(frozen=True)
class EncoderConfig:
    name: str = setting("conch_v1", "patch encoder of extract-features (see sae1n extract-features --help)")
    checkpoint: str | None = setting(
        None, "local weight file/folder (null: the encoder's environment variable, then the hub)"
    )
    batch_size: int = setting(512, "patches per encoder forward pass (does not change the features)")
    num_workers: int | None = setting(None, "DataLoader workers reading patches (null: min(8, CPUs))")
    device: str = setting("auto", "torch device of the encoder: auto, cpu, cuda, cuda:1, ...")


@dataclass(frozen=True)
class SplitsConfig:
    k: int = setting(5, "number of cross-validation folds create-splits writes")
    repeats: int = setting(1, "number of repeated k-fold splits")
    fold: int = setting(0, "which split the SAE, neuron ranking, MIL and evaluation stages use")


@dataclass(frozen=True)
class SaeConfig:
    exp: str = setting("camelyon16_conch_0", "SAE experiment name (see sae1n train-sae --help)")
    overrides: tuple[str, ...] = setting(
        [], "key=value overrides of the SAE experiment, e.g. [training.num_epochs=5]"
    )


@dataclass(frozen=True)
class NeuronsConfig:
    pooling: str = setting(
        "max", "how a neuron's patch activations become a slide score for ranking (paper: max)", choices=POOLINGS
    )
    top_n: int = setting(10, "top-ranked neurons evaluate-patches scores on the test slides")


@dataclass(frozen=True)
class MilConfig:
    exps: tuple[str, ...] = setting([], "MIL experiments to train (see sae1n train-mil --help); [] skips MIL")
    overrides: tuple[str, ...] = setting([], "key=value overrides applied to every MIL experiment")


@dataclass(frozen=True)
class FiguresConfig:
    n_slides: int = setting(2, "test slides drawn as heatmaps (tumour slides first)")
    gallery: int = setting(16, "patches in the top-activating gallery of the selected neuron (0: none)")


@dataclass(frozen=True)
class PipelineConfig:
    """Every key of a ``sae1n pipeline`` YAML, with its default and meaning."""

    work_dir: str = setting("./sae1n-run", "folder the pipeline owns and writes every output to")
    task: str = setting("camelyon16", "dataset the labels and splits follow", choices=TASKS)
    seed: int = setting(42, "random seed of the splits, SAE and MIL training")
    compat: str = setting(
        "default",
        "paper: train-sae, save-sae-features, analyze-sae and train-mil as the paper's code; default: sae1n's fixes (docs/paper_differences.md)",
        choices=COMPAT,
    )
    slides: SlidesConfig = section(SlidesConfig, "the whole-slide images")
    annotations: AnnotationsConfig = section(AnnotationsConfig, "tumour annotations")
    reference_csv: str | None = setting(None, "camelyon16: the official test-set labels CSV")
    panda_csv: str | None = setting(None, "panda: the challenge's train.csv (labels and data providers)")
    patching: PatchingConfig = section(PatchingConfig, "create-patches")
    encoder: EncoderConfig = section(EncoderConfig, "extract-features")
    splits: SplitsConfig = section(SplitsConfig, "create-splits")
    sae: SaeConfig = section(SaeConfig, "train-sae")
    neurons: NeuronsConfig = section(NeuronsConfig, "analyze-sae and evaluate-patches")
    mil: MilConfig = section(MilConfig, "train-mil")
    figures: FiguresConfig = section(FiguresConfig, "heatmap")


def _check(mapping, where: str) -> None:
    """Refuse unknown keys (every level, one error) and bad values of one source."""
    build(PipelineConfig, mapping, where=where, label="pipeline")


def load_pipeline_config(
    path: str | os.PathLike | None = None, overrides=(), base: Mapping | None = None
) -> PipelineConfig:
    """The typed config from the defaults, an optional ``base`` mapping, the
    YAML ``path`` and ``key=value`` overrides (later ones win)."""
    from omegaconf import DictConfig, OmegaConf

    from sae1n.configs import apply_overrides

    _check(base or {}, " (in the base config)")
    cfg = OmegaConf.merge(OmegaConf.create(defaults(PipelineConfig)), OmegaConf.create(dict(base or {})))
    where = ""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"pipeline config {p} not found; see README 'Your own cohort' for an example"
            )
        where = f" (in {p})"
        try:
            user = OmegaConf.load(p)
        except Exception as exc:  # yaml's and omegaconf's parse errors
            raise ConfigError(f"pipeline config {p} is not valid YAML: {exc}") from exc
        if not isinstance(user, DictConfig):
            raise ConfigError(f"pipeline config {p} must be a mapping of keys, e.g. 'slides: {{dir: ...}}'")
        _check(user, where)
        cfg = OmegaConf.merge(cfg, user)
    cfg = apply_overrides(cfg, list(overrides))
    if overrides:
        where = f" (in {path} or the overrides)" if path is not None else " (in the overrides)"
    typed = build(PipelineConfig, cfg, where=where, label="pipeline")
    if not typed.slides.dir:
        raise ConfigError(f"pipeline config needs slides.dir (the folder of WSIs){where}")
    return typed
