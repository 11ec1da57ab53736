"""Models: shapes, sparsity rules, decoder norm, AuxK, the two paper fixes,
and the sparse kernels against the dense formulation."""

from __future__ import annotations

import copy

import pytest
import torch

from sae1n.errors import ConfigError
from sae1n.sae import kernels
from sae1n.sae.model_config import MODEL_TYPES, SAEConfig, canonical_model_type
from sae1n.sae.models import build_sae
from sae1n.sae.train import make_optimizer, train_step

D, F = 24, 96


def make(model_type="BatchTopKSAE", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(
        act_size=D, dict_size=F, model_type=model_type, top_k=4, top_k_aux=16, n_batches_to_dead=2
    )
    cfg.update(kw)
    m = build_sae(cfg)
    with torch.no_grad():  # non-trivial biases so their handling is exercised
        m.b_enc.normal_(0, 0.1)
        m.b_dec.normal_(0, 0.5)
    return m


def batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) + 0.3


def opt_for(m, lr=1e-2):
    from omegaconf import OmegaConf

    return make_optimizer(m, OmegaConf.create({"lr": lr, "beta1": 0.9, "beta2": 0.99}))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_shapes_and_losses(model_type):
    m = make(model_type)
    x = batch()
    out = m(x)
    assert out["x_in"].shape == x.shape
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.W_enc.grad.shape == (D, F) and m.W_dec.grad.shape == (F, D)
    m.eval()
    codes = m.encode(x)
    assert codes.shape == (64, F) and (codes >= 0).all()
    assert m.decode(codes).shape == x.shape
    indptr, indices, values = m.encode_sparse(x, chunk_rows=17)
    dense = torch.zeros(64, F)
    rows = torch.repeat_interleave(torch.arange(64), indptr.diff())
    dense[rows, indices] = values
    torch.testing.assert_close(dense, codes)


def test_model_type_aliases_and_bad_config():
    assert canonical_model_type("batchtopk") == "BatchTopKSAE"
    assert canonical_model_type("TopKSAE") == "TopKSAE"
    with pytest.raises(ConfigError, match="model_type"):
        canonical_model_type("MegaSAE")
    with pytest.raises(ConfigError, match="top_k"):
        SAEConfig.from_mapping({"act_size": 8, "dict_size_ratio": 2, "top_k": 99})
    assert SAEConfig.from_mapping({"act_size": 8, "dict_size_ratio": 4}).dict_size == 32


def test_topk_exactly_k_per_row_in_training_and_eval():
    m = make("TopKSAE")
    x = batch()
    out = m(x)
    assert torch.bincount(out["codes"].rows, minlength=64).eq(4).all()
    m.eval()
    assert (m.encode(x) > 0).sum(1).eq(4).all()


def test_batchtopk_keeps_k_times_batch_in_training_and_threshold_in_eval():
    m = make()
    x = batch()
    out = m(x)
    assert int((out["acts"] > 0).sum()) == 4 * 64
    per_row = torch.bincount(out["codes"].rows, minlength=64)
    assert per_row.max() > per_row.min()  # shared over the batch, not per row
    dense = m.forward_dense(batch())
    assert int((dense["feature_acts"] > 0).sum()) == 4 * 64
    m.eval()
    with torch.no_grad():
        m.threshold.fill_(0.7)
    codes = m.encode(x)
    assert (codes[codes > 0] > 0.7).all()
    pre = torch.relu((x - m.b_dec) @ m.W_enc + m.b_enc)
    assert int((codes > 0).sum()) == int((pre > 0.7).sum())


def test_decoder_rows_unit_norm_and_parallel_grad_removed():
    m = make()
    opt = opt_for(m)
    for i in range(3):
        train_step(m, opt, batch(seed=i), 1e5)
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(F))
    m(batch())["loss"].backward()
    m.remove_parallel_decoder_grad()
    assert (m.W_dec.grad * m.W_dec).sum(1).abs().max() < 1e-6


def test_auxk_only_when_latents_are_dead():
    m = make()
    x = batch()
    out = m(x)  # fresh counters: nothing dead yet
    assert out["aux_loss"].item() == 0.0
    with torch.no_grad():
        m.num_batches_not_active[:30] = 10
    m2 = copy.deepcopy(m)
    out = m(x)
    assert out["aux_loss"].item() > 0
    torch.testing.assert_close(out["aux_loss"], m2.forward_dense(x)["aux_loss"])


def test_dead_counters_count_batches_without_activity():
    m = make()
    m(batch())
    fired = torch.zeros(F, dtype=torch.bool)
    fired[m(batch(seed=2))["codes"].cols] = True
    assert (m.num_batches_not_active[fired] == 0).all()
    assert (m.num_batches_not_active[~fired] >= 1).all()


@pytest.mark.parametrize("model_type", ["BatchTopKSAE", "TopKSAE", "VanillaSAE"])
def test_eval_freezes_statistics_unless_paper_compat(model_type):
    m = make(model_type)
    m(batch())  # one training batch sets counters / threshold
    with torch.no_grad():
        m.num_batches_not_active.fill_(3)
    m.eval()
    before = {k: v.clone() for k, v in m.named_buffers()}
    with torch.no_grad():
        m(batch(seed=3))
    for k, v in m.named_buffers():
        assert torch.equal(v, before[k]), k
    compat = make(model_type, paper_compat_update_in_eval=True)
    compat(batch())
    with torch.no_grad():
        compat.num_batches_not_active.fill_(3)
    compat.eval()
    before = {k: v.clone() for k, v in compat.named_buffers()}
    with torch.no_grad():
        compat(batch(seed=3))
    assert any(not torch.equal(v, before[k]) for k, v in compat.named_buffers())
    # encoding never updates anything, in either mode
    before = {k: v.clone() for k, v in compat.named_buffers()}
    compat.encode(batch(seed=4))
    compat.encode_sparse(batch(seed=4))
    assert all(torch.equal(v, before[k]) for k, v in compat.named_buffers())


@pytest.mark.parametrize("model_type", ["BatchTopKSAE", "TopKSAE"])
def test_encoder_bias_fix_and_paper_switch(model_type):
    x = batch()
    fixed = make(model_type)
    fixed(x)["loss"].backward()
    assert fixed.b_enc.grad is not None and fixed.b_enc.grad.abs().sum() > 0
    compat = make(model_type, paper_compat_no_b_enc=True)
    compat(x)["loss"].backward()
    assert compat.b_enc.grad is None
    compat.eval()
    codes = compat.encode(x)
    with torch.no_grad():
        compat.b_enc.add_(5.0)
    torch.testing.assert_close(compat.encode(x), codes)  # b_enc ignored, as in the paper
    fixed.eval()
    codes = fixed.encode(x)
    with torch.no_grad():
        fixed.b_enc.add_(5.0)
    assert not torch.allclose(fixed.encode(x), codes)


@pytest.mark.parametrize("model_type", ["BatchTopKSAE", "TopKSAE"])
@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("variant", ["plain", "dead", "unit_norm_l1", "no_b_enc"])
def test_sparse_kernels_match_dense(model_type, sync_free, variant):
    kw = {}
    if variant == "unit_norm_l1":
        kw = dict(input_unit_norm=True, l1_coeff=1e-3)
    if variant == "no_b_enc":
        kw = dict(paper_compat_no_b_enc=True)
    fast = make(model_type, **kw)
    if variant == "dead":
        with torch.no_grad():
            fast.num_batches_not_active[::3] = 5
    dense = copy.deepcopy(fast)
    x = batch(80)
    a = kernels.sparse_sae_loss(fast, x, sync_free=sync_free)
    b = dense.forward_dense(x)
    for key in ("loss", "l2_loss", "l1_loss", "aux_loss", "l0_norm"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    if variant == "dead":
        assert a["aux_loss"].item() > 0
    a["loss"].backward()
    b["loss"].backward()
    for name, p in fast.named_parameters():
        q = dict(dense.named_parameters())[name]
        if q.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buf in fast.named_buffers():
        torch.testing.assert_close(buf, dict(dense.named_buffers())[name], msg=name)


@pytest.mark.parametrize("hint", [None, 1e-3, 0.5, 50.0])
def test_batch_topk_selection_is_exact_whatever_the_hint(hint):
    g = torch.Generator().manual_seed(5)
    pre = torch.randn(200, 300, generator=g)
    k_total = 7 * 200
    codes, new_hint = kernels.batch_topk_codes(pre, k_total, hint)
    ref = torch.topk(pre.flatten(), k_total).indices.sort().values
    got = codes.rows * 300 + codes.cols
    assert torch.equal(got, ref)
    torch.testing.assert_close(codes.vals, pre.flatten()[ref])
    assert new_hint is not None and 0 < new_hint < float(codes.vals.min())


def test_batch_topk_with_fewer_positive_values_than_k():
    pre = -torch.rand(50, 40)
    pre[3, 5], pre[10, 1] = 2.0, 1.0
    codes, _ = kernels.batch_topk_codes(pre, 4 * 50, 0.5)
    assert codes.nnz == 2 and set((codes.rows * 40 + codes.cols).tolist()) == {
        3 * 40 + 5,
        10 * 40 + 1,
    }


def test_jumprelu_threshold_gets_gradient_and_l0_counts_active():
    m = make("JumpReLUSAE", l1_coeff=1e-2, bandwidth=0.5)
    with torch.no_grad():
        m.jumprelu.log_threshold.fill_(-1.0)
    out = m(batch())
    assert out["l0_norm"].item() == pytest.approx(
        (out["feature_acts"] > 0).sum(1).float().mean().item()
    )
    out["loss"].backward()
    assert m.jumprelu.log_threshold.grad.abs().sum() > 0


def test_vanilla_l1_penalty():
    m = make("VanillaSAE", l1_coeff=0.1)
    out = m(batch())
    torch.testing.assert_close(out["l1_loss"], 0.1 * out["feature_acts"].abs().sum(1).mean())
