"""Two CPU processes on gloo over loopback: a launcher for worker functions,
and small generated features with a split CSV."""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sae1n.io import write_bag

DIM = 16
N_ATOMS = 24
# train slides hold 833 = 13 x 64 + 1 patches: with a batch of 64 the last
# batch of each epoch has one row, so one rank's share of it is empty
TRAIN_SIZES = (140, 140, 140, 140, 140, 133)
VAL_SIZES = (90, 71)


@dataclass
class Cohort:
    feature_dir: Path
    split_csv: Path
    slide_ids: list[str]


def make_cohort(root: Path, seed: int = 0) -> Cohort:
    """Features that are sparse sums of random unit atoms, in a CLAM folder,
    plus a split CSV."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(N_ATOMS, DIM))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    feature_dir = root / "features" / "toy" / "clam_processed" / "features_toy"
    split = {"train": [], "val": []}
    for kind, sizes in (("train", TRAIN_SIZES), ("val", VAL_SIZES)):
        for n in sizes:
            sid = f"{kind}_{len(split[kind]):02d}"
            split[kind].append(sid)
            idx = np.stack([rng.choice(N_ATOMS, 3, replace=False) for _ in range(n)])
            w = rng.uniform(0.5, 2.0, size=(n, 3))
            x = np.einsum("na,nad->nd", w, atoms[idx]) + 0.01 * rng.normal(size=(n, DIM))
            coords = np.stack([np.arange(n) * 256, np.zeros(n, np.int64)], axis=1)
            write_bag(feature_dir, sid, x.astype(np.float32), coords, attrs={"patch_size": 256})
    n = max(map(len, split.values()))
    frame = pd.DataFrame({k: v + [None] * (n - len(v)) for k, v in split.items()})
    split_csv = root / "splits" / "toy_0" / "splits_0.csv"
    split_csv.parent.mkdir(parents=True)
    frame.to_csv(split_csv)
    return Cohort(feature_dir, split_csv, split["train"] + split["val"])


def sae_overrides(cohort: Cohort, out: Path, *extra: str) -> list[str]:
    """``key=value`` tokens of a small BatchTopK run (64-row global batches, a
    validation each step) on ``cohort``; outputs in ``out/<exp name>``."""
    return [
        f"data.feature_dir={cohort.feature_dir}",
        f"data.split_csv_path={cohort.split_csv}",
        "data.file_type=h5",
        f"data.store_dir={out / 'store'}",
        f"output_dir={out}",
        f"sae.act_size={DIM}",
        "sae.dict_size_ratio=2",
        "sae.top_k=3",
        "sae.top_k_aux=8",
        "sae.n_batches_to_dead=4",
        "sae.device=cpu",
        "training.num_epochs=2",
        "training.batch_size=64",
        "training.validation_freq=1",
        "training.checkpoint_freq=0",
        "training.lr=1e-2",
        "training.num_threads=1",
        "training.tensorboard=false",
        *extra,
    ]


def sae_config(cohort: Cohort, out: Path, *extra: str):
    """The config of :func:`sae_overrides`, with outputs in ``out/toy``."""
    from sae1n.sae.config import load_sae_config

    cfg = load_sae_config("camelyon16_conch_0", sae_overrides(cohort, out, *extra))
    cfg.exp_name = "toy"
    return cfg


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Cohort:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def one_process(cohort, tmp_path_factory) -> Path:
    """The experiment folder of the run of :func:`sae_config` in this process."""
    from sae1n.sae.train import train_sae

    return train_sae(sae_config(cohort, tmp_path_factory.mktemp("one")))


# ----------------------------------------------------------------------------- launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, rendezvous: str, fn, args, result_dir: str) -> None:
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    os.environ["SAE1N_PROGRESS"] = "0"
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    out = Path(result_dir) / f"rank{rank}.pkl"
    by_env = rendezvous.startswith("env:")
    if by_env:  # what torchrun sets; the code under test creates the group
        port = rendezvous.split(":")[1]
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
    else:
        tdist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        result = ("ok", fn(rank, *args))
    except BaseException as exc:  # reported to the test
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    out.write_bytes(pickle.dumps(result))


def run_ranks(tmp_path: Path, fn, *args, world: int = 2, via_env: bool = False) -> list:
    """``fn(rank, *args)`` in ``world`` forked processes joined in a gloo group
    (file rendezvous, loopback sockets); with ``via_env`` the processes get
    torchrun's environment variables instead and no group. Returns each
    rank's result; raises with the worker's traceback if one failed."""
    import torch.multiprocessing as mp

    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{len(list(tmp_path.glob('results-*')))}"
    rendezvous = f"env:{free_port()}" if via_env else f"file://{tmp_path / ('store-' + name)}"
    results = tmp_path / f"results-{name}"
    results.mkdir()
    mp.start_processes(
        _worker,
        args=(world, rendezvous, fn, args, str(results)),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    out = []
    for r in range(world):
        status, value = pickle.loads((results / f"rank{r}.pkl").read_bytes())
        if status != "ok":
            raise AssertionError(f"rank {r} failed: {value}")
        out.append(value)
    return out
