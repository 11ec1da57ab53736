"""Several processes, one job: ``torch.distributed`` helpers for ``torchrun``.

``torchrun`` (alone, or started by ``srun`` on each Slurm node) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in every process; :func:`session`
turns them into a process group (NCCL for CUDA tensors, gloo for CPU
tensors) and every stage asks :func:`info` who it is. Without those
variables nothing changes: one process, no group, no collective.

Public API::

    with session() as me:            # me.rank, me.world_size, me.local_rank, me.is_main
        mine = shard(slide_ids)      # sorted(slide_ids)[rank::world_size]
        ...
        barrier()
        done = all_gather_objects(my_done_ids)
        if is_main(): check_every_slide_done(slide_ids, done, what=..., where=...)

The SAE side (gradient all-reduce, rank-global BatchTopK and dead-latent
statistics) is :mod:`sae1n.sae.distributed` (it lives with what it
distributes); slide-sharded extraction is
:func:`sae1n.encoders.sharding.extract_features_sharded`.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sae1n.errors import ConfigError, Sae1nError

log = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 1800
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (a lone process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun, "
            "which sets it"
        ) from None


def launched() -> bool:
    """True when this process was started by ``torchrun`` with more than one process."""
    return (_env_int("WORLD_SIZE", 1) or 1) > 1


def env_info() -> DistInfo:
    """The job layout given by the ``torchrun`` environment variables."""
    world = _env_int("WORLD_SIZE", 1) or 1
    if world <= 1:
        return DistInfo()
    missing = [k for k in _TORCHRUN_VARS if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node N -m sae1n ...` (it sets all of them)"
        )
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return DistInfo(rank, world, local_rank, local_world)


def is_initialized() -> bool:
    """True when a default process group exists."""
    import torch.distributed as tdist

    return tdist.is_available() and tdist.is_initialized()


def info() -> DistInfo:
    """This process's place in the current process group (rank 0 of 1 without one)."""
    if not is_initialized():
        return DistInfo()
    import torch.distributed as tdist

    world = tdist.get_world_size()
    rank = tdist.get_rank()
    local_rank = _env_int("LOCAL_RANK", None)
    local_world = _env_int("LOCAL_WORLD_SIZE", None)
    if local_rank is None:
        local_rank, local_world = rank, world
    return DistInfo(rank, world, local_rank, local_world or world)


def rank() -> int:
    return info().rank


def world_size() -> int:
    return info().world_size


def is_main() -> bool:
    """True on rank 0 (and in a lone process): the one that writes shared files."""
    return info().rank == 0


def init(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Create the default process group from the ``torchrun`` environment.

    Does nothing (returns False) in a lone process or when a group exists.
    The default backend is ``cpu:gloo,cuda:nccl`` when CUDA is available (so
    CPU and GPU tensors both have a path) and ``gloo`` otherwise."""
    import torch
    import torch.distributed as tdist

    if is_initialized() or not launched():
        return False
    me = env_info()
    if not tdist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run one process")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend:
        n_gpu = torch.cuda.device_count()
        if me.local_rank >= n_gpu:
            raise ConfigError(
                f"LOCAL_RANK={me.local_rank} but this node has {n_gpu} GPU(s); start at most "
                f"{n_gpu} processes per node (torchrun --nproc_per_node {n_gpu})"
            )
        torch.cuda.set_device(me.local_rank)
    tdist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=me.rank,
        world_size=me.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    # kept for the life of the process: later stages (a pipeline) reuse it,
    # and a second rendezvous on the same torchrun store is not attempted
    atexit.register(_destroy)
    log.debug("rank %d of %d joined (backend %s)", me.rank, me.world_size, backend)
    return True


def _destroy() -> None:
    if is_initialized():
        import torch.distributed as tdist

        tdist.destroy_process_group()


@contextmanager
def session(backend: str | None = None) -> Iterator[DistInfo]:
    """Join the ``torchrun`` job (no-op in a lone process or when a group
    already exists); the group stays for later stages and is closed when
    the process exits.

    Inside the block, on ``torchrun`` ranks other than 0, ``sae1n`` info
    logs and progress bars are silenced so the console shows one copy."""
    init(backend)
    me = info()
    quiet = launched() and not me.is_main
    logger = logging.getLogger("sae1n")
    old_level, old_progress = logger.level, os.environ.get("SAE1N_PROGRESS")
    if quiet:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
        os.environ["SAE1N_PROGRESS"] = "0"
    try:
        yield me
    finally:
        if quiet:
            logger.setLevel(old_level)
            if old_progress is None:
                os.environ.pop("SAE1N_PROGRESS", None)
            else:
                os.environ["SAE1N_PROGRESS"] = old_progress


def rank_device(device: str) -> str:
    """The device of this rank: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>``
    in a multi-process job (one GPU per process); anything else is kept."""
    me = info()
    if me.distributed and device == "cuda":
        return f"cuda:{me.local_rank}"
    return device


def _cpu_collectives() -> bool:
    import torch.distributed as tdist

    return "gloo" in str(tdist.get_backend()).lower()


def collective_device():
    """Where small bookkeeping tensors for collectives live: CPU with a gloo
    backend (or a mixed one), the current GPU with NCCL only."""
    import torch

    if not is_initialized() or _cpu_collectives():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def barrier() -> None:
    """Wait until every rank gets here (no-op in a lone process)."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as tdist

    # an all-reduce on the collective device: works for gloo, NCCL and mixed groups
    tdist.all_reduce(torch.zeros(1, device=collective_device()))


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a lone process)."""
    if world_size() <= 1:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() <= 1:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def in_turn(fn: Callable[[], T], what: str = "setup") -> T:
    """``fn()`` on every rank, rank 0 first, then the first process of each
    other node, then the rest, so a cache they share (the packed feature
    store) is built once and only read after. An error on an earlier rank
    stops the later ones with a message naming it."""
    me = info()
    if not me.distributed:
        return fn()
    stages = (me.rank == 0, me.rank != 0 and me.local_rank == 0, me.local_rank != 0)
    result: T | None = None
    for mine in stages:
        error = None
        if mine:
            try:
                result = fn()
            except Exception as exc:
                error = (type(exc).__name__, str(exc))
                failure = exc
        errors = [(r, e) for r, e in enumerate(all_gather_objects(error)) if e is not None]
        if error is not None:
            raise failure
        if errors:
            r, (kind, msg) = errors[0]
            raise Sae1nError(f"{what} failed on rank {r}: {kind}: {msg}")
    return result  # type: ignore[return-value]


def shard(items: Iterable, rank: int | None = None, world_size: int | None = None) -> list:
    """This rank's share of ``items``: ``sorted(items)[rank::world_size]``.

    Deterministic (it depends only on the items and the job size), disjoint
    between ranks, and together the ranks cover every item once; slide ids
    sort to a random-like size order, so shares are balanced on average."""
    me = info()
    r = me.rank if rank is None else int(rank)
    w = me.world_size if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise ConfigError(f"shard needs 0 <= rank < world_size, got rank {r} of {w}")
    return sorted(items)[r::w]


def check_every_slide_done(
    expected: Iterable[str],
    done_per_rank: Sequence[Iterable[str]],
    *,
    what: str,
    where: str | os.PathLike,
) -> None:
    """Raise :class:`Sae1nError` unless the ranks' done lists cover every
    expected slide exactly once (the final step of a sharded run)."""
    counts = Counter(s for done in done_per_rank for s in done)
    expected = list(expected)
    missing = [s for s in expected if counts[s] == 0]
    twice = sorted(s for s, c in counts.items() if c > 1)
    extra = sorted(set(counts) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} slide(s) not done: {_show(missing)}")
    if twice:
        problems.append(f"{len(twice)} slide(s) done by several ranks: {_show(twice)}")
    if extra:
        problems.append(f"{len(extra)} unexpected slide(s): {_show(extra)}")
    if problems:
        raise Sae1nError(
            f"{what} in {Path(where)}: " + "; ".join(problems) + ". Re-run the same command "
            "(finished slides are skipped)"
        )


def _show(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (" ..." if len(ids) > n else "")


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "broadcast_object",
    "check_every_slide_done",
    "collective_device",
    "env_info",
    "in_turn",
    "info",
    "init",
    "is_initialized",
    "is_main",
    "launched",
    "rank",
    "rank_device",
    "session",
    "shard",
    "world_size",
]
