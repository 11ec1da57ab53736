"""The training loops of one fold: sae1n's (:func:`fit`) and the paper's
(:func:`fit_paper`, its ``train_loop`` / ``validate`` / ``EarlyStopping`` with
its RNG use), plus CLAM's early-stopping rule. Both return the per-epoch log
rows and the weights of the best validation epoch."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
import torch.nn.functional as F

from sae1n.mil.metrics import slide_metrics
from sae1n.mil.models import MILModel
from sae1n.utils import progress

log = logging.getLogger("sae1n.mil.train")


class FoldTrainer(Protocol):
    """What the loops use of :class:`sae1n.mil.trainer.MILTrainer`."""

    cfg: object  # MILRunConfig
    n_classes: int
    seed: int
    device: str
    amp: bool
    labels: Mapping[str, int]
    source: object  # BagSource
    train_trace: list[dict]

    def optimizer(self, model: MILModel) -> torch.optim.Optimizer: ...

    def autocast(self): ...

    def bag(self, slide_id: str): ...

    def evaluate(
        self, model: MILModel, ids: Sequence[str], scores_dir: Path | None = None, fold: int | None = None
    ) -> tuple[pd.DataFrame, float]: ...


class EarlyStopping:
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


def make_optimizer(model: MILModel, kind: str, lr: float, reg: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) with weight decay ``reg``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=reg)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=reg)
    return torch.optim.Adam(params, lr=lr, weight_decay=reg)


def _best(model: MILModel) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _val_metrics(t: FoldTrainer, model: MILModel, ids) -> tuple[float, dict]:
    preds, val_loss = t.evaluate(model, ids)
    probs = preds[[f"prob_{c}" for c in range(t.n_classes)]].to_numpy()
    return val_loss, slide_metrics(preds["label"].to_numpy(), probs, t.n_classes)


def epoch_order(labels: torch.Tensor, gen: torch.Generator, weighted: bool, n_classes: int) -> torch.Tensor:
    """One epoch's bag order: a permutation, or class-balanced draws with replacement."""
    if not weighted:
        return torch.randperm(len(labels), generator=gen)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).float()
    return torch.multinomial(1.0 / counts[labels], len(labels), replacement=True, generator=gen)


def fit(t: FoldTrainer, model: MILModel, fold: int, sets: Mapping[str, list[str]]) -> tuple[list[dict], dict]:
    """sae1n's loop: one bag per step (slide loss, CLAM's instance loss mixed
    in with ``bag_weight``), mixed precision on CUDA, epoch order from a
    generator seeded with ``seed``, early stopping on the validation loss."""
    opt = t.optimizer(model)
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp and not torch.cuda.is_bf16_supported())
    gen = torch.Generator().manual_seed(t.seed)
    train_ids = sets["train"]
    train_labels = torch.tensor([t.labels[s] for s in train_ids])
    stopper = None
    if t.cfg.early_stopping and sets["val"]:
        stopper = EarlyStopping(t.cfg.patience, t.cfg.stop_epoch)
    elif t.cfg.early_stopping:
        log.warning(
            "fold %d has no validation slides: training all %d epochs without early stopping",
            fold,
            t.cfg.max_epochs,
        )
    best_state, history = None, []
    epochs = progress(range(t.cfg.max_epochs), desc=f"fold {fold}", total=t.cfg.max_epochs, leave=True)
    for epoch in epochs:
        model.train()
        order = epoch_order(train_labels, gen, t.cfg.weighted_sample, t.n_classes)
        total, correct, seen = 0.0, 0, 0
        for i in progress(order.tolist(), desc=f"epoch {epoch}"):
            bag = t.bag(train_ids[i])
            if bag is None:
                continue
            label = torch.tensor([int(train_labels[i])], device=t.device)
            with t.autocast():
                out = model(bag.features.to(t.device, non_blocking=True), label=label[0])
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
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), "train_acc": correct / max(seen, 1)}
        if sets["val"]:
            val_loss, m = _val_metrics(t, model, sets["val"])
            record.update(val_loss=val_loss, val_auc=m["auc"], val_acc=m["acc"])
        history.append(record)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if stopper is not None:
            if stopper.step(record["val_loss"], epoch):
                best_state = _best(model)
            if stopper.stop:
                log.info("fold %d: early stopping at epoch %d", fold, epoch)
                break
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    return history, best_state


def paper_epoch_order(labels: list[int], weighted: bool) -> list[int]:
    """The indices a fresh DataLoader iterator over the paper's sampler yields:
    one int64 for the iterator's base seed, then the sampler's draws (from the
    global torch RNG)."""
    torch.empty((), dtype=torch.int64).random_()
    n = len(labels)
    if weighted:
        counts = {c: labels.count(c) for c in set(labels)}
        weights = torch.tensor([n / counts[y] for y in labels], dtype=torch.double)
        return torch.multinomial(weights, n, True).tolist()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.randperm(n, generator=gen).tolist()


def fit_paper(
    t: FoldTrainer, model: MILModel, fold: int, sets: Mapping[str, list[str]]
) -> tuple[list[dict], dict]:
    """The paper's ``train_loop`` / ``validate`` / ``EarlyStopping``: every RNG
    draw in its order, sequential float sums, its log columns; each training
    forward is appended to ``t.train_trace``."""
    opt = t.optimizer(model)
    train_ids = sets["train"]
    train_labels = [t.labels[s] for s in train_ids]
    stopper = EarlyStopping(t.cfg.patience, t.cfg.stop_epoch) if t.cfg.early_stopping else None
    best_state, history = None, []
    n_epochs = t.cfg.max_epochs
    for epoch in progress(range(n_epochs), desc=f"fold {fold}", total=n_epochs, leave=True):
        model.train()
        order = paper_epoch_order(train_labels, t.cfg.weighted_sample)
        total, errors, seen = 0.0, 0, 0
        per_class = {c: [0, 0] for c in range(t.n_classes)}
        for pos, i in enumerate(order):
            bag = t.source.load(train_ids[i])
            label = torch.tensor([train_labels[i]], device=t.device)
            out = model(bag.features.to(t.device))
            loss = F.cross_entropy(out.logits, label)
            value = loss.item()
            total += value
            pred = int(torch.topk(out.logits, 1, dim=1)[1].item())
            errors += int(pred != train_labels[i])
            per_class[train_labels[i]][0] += 1
            per_class[train_labels[i]][1] += int(pred == train_labels[i])
            t.train_trace.append(
                {
                    "epoch": epoch,
                    "position": pos,
                    "slide_id": train_ids[i],
                    "loss": value,
                    "logits": out.logits.detach()[0].tolist(),
                }
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen += 1
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), "train_error": errors / max(seen, 1)}
        for c, (n, ok) in per_class.items():
            record[f"train_class{c}_acc"] = ok / n if n else float("nan")
        if sets["val"]:
            torch.empty((), dtype=torch.int64).random_()  # the val DataLoader iterator's seed
            val_loss, m = _val_metrics(t, model, sets["val"])
            record.update(val_loss=val_loss, val_error=1 - m["acc"], val_auc=m["auc"])
        if stopper is not None and sets["val"]:
            saved = stopper.step(record["val_loss"], epoch)
            record.update(
                early_stopping_counter=stopper.counter,
                val_loss_min_after_epoch=stopper.best,
                checkpoint_saved=saved,
            )
            if saved:
                best_state = _best(model)
        history.append(record)
        if stopper is not None and stopper.stop:
            log.info("fold %d: early stopping at epoch %d", fold, epoch)
            break
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    return history, best_state
