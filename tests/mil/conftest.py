"""Generated MIL cohorts: CLAM feature folders, dataset CSV, CLAM splits.

In tumour slides a few patches carry a planted signal on one feature (or one
SAE unit); everything else is noise, so only a model that finds those patches
can separate the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sae1n.configs import load_experiment
from sae1n.io import write_bag, write_sparse_codes

PLANTED_FEATURE = 3
PLANTED_UNIT = 7


@dataclass
class Cohort:
    root: Path
    csv_path: Path
    data_dir: Path
    backbone: str
    split_dir: Path
    labels: dict
    splits: dict
    ranking_csv: Path | None = None

    def overrides(self, **extra) -> list[str]:
        """key=value overrides pointing a packaged config at this cohort."""
        items = {
            "dataset.csv_path": self.csv_path,
            "dataset.data_dir": self.data_dir,
            "features.backbone": self.backbone,
            "split_dir": self.split_dir,
            "results_dir_base": self.root / "output",
            "k": 1,
            "k_start": 0,
            "k_end": 1,
            "preloading": "yes",
            "early_stopping": False,
            "model.in_dim": "null",
            **extra,
        }
        return [f"{k}={v}" for k, v in items.items()]

    def config(self, exp="camelyon16_conch_maxmil", **extra):
        return load_experiment("mil", exp, self.overrides(**extra))


def _split_ids(labels: dict, n_val: int, n_test: int, rng) -> dict:
    by_class = {c: [s for s, v in labels.items() if v == c] for c in sorted(set(labels.values()))}
    out = {"train": [], "val": [], "test": []}
    for ids in by_class.values():
        ids = list(rng.permutation(ids))
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test : n_test + n_val]
        out["train"] += ids[n_test + n_val :]
    return out


def write_splits(split_dir: Path, splits: dict, fold: int = 0, index_col: bool = False) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in splits.items()})
    path = split_dir / f"splits_{fold}.csv"
    df.to_csv(path, index=index_col)
    return path


def make_cohort(
    root: Path,
    n_per_class=20,
    dim=8,
    patches=(20, 40),
    seed=0,
    n_classes=2,
    signal=5.0,
    witness=(0.1, 0.3),
    n_val=4,
    n_test=5,
    formats=("h5", "pt"),
) -> Cohort:
    """Dense features; in tumour (class c > 0) slides a ``witness`` fraction
    of the patches (at least 2) has feature PLANTED_FEATURE raised by ``signal * c``."""
    rng = np.random.default_rng(seed)
    data_dir = root / "features"
    backbone = "features_test"
    rows, labels = [], {}
    for c in range(n_classes):
        for i in range(n_per_class):
            sid = f"{'normal' if c == 0 else 'tumor'}{c}_{i:03d}"
            n = int(rng.integers(*patches))
            feats = rng.normal(size=(n, dim)).astype(np.float32)
            if c > 0:
                hot = rng.choice(n, size=max(2, round(rng.uniform(*witness) * n)), replace=False)
                feats[hot, PLANTED_FEATURE] += signal * c
            coords = np.stack([np.arange(n) * 256, np.full(n, 512)], 1)
            write_bag(data_dir / backbone, sid, feats, coords, {"patch_size": 256}, formats=formats)
            rows.append(
                {
                    "case_id": sid,
                    "slide_id": sid,
                    "label": "normal" if c == 0 else "tumor",
                    "isup_grade": c,
                }
            )
            labels[sid] = c
    csv_path = root / "dataset.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    splits = _split_ids(labels, n_val, n_test, rng)
    split_dir = root / "splits"
    write_splits(split_dir, splits)
    return Cohort(root, csv_path, data_dir, backbone, split_dir, labels, splits)


def make_sae_cohort(root: Path, n_per_class=20, dict_size=32, patches=(20, 40), seed=1) -> Cohort:
    """Sparse SAE codes (sparse_files) plus a neuron ranking whose first row
    is PLANTED_UNIT, the unit active only in a few patches of tumour slides."""
    rng = np.random.default_rng(seed)
    enc = root / "sae" / "encoded_features" / "test"
    backbone = "features_test"
    rows, labels = [], {}
    for c in range(2):
        for i in range(n_per_class):
            sid = f"{'normal' if c == 0 else 'tumor'}_{i:03d}"
            n = int(rng.integers(*patches))
            dense = np.zeros((n, dict_size), np.float32)
            for r in range(n):
                units = rng.choice(
                    [u for u in range(dict_size) if u != PLANTED_UNIT], size=4, replace=False
                )
                dense[r, units] = rng.gamma(2.0, 1.0, size=4)
            if c == 1:
                hot = rng.choice(n, size=int(rng.integers(2, 6)), replace=False)
                dense[hot, PLANTED_UNIT] = rng.uniform(2.0, 4.0, size=len(hot))
            indptr = np.concatenate([[0], np.cumsum((dense > 0).sum(1))])
            indices = np.nonzero(dense)[1]
            write_sparse_codes(
                enc / backbone / "sparse_files" / f"{sid}.h5",
                indptr,
                indices,
                dense[dense > 0],
                dict_size,
                coords=np.stack([np.arange(n) * 224, np.zeros(n)], 1),
            )
            rows.append({"case_id": sid, "slide_id": sid, "label": "normal" if c == 0 else "tumor"})
            labels[sid] = c
    csv_path = root / "dataset.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    order = [PLANTED_UNIT] + [u for u in range(dict_size) if u != PLANTED_UNIT]
    ranking = pd.DataFrame(
        {
            "unit_id": order,
            "t_statistic": np.linspace(9, -1, dict_size),
            "p_value": np.linspace(1e-6, 0.9, dict_size),
            "tumor_mean_activation": 0.0,
            "normal_mean_activation": 0.0,
        }
    )
    ranking_csv = root / "sae" / "analysis" / "sae_analysis_t_test.csv"
    ranking_csv.parent.mkdir(parents=True)
    ranking.to_csv(ranking_csv, index=False)
    splits = _split_ids(labels, 4, 5, rng)
    write_splits(root / "splits", splits)
    return Cohort(root, csv_path, enc, backbone, root / "splits", labels, splits, ranking_csv)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These bags are tiny: a second intra-op thread only adds sync overhead,
    and on a shared 2-core machine it can stall every op for milliseconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
