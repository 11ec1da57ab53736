"""SAE training exactly as the paper's code computes it (``compat=paper``).

``sae1n train-sae exp=... compat=paper`` reproduces, step for step, what
``experiments/sae/main.py`` + ``training.py`` + ``sae.py`` +
``activation_store.py`` of the paper compute (checked bit for bit against
recorded runs of the original code, see ``tests/sae/test_paper_exact.py``):

* seeding of Python, NumPy and torch, then **two** int64 draws from the torch
  generator (the paper creates two DataLoader iterators) before the SAE exists;
* the paper's init: ``W_enc = kaiming_uniform_(empty(D, F))`` (fan-in = F),
  a discarded second draw for ``W_dec``, then ``W_dec`` = the unit-normalised
  contiguous copy of ``W_enc.T``; ``b_enc`` unused by TopK / BatchTopK;
* the endless buffered stream: each buffer fill shuffles the file order with
  Python's ``random``, appends whole files until the buffer is full (a random
  window of the last one), permutes the buffer with ``torch.randperm``;
  batches are consecutive rows of the stream and may span two fills;
* ``floor(num_tokens / batch_size)`` steps, ``num_tokens = rows * num_epochs``;
* per step: forward (threshold and dead counters updated in every forward,
  train or eval), backward, grad-norm clipping, decoder renormalisation and
  gradient projection **before** a plain ``torch.optim.Adam`` step;
* validation when ``i > 0 and (i % validation_freq == 0 or i == N - 1)`` on
  ``ceil(n_val / batch_size)`` batches of a persistent val stream, whose eval
  forwards move the threshold and the dead counters; ``sae_best`` on a strict
  improvement of the mean val loss.

Outputs (``<output_dir>/<exp>/checkpoints``): the paper's ``sae_best.pt`` /
``sae_<N-1>.pt`` plain state dicts (``torch.load(weights_only=True)``) with
``config_best.json`` / ``config_<N-1>.json``, and beside them sae1n's
``sae_best.safetensors`` / ``sae_final.safetensors`` (loaded by
:func:`sae1n.sae.checkpoints.load_sae` with the paper's semantics).

The model is in :mod:`sae1n.sae.paper_model`, the data stream in
:mod:`sae1n.sae.paper_stream`; this module holds the loop and its outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_path, atomic_write_csv, atomic_write_json
from sae1n.io.provenance import Provenance, read_provenance, write_sidecar
from sae1n.sae.checkpoints import write_paper_pt
from sae1n.sae.paper_model import (
    PAPER_MODEL_TYPES,
    PaperSAE,
    build_paper_sae,
)
from sae1n.sae.paper_stream import BufferedStream, _loader, _split_files
from sae1n.utils import progress, resolve_device

__all__ = [
    "CHECKPOINT_KIND", "CHECKPOINT_SCHEMA", "PAPER_MODEL_TYPES", "BufferedStream", "PaperRun",
    "PaperSAE", "build_paper_sae", "export_paper_checkpoints", "paper_batches",
    "run_paper_training", "sae1n_model_from_paper_state", "save_paper_checkpoint", "train_sae_paper",
]

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "sae-checkpoint-paper"
CHECKPOINT_SCHEMA = 1


# ----------------------------------------------------------------------------- the loop


@dataclass
class PaperRun:
    """A finished paper-mode run: the model, what was logged, the files written."""

    model: PaperSAE
    num_steps: int
    train: dict[str, list] = field(default_factory=dict)
    val_batches: list[dict] = field(default_factory=list)
    val_steps: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_val_loss: float = math.inf
    best_state: dict | None = None
    out_dir: Path | None = None


_METRICS = ("loss", "l2_loss", "l1_loss", "aux_loss", "l0_norm", "l1_norm", "num_dead_features")


def _paper_settings(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    sae = dict(c.get("sae") or {})
    if sae.get("dict_size") is None:
        sae["dict_size"] = int(int(sae["act_size"]) * float(sae["dict_size_ratio"]))
    c["sae"] = sae
    return c


def run_paper_training(
    cfg: DictConfig,
    *,
    init_state: Mapping[str, torch.Tensor] | None = None,
    record: bool = False,
    on_best: Callable[[PaperRun, int], None] | None = None,
    on_checkpoint: Callable[[PaperRun, int], None] | None = None,
    device: str = "cpu",
    max_steps: int | None = None,
) -> PaperRun:
    """Run the paper's training loop on ``cfg`` and return the :class:`PaperRun`.

    ``init_state`` (a state dict) is loaded strictly after the paper's own init,
    as the recorded ``*_given`` runs did; ``record`` keeps per-step values
    (losses, thresholds, dead counters, batch row ids) for comparison;
    ``on_best(run, step)`` is called at each new best validation loss;
    ``on_checkpoint(run, step)`` every ``checkpoint_freq`` steps, after the
    forward and before the update (the position of the periodic save in the
    loop the paper's training.py derives from; not covered by the recorded runs).
    """
    c = _paper_settings(cfg)
    sae_cfg, tr = c["sae"], c["training"]
    seed = int(c.get("seed", 42))
    batch_size = int(tr["batch_size"])
    if batch_size <= 0:
        raise ConfigError(f"training.batch_size must be positive, got {batch_size}")
    train_files, val_files = _split_files(cfg)
    h5_key = str(cfg.data.get("h5_dataset_name") or "features")
    # loading does not touch any RNG; sizes are known before the first draw
    train_sizes, train_load = _loader(train_files, h5_key)
    val_sizes, val_load = _loader(val_files, h5_key)
    n_train = sum(train_sizes)
    act = int(train_load(0).shape[1])
    if sae_cfg.get("act_size") is not None and int(sae_cfg["act_size"]) != act:
        raise ConfigError(f"sae.act_size={sae_cfg['act_size']} but the features have {act} columns")
    buffer_size = int(c["data"].get("num_batches_in_buffer") or 1) * batch_size
    num_tokens = tr.get("num_tokens") or n_train * int(tr["num_epochs"])
    n_steps = int(num_tokens) // batch_size
    if max_steps is not None:
        n_steps = min(n_steps, int(max_steps))
    val_freq = int(tr.get("validation_freq") or 0)
    n_val_batches = math.ceil(sum(val_sizes) / batch_size) if val_files else 0

    model = build_paper_sae(sae_cfg, seed)
    if init_state is not None:
        model.load_state_dict({k: v.clone() for k, v in init_state.items()}, strict=True)
    model.to(device)
    train_stream = BufferedStream(train_sizes, train_load, buffer_size)
    val_stream = BufferedStream(val_sizes, val_load, buffer_size) if val_files else None
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=float(tr["lr"]), betas=(float(tr["beta1"]), float(tr["beta2"])))
    max_grad_norm = float(tr.get("max_grad_norm", 1e5))
    ckpt_freq = int(tr.get("checkpoint_freq") or 0)
    run = PaperRun(model, n_steps)
    rec = run.train
    is_btk = model.model_type == "BatchTopKSAE"

    def keep(name, value):
        rec.setdefault(name, []).append(value)

    for i in progress(range(n_steps), desc="train-sae (compat=paper)", total=n_steps):
        x, rows = train_stream.next_batch(batch_size)
        model.train()
        out = model(x.to(device))
        if record:
            keep("rows", rows.numpy().astype(np.int32))
            for k in _METRICS:
                keep(k, out[k].item())
            keep("nbna_after_train_forward", model.num_batches_not_active.cpu().numpy().copy())
            if is_btk:
                keep("threshold_after_train_forward", float(model.threshold))
        if on_checkpoint is not None and ckpt_freq > 0 and i % ckpt_freq == 0:
            on_checkpoint(run, i)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        model.make_decoder_weights_and_grad_unit_norm()
        optimizer.step()
        optimizer.zero_grad()
        validate = (
            val_stream is not None and i > 0 and val_freq > 0 and (i % val_freq == 0 or i == n_steps - 1)
        )
        if validate:
            _validation(run, val_stream, n_val_batches, batch_size, i, device, record, on_best)
        if record:
            keep("nbna_after_step", model.num_batches_not_active.cpu().numpy().copy())
            if is_btk:
                keep("threshold_after_step", float(model.threshold))
    return run


@torch.no_grad()
def _validation(run, stream, n_batches, batch_size, step, device, record, on_best) -> None:
    model = run.model
    model.eval()
    vals: dict[str, list[float]] = {k: [] for k in _METRICS}
    for _b in range(n_batches):
        x, rows = stream.next_batch(batch_size)
        out = model(x.to(device))
        row = {"at_step": step, **{k: out[k].item() for k in _METRICS}}
        for k in _METRICS:
            vals[k].append(row[k])
        if record:
            row["rows"] = rows.numpy().astype(np.int32)
            row["nbna"] = model.num_batches_not_active.cpu().numpy().copy()
            if model.model_type == "BatchTopKSAE":
                row["threshold_after_forward"] = float(model.threshold)
            run.val_batches.append(row)
    model.train()
    means = {f"val_{k}": sum(v) / len(v) for k, v in vals.items()}
    improved = means["val_loss"] < run.best_val_loss
    run.val_steps.append({"step": step, **means, "new_best_saved": improved})
    if improved:
        run.best_val_loss = means["val_loss"]
        run.best_step = step
        run.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if on_best is not None:
            on_best(run, step)


# ----------------------------------------------------------------------------- outputs


def save_paper_checkpoint(state: Mapping[str, torch.Tensor], path: Path, config: Mapping, prov: Provenance) -> None:
    """The paper's checkpoint: a plain state dict (``torch.save``) and its
    ``config_<suffix>.json``, written atomically, with a provenance sidecar."""
    from sae1n.sae.checkpoints import config_path_for

    path = write_paper_pt(Path(path), state)
    atomic_write_json(config_path_for(path), dict(config))
    write_sidecar(path, prov)


def sae1n_model_from_paper_state(state: Mapping[str, torch.Tensor], sae_cfg: Mapping):
    """A sae1n model (:mod:`sae1n.sae.models`) holding ``state`` with the paper's
    semantics switched on (no ``b_enc``, statistics updated in eval)."""
    from sae1n.sae.models import build_sae

    kw = {k: v for k, v in sae_cfg.items() if k not in ("dtype", "device", "dict_size_ratio", "init_weights")}
    kw.update(paper_compat_no_b_enc=True, paper_compat_update_in_eval=True)
    model = build_sae(kw)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model.eval()


def _config_for_checkpoint(settings: dict) -> dict:
    """The run config saved beside a checkpoint: the paper's keys, plus the compat
    switches so sae1n's loader applies the paper's encoder rule."""
    out = {k: v for k, v in settings.items() if k != "sweep"}
    sae = dict(out["sae"])
    sae.update(paper_compat_no_b_enc=True, paper_compat_update_in_eval=True)
    out["sae"] = sae
    return out


def _run_provenance(cfg: DictConfig, settings: dict, files: Sequence[Path], init: Path | None) -> Provenance:
    inputs: dict = {"features": {p.stem: p for p in files}}
    split = cfg.data.get("split_csv_path")
    if split:
        inputs["split"] = Path(str(split))
    if init is not None:
        inputs["init_weights"] = init
    keep = {k: settings[k] for k in ("seed", "sae", "training") if k in settings}
    keep["data"] = {k: settings["data"].get(k) for k in ("file_type", "num_batches_in_buffer", "h5_dataset_name")}
    keep["compat"] = "paper"
    from sae1n.io.provenance import input_identity

    ident = {
        "features": {k: input_identity(v) for k, v in inputs.pop("features").items()},
        **inputs,
    }
    return Provenance.make(CHECKPOINT_KIND, CHECKPOINT_SCHEMA, settings=keep, inputs=ident)


def _load_init(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or hostile files
        raise InputFileError(path, f"cannot be read as a state dict ({type(exc).__name__})", "pass a .safetensors or sae_best.pt") from exc
    if not isinstance(state, Mapping):
        raise InputFileError(path, "is not a state dict", "pass a .safetensors or sae_best.pt")
    return dict(state)


def train_sae_paper(cfg: DictConfig, *, callbacks: Sequence[Callable[[int], None]] = ()) -> Path:
    """``train-sae ... compat=paper``: train as the paper's code does and write its
    checkpoint layout (plus sae1n's safetensors) under the experiment folder.

    ``sae.init_weights`` (a state dict file) loads a given initial state after
    the paper's init. A folder whose recorded provenance equals this run's is
    left as is ("already trained")."""
    from sae1n.sae.checkpoints import save_sae
    from sae1n.sae.config import experiment_dir

    if cfg.get("sweep"):
        raise ConfigError("compat=paper trains one SAE; drop the sweep", "run each setting as its own exp")
    device = resolve_device(cfg.sae.get("device", "auto"))
    settings = _paper_settings(cfg)
    init = cfg.sae.get("init_weights")
    init_path = Path(str(init)) if init else None
    train_files, val_files = _split_files(cfg)
    prov = _run_provenance(cfg, settings, train_files + val_files, init_path)
    out_dir = experiment_dir(cfg)
    ckpt = out_dir / "checkpoints"
    final_pt = None
    if ckpt.is_dir():
        done = [p for p in ckpt.glob("sae_*.pt") if p.stem != "sae_best"]
        for p in done:
            if prov.matches(read_provenance(p)):
                final_pt = p
    if final_pt is not None and (ckpt / "sae_final.safetensors").is_file():
        log.info("%s: already trained with these settings (compat=paper); nothing to do", out_dir)
        return out_dir
    if ckpt.is_dir():
        for p in list(ckpt.glob("sae_*")) + list(ckpt.glob("config_*.json")):
            p.unlink()
    ckpt.mkdir(parents=True, exist_ok=True)
    saved_cfg = _config_for_checkpoint(settings)
    with atomic_path(out_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg))

    def write_best(run: PaperRun, step: int) -> None:
        save_paper_checkpoint(run.best_state, ckpt / "sae_best.pt", saved_cfg, prov)

    def write_step(run: PaperRun, step: int) -> None:
        state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        save_paper_checkpoint(state, ckpt / f"sae_{step}.pt", saved_cfg, prov)

    run = run_paper_training(
        cfg,
        init_state=_load_init(init_path) if init_path else None,
        on_best=write_best,
        on_checkpoint=write_step,
        device=device,
    )
    for cb in callbacks:
        cb(run.num_steps)
    final_state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    last = run.num_steps - 1
    save_paper_checkpoint(final_state, ckpt / f"sae_{last}.pt", saved_cfg, prov)
    sae_cfg = settings["sae"]
    info = {"compat": "paper", "step": last, "best_step": run.best_step}
    if run.best_state is not None:
        save_sae(sae1n_model_from_paper_state(run.best_state, sae_cfg), ckpt / "sae_best.safetensors", config=saved_cfg, extra=info)
        write_sidecar(ckpt / "sae_best.safetensors", prov)
    save_sae(sae1n_model_from_paper_state(final_state, sae_cfg), ckpt / "sae_final.safetensors", config=saved_cfg, extra=info)
    write_sidecar(ckpt / "sae_final.safetensors", prov)
    if run.val_steps:
        import pandas as pd

        (out_dir / "logs").mkdir(exist_ok=True)
        atomic_write_csv(out_dir / "logs" / "metrics.csv", pd.DataFrame(run.val_steps), index=False)
    log.info("%s: %d steps (compat=paper), best val loss %.6g at step %s", out_dir, run.num_steps, run.best_val_loss, run.best_step)
    return out_dir


def paper_batches(run: PaperRun) -> Iterator[np.ndarray]:
    """The row ids of each recorded train batch (``record=True``)."""
    yield from run.train.get("rows", [])


def export_paper_checkpoints(exp_dir: str | Path) -> list[Path]:
    """Write the paper's ``sae_<name>.pt`` (plain state dict of the paper's keys,
    ``torch.load(weights_only=True)``) beside every ``sae_<name>.safetensors``
    of an experiment (and its sweep runs), so the paper's own tools read sae1n
    runs made without ``checkpoint.paper_pt=true`` (with it, the trainer writes
    them as it saves). The ``config_<name>.json`` saved with
    each checkpoint is already beside it. Note: sae1n's default TopK /
    BatchTopK encoders add ``b_enc``, which the paper's code ignores; train
    with ``sae.paper_compat_no_b_enc=true`` for identical codes there."""
    from safetensors.torch import load_file

    written = []
    for st in sorted(Path(exp_dir).rglob("checkpoints/sae_*.safetensors")):
        state = {k: v for k, v in load_file(str(st)).items() if k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
        if "W_enc" not in state:
            continue
        pt = write_paper_pt(st.with_suffix(".pt"), state)
        prov = read_provenance(st)
        if prov is not None:
            write_sidecar(pt, prov)
        written.append(pt)
    return written
