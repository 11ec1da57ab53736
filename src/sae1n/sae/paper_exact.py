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
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from sae1n.errors import ConfigError, InputFileError
from sae1n.io import atomic_path, atomic_write_csv, atomic_write_json
from sae1n.io.provenance import Provenance, read_provenance, write_sidecar
from sae1n.sae.checkpoints import write_paper_pt
from sae1n.utils import progress, resolve_device

log = logging.getLogger(__name__)

PAPER_MODEL_TYPES = ("BatchTopKSAE", "TopKSAE")
CHECKPOINT_KIND = "sae-checkpoint-paper"
CHECKPOINT_SCHEMA = 1


# ----------------------------------------------------------------------------- the model


class PaperSAE(nn.Module):
    """The paper's TopK / BatchTopK SAE (``sae.py``), with its exact parameter
    layout, init, forward, state updates and losses.

    ``num_batches_not_active`` is a plain float32 attribute, not a buffer, as
    in the paper, so it is absent from the state dict.
    """

    def __init__(self, sae_cfg: Mapping, generator: torch.Generator | None = None):
        super().__init__()
        self.model_type = _paper_model_type(sae_cfg.get("model_type", "BatchTopKSAE"))
        self.act_size = int(sae_cfg["act_size"])
        self.dict_size = int(sae_cfg["dict_size"])
        self.top_k = int(sae_cfg["top_k"])
        self.top_k_aux = int(sae_cfg["top_k_aux"])
        self.aux_penalty = float(sae_cfg["aux_penalty"])
        self.n_batches_to_dead = int(sae_cfg["n_batches_to_dead"])
        self.l1_coeff = float(sae_cfg.get("l1_coeff") or 0.0)
        self.input_unit_norm = bool(sae_cfg.get("input_unit_norm", False))
        self.threshold_lr = float(sae_cfg.get("threshold_lr", 0.01) or 0.01)
        d, f = self.act_size, self.dict_size
        # parameter order is the paper's (and Adam's)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d, f), generator=generator))
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(f, d), generator=generator))
        self.W_dec.data[:] = self.W_enc.t().data
        self.W_dec.data[:] = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        self.num_batches_not_active = torch.zeros(f)
        if self.model_type == "BatchTopKSAE":
            self.register_buffer("threshold", torch.tensor(0.0))

    def _apply(self, fn, *args, **kwargs):  # keep the plain attribute on the model's device
        out = super()._apply(fn, *args, **kwargs)
        self.num_batches_not_active = fn(self.num_batches_not_active)
        return out

    def preprocess_input(self, x: torch.Tensor):
        if self.input_unit_norm:
            x_mean = x.mean(dim=-1, keepdim=True)
            x = x - x_mean
            x_std = x.std(dim=-1, keepdim=True)
            return x / (x_std + 1e-5), x_mean, x_std
        return x, None, None

    def _select(self, acts: torch.Tensor) -> torch.Tensor:
        if self.model_type == "TopKSAE":
            top = torch.topk(acts, self.top_k, dim=-1)
            return torch.zeros_like(acts).scatter(-1, top.indices, top.values)
        if self.training:
            flat = acts.flatten()
            top = torch.topk(flat, self.top_k * acts.shape[0], dim=-1)
            return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
        return torch.where(acts > self.threshold, acts, torch.zeros_like(acts))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes with the current mode's rule; updates nothing (``save_sae_features``)."""
        x, _, _ = self.preprocess_input(x)
        acts = F.relu((x - self.b_dec) @ self.W_enc)
        return self._select(acts)

    @torch.no_grad()
    def _update_state(self, acts_topk: torch.Tensor) -> None:
        if self.model_type == "BatchTopKSAE":
            positive = acts_topk > 0
            if positive.any():
                min_positive = acts_topk[positive].min()
                lr = self.threshold_lr
                self.threshold = (1 - lr) * self.threshold + lr * min_positive
        col = acts_topk.sum(0)
        self.num_batches_not_active += (col == 0).float()
        self.num_batches_not_active[col > 0] = 0

    def forward(self, x: torch.Tensor) -> dict:
        """The paper's loss dict; updates threshold and dead counters in any mode."""
        x, _x_mean, _x_std = self.preprocess_input(x)
        acts = F.relu((x - self.b_dec) @ self.W_enc)
        acts_topk = self._select(acts)
        x_rec = acts_topk @ self.W_dec + self.b_dec
        self._update_state(acts_topk)
        l2_loss = (x_rec.float() - x.float()).pow(2).mean()
        l1_norm = acts_topk.float().abs().sum(-1).mean()
        l1_loss = self.l1_coeff * l1_norm
        l0_norm = (acts_topk > 0).float().sum(-1).mean()
        aux_loss = self._aux_loss(x, x_rec, acts)
        loss = l2_loss + l1_loss + aux_loss
        return {
            "loss": loss,
            "l2_loss": l2_loss,
            "l1_loss": l1_loss,
            "aux_loss": aux_loss,
            "l0_norm": l0_norm,
            "l1_norm": l1_norm,
            "num_dead_features": (self.num_batches_not_active > self.n_batches_to_dead).sum(),
            "feature_acts": acts_topk,
        }

    def _aux_loss(self, x, x_rec, acts):
        dead = self.num_batches_not_active >= self.n_batches_to_dead
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.tensor(0, dtype=x.dtype, device=x.device)
        residual = x.float() - x_rec.float()
        acts_dead = acts[:, dead]
        top = torch.topk(acts_dead, min(self.top_k_aux, n_dead), dim=-1)
        acts_aux = torch.zeros_like(acts_dead).scatter(-1, top.indices, top.values)
        x_rec_aux = acts_aux @ self.W_dec[dead]
        return self.aux_penalty * (x_rec_aux.float() - residual.float()).pow(2).mean()

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self) -> None:
        """Project the decoder gradient onto the rows' tangent space, renormalise the rows."""
        w_normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        if self.W_dec.grad is not None:
            proj = (self.W_dec.grad * w_normed).sum(-1, keepdim=True) * w_normed
            self.W_dec.grad -= proj
        self.W_dec.data = w_normed


def _paper_model_type(name) -> str:
    from sae1n.sae.models import canonical_model_type

    t = canonical_model_type(str(name))
    if t not in PAPER_MODEL_TYPES:
        raise ConfigError(
            f"compat=paper supports sae.model_type {' / '.join(PAPER_MODEL_TYPES)}, got {t}",
            "use sae.model_type=BatchTopKSAE or TopKSAE, or drop compat=paper",
        )
    return t


def build_paper_sae(sae_cfg: Mapping, seed: int | None = None) -> PaperSAE:
    """The paper's SAE as ``main.py`` builds it after ``seed_everything(seed)``:
    two generator draws (the DataLoader iterators), then the model."""
    if seed is not None:
        _seed_all(seed)
        for _ in range(2):
            torch.empty((), dtype=torch.int64).random_()
    return PaperSAE(sae_cfg)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the data stream


class BufferedStream:
    """The paper's ``FeatureActivationStore`` as an endless stream of rows.

    ``files`` are loaded with ``load(i) -> (n_i, D) float32 tensor``. Each fill
    draws from the global Python ``random`` and torch generators (shared
    with the other stream, in call order, as in the paper). Rows are also
    tracked as indices into the files concatenated in the given order.
    """

    def __init__(self, sizes: Sequence[int], load: Callable[[int], torch.Tensor], buffer_size: int):
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.load = load
        self.buffer_size = int(buffer_size)
        self._data: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        self._pos = 0
        self.fills = 0

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def _fill(self) -> None:
        order = list(range(len(self.sizes)))
        random.shuffle(order)
        pieces, rows, filled = [], [], 0
        while filled < self.buffer_size and order:
            i = order.pop(0)
            data = self.load(i)
            n = data.shape[0]
            needed = self.buffer_size - filled
            start = 0
            if n > needed:
                start = random.randint(0, n - needed)
                data = data[start : start + needed]
                n = needed
            pieces.append(data)
            rows.append(torch.arange(start, start + n, dtype=torch.int64) + int(self.offsets[i]))
            filled += n
        if filled == 0:
            raise InputFileError("(feature files)", "the stream's files hold no rows", "check the split")
        data = torch.cat(pieces)
        perm = torch.randperm(data.shape[0])
        self._data, self._rows = data[perm], torch.cat(rows)[perm]
        self._pos = 0
        self.fills += 1

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``batch_size`` rows of the stream (possibly across fills) and their row ids."""
        parts, ids, need = [], [], int(batch_size)
        while need:
            if self._data is None or self._pos >= self._data.shape[0]:
                self._fill()
            take = min(need, self._data.shape[0] - self._pos)
            parts.append(self._data[self._pos : self._pos + take])
            ids.append(self._rows[self._pos : self._pos + take])
            self._pos += take
            need -= take
        if len(parts) == 1:
            return parts[0], ids[0]
        return torch.cat(parts), torch.cat(ids)


def _split_files(cfg: DictConfig) -> tuple[list[Path], list[Path]]:
    """Train and val feature files as the paper lists them: sorted glob of
    ``feature_dir/<pt|h5>_files``, filtered to the split's slide ids (ids
    without a file are dropped silently, as the paper does)."""
    from sae1n.datasets.splits import read_split

    data = cfg.data
    ftype = str(data.get("file_type") or "pt")
    if ftype not in ("pt", "h5"):
        raise ConfigError(f"data.file_type must be pt or h5, got {ftype!r}")
    folder = Path(str(data.feature_dir)) / f"{ftype}_files"
    files = sorted(folder.glob(f"*.{ftype}"))
    if not files:
        raise InputFileError(folder, f"no .{ftype} feature files", "check data.feature_dir and data.file_type")
    split_path = data.get("split_csv_path")
    if not split_path:
        return files, []
    split = read_split(split_path)
    sets = {k: {Path(str(s)).stem for s in split.get(k, [])} for k in ("train", "val")}
    train = [f for f in files if f.stem in sets["train"]]
    val = [f for f in files if f.stem in sets["val"]]
    if not train:
        raise InputFileError(split_path, f"no train slide has a file in {folder}", "check the split and data.feature_dir")
    return train, val


def _loader(files: Sequence[Path], h5_key: str) -> tuple[list[int], Callable[[int], torch.Tensor]]:
    cache: dict[int, torch.Tensor] = {}

    def load(i: int) -> torch.Tensor:
        if i not in cache:
            p = files[i]
            if p.suffix == ".h5":
                import h5py

                try:
                    with h5py.File(p, "r") as f:
                        arr = f[h5_key][:]
                except (OSError, KeyError) as exc:
                    raise InputFileError(p, f"cannot read dataset {h5_key!r} ({exc})", "re-extract the features") from exc
                t = torch.from_numpy(np.asarray(arr))
            else:
                try:
                    t = torch.load(p, map_location="cpu", weights_only=True)
                except Exception as exc:  # torch raises many types for corrupt files
                    raise InputFileError(p, f"cannot be read as a tensor ({type(exc).__name__})", "re-extract the features") from exc
                if isinstance(t, Mapping):
                    t = t.get("features")
                if not isinstance(t, torch.Tensor) or t.ndim != 2:
                    raise InputFileError(p, "does not hold an (N, D) feature tensor", "re-extract the features")
            cache[i] = t.to(torch.float32)
        return cache[i]

    sizes = []
    for i, _p in enumerate(files):
        sizes.append(int(load(i).shape[0]))
    return sizes, load


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
