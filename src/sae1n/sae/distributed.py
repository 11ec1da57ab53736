"""SAE training on several processes, step for step equal to one process.

The trainer (:mod:`sae1n.sae.trainer`) talks to one small interface,
:class:`StatsSync` (:func:`make_sync` picks the one-process no-op or
:class:`RankSync`); everything below is what :class:`RankSync` uses.

A global batch of B rows is split across the ranks (``rows[rank::world]``,
see :func:`sae1n.sae.data.batch_rows`). Three things make the W-process
step the one-process step, up to float rounding:

* gradients (:class:`GradientAllReduce`): every loss term is a mean over
  the rank's rows, so the gradient of the global mean is the sum over ranks
  of ``B_r / B`` times the rank's gradient (one all-reduce of one flat
  buffer). Clipping, the removal of the decoder-parallel component, Adam
  and the decoder renormalisation then run on identical inputs on every
  rank, so the weights stay identical without being sent around. An
  explicit all-reduce (rather than ``DistributedDataParallel``) keeps the
  hand-written sparse backward untouched.
* the BatchTopK selection (:class:`BatchStatsSync`): the k·B largest
  pre-activations of the whole global batch, not of each shard. Every rank
  sends its own largest few (about 2·k·B/W), all ranks find the global
  k·B-th value from them, check that no rank could hold more above it
  (else every rank sends k·B, always enough) and keep their entries at or
  above it.
* the statistics: a latent counts as fired when it fired on any rank, and
  the BatchTopK threshold's running minimum uses the global minimum kept
  activation, so the dead-latent counters, the AuxK set and the inference
  threshold are identical everywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.distributed as tdist

from sae1n import distributed as dist
from sae1n.distributed import collective_device, is_main, world_size
from sae1n.sae import kernels

log = logging.getLogger(__name__)


class BatchStatsSync:
    """Makes an SAE's batch-wide decisions global across the ranks.

    Attach with ``model.batch_sync = BatchStatsSync()`` and set
    :attr:`global_rows` (the rows of the whole global batch) before each
    training step; the model calls :meth:`any`, :meth:`min` and
    :meth:`batch_topk_codes` in training mode only."""

    def __init__(self, oversample: float = 2.0, slack: int = 256):
        self.global_rows: int | None = None
        self.oversample = float(oversample)
        self.slack = int(slack)
        self.full_gathers = 0  # times the cheap candidate exchange was not enough

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a boolean mask over the ranks."""
        t = mask.to(torch.uint8)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return t.bool()

    @torch.no_grad()
    def min(self, value: torch.Tensor) -> torch.Tensor:
        """Minimum of a scalar over the ranks (``inf`` from a rank that has none)."""
        t = value.detach().clone().reshape(1)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return t.reshape(value.shape)

    def rows_in_global_batch(self, local_rows: int, device) -> int:
        if self.global_rows is not None:
            return int(self.global_rows)
        t = torch.tensor([local_rows], dtype=torch.int64, device=device)
        tdist.all_reduce(t)
        return int(t)

    # ------------------------------------------------------------------ BatchTopK
    @torch.no_grad()
    def batch_topk_codes(
        self, pre: torch.Tensor, k_per_row: int, hint: float | None, *, sync_free: bool = False
    ) -> tuple[kernels.SparseCodes, float | None]:
        """This rank's entries among the ``k_per_row`` x global-batch largest
        pre-activations of the global batch (ties at the cut-off may add a
        few); returns the codes and a speed hint for the next call."""
        world = world_size()
        n_cols = pre.shape[1]
        global_rows = self.rows_in_global_batch(pre.shape[0], pre.device)
        k_total = min(int(k_per_row) * global_rows, n_cols * global_rows)
        m = min(k_total, math.ceil(self.oversample * k_total / world) + self.slack)
        while True:
            codes, next_hint = kernels.batch_topk_codes(
                pre, min(m, pre.numel()), hint, sync_free=sync_free
            )
            kth, enough = self._global_kth(codes.vals, m, k_total, world)
            if enough:
                break
            self.full_gathers += 1
            m = k_total  # every rank sends k_total values: always enough
        if sync_free:  # static shapes: entries below the cut-off become ReLU zeros
            codes.vals = torch.where(codes.vals >= kth, codes.vals, torch.zeros_like(codes.vals))
            codes.positive = False
            return codes, next_hint
        kth_value = float(kth)
        if math.isinf(kth_value):  # fewer than k_total positive values: all are kept
            return codes, next_hint
        keep = (codes.vals >= kth).nonzero().squeeze(1)
        kept = kernels.SparseCodes(
            codes.rows.index_select(0, keep),
            codes.cols.index_select(0, keep),
            codes.vals.index_select(0, keep),
            codes.n_rows,
            codes.n_cols,
            positive=True,
        )
        return kept, next_hint

    def _global_kth(
        self, vals: torch.Tensor, m: int, k_total: int, world: int
    ) -> tuple[torch.Tensor, bool]:
        """The global ``k_total``-th largest positive value (``-inf`` when
        there are fewer) from every rank's ``m`` largest, and whether those
        were enough to know it."""
        send = torch.full((m,), float("-inf"), dtype=vals.dtype, device=vals.device)
        n = vals.shape[0]
        send[:n] = torch.where(vals > 0, vals, torch.full_like(vals, float("-inf")))
        parts = [torch.empty_like(send) for _ in range(world)]
        tdist.all_gather(parts, send)
        gathered = torch.stack(parts)
        kth = torch.topk(gathered.reshape(-1), min(k_total, gathered.numel())).values.min()
        if m >= k_total:
            return kth, True
        # a rank that sent m positive values may hold more; they are all <= its
        # smallest sent one, so the answer stands when that is below the cut-off
        positive = torch.isfinite(gathered)
        full = positive.sum(1) >= m
        smallest = torch.where(positive, gathered, torch.full_like(gathered, float("inf"))).amin(1)
        return kth, not bool((full & (smallest >= kth)).any())


class GradientAllReduce:
    """``after_backward`` hook of :func:`sae1n.sae.trainer.train_step`: turns
    each rank's gradient of its local mean loss into the gradient of the
    global-batch mean loss, identical on every rank. Set the rows with
    :meth:`set_rows` before each step."""

    def __init__(self):
        self.weight = 1.0

    def set_rows(self, local_rows: int, global_rows: int) -> None:
        self.weight = local_rows / global_rows if global_rows else 0.0

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # same structure on every rank: an unused parameter gets zeros
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        if self.weight == 0.0:
            flat.zero_()  # an empty shard's mean loss is NaN; it contributes nothing
        else:
            flat.mul_(self.weight)
        tdist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view(p.grad.shape))
            offset += n


def attach(model, sync: BatchStatsSync | None) -> None:
    """Make ``model``'s batch statistics rank-global (``None``: local again)."""
    model.batch_sync = sync


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if world_size() <= 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        buf = t.data if t.data.is_contiguous() else t.data.contiguous()
        tdist.broadcast(buf, src=src)
        if buf is not t.data:
            t.data.copy_(buf)


@torch.no_grad()
def resync_if_drifted(module: torch.nn.Module, label: str = "model") -> bool:
    """Compare a checksum of the weights over the ranks; if they differ
    (they should not), copy rank 0's to all and warn. Returns True if they did."""
    if world_size() <= 1:
        return False
    dev = collective_device()
    sums = torch.stack([t.detach().double().sum() for t in module.state_dict().values()]).to(dev)
    lo, hi = sums.clone(), sums.clone()
    tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
    if torch.equal(lo, hi):
        return False
    if is_main():
        log.warning("%s: weights differed between ranks; re-synchronised from rank 0", label)
    broadcast_module(module)
    return True


@torch.no_grad()
def all_reduce_sums(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum every tensor over the ranks (float64, on the collective device);
    returns new tensors on each input's device."""
    if world_size() <= 1:
        return [t.double() for t in tensors]
    dev = collective_device()
    flat = torch.cat([t.detach().double().reshape(-1).to(dev) for t in tensors])
    tdist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset : offset + n].view(t.shape).to(t.device))
        offset += n
    return out


def reduce_metric_accumulator(acc, act_size: int) -> None:
    """Sum a :class:`sae1n.sae.metrics.MetricAccumulator` over the ranks in
    place (each rank evaluated its own share of the validation rows)."""
    from sae1n.sae.metrics import LOSS_KEYS

    device = acc.sq_err.device
    x_sum = (
        acc.x_sum
        if acc.x_sum is not None
        else torch.zeros(act_size, dtype=torch.float64, device=device)
    )
    n = torch.tensor(float(acc.n), dtype=torch.float64, device=device)
    parts = all_reduce_sums(
        [n, *(acc.sums[k] for k in LOSS_KEYS), acc.sq_err, acc.x_sq, x_sum, acc.fired]
    )
    acc.n = int(round(float(parts[0])))
    for i, k in enumerate(LOSS_KEYS):
        acc.sums[k] = parts[1 + i]
    acc.sq_err, acc.x_sq, x_sum, acc.fired = parts[1 + len(LOSS_KEYS) :]
    acc.x_sum = x_sum if acc.n else None


# ----------------------------------------------------------------------------- the interface


class StatsSync:
    """What the trainer asks of "the other processes"; this base class is the
    one-process case, where every call is a no-op or the identity."""

    distributed = False

    def attach(self, model) -> None:
        """Start training ``model`` (same weights on every rank, global batch statistics)."""

    def detach(self, model) -> None:
        """Training of ``model`` ended (its statistics are local again)."""

    def before_step(self, model, local_rows: int, global_rows: int) -> None:
        """The rows of this rank's share and of the whole global batch."""

    def after_backward(self, model) -> None:
        """Make the gradients those of the global-batch loss."""

    def check_same_start(self, steps: Sequence[int], where) -> None:
        """Every rank resumes from the same steps."""

    def before_validation(self, model, label: str) -> None:
        """Checks before the numbers that decide the best checkpoint."""

    def sum(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Sum tensors over the ranks (float64)."""
        return [t.double() for t in tensors]

    def val_rows(self, model, rows):
        """This rank's share of the validation rows."""
        return rows

    def reduce_metrics(self, model):
        """A ``reduce`` for :func:`sae1n.sae.metrics.evaluate` (None: nothing to add)."""
        return None


class RankSync(StatsSync):
    """Several processes (see the module docstring)."""

    distributed = True

    def __init__(self):
        self.grads = GradientAllReduce()
        self.me = dist.info()

    def attach(self, model) -> None:
        broadcast_module(model)
        model.batch_sync = BatchStatsSync()

    def detach(self, model) -> None:
        model.batch_sync = None

    def before_step(self, model, local_rows: int, global_rows: int) -> None:
        self.grads.set_rows(local_rows, global_rows)
        if model.batch_sync is not None:
            model.batch_sync.global_rows = global_rows

    def after_backward(self, model) -> None:
        self.grads(model)

    def check_same_start(self, steps: Sequence[int], where) -> None:
        from sae1n.errors import ConfigError

        every = dist.all_gather_objects(list(steps))
        if any(s != every[0] for s in every):
            raise ConfigError(
                f"{where}: the processes found different resume states "
                f"(steps per rank: {every}); put output_dir on a filesystem every node sees, "
                "or set training.resume=false"
            )

    def before_validation(self, model, label: str) -> None:
        resync_if_drifted(model, label)

    def sum(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return all_reduce_sums(tensors)

    def val_rows(self, model, rows):
        import numpy as np

        if model.cfg.paper_compat_update_in_eval:  # validation updates statistics: all rows everywhere
            return rows
        return np.array_split(rows, self.me.world_size)[self.me.rank]

    def reduce_metrics(self, model):
        if model.cfg.paper_compat_update_in_eval:
            return None
        from functools import partial

        return partial(reduce_metric_accumulator, act_size=model.act_size)


def make_sync() -> StatsSync:
    """:class:`RankSync` inside a process group, else the one-process :class:`StatsSync`."""
    return RankSync() if dist.info().distributed else StatsSync()
