"""One SAE of a training pass (:class:`Run`: its settings, model, optimiser,
progress and checkpoint writer) and the record of what makes its weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sae1n.errors import InputFileError
from sae1n.io import Provenance
from sae1n.sae.checkpoints import save_sae, write_paper_pt
from sae1n.sae.config import SAERunConfig, resume_settings
from sae1n.sae.data import TrainingData
from sae1n.sae.loggers import MetricsLog
from sae1n.sae.model_config import SAEConfig
from sae1n.sae.models import BaseSAE
from sae1n.sae.step import TrainSums

CHECKPOINT_KIND = "sae-checkpoint"
CHECKPOINT_SCHEMA = 1


@dataclass
class Run:
    """One SAE being trained: its settings, model, optimiser and progress."""

    tag: str | None
    cfg: DictConfig
    settings: SAERunConfig  # the typed view of ``cfg``
    out_dir: Path
    model: BaseSAE
    optimizer: torch.optim.Optimizer
    provenance: Provenance
    logs: MetricsLog
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    sums: TrainSums | None = None
    last_out: dict | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def label(self) -> str:
        return self.tag or str(self.settings.exp_name)

    @property
    def plain_config(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True)

    @property
    def paper_pt(self) -> bool:
        return self.settings.checkpoint.paper_pt

    def save(self, name: str, extra: dict) -> None:
        """``checkpoints/sae_<name>.safetensors`` (+ config, + the paper's .pt)."""
        path = self.ckpt_dir / f"sae_{name}.safetensors"
        save_sae(self.model, path, config=self.plain_config, extra=extra, provenance=self.provenance)
        if self.paper_pt:
            write_paper_pt(path.with_suffix(".pt"), self.model.state_dict())


def resolved_config(cfg: DictConfig, dim: int) -> DictConfig:
    """A copy of ``cfg`` with what the data decide filled in: act_size, dict_size,
    the canonical model type, Matryoshka groups, absolute data paths."""
    cfg = cfg.copy()
    sae = cfg.sae
    if sae.get("act_size") is None:
        sae.act_size = dim
    sae_cfg = SAEConfig.from_mapping(OmegaConf.to_container(sae, resolve=True))
    sae.dict_size = sae_cfg.dict_size
    sae.model_type = sae_cfg.model_type
    if sae_cfg.group_sizes is not None:
        sae.group_sizes = list(sae_cfg.group_sizes)
    cfg.data.feature_dir = str(Path(str(cfg.data.feature_dir)).resolve())
    if cfg.data.get("split_csv_path"):
        cfg.data.split_csv_path = str(Path(str(cfg.data.split_csv_path)).resolve())
    return cfg


def check_act_size(cfg: DictConfig, data: TrainingData) -> None:
    """Refuse features whose width differs from a given ``sae.act_size``."""
    act = cfg.sae.get("act_size")
    if act is not None and int(act) != data.dim:
        first = data.paths[data.train_ids[0]]
        raise InputFileError(
            first,
            f"feature dimension {data.dim} differs from sae.act_size={act}",
            f"set sae.act_size={data.dim}, or point data.feature_dir to features of the intended encoder",
        )


def run_provenance(cfg: DictConfig, data: TrainingData) -> Provenance:
    """The record of what makes this run's weights: the settings that shape
    the model (seed, sae.*, training.* but the bookkeeping keys) and the
    identity of its inputs (the packed store's fingerprint, the slides of each
    split part, the split file's content)."""
    inputs: dict = {"features": data.identity()}
    if data.split_path is not None:
        inputs["split_csv"] = data.split_path
    return Provenance.make(
        CHECKPOINT_KIND, CHECKPOINT_SCHEMA, settings=resume_settings(cfg), inputs=inputs
    )
