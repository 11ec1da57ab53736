"""Matryoshka BatchTopK: same values and gradients on the sparse and dense
paths, nested prefixes that each reconstruct, coarse features in the early
groups, and training / encoding / resumption like the other types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sae1n.errors import ConfigError
from sae1n.sae.checkpoints import load_sae
from sae1n.sae.model_config import SAEConfig, default_group_sizes
from sae1n.sae.models import MatryoshkaBatchTopKSAE, build_sae
from sae1n.sae.train import train_sae

from .conftest import make_planted, small_config


def _model(groups=(4, 4, 8, 16), d=12, k=3, dead=0):
    torch.manual_seed(0)
    m = build_sae(
        dict(
            act_size=d,
            dict_size=sum(groups),
            model_type="MatryoshkaBatchTopKSAE",
            group_sizes=list(groups),
            top_k=k,
            top_k_aux=5,
            n_batches_to_dead=3,
        )
    )
    with torch.no_grad():
        m.b_enc.normal_(0, 0.1)
        m.num_batches_not_active[:dead] = 10
    return m


@pytest.mark.parametrize("dead", [0, 6])
@pytest.mark.parametrize("training", [True, False])
def test_sparse_path_equals_dense_reference(dead, training):
    x = torch.randn(40, 12) + 0.3
    a, b = _model(dead=dead), _model(dead=dead)
    a.train(training)
    b.train(training)
    if not training:
        for m in (a, b):
            m.threshold.fill_(0.2)
    oa, ob = a(x), b.forward_dense(x)
    for key in ("loss", "l2_loss", "aux_loss", "l0_norm"):
        torch.testing.assert_close(oa[key], ob[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(oa["prefix_l2_loss"], ob["prefix_l2_loss"], rtol=1e-5, atol=1e-6)
    # the loss is the prefixes' mean, l2_loss the full reconstruction's
    assert float(oa["prefix_l2_loss"][-1]) == pytest.approx(float(oa["l2_loss"]))
    assert float(oa["loss"].detach()) >= float(oa["l2_loss"].detach()) - 1e-7
    if training:
        oa["loss"].backward()
        ob["loss"].backward()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_group_sizes_are_checked_and_defaulted():
    assert default_group_sizes(2048) == [128, 128, 256, 512, 1024]
    assert sum(default_group_sizes(100)) == 100
    cfg = SAEConfig(act_size=8, dict_size=64, model_type="matryoshka")
    cfg.validate()
    assert cfg.model_type == "MatryoshkaBatchTopKSAE" and cfg.group_sizes == [4, 4, 8, 16, 32]
    with pytest.raises(ConfigError, match="add up to the dictionary size 64"):
        SAEConfig(8, 64, "MatryoshkaBatchTopKSAE", group_sizes=[8, 8]).validate()
    with pytest.raises(ConfigError, match="positive integers"):
        SAEConfig(8, 64, "MatryoshkaBatchTopKSAE", group_sizes=[32, 32.5]).validate()


def _hierarchical(n=3000, d=24, seed=0):
    """Each row: one of 4 frequent, strong coarse atoms plus two of 40 rare,
    weak fine atoms, and a little noise."""
    rng = np.random.default_rng(seed)
    atoms = np.linalg.qr(rng.normal(size=(d, d)))[0].T  # orthonormal rows
    coarse, fine = atoms[:4], rng.normal(size=(40, d))
    fine /= np.linalg.norm(fine, axis=1, keepdims=True)
    c = rng.integers(0, 4, size=n)
    f = np.stack([rng.choice(40, 2, replace=False) for _ in range(n)])
    x = 3.0 * coarse[c] + 0.7 * fine[f].sum(1) + 0.02 * rng.normal(size=(n, d))
    return torch.tensor(x, dtype=torch.float32), coarse


def test_each_prefix_reconstructs_and_coarse_features_land_first():
    from omegaconf import OmegaConf

    from sae1n.sae.step import make_optimizer, train_step

    x, coarse = _hierarchical()
    torch.manual_seed(0)
    model = build_sae(
        dict(
            act_size=24,
            dict_size=48,
            model_type="MatryoshkaBatchTopKSAE",
            group_sizes=[4, 44],
            top_k=3,
            top_k_aux=16,
            n_batches_to_dead=20,
        )
    )
    with torch.no_grad():
        model.b_dec.copy_(x.mean(0))
    opt = make_optimizer(model, OmegaConf.create({"lr": 1e-2}))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(x), (256,), generator=g)
        train_step(model, opt, x[idx], 1e5)
    model.eval()
    var = (x - x.mean(0)).pow(2).sum()
    fvu = [float((x - r).pow(2).sum() / var) for r in model.prefix_reconstructions(x)]
    # stated bounds: the 4 coarse latents alone explain most of the variance
    # (coarse atoms carry 9/(9 + 0.98) of it), all 48 nearly all
    assert fvu[0] < 0.25, fvu
    assert fvu[1] < 0.1, fvu
    assert fvu[1] < fvu[0]
    w = model.W_dec.detach().numpy()
    # b_dec holds the mean, so a coarse latent codes its atom minus the mean of all four
    centred = coarse - coarse.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    cos = centred @ w.T  # (4 coarse atoms, 48 latents)
    best = cos.argmax(1)
    assert (best < 4).all(), best  # each coarse atom is best matched in the first group
    assert (cos.max(1) > 0.75).all(), cos.max(1)  # (they absorb a share of the fine atoms)


def _weights(exp, name="sae_final.safetensors"):
    return load_file(str(exp / "checkpoints" / name))


def test_trains_encodes_and_resumes_bit_identically(tmp_path):
    data = make_planted(tmp_path / "d", n_slides=6, patches=300)
    over = {
        "sae.model_type": "MatryoshkaBatchTopKSAE",
        "sae.group_sizes": "[8,24,32]",
        "sae.b_dec_init": "mean",
        "training.num_epochs": 2,
        "training.validation_freq": 5,
        "training.checkpoint_freq": 0,
    }
    full = train_sae(small_config(data, tmp_path / "a", **over))

    def crash(step):
        if step == 8:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_sae(small_config(data, tmp_path / "b", **over), callbacks=[crash])
    resumed = train_sae(small_config(data, tmp_path / "b", **over))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m = pd.read_csv(full / "logs" / "metrics.csv")
    assert m.val_fvu.iloc[-1] < m.val_fvu.iloc[0]
    model = load_sae(full)
    assert isinstance(model, MatryoshkaBatchTopKSAE) and model.cfg.group_sizes == [8, 24, 32]
    x = torch.randn(50, 32)
    indptr, indices, values = model.encode_sparse(x)
    dense = model.encode(x)
    rebuilt = torch.zeros_like(dense)
    rows = torch.repeat_interleave(torch.arange(50), indptr.diff())
    rebuilt[rows, indices] = values
    assert torch.equal(rebuilt, dense)
    # save-sae-features encodes it through the generic path, like any other type
    from sae1n.io import read_sparse_codes
    from sae1n.sae.encode import save_sae_features

    summary = save_sae_features(full, dense=False)
    assert len(summary.encoded) == 6
    first = sorted((summary.out_dir / "sparse_files").glob("*.h5"))[0]
    csr, _, _ = read_sparse_codes(first)
    from sae1n.io import read_features

    x_slide = torch.from_numpy(read_features(data.feature_dir / "h5_files" / first.name))
    assert np.array_equal(csr.toarray(), model.encode(x_slide).numpy())
