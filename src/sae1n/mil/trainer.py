"""The MIL trainer: :class:`MILTrainer` trains and evaluates the folds of one
``train-mil`` run from a :class:`~sae1n.mil.config.MILRunConfig`.

The run, as the algorithm reads::

    plan:  for each fold: its slides, its provenance; refuse stale outputs
    for each fold (skipped when its record is current):
        model = build(model.type)                  # after seeding
        history, best = fit(model)                 # early stopping on the val loss
        model.load(best); save checkpoint, log.csv
        for val, test: evaluate -> predictions, metrics, patch scores
        write splits.csv, metrics.json (last: the fold is done)
    write summary.csv / summary.json / config.yaml

The loops are :mod:`sae1n.mil.loops` (sae1n's and ``compat=paper``'s), the
slides of a fold :mod:`sae1n.mil.folds`, the writers :mod:`sae1n.mil.outputs`.
Outputs under ``<results_dir_base>/<experiment_code>/<exp>/`` are listed in
:mod:`sae1n.mil.train`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sae1n.datasets.splits import read_split
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_write_csv
from sae1n.io.provenance import Provenance, StaleOutputError, input_identity, read_provenance
from sae1n.mil import loops, outputs
from sae1n.mil.config import MILRunConfig, as_mapping, check_mil_config, model_in_dim
from sae1n.mil.data import BagSource, read_slide_labels, resolve_feature_paths, select_sae_units
from sae1n.mil.folds import (
    check_training_set,
    fold_range,
    fold_sets,
    label_fraction,
    maybe_preload,
)
from sae1n.mil.metrics import slide_metrics
from sae1n.mil.models import MILModel, build_model, save_mil_checkpoint
from sae1n.utils import resolve_device, seed_everything

log = logging.getLogger("sae1n.mil.train")

# the settings hashed into a fold's record (with the model, in_dim, fold, slides, units)
FINGERPRINT_KEYS = (
    "seed",
    "n_classes",
    "dataset",
    "features",
    "max_epochs",
    "early_stopping",
    "patience",
    "stop_epoch",
    "optimizer",
    "weighted_sample",
    "label_frac",
)


@dataclass
class FoldPlan:
    """One fold before training: its slides, its record and whether the
    outputs on disk already match it."""

    sets: dict[str, list[str]]
    provenance: Provenance
    current: bool = False


def _required(value, key: str) -> str:
    if value in (None, ""):
        raise ConfigError(f"{key} is not set; add {key}=... to the command or the experiment YAML")
    return str(value)


class MILTrainer:
    """Trains the folds of one run: ``MILTrainer(cfg).run(overwrite=False)``."""

    def __init__(
        self, cfg: MILRunConfig, allow_missing: bool | None = None, device: str | None = None
    ):
        check_mil_config(cfg)
        self.cfg = cfg
        self.exp = cfg.exp_name
        self.n_classes = cfg.n_classes
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2 (got {self.n_classes})")
        self.seed = cfg.seed
        self.compat = cfg.compat
        self.paper = self.compat == "paper"
        self.allow_missing = cfg.allow_missing if allow_missing is None else bool(allow_missing)
        self.device = resolve_device(device or cfg.device)
        self.amp = self.device.startswith("cuda") and cfg.amp and not self.paper
        self.results_dir = Path(cfg.results_dir_base) / cfg.experiment_code / self.exp
        self.model_cfg = cfg.model.set_keys()
        if self.paper:
            from sae1n.mil.paper_models import PAPER_MODEL_TYPES

            if self.model_cfg["type"] not in PAPER_MODEL_TYPES:
                raise ConfigError(
                    f"compat=paper supports model.type {', '.join(PAPER_MODEL_TYPES)}, got {self.model_cfg['type']}"
                )
        self.dataset_csv = Path(_required(cfg.dataset.csv_path, "dataset.csv_path"))
        self.labels = read_slide_labels(
            self.dataset_csv, self.n_classes, cfg.dataset.label_col, cfg.dataset.label_dict or None
        )
        self.units, self.ranking_csv = self._select_units()
        self.feature_dir, paths = resolve_feature_paths(
            _required(cfg.dataset.data_dir, "dataset.data_dir"),
            cfg.features.backbone,
            cfg.features.patch_size,
            cfg.features.file_type,
        )
        configured = model_in_dim(cfg)
        if self.units is not None:
            if configured is not None and configured != len(self.units):
                log.info(
                    "model.in_dim %s -> %d (number of selected SAE units)", configured, len(self.units)
                )
            self.in_dim = len(self.units)
        else:
            self.in_dim = configured
        self.source = BagSource(paths, self.units, expected_dim=self.in_dim)
        self.folds = fold_range(cfg.k, cfg.k_start, cfg.k_end)
        if cfg.log_data:
            log.warning(
                "log_data (TensorBoard) is not supported; per-epoch metrics are written to fold_<k>/log.csv"
            )
        self.split_dir = Path(_required(cfg.split_dir, "split_dir"))
        self._warned: set[tuple[str, str]] = set()
        self._preload_noted = False
        self._prov: Provenance | None = None
        self.val_trace: list[dict] = []  # paper mode: every evaluation forward
        self.train_trace: list[dict] = []  # paper mode: every training forward

    def _select_units(self):
        f = self.cfg.features
        if not f.use_sae_selected_units:
            return None, None
        ranking = Path(_required(f.sae_unit_summary_path, "features.sae_unit_summary_path"))
        units = select_sae_units(
            ranking, f.num_top_sae_units, f.sae_unit_selection_metric, compat=self.compat
        )
        log.info(
            "using %d selected SAE unit(s): %s",
            len(units),
            ", ".join(map(str, units[:10])) + (" ..." if len(units) > 10 else ""),
        )
        return units, ranking

    # ------------------------------------------------------------------ the run

    def run(self, overwrite: bool = False) -> pd.DataFrame:
        """Train every fold that is not done; write and return the summary
        table (one row per fold, then ``mean`` and ``std`` rows)."""
        plans = self.plan(overwrite)
        rows = [self.train_fold(fold, plans[fold]) for fold in self.folds]
        return self.write_summary(rows)

    def plan(self, overwrite: bool = False) -> dict[int, FoldPlan]:
        """Every fold's slides and record. Raises :class:`StaleOutputError` for
        folds made otherwise (unless ``overwrite``), before any training."""
        plans, stale = {}, {}
        for fold in self.folds:
            sets = self.fold_sets(fold)
            self._ensure_in_dim(sets["train"])
            prov = self.provenance(fold, sets)
            metrics = self.results_dir / f"fold_{fold}" / "metrics.json"
            current = False
            if metrics.is_file():
                recorded = read_provenance(metrics)
                if prov.matches(recorded) and (metrics.parent / "checkpoint_best.safetensors").is_file():
                    current = True
                elif not overwrite:
                    stale[metrics] = prov.differences(recorded)
            plans[fold] = FoldPlan(sets, prov, current)
        if stale:
            raise StaleOutputError(
                stale,
                "Fix: pass --overwrite to retrain these folds, or set another exp_name / results_dir_base.",
            )
        return plans

    def train_fold(self, fold: int, plan: FoldPlan | None = None) -> dict:
        """Train, reload the best epoch, evaluate val and test, write the fold's
        outputs; returns its summary row. A current fold is read back instead."""
        if plan is None:
            sets = self.fold_sets(fold)
            self._ensure_in_dim(sets["train"])
            plan = FoldPlan(sets, self.provenance(fold, sets))
        sets, prov = plan.sets, plan.provenance
        fold_dir = self.results_dir / f"fold_{fold}"
        done = outputs.read_json(fold_dir / "metrics.json")
        if plan.current and done:
            log.info("fold %d already trained (%s); skipping", fold, fold_dir / "metrics.json")
            return done["row"]
        self._preload_noted = maybe_preload(self.source, sets, self.cfg.preloading, self._preload_noted)
        seed_everything(self.seed)
        if self.device.startswith("cuda"):
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        model = self.build_model()
        fit = loops.fit_paper if self.paper else loops.fit
        history, best = fit(self, model, fold, sets)
        model.load_state_dict(best)
        save_mil_checkpoint(fold_dir / "checkpoint_best.safetensors", best, self._checkpoint_info(fold))
        atomic_write_csv(fold_dir / "log.csv", pd.DataFrame(history))
        self._prov = prov
        scores_dir = fold_dir / "patch_scores" if self.cfg.save_patch_scores else None
        row = {"folds": fold}
        for key in ("val", "test"):
            preds, _ = self.evaluate(model, sets[key], scores_dir=scores_dir, fold=fold)
            outputs.write_predictions(fold_dir / f"predictions_{key}.csv", preds, prov)
            probs = preds[[f"prob_{c}" for c in range(self.n_classes)]].to_numpy()
            for name, value in slide_metrics(preds["label"].to_numpy(), probs, self.n_classes).items():
                row[f"{key}_{name}"] = value
        record = {"fingerprint": self.fingerprint(fold, sets), "row": row, "epochs_trained": len(history)}
        outputs.write_fold_record(fold_dir, self.results_dir, fold, sets, record, prov, self.paper)
        log.info(
            "fold %d: test AUC %.4f, val AUC %.4f, test acc %.4f (%d epochs)",
            fold,
            row["test_auc"],
            row["val_auc"],
            row["test_acc"],
            len(history),
        )
        return row

    def write_summary(self, rows: list[dict]) -> pd.DataFrame:
        """summary.csv (+ summary.json) or the paper's summary, and config.yaml."""
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(as_mapping(self.cfg)))
        if self.paper:
            return outputs.write_paper_summary(self.results_dir, rows, self.folds, self.cfg.k, config_yaml)
        info = {
            "exp": self.exp,
            "model_type": self.model_cfg["type"],
            "n_classes": self.n_classes,
            "in_dim": self.in_dim,
            "selected_units": None if self.units is None else self.units.tolist(),
            "feature_dir": str(self.feature_dir),
        }
        return outputs.write_summary(
            self.results_dir, rows, self.folds, self.cfg.k, info, config_yaml, self.compat
        )

    # ------------------------------------------------------------------ a fold's parts

    def fold_sets(self, fold: int) -> dict[str, list[str]]:
        """train/val/test slide ids of ``fold`` (checked; label fraction applied)."""
        split_csv = self.split_dir / f"splits_{fold}.csv"
        sets = fold_sets(
            read_split(split_csv),
            split_csv,
            fold,
            labels=self.labels,
            feature_paths=self.source.paths,
            dataset_csv=self.dataset_csv,
            feature_dir=self.feature_dir,
            allow_missing=self.allow_missing,
            paper=self.paper,
        )
        sets["train"] = label_fraction(
            sets["train"], self.labels, self.cfg.label_frac, self.n_classes, self.seed
        )
        check_training_set(sets["train"], self.labels, split_csv, fold)
        return sets

    def build_model(self) -> MILModel:
        """The configured model (the paper's own classes with ``compat=paper``)."""
        if self.paper:
            from sae1n.mil.paper_models import build_paper_model

            return build_paper_model(
                self.model_cfg["type"],
                self.in_dim,
                self.n_classes,
                dropout=self.model_cfg["drop_out"],
                act=str(self.model_cfg["act"]),
            ).to(self.device)
        return build_model(self.model_cfg, self.n_classes, self.in_dim).to(self.device)

    def optimizer(self, model: MILModel) -> torch.optim.Optimizer:
        o = self.cfg.optimizer
        return loops.make_optimizer(model, o.type, o.lr, o.reg)

    def autocast(self):
        """Mixed precision on CUDA (bf16 where supported), else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def bag(self, slide_id: str):
        """A slide's bag, or None (with one warning) when it has no patches."""
        bag = self.source.load(slide_id)
        if bag.features.shape[0] == 0:
            if ("empty", slide_id) not in self._warned:
                self._warned.add(("empty", slide_id))
                log.warning("slide %s has no patches (%s); skipped", slide_id, self.source.paths[slide_id])
            return None
        return bag

    @torch.no_grad()
    def evaluate(
        self,
        model: MILModel,
        ids: Sequence[str],
        scores_dir: Path | None = None,
        fold: int | None = None,
    ) -> tuple[pd.DataFrame, float]:
        """Predictions (slide_id, label, pred, prob_c) and the mean loss;
        with ``scores_dir`` also write each slide's per-patch scores."""
        model.eval()
        rows, losses = [], []
        for sid in ids:
            bag = self.bag(sid)
            if bag is None:
                continue
            label = self.labels[sid]
            with self.autocast():
                out = model(bag.features.to(self.device, non_blocking=True))
            logits = out.logits.float()
            losses.append(float(F.cross_entropy(logits, torch.tensor([label], device=logits.device))))
            probs = torch.softmax(logits, -1)[0].cpu().numpy()
            rows.append(
                {
                    "slide_id": sid,
                    "label": label,
                    "pred": int(probs.argmax()),
                    **{f"prob_{c}": float(p) for c, p in enumerate(probs)},
                }
            )
            if self.paper:
                self.val_trace.append(
                    {"slide_id": sid, "label": label, "loss": losses[-1], "logits": logits[0].tolist()}
                )
            if scores_dir is not None and out.scores is not None:
                self._write_scores(scores_dir / f"{sid}.h5", bag, out, model, fold)
        columns = ["slide_id", "label", "pred", *[f"prob_{c}" for c in range(self.n_classes)]]
        frame = pd.DataFrame(rows, columns=columns)
        if not losses:
            return frame, float("nan")
        if self.paper:  # the paper's running float sum, then the division
            total = 0.0
            for v in losses:
                total += v
            return frame, total / len(losses)
        return frame, float(np.mean(losses))

    def _write_scores(self, path: Path, bag, out, model: MILModel, fold) -> None:
        if bag.coords is None:
            if ("coords", bag.slide_id) not in self._warned:
                self._warned.add(("coords", bag.slide_id))
                log.warning(
                    "slide %s: feature file has no coords; per-patch scores not written", bag.slide_id
                )
            return
        attrs = {
            "model_type": self.model_cfg["type"],
            "score_kind": model.score_kind,
            "score_class": model.score_class(out.logits),
            "fold": int(fold or 0),
            "exp": self.exp,
        }
        scores = out.scores.detach().float().cpu().numpy()
        outputs.write_patch_scores(path, bag.coords, scores, self._prov, attrs)

    # ------------------------------------------------------------------ records

    def provenance(self, fold: int, sets: Mapping[str, list[str]]) -> Provenance:
        """The fold's record: settings fingerprint and compat; split, dataset
        CSV, feature files (path + size + mtime) and the neuron ranking."""
        ids = sorted({s for v in sets.values() for s in v})
        inputs = {
            "split": self.split_dir / f"splits_{fold}.csv",
            "dataset_csv": self.dataset_csv,
            "features": {s: input_identity(self.source.paths[s], hash_limit=0) for s in ids},
        }
        if self.ranking_csv is not None:
            inputs["ranking"] = self.ranking_csv
        return Provenance.make(
            outputs.MIL_KIND,
            outputs.MIL_SCHEMA,
            settings={"fingerprint": self.fingerprint(fold, sets), "compat": self.compat},
            inputs=inputs,
        )

    def fingerprint(self, fold: int, sets: Mapping[str, list[str]]) -> str:
        """Hash of the settings that shape a fold's model and of its slides."""
        plain = as_mapping(self.cfg)
        data = {k: plain[k] for k in FINGERPRINT_KEYS}
        data.update(
            model=self.model_cfg,
            in_dim=self.in_dim,
            fold=fold,
            sets=sets,
            units=None if self.units is None else self.units.tolist(),
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _checkpoint_info(self, fold: int) -> dict:
        return {
            "model": {**self.model_cfg, "in_dim": self.in_dim},
            "n_classes": self.n_classes,
            "in_dim": self.in_dim,
            "fold": fold,
            "exp": self.exp,
            "selected_units": None if self.units is None else self.units.tolist(),
            "feature_dir": str(self.feature_dir),
            "compat": self.compat,
        }

    # ------------------------------------------------------------------ data

    def _ensure_in_dim(self, train_ids: Sequence[str]) -> None:
        if self.in_dim is None:
            self.in_dim = self._infer_dim(train_ids)
            self.source.expected_dim = self.in_dim

    def _infer_dim(self, ids: Sequence[str]) -> int:
        for sid in ids:
            bag = self.source.load(sid)
            if bag.features.shape[0]:
                log.info("model.in_dim inferred from the features: %d", bag.features.shape[1])
                return int(bag.features.shape[1])
        raise InputFileError(
            self.feature_dir, "every training bag is empty", "check patching and feature extraction"
        )
