"""Generated patch features with planted sparse structure, in a CLAM folder
with a split CSV, plus a small SAE config pointing at them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sae1n.io import write_bag

DIM = 32
N_ATOMS = 48
ACTIVE = 3


@dataclass
class Planted:
    feature_dir: Path
    split_csv: Path
    atoms: np.ndarray  # (N_ATOMS, DIM) unit rows
    slides: dict[str, str]  # slide id -> split


def make_planted(
    root: Path, n_slides: int = 10, patches: int = 400, seed: int = 0, dim: int = DIM
) -> Planted:
    """Each patch is the sum of ACTIVE random atoms with positive weights,
    an offset and a little noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(N_ATOMS, dim))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    offset = rng.normal(size=dim) * 0.5
    feature_dir = root / "features" / "planted" / "clam_processed" / "features_toy"
    slides = {}
    for i in range(n_slides):
        sid = f"slide_{i:02d}"
        split = "val" if i in (0, 1) else ("test" if i == 2 else "train")
        slides[sid] = split
        idx = np.stack([rng.choice(N_ATOMS, ACTIVE, replace=False) for _ in range(patches)])
        w = rng.uniform(0.5, 2.0, size=(patches, ACTIVE))
        x = np.einsum("na,nad->nd", w, atoms[idx]) + offset + 0.01 * rng.normal(size=(patches, dim))
        coords = np.stack([np.arange(patches) * 256, np.full(patches, i * 256)], axis=1)
        write_bag(
            feature_dir,
            sid,
            x.astype(np.float32),
            coords,
            attrs={"patch_size": 256, "patch_level": 0},
        )
    cols = {s: [k for k, v in slides.items() if v == s] for s in ("train", "val", "test")}
    n = max(len(v) for v in cols.values())
    frame = pd.DataFrame({s: v + [None] * (n - len(v)) for s, v in cols.items()})
    split_csv = root / "splits" / "planted_42" / "splits_0.csv"
    split_csv.parent.mkdir(parents=True)
    frame.to_csv(split_csv)
    return Planted(feature_dir, split_csv, atoms, slides)


def small_config(planted: Planted, out: Path, **over):
    """A config like the shipped ones, sized for seconds of CPU."""
    from sae1n.configs import load_experiment

    cfg = load_experiment(
        "sae",
        "camelyon16_conch_0",
        [
            f"data.feature_dir={planted.feature_dir}",
            f"data.split_csv_path={planted.split_csv}",
            "data.file_type=h5",
            f"output_dir={out}",
            f"sae.act_size={DIM}",
            "sae.dict_size_ratio=2",
            "sae.top_k=3",
            "sae.top_k_aux=16",
            "sae.n_batches_to_dead=10",
            "training.num_epochs=4",
            "training.batch_size=128",
            "training.validation_freq=25",
            "training.checkpoint_freq=40",
            "training.lr=1e-2",
            "training.num_threads=1",
        ]
        + [f"{k}={v}" for k, v in over.items()],
    )
    cfg.exp_name = "toy"
    return cfg


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> Planted:
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def trained(planted, tmp_path_factory):
    """One trained toy SAE (shared by the encoding and loading tests)."""
    from sae1n.sae.train import train_sae

    out = tmp_path_factory.mktemp("trained")
    exp_dir = train_sae(small_config(planted, out))
    return exp_dir


def yaml_of(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
