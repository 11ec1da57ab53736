"""Saving and loading SAE weights: our safetensors and the paper's .pt."""

from __future__ import annotations

import json

import pytest
import torch

from sae1n.errors import InputFileError
from sae1n.sae.checkpoints import find_checkpoint, load_sae, save_sae
from sae1n.sae.models import build_sae


def _trained_like(model_type="BatchTopKSAE", **kw):
    torch.manual_seed(0)
    m = build_sae(dict(act_size=16, dict_size=64, model_type=model_type, top_k=4, **kw))
    with torch.no_grad():
        m.b_dec.normal_()
        m.b_enc.normal_(0, 0.1)
        if hasattr(m, "threshold"):
            m.threshold.fill_(0.3)
        m.num_batches_not_active[:5] = 7
    return m.eval()


@pytest.mark.parametrize("model_type", ["BatchTopKSAE", "TopKSAE", "VanillaSAE", "JumpReLUSAE"])
def test_safetensors_round_trip(tmp_path, model_type):
    m = _trained_like(model_type)
    path = save_sae(
        m,
        tmp_path / "checkpoints" / "sae_best.safetensors",
        config={"sae": {"model_type": model_type}},
        extra={"step": 3},
    )
    assert (tmp_path / "checkpoints" / "config_best.json").is_file()
    loaded = load_sae(tmp_path)  # experiment folder -> checkpoints/sae_best
    assert not loaded.training
    x = torch.randn(20, 16)
    torch.testing.assert_close(loaded.encode(x), m.encode(x), rtol=0, atol=0)
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert load_sae(path).cfg == m.cfg


def test_paper_state_dict_loads_with_weights_only(tmp_path):
    """The paper saves ``torch.save(sae.state_dict())`` as sae_best.pt next to
    config_best.json (its exp config); its counters are not in the state dict."""
    m = _trained_like()
    ckpt = tmp_path / "exp" / "checkpoints"
    ckpt.mkdir(parents=True)
    state = {k: m.state_dict()[k] for k in ("b_dec", "b_enc", "W_enc", "W_dec", "threshold")}
    torch.save(state, ckpt / "sae_best.pt")
    paper_cfg = {
        "seed": 42,
        "data": {"feature_dir": "../features/x/clam_processed/features_conch_v1/"},
        "sae": {
            "model_type": "BatchTopKSAE",
            "act_size": 16,
            "dict_size_ratio": 4,
            "dict_size": 64,
            "top_k": 4,
            "top_k_aux": 512,
            "aux_penalty": 0.03125,
            "n_batches_to_dead": 5,
            "l1_coeff": 0,
            "dtype": "float32",
            "device": "cuda:0",
            "input_unit_norm": False,
        },
        "training": {"batch_size": 4096},
    }
    (ckpt / "config_best.json").write_text(json.dumps(paper_cfg))
    loaded = load_sae(tmp_path / "exp")
    assert find_checkpoint(tmp_path / "exp").name == "sae_best.pt"
    x = torch.randn(30, 16)
    torch.testing.assert_close(loaded.encode(x), m.encode(x))
    assert float(loaded.threshold) == pytest.approx(0.3)
    assert loaded.num_batches_not_active.sum() == 0  # not in the paper's state dict


def test_paper_pt_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    torch.save({"W_enc": Evil()}, ckpt / "sae_best.pt")
    (ckpt / "config_best.json").write_text(json.dumps({"sae": {"model_type": "BatchTopKSAE"}}))
    with pytest.raises(InputFileError, match="cannot be read"):
        load_sae(tmp_path)


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(InputFileError, match="no sae_best"):
        load_sae(tmp_path)
    bad = tmp_path / "checkpoints" / "sae_best.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputFileError, match="safetensors"):
        load_sae(tmp_path)
    m = _trained_like()
    other = tmp_path / "o" / "sae_best.safetensors"
    save_sae(m, other)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(other))
    tensors["W_enc"] = torch.zeros(16, 32)
    from safetensors import safe_open

    with safe_open(str(other), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(other), metadata=meta)
    with pytest.raises(InputFileError, match="W_enc has shape"):
        load_sae(other)
