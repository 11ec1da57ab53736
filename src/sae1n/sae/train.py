"""SAE training (``sae1n train-sae``): ``train_sae(cfg) -> Path``.

Data come from the packed memory-mapped store of the feature folder; every
epoch visits every train patch once, in a fresh permutation drawn from
``(seed, epoch)`` so any step's batch is known without replaying the past
(which makes resumption exact, and lets a distributed wrapper shard a batch
by rank with :func:`batch_rows`). Several SAEs (a sweep) train on one pass
over the data, each with its own optimiser and outputs.

Outputs per run (``output/sae/<exp>/`` or ``.../sweep/<tag>/``)::

    checkpoints/sae_best.safetensors + config_best.json   (lowest val loss)
    checkpoints/sae_final.safetensors + config_final.json
    checkpoints/sae_<step>.safetensors + config_<step>.json (every checkpoint_freq)
    checkpoints/resume_state.pt    (model + optimiser + progress; training.resume=true)
    logs/metrics.csv               (one row per validation)
    logs/tensorboard/              (when tensorboard is installed)
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sae1n import distributed as dist
from sae1n.datasets.splits import read_split
from sae1n.errors import ConfigError, InputFileError, Sae1nError
from sae1n.io import atomic_path, atomic_write_csv, feature_paths, open_packed_store
from sae1n.sae import metrics as sae_metrics
from sae1n.sae.checkpoints import load_state_into, save_sae
from sae1n.sae.config import expand_sweep, experiment_dir, resume_fingerprint, run_dir
from sae1n.sae.kernels import few_threads
from sae1n.sae.models import BaseSAE, SAEConfig, build_sae
from sae1n.utils import progress, resolve_device, seed_everything

log = logging.getLogger(__name__)

RESUME_FILE = "resume_state.pt"
_RESUME_FORMAT = 1


# ----------------------------------------------------------------------------- data


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` train rows in ``epoch`` (depends only on seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batch_rows(
    order: np.ndarray, index: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Rows of global batch ``index`` of an epoch ``order``; with ``world_size``
    > 1 the shard of ``rank``."""
    rows = order[index * batch_size : (index + 1) * batch_size]
    return rows[rank::world_size] if world_size > 1 else rows


@dataclass
class TrainingData:
    """Packed features with the store rows of the train and val slides."""

    store: object
    train_rows: np.ndarray
    val_rows: np.ndarray
    paths: dict[str, Path]
    train_ids: list[str]
    val_ids: list[str]

    @property
    def dim(self) -> int:
        return self.store.dim

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.store.gather(rows))

    def val_batches(
        self, batch_size: int, device, rows: np.ndarray | None = None
    ) -> Iterator[torch.Tensor]:
        rows = self.val_rows if rows is None else rows
        for s in range(0, len(rows), batch_size):
            yield self.gather(rows[s : s + batch_size]).to(device)


def _store_dir(cfg: DictConfig, feature_dir: Path, file_type: str | None) -> Path:
    import hashlib

    explicit = cfg.data.get("store_dir")
    if explicit:
        return Path(str(explicit))
    digest = hashlib.sha256(f"{feature_dir.resolve()}|{file_type}".encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", feature_dir.resolve().name)
    return (
        Path(str(cfg.get("output_dir") or "./output/sae"))
        / ".stores"
        / f"{name}-{file_type or 'auto'}-{digest}"
    )


def prepare_data(cfg: DictConfig) -> TrainingData:
    """Open (building when needed) the packed store of ``data.feature_dir`` and
    pick the train / val rows from ``data.split_csv_path``."""
    data = cfg.data
    feature_dir = Path(str(data.feature_dir))
    file_type = data.get("file_type") or None
    try:
        paths = feature_paths(feature_dir, file_type)
    except InputFileError:
        if file_type is None:
            raise
        paths = feature_paths(feature_dir, None)
        log.warning(
            "%s: no %s feature files; using the other format found there", feature_dir, file_type
        )
    split_path = data.get("split_csv_path")
    if split_path:
        split = read_split(split_path)
        train_ids, val_ids = split.get("train", []), split.get("val", [])
        for name, ids in (("train", train_ids), ("val", val_ids)):
            missing = [s for s in ids if s not in paths]
            if missing and not data.get("allow_missing", False):
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise InputFileError(
                    split_path,
                    f"{len(missing)} {name} slide(s) have no feature file in {feature_dir}: {shown}",
                    "extract their features, or set data.allow_missing=true to train without them",
                )
            if missing:
                log.warning(
                    "%d %s slides without features are skipped (data.allow_missing=true)",
                    len(missing),
                    name,
                )
        train_ids = [s for s in train_ids if s in paths]
        val_ids = [s for s in val_ids if s in paths]
    else:
        train_ids, val_ids = sorted(paths), []
    if not train_ids:
        raise InputFileError(
            split_path or feature_dir,
            "no train slides with features",
            "check data.split_csv_path and data.feature_dir",
        )
    # several processes: built once (rank 0 first), then only opened by the others
    store = dist.in_turn(
        lambda: open_packed_store(
            paths,
            _store_dir(cfg, feature_dir, file_type),
            dtype=str(data.get("store_dtype") or "float32"),
        ),
        what="packing the feature store",
    )

    def rows_of(ids: Sequence[str]) -> np.ndarray:
        pos = {sid: i for i, sid in enumerate(store.slide_ids)}
        parts = [
            np.arange(store.offsets[pos[s]], store.offsets[pos[s] + 1], dtype=np.int64) for s in ids
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    tr, va = rows_of(train_ids), rows_of(val_ids)
    if len(tr) == 0:
        raise InputFileError(
            split_path or feature_dir,
            "the train slides hold no patches",
            "check the feature files of the train slides",
        )
    return TrainingData(store, tr, va, paths, train_ids, val_ids)


def _prefetched(
    fetch: Callable[[int], torch.Tensor], steps: range
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(step, fetch(step))`` with the next batch loading in a thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sae-batch") as pool:
        it = iter(steps)
        nxt = next(it, None)
        fut = pool.submit(fetch, nxt) if nxt is not None else None
        while fut is not None:
            step, x = nxt, fut.result()
            nxt = next(it, None)
            fut = pool.submit(fetch, nxt) if nxt is not None else None
            yield step, x


# ----------------------------------------------------------------------------- one step


def train_step(
    model: BaseSAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    max_grad_norm: float,
    *,
    after_backward: Callable[[BaseSAE], None] | None = None,
) -> dict:
    """One optimisation step: loss (statistics update inside the forward),
    backward, optional hook (e.g. a gradient all-reduce), clipping, removal of
    the decoder-parallel gradient, optimiser step, decoder renormalisation."""
    model.train()
    out = model(x)
    out["loss"].backward()
    if after_backward is not None:
        after_backward(model)
    with few_threads(enabled=not x.is_cuda):
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        model.remove_parallel_decoder_grad()
        optimizer.step()
        model.normalize_decoder()
        optimizer.zero_grad(set_to_none=True)
    return out


def make_optimizer(model: BaseSAE, training: DictConfig) -> torch.optim.Optimizer:
    """Adam with the configured lr and betas (fused kernel where available)."""
    kw = dict(
        lr=float(training.lr),
        betas=(float(training.get("beta1", 0.9)), float(training.get("beta2", 0.99))),
    )
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), **kw)


# ----------------------------------------------------------------------------- one run


class _TrainSums:
    """Running token-weighted sums of the training loss terms (kept on the
    device: no synchronisation per step)."""

    KEYS = ("loss", "l2_loss", "aux_loss", "l0_norm")

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, out: dict) -> None:
        b = out["x_in"].shape[0]
        self.n += b
        for k in self.KEYS:
            v = out[k].detach() * b
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def result(self) -> dict[str, float]:
        return {k: float(v) / self.n for k, v in self.sums.items()} if self.n else {}


@dataclass
class _Run:
    tag: str | None
    cfg: DictConfig
    out_dir: Path
    model: BaseSAE
    optimizer: torch.optim.Optimizer
    fingerprint: str
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    rows: list = field(default_factory=list)
    acc: _TrainSums | None = None
    tb: object | None = None
    wandb: object | None = None
    last_out: dict | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def label(self) -> str:
        return self.tag or str(self.cfg.get("exp_name"))


def _resolved_config(cfg: DictConfig, dim: int, device: str) -> DictConfig:
    cfg = cfg.copy()
    sae = cfg.sae
    if sae.get("act_size") is None:
        sae.act_size = dim
    sae_cfg = SAEConfig.from_mapping(OmegaConf.to_container(sae, resolve=True))
    sae.dict_size = sae_cfg.dict_size
    sae.model_type = sae_cfg.model_type
    cfg.data.feature_dir = str(Path(str(cfg.data.feature_dir)).resolve())
    if cfg.data.get("split_csv_path"):
        cfg.data.split_csv_path = str(Path(str(cfg.data.split_csv_path)).resolve())
    return cfg


def _check_act_size(cfg: DictConfig, data: TrainingData) -> None:
    act = cfg.sae.get("act_size")
    if act is not None and int(act) != data.dim:
        first = data.paths[data.train_ids[0]]
        raise InputFileError(
            first,
            f"feature dimension {data.dim} differs from sae.act_size={act}",
            f"set sae.act_size={data.dim}, or point data.feature_dir to features of the intended encoder",
        )


def _clear_outputs(out_dir: Path) -> None:
    ckpt = out_dir / "checkpoints"
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if re.fullmatch(r"(sae_.+\.(safetensors|pt)|config_.+\.json|resume_state\.pt)", p.name):
                p.unlink()
    metrics = out_dir / "logs" / "metrics.csv"
    if metrics.exists():
        metrics.unlink()


def _load_resume(run: _Run) -> bool:
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
            path, "has an unknown resume format", "set training.resume=false to start over"
        )
    if state.get("fingerprint") != run.fingerprint:
        raise ConfigError(
            f"{path}: this run was started with different settings (seed, data, sae.* or training.* other than epochs/logging); "
            "use a new exp name, or training.resume=false to start over"
        )
    load_state_into(run.model, state["model"], path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.step = int(state["step"])
    run.best_val = float(state["best_val"])
    run.best_step = int(state["best_step"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    metrics = run.out_dir / "logs" / "metrics.csv"
    if metrics.is_file():
        import pandas as pd

        try:
            frame = pd.read_csv(metrics)
            run.rows = frame[frame["step"] <= run.step].to_dict("records")
        except Exception:  # a damaged log is rebuilt from here on
            run.rows = []
    return True


def _save_resume(run: _Run) -> None:
    state = {
        "format": _RESUME_FORMAT,
        "fingerprint": run.fingerprint,
        "step": run.step,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "best_val": run.best_val,
        "best_step": run.best_step,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(run.ckpt_dir / RESUME_FILE) as tmp:
        torch.save(state, tmp)


def _plain_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def _open_loggers(run: _Run) -> None:
    training = run.cfg.training
    if training.get("tensorboard", True):
        try:
            from torch.utils.tensorboard import SummaryWriter

            run.tb = SummaryWriter(log_dir=str(run.out_dir / "logs" / "tensorboard"))
        except ImportError:
            log.debug("tensorboard is not installed; metrics go to logs/metrics.csv only")
    if training.get("use_wandb", False):
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(
                "training.use_wandb=true but wandb is not installed; pip install wandb, or set training.use_wandb=false"
            ) from exc
        run.wandb = wandb.init(
            project=training.get("wandb_project"),
            entity=training.get("wandb_entity"),
            name=run.label,
            config=_plain_config(run.cfg),
            reinit=True,
        )


def _log_metrics(run: _Run, row: dict) -> None:
    run.rows.append(row)
    import pandas as pd

    atomic_write_csv(run.out_dir / "logs" / "metrics.csv", pd.DataFrame(run.rows))
    scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and k not in ("step",)}
    if run.tb is not None:
        for k, v in scalars.items():
            run.tb.add_scalar(k.replace("val_", "val/").replace("train_", "train/"), v, row["step"])
        run.tb.flush()
    if run.wandb is not None:
        run.wandb.log(scalars, step=row["step"])


# ----------------------------------------------------------------------------- the trainer


def _build_run(tag: str | None, cfg: DictConfig, data: TrainingData, device: str) -> _Run:
    _check_act_size(cfg, data)
    cfg = _resolved_config(cfg, data.dim, device)
    seed_everything(int(cfg.seed))
    model = build_sae(OmegaConf.to_container(cfg.sae, resolve=True)).to(device)
    optimizer = make_optimizer(model, cfg.training)
    return _Run(tag, cfg, run_dir(cfg, tag), model, optimizer, resume_fingerprint(cfg))


def _schedule(cfg: DictConfig, n_train: int) -> tuple[int, int]:
    batch_size = int(cfg.training.batch_size)
    if batch_size <= 0:
        raise ConfigError(f"training.batch_size must be positive, got {batch_size}")
    steps_per_epoch = math.ceil(n_train / batch_size)
    num_tokens = cfg.training.get("num_tokens")
    if num_tokens:
        total = math.ceil(int(num_tokens) / batch_size)
    else:
        epochs = cfg.training.get("num_epochs")
        if epochs is None or int(epochs) < 0:
            raise ConfigError("set training.num_epochs (or training.num_tokens)")
        total = int(epochs) * steps_per_epoch
    return steps_per_epoch, total


def train_sae(cfg: DictConfig, *, callbacks: Sequence[Callable[[int], None]] = ()) -> Path:
    """Train the SAE(s) of ``cfg`` (an ``exp`` config, see
    :func:`sae1n.sae.config.load_sae_config`); return the experiment folder.

    ``callbacks`` are called with the global step after every step (a
    progress hook; raising ``KeyboardInterrupt`` there stops training after
    saving a resumable state).

    Under ``torchrun`` (or inside an existing process group) every process
    trains on its share of each global batch and the result equals a
    one-process run (see :mod:`sae1n.distributed.sae`); rank 0 writes the outputs.
    """
    if str(cfg.get("compat", "default")) == "paper":
        from sae1n.sae.paper_exact import train_sae_paper

        return train_sae_paper(cfg, callbacks=callbacks)
    if OmegaConf.select(cfg, "checkpoint.paper_pt", default=False):
        from sae1n.sae.paper_exact import export_paper_checkpoints

        plain = cfg.copy()
        plain.checkpoint.paper_pt = False
        out = train_sae(plain, callbacks=callbacks)
        export_paper_checkpoints(out)
        return out
    if str(cfg.sae.get("dtype", "float32")) != "float32":
        raise ConfigError(f"sae.dtype={cfg.sae.dtype} is not supported; use float32")
    device = resolve_device(cfg.sae.get("device", "auto"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"sae.device={device} but CUDA is not available; use sae.device=auto or cpu"
        )
    threads = cfg.training.get("num_threads")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with dist.session():
            return _train(cfg, dist.rank_device(device), callbacks)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: DictConfig, device: str, callbacks) -> Path:
    me = dist.info()
    data = prepare_data(cfg)
    steps_per_epoch, total_steps = _schedule(cfg, len(data.train_rows))
    batch_size = int(cfg.training.batch_size)
    runs = [_build_run(tag, run_cfg, data, device) for tag, run_cfg in expand_sweep(cfg)]
    resume = bool(cfg.training.get("resume", True))
    resumed = [resume and _load_resume(run) for run in runs]
    if me.distributed:
        _check_same_start(runs)
    if me.is_main:
        for run, was_resumed in zip(runs, resumed):
            if not was_resumed:
                _clear_outputs(run.out_dir)
            run.out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(run.out_dir / "config.yaml") as tmp:
                tmp.write_text(OmegaConf.to_yaml(run.cfg))
    for run, was_resumed in zip(runs, resumed):
        if not was_resumed:
            run.step = 0
    exp_dir = experiment_dir(cfg)
    # rank 0 decides from its files, so every rank runs the same loop
    unfinished = dist.broadcast_object(
        [r.step < total_steps or not (r.ckpt_dir / "sae_final.safetensors").is_file() for r in runs]
    )
    todo = [r for r, u in zip(runs, unfinished) if u]
    if not todo:
        log.info("%s: already trained (%d steps); nothing to do", exp_dir, total_steps)
        return exp_dir
    log.info(
        "training %d SAE(s) on %d patches from %d slides (val: %d patches, %d slides), %d steps of %d on %s%s",
        len(runs),
        len(data.train_rows),
        len(data.train_ids),
        len(data.val_rows),
        len(data.val_ids),
        total_steps,
        batch_size,
        device,
        f" x {me.world_size} processes" if me.distributed else "",
    )
    for run in todo:
        if me.is_main:
            _open_loggers(run)
        run.acc = _TrainSums()
        if me.distributed:
            from sae1n.distributed.sae import BatchStatsSync, broadcast_module

            broadcast_module(run.model)
            run.model.batch_sync = BatchStatsSync()
    try:
        _loop(todo, data, cfg, device, steps_per_epoch, total_steps, callbacks)
    except KeyboardInterrupt:
        if me.is_main:
            for run in todo:
                _save_resume(run)
        raise
    finally:
        for run in todo:
            run.model.batch_sync = None
            if run.tb is not None:
                run.tb.close()
            if run.wandb is not None:
                run.wandb.finish()
    dist.barrier()  # the outputs exist before any rank returns
    return exp_dir


def _check_same_start(runs: list[_Run]) -> None:
    """Every rank resumes from the same step (the checkpoints must be on a
    filesystem all ranks see)."""
    steps = dist.all_gather_objects([r.step for r in runs])
    if any(s != steps[0] for s in steps):
        raise ConfigError(
            f"{runs[0].ckpt_dir}: the processes found different resume states "
            f"(steps per rank: {steps}); put output_dir on a filesystem every node sees, "
            "or set training.resume=false"
        )


def _loop(
    runs: list[_Run],
    data: TrainingData,
    cfg: DictConfig,
    device: str,
    steps_per_epoch: int,
    total_steps: int,
    callbacks,
) -> None:
    me = dist.info()
    seed = int(cfg.seed)
    batch_size = int(cfg.training.batch_size)
    n_train = len(data.train_rows)
    val_freq = int(cfg.training.get("validation_freq") or 0)
    ckpt_freq = int(cfg.training.get("checkpoint_freq") or 0)
    every = max(1, int(cfg.training.get("progress_every") or 10))
    start = min(r.step for r in runs)
    orders: dict[int, np.ndarray] = {}
    grad_sync = None
    if me.distributed:
        from sae1n.distributed.sae import GradientAllReduce

        grad_sync = GradientAllReduce()

    def fetch(step: int) -> torch.Tensor:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = data.train_rows[epoch_permutation(len(data.train_rows), seed, epoch)]
        rows = batch_rows(orders[epoch], index, batch_size, me.rank, me.world_size)
        x = data.gather(rows)
        return x.pin_memory() if device.startswith("cuda") else x

    t0, tokens = time.perf_counter(), 0
    bar = progress(
        total=total_steps, desc=f"train-sae {cfg.get('exp_name', '')}".strip(), initial=start
    )
    try:
        for step, x_cpu in _prefetched(fetch, range(start, total_steps)):
            x = x_cpu.to(device, non_blocking=True)
            # rows of the whole global batch (every rank's share together)
            global_rows = min(batch_size, n_train - (step % steps_per_epoch) * batch_size)
            if grad_sync is not None:
                grad_sync.set_rows(x.shape[0], global_rows)
            for run in runs:
                if run.step != step:
                    continue  # this run's saved state is ahead (partially saved sweep)
                if run.model.batch_sync is not None:
                    run.model.batch_sync.global_rows = global_rows
                with _quiet_if_empty(x):
                    run.last_out = out = train_step(
                        run.model,
                        run.optimizer,
                        x,
                        float(run.cfg.training.max_grad_norm),
                        after_backward=grad_sync,
                    )
                if x.shape[0]:  # a rank's share of a tiny last batch can be empty
                    run.acc.add(out)
                run.step += 1
                _after_step(
                    run,
                    data,
                    device,
                    val_freq,
                    ckpt_freq,
                    total_steps,
                    steps_per_epoch,
                    t0,
                    tokens + global_rows,
                )
            tokens += global_rows
            bar.update(1)
            if (step + 1) % every == 0 or step + 1 == total_steps:
                out = runs[0].last_out
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{float(out['loss'].detach()):.4g}",
                    L0=f"{float(out['l0_norm'].detach()):.1f}",
                    FVU=f"{sae_metrics.batch_fvu(out):.3f}",
                    tok_s=f"{rate:,.0f}",
                    runs=len(runs),
                )
            for cb in callbacks:
                cb(step + 1)
    finally:
        bar.close()
    for run in runs:
        if not me.is_main:
            continue
        final_extra = {
            "step": run.step,
            "best_step": run.best_step,
            "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
        }
        save_sae(
            run.model,
            run.ckpt_dir / "sae_final.safetensors",
            config=_plain_config(run.cfg),
            extra=final_extra,
        )
        if run.best_step < 0:  # no validation set: the final weights are the best we have
            save_sae(
                run.model,
                run.ckpt_dir / "sae_best.safetensors",
                config=_plain_config(run.cfg),
                extra=final_extra,
            )
        _save_resume(run)
        log.info(
            "%s: done, %d steps, best val loss %s at step %d -> %s",
            run.label,
            run.step,
            f"{run.best_val:.5g}" if run.best_step >= 0 else "n/a",
            run.best_step,
            run.out_dir,
        )


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


def _after_step(
    run: _Run,
    data: TrainingData,
    device: str,
    val_freq: int,
    ckpt_freq: int,
    total_steps: int,
    steps_per_epoch: int,
    t0: float,
    tokens: int,
) -> None:
    me = dist.info()
    s = run.step
    validate = s == total_steps or (val_freq > 0 and s % val_freq == 0)
    periodic = ckpt_freq > 0 and s % ckpt_freq == 0
    if validate:
        if me.distributed:
            from sae1n.distributed.sae import resync_if_drifted

            resync_if_drifted(run.model, run.label)
            _reduce_train_sums(run.acc)
        train_res = run.acc.result()
        run.acc = _TrainSums()
        row = {
            "step": s,
            "epoch": s / steps_per_epoch,
            "tokens": s * int(run.cfg.training.batch_size),
            "elapsed_s": time.perf_counter() - t0,
            "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
        }
        row.update({f"train_{k}": v for k, v in train_res.items()})
        if len(data.val_rows):
            res = _validate(run, data, device)
            row.update({f"val_{k}": v for k, v in res.items()})
            if res["loss"] < run.best_val:  # the same numbers on every rank
                run.best_val, run.best_step = res["loss"], s
                if me.is_main:
                    save_sae(
                        run.model,
                        run.ckpt_dir / "sae_best.safetensors",
                        config=_plain_config(run.cfg),
                        extra={"step": s, "val_loss": res["loss"]},
                    )
        row["best_step"] = run.best_step
        if me.is_main:
            _log_metrics(run, row)
    if not me.is_main:
        return
    if periodic:
        save_sae(
            run.model,
            run.ckpt_dir / f"sae_{s}.safetensors",
            config=_plain_config(run.cfg),
            extra={"step": s},
        )
    if validate or periodic:
        _save_resume(run)


def _validate(run: _Run, data: TrainingData, device: str) -> dict[str, float]:
    """Validation metrics; with several processes each evaluates a share of
    the rows and the sums are added (in paper-compatible mode, where
    validation updates the statistics, every process evaluates all rows)."""
    me = dist.info()
    rows, reduce = None, None
    if me.distributed and not run.model.cfg.paper_compat_update_in_eval:
        from functools import partial

        from sae1n.distributed.sae import reduce_metric_accumulator

        rows = np.array_split(data.val_rows, me.world_size)[me.rank]
        reduce = partial(reduce_metric_accumulator, act_size=run.model.act_size)
    return sae_metrics.evaluate(
        run.model,
        data.val_batches(int(run.cfg.training.batch_size), device, rows),
        float(run.cfg.training.get("dense_latent_freq", 0.1)),
        reduce=reduce,
    )


def _reduce_train_sums(acc: _TrainSums) -> None:
    """Add the running training sums of every process."""
    from sae1n.distributed.sae import all_reduce_sums

    zero = torch.zeros((), dtype=torch.float64)
    parts = all_reduce_sums(
        [torch.tensor(float(acc.n), dtype=torch.float64)]
        + [acc.sums.get(k, zero) for k in _TrainSums.KEYS]
    )
    acc.n = int(round(float(parts[0])))
    acc.sums = {k: v for k, v in zip(_TrainSums.KEYS, parts[1:])} if acc.n else {}


def train_from_args(exp: str | None, overrides: Sequence[str]) -> Path:
    """``sae1n train-sae exp=<name> key=value ...``."""
    from sae1n.sae.config import load_sae_config

    if not exp:
        from sae1n.configs import available_experiments

        raise Sae1nError(
            f"give exp=<name>; known: {', '.join(available_experiments('sae')) or 'none'}"
        )
    return train_sae(load_sae_config(exp, overrides))
