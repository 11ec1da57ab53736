import pytest
import torch

from sae1n.errors import ConfigError, InputFileError
from sae1n.mil import MODEL_TYPES, build_model, load_mil_checkpoint, save_mil_checkpoint
from sae1n.mil.models import CLAM_SB, MambaMIL, MaxMIL
from sae1n.mil.nn import NystromAttention, iterative_pinv, reorder_index, segment_means

SMALL = {
    "hidden_dim": 16,
    "attn_dim": 8,
    "layers": 1,
    "d_state": 4,
    "rate": 3,
    "heads": 2,
    "num_landmarks": 4,
}


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n_patches", [1, 2, 7, 30])
def test_contract_logits_scores_and_gradients(model_type, n_classes, n_patches):
    torch.manual_seed(0)
    model = build_model({"type": model_type, "in_dim": 5, **SMALL}, n_classes)
    out = model(torch.randn(n_patches, 5), label=torch.tensor(1))
    assert out.logits.shape == (1, n_classes)
    assert out.scores.shape == (n_patches,) and torch.isfinite(out.scores).all()
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1]))
    if out.aux_loss is not None:
        loss = model.bag_weight * loss + (1 - model.bag_weight) * out.aux_loss
    loss.backward()
    unused = ("instance_classifiers", "cls_token") + (("reordered_ssm",) if n_patches == 1 else ())
    assert all(
        p.grad is not None for n, p in model.named_parameters() if not any(u in n for u in unused)
    )
    model.eval()
    with torch.no_grad():  # unbatched and batched (1, N, D) bags agree
        x = torch.randn(n_patches, 5)
        torch.testing.assert_close(model(x).logits, model(x[None]).logits)


def test_maxmil_is_the_max_of_instance_logits():
    model = MaxMIL(4, 2, hidden_dim=8).eval()
    x = torch.randn(10, 4)
    out = model(x)
    inst = model.head(x)
    torch.testing.assert_close(out.logits, inst.max(0, keepdim=True).values)
    torch.testing.assert_close(out.scores, inst[:, 1])
    # bag order does not matter
    torch.testing.assert_close(model(x.flip(0)).logits, out.logits)


def test_clam_instance_loss_uses_top_and_bottom_patches():
    torch.manual_seed(0)
    model = CLAM_SB(4, 2, hidden_dim=8, attn_dim=4, k_sample=3)
    assert model(torch.randn(10, 4), label=torch.tensor(0)).aux_loss is not None
    assert model(torch.randn(1, 4), label=torch.tensor(0)).aux_loss is None  # too few patches for k
    assert model(torch.randn(10, 4)).aux_loss is None  # no label: inference
    assert model.bag_weight == pytest.approx(0.7)


def test_build_model_errors_and_aliases():
    assert type(build_model({"type": "abmil", "in_dim": 3}, 2)) is type(
        build_model({"type": "att_mil", "in_dim": 3}, 2)
    )
    with pytest.raises(ConfigError, match="unknown model.type 'gnn'.*max_mil"):
        build_model({"type": "gnn", "in_dim": 3}, 2)
    with pytest.raises(ConfigError, match="in_dim"):
        build_model({"type": "max_mil", "in_dim": None}, 2)


def test_checkpoint_round_trip(tmp_path):
    model = build_model({"type": "clam_mb", "in_dim": 6, **SMALL}, 3).eval()
    path = save_mil_checkpoint(
        tmp_path / "ck.safetensors",
        model.state_dict(),
        {"model": {"type": "clam_mb", "in_dim": 6, **SMALL}, "n_classes": 3, "in_dim": 6},
    )
    again, info = load_mil_checkpoint(path)
    x = torch.randn(9, 6)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)
    assert info["n_classes"] == 3
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="bad.safetensors"):
        load_mil_checkpoint(tmp_path / "bad.safetensors")


def test_mamba_mil_pure_scan_equals_reference_scan():
    torch.manual_seed(0)
    model = MambaMIL(5, 2, hidden_dim=8, layers=2, d_state=4, rate=3).eval()
    x = torch.randn(23, 5)
    with torch.no_grad():
        model.set_scan_impl("chunked")
        fast = model(x)
        model.set_scan_impl("reference")
        slow = model(x)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-4, atol=1e-5)


def test_reorder_index_is_a_strided_permutation():
    idx = reorder_index(10, 3)
    assert idx.tolist() == [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    assert sorted(reorder_index(7, 10).tolist()) == list(range(7))


def test_nystrom_pieces():
    x = torch.rand(3, 6, 6) + torch.eye(6)
    torch.testing.assert_close(
        iterative_pinv(x, iters=20), torch.linalg.pinv(x), rtol=1e-3, atol=1e-3
    )
    t = torch.arange(10.0).reshape(1, 10, 1)
    assert segment_means(t, 3).flatten().tolist() == pytest.approx([1.0, 4.0, 7.5])
    torch.manual_seed(0)
    attn = NystromAttention(16, heads=2, num_landmarks=8, dropout=0.0, exact=True).eval()
    short = torch.randn(1, 8, 16)
    out, row = attn(short, return_first_row=True)
    assert row.shape == (1, 8) and torch.allclose(row.sum(-1), torch.ones(1))  # exact softmax row
    # many landmarks on a long sequence approximate exact attention closely
    long = torch.randn(1, 64, 16)
    exact = NystromAttention(16, heads=2, num_landmarks=64, dropout=0.0, exact=True).eval()
    exact.load_state_dict(attn.state_dict())
    approx = NystromAttention(16, heads=2, num_landmarks=32, pinv_iterations=20, dropout=0.0).eval()
    approx.load_state_dict(attn.state_dict())
    with torch.no_grad():
        e, a = exact(long), approx(long)
    assert torch.nn.functional.cosine_similarity(e.flatten(), a.flatten(), dim=0) > 0.98
    # the paper's arithmetic (the default) pads a short sequence to the landmarks:
    # not exact attention, unlike exact=True
    paper = NystromAttention(16, heads=2, num_landmarks=8, dropout=0.0).eval()
    paper.load_state_dict(attn.state_dict())
    with torch.no_grad():
        p_out, p_row = paper(torch.randn(1, 5, 16), return_first_row=True)
        x_out = attn(torch.randn(1, 5, 16))
    assert p_out.shape == x_out.shape == (1, 5, 16) and p_row.shape == (1, 5)
