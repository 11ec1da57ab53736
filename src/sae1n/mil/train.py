"""k-fold MIL training and evaluation (the paper's ``experiments/mil/main.py``).

For each fold ``k_start..k_end-1`` of ``split_dir/splits_<k>.csv``: train on
one bag per step with Adam and early stopping on the validation loss, keep
the best weights, evaluate validation and test slides, and write under
``<results_dir_base>/mil/<exp>/``::

    fold_<k>/checkpoint_best.safetensors   weights + model config (metadata)
    fold_<k>/log.csv                       per-epoch losses and validation AUC
    fold_<k>/predictions_{val,test}.csv    slide_id, label, pred, prob_<c>
    fold_<k>/patch_scores/<slide>.h5       coords + per-patch scores (val and test slides;
                                           val lets evaluate-patches pick a threshold)
    fold_<k>/metrics.json                  fold metrics (written last: marks the fold done)
    summary.csv, summary.json              folds + mean/std rows, as the paper

Provenance: ``metrics.json``, the predictions and ``summary.csv`` carry a
``.provenance.json`` sidecar, each patch-score file an h5 attribute (settings,
split / dataset / ranking CSVs and the feature files' identities). A re-run
skips folds whose record matches; a fold made with other settings or inputs
stops the run before anything is written (``StaleOutputError``) unless
``overwrite`` (``--overwrite``).

``compat=paper`` trains as the paper's code does: its models
(:mod:`sae1n.mil.paper_models`, init included), each split in metadata-CSV
order, the epoch order from the global torch RNG as its DataLoader /
RandomSampler draw it, no mixed precision, sequential float sums of the
losses, and the summary CSV in its format (index column, mean / std rows).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text
from sae1n.io.provenance import (
    Provenance,
    StaleOutputError,
    input_identity,
    read_provenance,
    write_h5_provenance,
    write_sidecar,
)
from sae1n.mil.data import (
    BagSource,
    available_memory_bytes,
    read_slide_labels,
    read_split,
    resolve_feature_paths,
    select_sae_units,
)
from sae1n.mil.metrics import slide_metrics
from sae1n.mil.models import (
    MILModel,
    build_model,
    canonical_model_type,
    check_model_keys,
    save_mil_checkpoint,
)
from sae1n.utils import progress, resolve_device, seed_everything

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["folds", "test_auc", "val_auc", "test_acc", "val_acc"]
COMPAT = ("default", "paper")
MIL_KIND = "mil-fold"
MIL_SCHEMA = 1
_PRELOAD_FRACTION = 0.5  # preload when the bags need at most this share of free memory


def train_mil_experiment(
    exp: str,
    overrides: Sequence[str] = (),
    *,
    allow_missing: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Load the ``exp`` MIL config (with ``key=value`` overrides) and train it."""
    from sae1n.configs import load_experiment

    return train_mil(
        load_experiment("mil", exp, overrides),
        allow_missing=allow_missing,
        device=device,
        overwrite=overwrite,
    )


def train_mil(
    cfg,
    *,
    allow_missing: bool | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train and evaluate every configured fold; return the summary table
    (one row per fold, then ``mean`` and ``std`` rows).

    Folds whose outputs were made with other settings or inputs raise
    :class:`StaleOutputError` (before anything is written) unless ``overwrite``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    run = _Run(cfg, allow_missing, device)
    plans = run.plan(overwrite)
    rows = []
    for fold in run.folds:
        rows.append(run.fold(fold, *plans[fold]))
    return run.write_summary(rows)


def _get(cfg, key: str, default=None):
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _required(cfg, key: str) -> str:
    value = _get(cfg, key)
    if value in (None, ""):
        raise ConfigError(f"{key} is not set; add {key}=... to the command or the experiment YAML")
    return str(value)


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


class _Run:
    """Settings and shared state of one ``train_mil`` call."""

    def __init__(self, cfg: DictConfig, allow_missing: bool | None, device: str | None):
        self.cfg = cfg
        self.exp = str(_get(cfg, "exp_name", "mil_experiment"))
        self.n_classes = int(_get(cfg, "n_classes", 2))
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2 (got {self.n_classes})")
        self.seed = int(_get(cfg, "seed", 42))
        self.compat = str(_get(cfg, "compat", "default"))
        if self.compat not in COMPAT:
            raise ConfigError(f"compat must be one of {', '.join(COMPAT)}, got {self.compat!r}")
        self.paper = self.compat == "paper"
        self.allow_missing = (
            _flag(_get(cfg, "allow_missing", False))
            if allow_missing is None
            else bool(allow_missing)
        )
        self.device = resolve_device(device or _get(cfg, "device", "auto"))
        self.amp = (
            self.device.startswith("cuda") and _flag(_get(cfg, "amp", True)) and not self.paper
        )
        self.results_dir = (
            Path(str(_get(cfg, "results_dir_base", "output")))
            / str(_get(cfg, "experiment_code", "mil"))
            / self.exp
        )
        self.model_cfg = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
        self.model_cfg["type"] = canonical_model_type(self.model_cfg.get("type", "att_mil"))
        check_model_keys(self.model_cfg)
        if self.paper:
            from sae1n.mil.paper_models import PAPER_MODEL_TYPES

            if self.model_cfg["type"] not in PAPER_MODEL_TYPES:
                raise ConfigError(
                    f"compat=paper supports model.type {', '.join(PAPER_MODEL_TYPES)}, got {self.model_cfg['type']}"
                )
        self.max_epochs = int(_get(cfg, "max_epochs", 200))
        self.early_stopping = _flag(_get(cfg, "early_stopping", True))
        self.patience, self.stop_epoch = (
            int(_get(cfg, "patience", 20)),
            int(_get(cfg, "stop_epoch", 50)),
        )

        self.labels = read_slide_labels(
            _required(cfg, "dataset.csv_path"),
            self.n_classes,
            _get(cfg, "dataset.label_col"),
            OmegaConf.to_container(cfg.dataset.label_dict)
            if _get(cfg, "dataset.label_dict")
            else None,
        )
        self.units = None
        self.ranking_csv = None
        if _flag(_get(cfg, "features.use_sae_selected_units", False)):
            self.ranking_csv = Path(_required(cfg, "features.sae_unit_summary_path"))
            self.units = select_sae_units(
                self.ranking_csv,
                int(_get(cfg, "features.num_top_sae_units", 1)),
                _get(cfg, "features.sae_unit_selection_metric", "p_value"),
                compat=self.compat,
            )
            log.info(
                "using %d selected SAE unit(s): %s",
                len(self.units),
                ", ".join(map(str, self.units[:10])) + (" ..." if len(self.units) > 10 else ""),
            )
        self.feature_dir, paths = resolve_feature_paths(
            _required(cfg, "dataset.data_dir"),
            _get(cfg, "features.backbone"),
            _get(cfg, "features.patch_size", ""),
            _get(cfg, "features.file_type"),
        )
        configured = self.model_cfg.get("in_dim")
        if self.units is not None:
            if configured not in (None, "auto") and int(configured) != len(self.units):
                log.info(
                    "model.in_dim %s -> %d (number of selected SAE units)",
                    configured,
                    len(self.units),
                )
            self.in_dim = len(self.units)
        else:
            self.in_dim = None if configured in (None, "auto") else int(configured)
        self.source = BagSource(paths, self.units, expected_dim=self.in_dim)
        self.folds = self._fold_range()
        if _flag(_get(cfg, "log_data", False)):
            log.warning(
                "log_data (TensorBoard) is not supported; per-epoch metrics are written to fold_<k>/log.csv"
            )
        self.split_dir = Path(_required(cfg, "split_dir"))
        self._warned: set[tuple[str, str]] = set()
        self._preload_noted = False
        self._prov: Provenance | None = None
        self.val_trace: list[dict] = []  # paper mode: every evaluation forward
        self.train_trace: list[dict] = []  # paper mode: every training forward

    def _fold_range(self) -> list[int]:
        k = int(_get(self.cfg, "k", 1))
        start, end = int(_get(self.cfg, "k_start", 0)), int(_get(self.cfg, "k_end", k))
        start = 0 if start == -1 else start
        end = k if end == -1 else end
        if not 0 <= start < end:
            raise ConfigError(f"need 0 <= k_start < k_end (got k_start={start}, k_end={end})")
        return list(range(start, end))

    # ------------------------------------------------------------------ splits

    def _fold_sets(self, fold: int) -> dict[str, list[str]]:
        split_csv = self.split_dir / f"splits_{fold}.csv"
        split = read_split(split_csv)
        sets, unknown, missing = {}, [], []
        for key, ids in split.items():
            keep = []
            for sid in ids:
                if sid not in self.labels:
                    unknown.append(sid)
                elif sid not in self.source.paths:
                    missing.append(sid)
                else:
                    keep.append(sid)
            sets[key] = keep
        if self.paper:  # the paper's splits follow the metadata CSV's row order
            sets = {key: [s for s in self.labels if s in set(ids)] for key, ids in sets.items()}
        for problem, ids, where in (
            ("not in the dataset CSV", unknown, Path(_required(self.cfg, "dataset.csv_path"))),
            ("without a feature file", missing, self.feature_dir),
        ):
            if not ids:
                continue
            names = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            if not self.allow_missing:
                raise InputFileError(
                    where,
                    f"{len(ids)} slide(s) listed in {split_csv} are {problem}: {names}",
                    "add them (extract their features / re-create the metadata), remove them from the split, or pass --allow_missing to skip them",
                )
            log.warning("fold %d: skipping %d slide(s) %s: %s", fold, len(ids), problem, names)
        sets["train"] = self._label_fraction(sets["train"])
        if not sets["train"]:
            raise InputFileError(
                split_csv, "has no usable training slides", "check the split and the feature folder"
            )
        classes = sorted({self.labels[s] for s in sets["train"]})
        if len(classes) < 2:
            raise InputFileError(
                split_csv,
                f"the training slides of fold {fold} all have class {classes[0]}: a classifier cannot be trained",
                "re-create the splits (sae1n create-splits stratifies by label) or check the dataset CSV labels",
            )
        return sets

    def _label_fraction(self, ids: list[str]) -> list[str]:
        frac = float(_get(self.cfg, "label_frac", 1.0))
        if frac >= 1.0:
            return ids
        if frac <= 0:
            raise ConfigError(f"label_frac must be in (0, 1] (got {frac})")
        rng = np.random.default_rng(self.seed)
        keep = set()
        for c in range(self.n_classes):
            members = [s for s in ids if self.labels[s] == c]
            if members:
                keep.update(
                    rng.choice(members, size=math.ceil(frac * len(members)), replace=False).tolist()
                )
        return [s for s in ids if s in keep]

    def _maybe_preload(self, sets: Mapping[str, list[str]]) -> None:
        """``preloading``: yes / no / auto (when the bags fit in half the free memory)."""
        mode = str(_get(self.cfg, "preloading", "auto")).strip().lower()
        if mode in ("no", "false", "0", "off"):
            return
        if mode not in ("yes", "true", "1", "on", "auto"):
            raise ConfigError(f"preloading must be yes, no or auto (got {mode!r})")
        ids = sorted({s for v in sets.values() for s in v} - self.source.cached_ids)
        if not ids:
            return
        if mode == "auto":
            need, free = self.source.estimate_bytes(ids), available_memory_bytes()
            if not free or need > _PRELOAD_FRACTION * free:
                if not self._preload_noted:
                    log.info(
                        "not preloading: bags need ~%.1f GB, %.1f GB free; reading from disk each epoch",
                        need / 1e9,
                        free / 1e9,
                    )
                    self._preload_noted = True
                self.source.preload = False
                return
        self.source.preload_all(ids)

    # ------------------------------------------------------------------ one fold

    def plan(self, overwrite: bool) -> dict[int, tuple[dict, Provenance, bool]]:
        """Per fold: (sets, provenance, current?). Raises :class:`StaleOutputError`
        for folds made otherwise (unless ``overwrite``), before any training."""
        plans, stale = {}, {}
        for fold in self.folds:
            sets = self._fold_sets(fold)
            if self.in_dim is None:
                self.in_dim = self._infer_dim(sets["train"])
                self.source.expected_dim = self.in_dim
            prov = self._provenance(fold, sets)
            metrics = self.results_dir / f"fold_{fold}" / "metrics.json"
            current = False
            if metrics.is_file():
                recorded = read_provenance(metrics)
                if prov.matches(recorded) and (metrics.parent / "checkpoint_best.safetensors").is_file():
                    current = True
                elif not overwrite:
                    stale[metrics] = prov.differences(recorded)
            plans[fold] = (sets, prov, current)
        if stale:
            raise StaleOutputError(
                stale,
                "Fix: pass --overwrite to retrain these folds, or set another exp_name / results_dir_base.",
            )
        return plans

    def _provenance(self, fold: int, sets: Mapping[str, list[str]]) -> Provenance:
        ids = sorted({s for v in sets.values() for s in v})
        inputs = {
            "split": self.split_dir / f"splits_{fold}.csv",
            "dataset_csv": Path(_required(self.cfg, "dataset.csv_path")),
            "features": {s: input_identity(self.source.paths[s], hash_limit=0) for s in ids},
        }
        if self.ranking_csv is not None:
            inputs["ranking"] = self.ranking_csv
        return Provenance.make(
            MIL_KIND,
            MIL_SCHEMA,
            settings={"fingerprint": self._fingerprint(fold, sets), "compat": self.compat},
            inputs=inputs,
        )

    def fold(self, fold: int, sets=None, prov: Provenance | None = None, current: bool = False) -> dict:
        if sets is None:
            sets = self._fold_sets(fold)
        fold_dir = self.results_dir / f"fold_{fold}"
        if self.in_dim is None:
            self.in_dim = self._infer_dim(sets["train"])
            self.source.expected_dim = self.in_dim
        prov = prov or self._provenance(fold, sets)
        fingerprint = self._fingerprint(fold, sets)
        done = _read_json(fold_dir / "metrics.json")
        if current and done:
            log.info("fold %d already trained (%s); skipping", fold, fold_dir / "metrics.json")
            return done["row"]
        self._maybe_preload(sets)
        seed_everything(self.seed)
        if self.device.startswith("cuda"):
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if self.paper:
            from sae1n.mil.paper_models import build_paper_model

            model = build_paper_model(
                self.model_cfg["type"],
                self.in_dim,
                self.n_classes,
                dropout=self.model_cfg.get("drop_out", 0.25),
                act=str(self.model_cfg.get("act", "relu")),
            ).to(self.device)
            history, state = self._fit_paper(model, fold, sets)
        else:
            model = build_model(self.model_cfg, self.n_classes, self.in_dim).to(self.device)
            history, state = self._fit(model, fold, sets)
        model.load_state_dict(state)
        info = {
            "model": {**self.model_cfg, "in_dim": self.in_dim},
            "n_classes": self.n_classes,
            "in_dim": self.in_dim,
            "fold": fold,
            "exp": self.exp,
            "selected_units": None if self.units is None else self.units.tolist(),
            "feature_dir": str(self.feature_dir),
            "compat": self.compat,
        }
        save_mil_checkpoint(fold_dir / "checkpoint_best.safetensors", state, info)
        atomic_write_csv(fold_dir / "log.csv", pd.DataFrame(history))
        self._prov = prov
        row = {"folds": fold}
        for key in ("val", "test"):
            preds, _ = self._evaluate(
                model,
                sets[key],
                scores_dir=fold_dir / "patch_scores"
                if _flag(_get(self.cfg, "save_patch_scores", True))
                else None,
                fold=fold,
            )
            atomic_write_csv(fold_dir / f"predictions_{key}.csv", preds)
            write_sidecar(fold_dir / f"predictions_{key}.csv", prov)
            probs = preds[[f"prob_{c}" for c in range(self.n_classes)]].to_numpy()
            for name, value in slide_metrics(
                preds["label"].to_numpy(), probs, self.n_classes
            ).items():
                row[f"{key}_{name}"] = value
        atomic_write_csv(
            fold_dir / "splits.csv",
            pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in sets.items()}),
        )
        if self.paper:  # the paper's save_splits layout
            atomic_write_csv(
                self.results_dir / f"splits_{fold}.csv",
                pd.DataFrame({k: pd.Series(sets[k], dtype=object) for k in ("train", "val", "test")}),
            )
        atomic_write_json(
            fold_dir / "metrics.json",
            _jsonable({"fingerprint": fingerprint, "row": row, "epochs_trained": len(history)}),
        )
        write_sidecar(fold_dir / "metrics.json", prov)
        log.info(
            "fold %d: test AUC %.4f, val AUC %.4f, test acc %.4f (%d epochs)",
            fold,
            row["test_auc"],
            row["val_auc"],
            row["test_acc"],
            len(history),
        )
        return row

    def _infer_dim(self, ids: Sequence[str]) -> int:
        for sid in ids:
            bag = self.source.load(sid)
            if bag.features.shape[0]:
                log.info("model.in_dim inferred from the features: %d", bag.features.shape[1])
                return int(bag.features.shape[1])
        raise InputFileError(
            self.feature_dir, "every training bag is empty", "check patching and feature extraction"
        )

    def _optimizer(self, model: MILModel) -> torch.optim.Optimizer:
        kind = str(_get(self.cfg, "optimizer.type", "adam")).lower()
        lr, reg = (
            float(_get(self.cfg, "optimizer.lr", 1e-4)),
            float(_get(self.cfg, "optimizer.reg", 1e-5)),
        )
        params = [p for p in model.parameters() if p.requires_grad]
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=reg)
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=reg)
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=reg)
        raise ConfigError(f"unknown optimizer.type {kind!r}; use adam, adamw or sgd")

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _fit(
        self, model: MILModel, fold: int, sets: Mapping[str, list[str]]
    ) -> tuple[list[dict], dict]:
        opt = self._optimizer(model)
        scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and not torch.cuda.is_bf16_supported()
        )
        gen = torch.Generator().manual_seed(self.seed)
        train_ids = sets["train"]
        train_labels = torch.tensor([self.labels[s] for s in train_ids])
        stopper = None
        if self.early_stopping and sets["val"]:
            stopper = _EarlyStopping(self.patience, self.stop_epoch)
        elif self.early_stopping:
            log.warning(
                "fold %d has no validation slides: training all %d epochs without early stopping",
                fold,
                self.max_epochs,
            )
        best_state, history = None, []
        epochs = progress(
            range(self.max_epochs), desc=f"fold {fold}", total=self.max_epochs, leave=True
        )
        for epoch in epochs:
            model.train()
            order = self._epoch_order(train_labels, gen)
            total, correct, seen = 0.0, 0, 0
            for i in progress(order.tolist(), desc=f"epoch {epoch}"):
                bag = self._bag(train_ids[i])
                if bag is None:
                    continue
                label = torch.tensor([int(train_labels[i])], device=self.device)
                with self._autocast():
                    out = model(bag.features.to(self.device, non_blocking=True), label=label[0])
                loss = F.cross_entropy(out.logits.float(), label)
                if out.aux_loss is not None:
                    loss = model.bag_weight * loss + (1 - model.bag_weight) * out.aux_loss.float()
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += float(loss.detach())
                correct += int(out.logits.detach().argmax(-1).item() == int(label))
                seen += 1
            record = {
                "epoch": epoch,
                "train_loss": total / max(seen, 1),
                "train_acc": correct / max(seen, 1),
            }
            if sets["val"]:
                preds, val_loss = self._evaluate(model, sets["val"])
                probs = preds[[f"prob_{c}" for c in range(self.n_classes)]].to_numpy()
                m = slide_metrics(preds["label"].to_numpy(), probs, self.n_classes)
                record.update(val_loss=val_loss, val_auc=m["auc"], val_acc=m["acc"])
            history.append(record)
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            if stopper is not None:
                if stopper.step(record["val_loss"], epoch):
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if stopper.stop:
                    log.info("fold %d: early stopping at epoch %d", fold, epoch)
                    break
        if best_state is None:
            best_state = copy.deepcopy(model.state_dict())
        return history, best_state

    def _fit_paper(
        self, model: MILModel, fold: int, sets: Mapping[str, list[str]]
    ) -> tuple[list[dict], dict]:
        """The paper's ``train_loop`` / ``validate`` / ``EarlyStopping`` with its RNG use."""
        opt = self._optimizer(model)
        train_ids = sets["train"]
        train_labels = [self.labels[s] for s in train_ids]
        stopper = _EarlyStopping(self.patience, self.stop_epoch) if self.early_stopping else None
        best_state, history = None, []
        for epoch in progress(range(self.max_epochs), desc=f"fold {fold}", total=self.max_epochs, leave=True):
            model.train()
            order = self._paper_epoch_order(train_labels)
            total, errors, seen = 0.0, 0, 0
            per_class = {c: [0, 0] for c in range(self.n_classes)}
            for pos, i in enumerate(order):
                bag = self.source.load(train_ids[i])
                label = torch.tensor([train_labels[i]], device=self.device)
                out = model(bag.features.to(self.device))
                loss = F.cross_entropy(out.logits, label)
                value = loss.item()
                total += value
                pred = int(torch.topk(out.logits, 1, dim=1)[1].item())
                errors += int(pred != train_labels[i])
                per_class[train_labels[i]][0] += 1
                per_class[train_labels[i]][1] += int(pred == train_labels[i])
                self.train_trace.append({"epoch": epoch, "position": pos, "slide_id": train_ids[i], "loss": value, "logits": out.logits.detach()[0].tolist()})
                loss.backward()
                opt.step()
                opt.zero_grad()
                seen += 1
            record = {"epoch": epoch, "train_loss": total / max(seen, 1), "train_error": errors / max(seen, 1)}
            for c, (n, ok) in per_class.items():
                record[f"train_class{c}_acc"] = ok / n if n else float("nan")
            if sets["val"]:
                torch.empty((), dtype=torch.int64).random_()  # the val DataLoader iterator's seed
                preds, val_loss = self._evaluate(model, sets["val"])
                probs = preds[[f"prob_{c}" for c in range(self.n_classes)]].to_numpy()
                m = slide_metrics(preds["label"].to_numpy(), probs, self.n_classes)
                record.update(val_loss=val_loss, val_error=1 - m["acc"], val_auc=m["auc"])
            saved = False
            if stopper is not None and sets["val"]:
                saved = stopper.step(record["val_loss"], epoch)
                record.update(early_stopping_counter=stopper.counter, val_loss_min_after_epoch=stopper.best, checkpoint_saved=saved)
                if saved:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(record)
            if stopper is not None and stopper.stop:
                log.info("fold %d: early stopping at epoch %d", fold, epoch)
                break
        if best_state is None:
            best_state = copy.deepcopy(model.state_dict())
        return history, best_state

    def _paper_epoch_order(self, labels: list[int]) -> list[int]:
        """The indices a fresh DataLoader iterator over the paper's sampler yields:
        one int64 for the iterator's base seed, then the sampler's draws."""
        torch.empty((), dtype=torch.int64).random_()
        n = len(labels)
        if _flag(_get(self.cfg, "weighted_sample", False)):
            counts = {c: labels.count(c) for c in set(labels)}
            weights = torch.tensor([n / counts[y] for y in labels], dtype=torch.double)
            return torch.multinomial(weights, n, True).tolist()
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        gen = torch.Generator()
        gen.manual_seed(seed)
        return torch.randperm(n, generator=gen).tolist()

    def _epoch_order(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not _flag(_get(self.cfg, "weighted_sample", False)):
            return torch.randperm(len(labels), generator=gen)
        counts = torch.bincount(labels, minlength=self.n_classes).clamp(min=1).float()
        return torch.multinomial(1.0 / counts[labels], len(labels), replacement=True, generator=gen)

    def _bag(self, slide_id: str):
        bag = self.source.load(slide_id)
        if bag.features.shape[0] == 0:
            if ("empty", slide_id) not in self._warned:
                self._warned.add(("empty", slide_id))
                log.warning(
                    "slide %s has no patches (%s); skipped", slide_id, self.source.paths[slide_id]
                )
            return None
        return bag

    @torch.no_grad()
    def _evaluate(
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
            bag = self._bag(sid)
            if bag is None:
                continue
            label = self.labels[sid]
            with self._autocast():
                out = model(bag.features.to(self.device, non_blocking=True))
            logits = out.logits.float()
            losses.append(
                float(F.cross_entropy(logits, torch.tensor([label], device=logits.device)))
            )
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
                self.val_trace.append({"slide_id": sid, "label": label, "loss": losses[-1], "logits": logits[0].tolist()})
            if scores_dir is not None and out.scores is not None:
                self._write_scores(scores_dir / f"{sid}.h5", bag, out, model, fold)
        columns = ["slide_id", "label", "pred", *[f"prob_{c}" for c in range(self.n_classes)]]
        if not losses:
            return pd.DataFrame(rows, columns=columns), float("nan")
        if self.paper:  # the paper's running float sum, then the division
            total = 0.0
            for v in losses:
                total += v
            return pd.DataFrame(rows, columns=columns), total / len(losses)
        return pd.DataFrame(rows, columns=columns), float(np.mean(losses))

    def _write_scores(self, path: Path, bag, out, model: MILModel, fold) -> None:
        if bag.coords is None:
            if ("coords", bag.slide_id) not in self._warned:
                self._warned.add(("coords", bag.slide_id))
                log.warning(
                    "slide %s: feature file has no coords; per-patch scores not written",
                    bag.slide_id,
                )
            return
        scores = out.scores.detach().float().cpu().numpy()
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=np.asarray(bag.coords, dtype=np.int64))
            f.create_dataset("scores", data=scores.astype(np.float32))
            if getattr(self, "_prov", None) is not None:
                write_h5_provenance(f, self._prov)
            f.attrs.update(
                {
                    "model_type": self.model_cfg["type"],
                    "score_kind": model.score_kind,
                    "score_class": model.score_class(out.logits),
                    "fold": int(fold or 0),
                    "exp": self.exp,
                }
            )

    # ------------------------------------------------------------------ bookkeeping

    def _write_paper_summary(self, rows: list[dict]) -> pd.DataFrame:
        return _write_paper_summary_impl(self, rows)

    def _summary_provenance(self) -> Provenance:
        folds = {}
        for fold in self.folds:
            rec = read_provenance(self.results_dir / f"fold_{fold}" / "metrics.json")
            folds[str(fold)] = rec.fingerprint() if rec is not None else None
        return Provenance.make("mil-summary", MIL_SCHEMA, settings={"compat": self.compat}, inputs={"folds": folds})

    def _fingerprint(self, fold: int, sets: Mapping[str, list[str]]) -> str:
        keys = [
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
        ]
        data = {
            k: OmegaConf.to_container(self.cfg[k], resolve=True)
            if isinstance(self.cfg.get(k), DictConfig)
            else self.cfg.get(k)
            for k in keys
        }
        data.update(
            model=self.model_cfg,
            in_dim=self.in_dim,
            fold=fold,
            sets=sets,
            units=None if self.units is None else self.units.tolist(),
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    def write_summary(self, rows: list[dict]) -> pd.DataFrame:
        if self.paper:
            return self._write_paper_summary(rows)
        df = pd.DataFrame(rows)
        extra = [
            f"{split}_{m}"
            for m in ("bacc", "f1", "qwk")
            for split in ("test", "val")
            if f"{split}_{m}" in df.columns
        ]
        extra += [c for c in df.columns if c not in SUMMARY_COLUMNS and c not in extra]
        df = df[[*SUMMARY_COLUMNS, *extra]]
        stats = df.drop(columns="folds").apply(pd.to_numeric, errors="coerce")
        final = pd.concat(
            [
                df,
                pd.DataFrame([{"folds": "mean", **stats.mean()}, {"folds": "std", **stats.std()}]),
            ],
            ignore_index=True,
        )
        self.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(self.results_dir / "summary.csv", final)
        write_sidecar(self.results_dir / "summary.csv", self._summary_provenance())
        k = int(_get(self.cfg, "k", len(self.folds)))
        if len(self.folds) != k:  # the paper's name for a subset of folds
            atomic_write_csv(
                self.results_dir / f"summary_partial_{self.folds[0]}_{self.folds[-1] + 1}.csv",
                final,
            )
        summary = {
            "exp": self.exp,
            "model_type": self.model_cfg["type"],
            "n_classes": self.n_classes,
            "in_dim": self.in_dim,
            "selected_units": None if self.units is None else self.units.tolist(),
            "feature_dir": str(self.feature_dir),
            "folds": df.to_dict(orient="records"),
            "mean": stats.mean().to_dict(),
            "std": stats.std().to_dict(),
        }
        atomic_write_json(self.results_dir / "summary.json", _jsonable(summary))
        atomic_write_text(self.results_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
        return final


def _paper_summary_frame(rows: list[dict]) -> pd.DataFrame:
    """The paper's summary table: one row per fold (test/val AUC, acc = 1 - error),
    then ``mean`` and ``std`` rows concatenated with their own index (0, 1)."""
    df = pd.DataFrame({c: [r.get(c) for r in rows] for c in SUMMARY_COLUMNS})
    stats = df.drop(columns="folds").astype(float)
    extra = pd.DataFrame([{"folds": "mean", **stats.mean()}, {"folds": "std", **stats.std()}])
    return pd.concat([df, extra])


def _summary_name(folds: list[int], k: int) -> str:
    return "summary.csv" if len(folds) == k else f"summary_partial_{folds[0]}_{folds[-1] + 1}.csv"


class _EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs,
    but never at or before ``stop_epoch`` (CLAM's rule)."""

    def __init__(self, patience: int = 20, stop_epoch: int = 50):
        self.patience, self.stop_epoch = patience, stop_epoch
        self.best: float | None = None
        self.counter = 0
        self.stop = False

    def step(self, val_loss: float, epoch: int) -> bool:
        """Record one epoch; True when this is the best epoch so far."""
        if not math.isfinite(val_loss):
            val_loss = math.inf
        if self.best is None or val_loss < self.best:
            self.best, self.counter = val_loss, 0
            return True
        self.counter += 1
        if self.counter >= self.patience and epoch > self.stop_epoch:
            self.stop = True
        return False


def _write_paper_summary_impl(run: _Run, rows: list[dict]) -> pd.DataFrame:
    final = _paper_summary_frame(rows)
    run.results_dir.mkdir(parents=True, exist_ok=True)
    name = _summary_name(run.folds, int(_get(run.cfg, "k", len(run.folds))))
    atomic_write_csv(run.results_dir / name, final, index=True)
    write_sidecar(run.results_dir / name, run._summary_provenance())
    atomic_write_text(run.results_dir / "config.yaml", OmegaConf.to_yaml(run.cfg))
    return final


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonable(obj):
    """NaN/inf -> None and numpy scalars -> Python, for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = ["train_mil", "train_mil_experiment"]
