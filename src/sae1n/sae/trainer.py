"""The SAE trainer: :class:`SAETrainer` runs one pass over the data for one
SAE or a sweep of them (each with its own optimiser and outputs).

The loop, as the algorithm reads::

    for step, x in batches(start .. total):
        for each run at this step:
            train_step(run, x)                 # loss, backward, clip, Adam, renormalise
            if validation due:  validate, log, keep the best checkpoint
            if checkpoint due:  save sae_<step>
        progress, callbacks
    save sae_final (+ sae_best when there is no validation set)

Data are :mod:`sae1n.sae.data`, the metric writers :mod:`sae1n.sae.loggers`,
the other processes (``torchrun``) :mod:`sae1n.sae.distributed` behind
:class:`~sae1n.sae.distributed.StatsSync`. Outputs per run
(``output/sae/<exp>/`` or ``.../sweep/<tag>/``)::

    checkpoints/sae_best.safetensors + config_best.json   (lowest val loss)
    checkpoints/sae_final.safetensors + config_final.json
    checkpoints/sae_<step>.safetensors + config_<step>.json (every checkpoint_freq)
    checkpoints/sae_best.pt, sae_<step>.pt   (the paper's files; checkpoint.paper_pt=true)
    checkpoints/resume_state.pt    (model + optimiser + progress; training.resume=true)
    logs/metrics.csv               (one row per validation)
    logs/tensorboard/              (when tensorboard is installed)

Every checkpoint carries a provenance record (:mod:`sae1n.io.provenance`):
the settings that shape the model and the identity of the packed store and
split; resuming with other settings or other data is refused.

The step is :mod:`sae1n.sae.step`, one SAE's state :mod:`sae1n.sae.runs`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sae1n import distributed as dist
from sae1n.errors import ConfigError, InputFileError
from sae1n.io import Provenance, atomic_path
from sae1n.sae import metrics as sae_metrics
from sae1n.sae.checkpoints import load_state_into
from sae1n.sae.config import (
    check_sae_config,
    expand_sweep,
    experiment_dir,
    run_dir,
)
from sae1n.sae.data import Batches, prepare_data, use_prefetch_thread
from sae1n.sae.distributed import make_sync
from sae1n.sae.loggers import MetricsLog, warn_if_dead
from sae1n.sae.models import build_sae
from sae1n.sae.runs import (
    Run,
    check_act_size,
    resolved_config,
    run_provenance,
)
from sae1n.sae.step import TrainSums, make_optimizer, train_step
from sae1n.utils import progress, seed_everything

log = logging.getLogger("sae1n.sae.train")

RESUME_FILE = "resume_state.pt"
_RESUME_FORMAT = 2
# rows of the train set whose mean initialises b_dec (sae.b_dec_init=mean)
B_DEC_INIT_ROWS = 65536


def _clear_outputs(out_dir: Path) -> None:
    ckpt = out_dir / "checkpoints"
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if re.fullmatch(r"(sae_.+\.(safetensors|pt)|config_.+\.json|resume_state\.pt)", p.name):
                p.unlink()
    metrics = out_dir / "logs" / "metrics.csv"
    if metrics.exists():
        metrics.unlink()


@contextmanager
def _quiet_if_empty(x: torch.Tensor) -> Iterator[None]:
    """An empty share of a batch (see :func:`batch_rows`) takes part in the
    collectives only; silence the warnings of its 0 / 0 means."""
    if x.shape[0]:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- the trainer


class SAETrainer:
    """Trains the SAE(s) of one experiment config; :meth:`fit` returns the
    experiment folder."""

    def __init__(self, cfg: DictConfig, device: str, callbacks: Sequence[Callable] = ()):
        self.cfg = cfg
        self.settings = check_sae_config(cfg)
        self.device = device
        self.callbacks = list(callbacks)
        self.me = dist.info()
        self.sync = make_sync()
        training = self.settings.training
        self.batch_size = training.batch_size
        self.val_freq = training.validation_freq
        self.ckpt_freq = training.checkpoint_freq
        self.progress_every = max(1, training.progress_every)
        self.dense_freq = training.dense_latent_freq

    # ------------------------------------------------------------------ set-up
    def schedule(self, n_train: int) -> tuple[int, int]:
        """(steps per epoch, total steps)."""
        if self.batch_size <= 0:
            raise ConfigError(f"training.batch_size must be positive, got {self.batch_size}")
        steps_per_epoch = math.ceil(n_train / self.batch_size)
        num_tokens = self.settings.training.num_tokens
        if num_tokens:
            return steps_per_epoch, math.ceil(num_tokens / self.batch_size)
        epochs = self.settings.training.num_epochs
        if epochs is None or epochs < 0:
            raise ConfigError("set training.num_epochs (or training.num_tokens)")
        return steps_per_epoch, epochs * steps_per_epoch

    def build_run(self, tag: str | None, cfg: DictConfig) -> Run:
        check_act_size(cfg, self.data)
        cfg = resolved_config(cfg, self.data.dim)
        settings = check_sae_config(cfg)
        seed_everything(settings.seed)
        model = build_sae(OmegaConf.to_container(cfg.sae, resolve=True)).to(self.device)
        optimizer = make_optimizer(model, settings.training)
        out_dir = run_dir(cfg, tag)
        prov = run_provenance(cfg, self.data)
        run = Run(tag, cfg, settings, out_dir, model, optimizer, prov, None)
        run.logs = MetricsLog(out_dir, run.label)
        return run

    def resume(self, run: Run) -> bool:
        """Load ``resume_state.pt`` into ``run`` when there is one; refuse one
        made with other settings or other data (naming what differs)."""
        path = run.ckpt_dir / RESUME_FILE
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputFileError(
                path,
                f"cannot be read ({type(exc).__name__}: {exc})",
                "delete it to restart from the last saved weights, or set training.resume=false",
            ) from exc
        if state.get("format") != _RESUME_FORMAT:
            raise InputFileError(
                path,
                "has an unknown resume format (made by another sae1n version)",
                "set training.resume=false to start over",
            )
        recorded = Provenance.from_json(state.get("provenance", "{}"))
        if not run.provenance.matches(recorded):
            diffs = run.provenance.differences(recorded)
            shown = "; ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else "")
            raise ConfigError(
                f"{path}: this run was started with different settings or data ({shown}); "
                "use a new exp name, or training.resume=false to start over"
            )
        load_state_into(run.model, state["model"], path)
        run.optimizer.load_state_dict(state["optimizer"])
        run.step = int(state["step"])
        run.best_val = float(state["best_val"])
        run.best_step = int(state["best_step"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        run.logs.restore(run.step)
        return True

    def save_resume(self, run: Run) -> None:
        state = {
            "format": _RESUME_FORMAT,
            "provenance": run.provenance.to_json(),
            "step": run.step,
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "best_val": run.best_val,
            "best_step": run.best_step,
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(run.ckpt_dir / RESUME_FILE) as tmp:
            torch.save(state, tmp)
        os.chmod(run.ckpt_dir / RESUME_FILE, 0o644)

    @torch.no_grad()
    def init_from_data(self, run: Run) -> None:
        """Data-dependent initialisation of a fresh run (``sae.b_dec_init``):
        ``mean`` / ``median`` set the decoder bias to the mean / coordinate
        median of (up to) the first 65,536 train rows of epoch 0, the same rows
        on every process; ``zeros`` keeps the paper's zero bias."""
        how = run.settings.sae.b_dec_init  # the schema allows zeros, mean, median
        if how == "zeros":
            return
        rows = np.sort(self.batches.order(0)[:B_DEC_INIT_ROWS])
        x = self.data.gather(rows)
        x, _, _ = run.model.preprocess_input(x)
        centre = x.mean(0) if how == "mean" else x.median(0).values
        run.model.b_dec.copy_(centre.to(run.model.b_dec.device))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        self.data = prepare_data(self.cfg)
        steps_per_epoch, total = self.schedule(len(self.data.train_rows))
        self.steps_per_epoch, self.total = steps_per_epoch, total
        prefetch = use_prefetch_thread(
            self.settings.data.prefetch, self.device, torch.get_num_threads()
        )
        self.batches = Batches(self.data, self.settings.seed, self.batch_size, self.device, prefetch)
        runs = [self.build_run(tag, c) for tag, c in expand_sweep(self.cfg)]
        resume = self.settings.training.resume
        resumed = [resume and self.resume(run) for run in runs]
        self.sync.check_same_start([r.step for r in runs], runs[0].ckpt_dir)
        for run, was_resumed in zip(runs, resumed):
            if not was_resumed:
                run.step = 0
                self.init_from_data(run)
            if self.me.is_main:
                if not was_resumed:
                    _clear_outputs(run.out_dir)
                run.out_dir.mkdir(parents=True, exist_ok=True)
                with atomic_path(run.out_dir / "config.yaml") as tmp:
                    tmp.write_text(OmegaConf.to_yaml(run.cfg))
        exp_dir = experiment_dir(self.cfg)
        # rank 0 decides from its files, so every rank runs the same loop
        unfinished = dist.broadcast_object(
            [r.step < total or not (r.ckpt_dir / "sae_final.safetensors").is_file() for r in runs]
        )
        todo = [r for r, u in zip(runs, unfinished) if u]
        if not todo:
            log.info("%s: already trained (%d steps); nothing to do", exp_dir, total)
            return exp_dir
        self._announce(runs)
        for run in todo:
            if self.me.is_main:
                run.logs.open(run.cfg)
            run.sums = TrainSums()
            self.sync.attach(run.model)
        try:
            self.loop(todo)
        except KeyboardInterrupt:
            if self.me.is_main:
                for run in todo:
                    self.save_resume(run)
            raise
        finally:
            for run in todo:
                self.sync.detach(run.model)
                run.logs.close()
        dist.barrier()  # the outputs exist before any rank returns
        return exp_dir

    def _announce(self, runs: list[Run]) -> None:
        d = self.data
        log.info(
            "training %d SAE(s) on %d patches from %d slides (val: %d patches, %d slides), "
            "%d steps of %d on %s, %d threads, batch loading %s%s",
            len(runs),
            len(d.train_rows),
            len(d.train_ids),
            len(d.val_rows),
            len(d.val_ids),
            self.total,
            self.batch_size,
            self.device,
            torch.get_num_threads(),
            "in a thread" if self.batches.prefetch else "inline",
            f" x {self.me.world_size} processes" if self.me.distributed else "",
        )

    def loop(self, runs: list[Run]) -> None:
        start = min(r.step for r in runs)
        t0, self.tokens = time.perf_counter(), 0
        self.t0 = t0
        bar = progress(
            total=self.total,
            desc=f"train-sae {self.settings.exp_name or ''}".strip(),
            initial=start,
        )
        try:
            for step, x_cpu in self.batches(range(start, self.total)):
                x = x_cpu.to(self.device, non_blocking=True)
                global_rows = self.batches.global_rows(step)
                self.tokens += global_rows
                for run in runs:
                    if run.step == step:  # else its saved state is ahead (partly saved sweep)
                        self.train_one(run, x, global_rows)
                        self.after_step(run)
                bar.update(1)
                if (step + 1) % self.progress_every == 0 or step + 1 == self.total:
                    self._postfix(bar, runs)
                for cb in self.callbacks:
                    cb(step + 1)
        finally:
            bar.close()
        if self.me.is_main:
            for run in runs:
                self.finish(run)

    def train_one(self, run: Run, x: torch.Tensor, global_rows: int) -> None:
        self.sync.before_step(run.model, x.shape[0], global_rows)
        with _quiet_if_empty(x):
            run.last_out = out = train_step(
                run.model,
                run.optimizer,
                x,
                run.settings.training.max_grad_norm,
                after_backward=self.sync.after_backward if self.sync.distributed else None,
            )
        if x.shape[0]:  # a rank's share of a tiny last batch can be empty
            run.sums.add(out)
        run.step += 1

    def after_step(self, run: Run) -> None:
        s = run.step
        validate = s == self.total or (self.val_freq > 0 and s % self.val_freq == 0)
        periodic = self.ckpt_freq > 0 and s % self.ckpt_freq == 0
        if validate:
            self.validate_and_log(run)
        if not self.me.is_main:
            return
        if periodic:
            run.save(str(s), {"step": s})
        if validate or periodic:
            self.save_resume(run)

    def validate_and_log(self, run: Run) -> None:
        s = run.step
        self.sync.before_validation(run.model, run.label)
        run.sums.reduce(self.sync)
        train_res = run.sums.result()
        run.sums = TrainSums()
        elapsed = time.perf_counter() - self.t0
        model = run.model
        row = {
            "step": s,
            "epoch": s / self.steps_per_epoch,
            "tokens": s * self.batch_size,
            "elapsed_s": elapsed,
            "tokens_per_s": self.tokens / max(elapsed, 1e-9),
        }
        row.update({f"train_{k}": v for k, v in train_res.items()})
        row["train_dead_frac"] = float(
            (model.num_batches_not_active >= model.cfg.n_batches_to_dead).double().mean()
        )
        if len(self.data.val_rows):
            res = self.evaluate(run)
            row.update({f"val_{k}": v for k, v in res.items()})
            if res["loss"] < run.best_val:  # the same numbers on every rank
                run.best_val, run.best_step = res["loss"], s
                if self.me.is_main:
                    run.save("best", {"step": s, "val_loss": res["loss"]})
        row["best_step"] = run.best_step
        run.logs.log(row, write=self.me.is_main)

    def evaluate(self, run: Run) -> dict[str, float]:
        """Validation metrics; with several processes each evaluates a share of
        the rows and the sums are added (in paper-compatible mode, where
        validation updates the statistics, every process evaluates all rows)."""
        rows = self.sync.val_rows(run.model, self.data.val_rows)
        return sae_metrics.evaluate(
            run.model,
            self.data.val_batches(self.batch_size, self.device, rows, self.batches.prefetch),
            self.dense_freq,
            reduce=self.sync.reduce_metrics(run.model),
        )

    def finish(self, run: Run) -> None:
        extra = {
            "step": run.step,
            "best_step": run.best_step,
            "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
        }
        run.save("final", extra)
        if run.best_step < 0:  # no validation set: the final weights are the best we have
            run.save("best", extra)
        self.save_resume(run)
        last = run.logs.rows[-1] if run.logs.rows else None
        log.info(
            "%s: done, %d steps, best val loss %s at step %d -> %s",
            run.label,
            run.step,
            f"{run.best_val:.5g}" if run.best_step >= 0 else "n/a",
            run.best_step,
            run.out_dir,
        )
        warn_if_dead(run.label, last)

    def _postfix(self, bar, runs: list[Run]) -> None:
        out = runs[0].last_out
        if out is None:
            return
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        bar.set_postfix(
            loss=f"{float(out['loss'].detach()):.4g}",
            L0=f"{float(out['l0_norm'].detach()):.1f}",
            FVU=f"{sae_metrics.batch_fvu(out):.3f}",
            tok_s=f"{rate:,.0f}",
            runs=len(runs),
        )
