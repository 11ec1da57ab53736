"""``export-sae --format saelens``: SAELens' on-disk layout (cfg.json +
sae_weights.safetensors), checked against the keys and the encode / decode
of SAELens >= 6 (sae_lens.saes: StandardSAE, TopKSAE, JumpReLUSAE; its
``SAE.load_from_disk`` reads exactly these two files). sae-lens itself is not
installed: it needs transformer-lens, transformers and datasets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sae1n.errors import Sae1nError
from sae1n.io import StaleOutputError, read_provenance
from sae1n.sae.checkpoints import load_sae, save_sae
from sae1n.sae.export import export_sae
from sae1n.sae.models import build_sae

# cfg.json fields SAELens' SAEConfig (v6) declares, and its weight names
SAELENS_FIELDS = {
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
}


def saelens_forward(cfg: dict, w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens' inference encode / decode as its docs and source describe them."""
    mu = std = None
    if cfg["normalize_activations"] == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        x = x - mu
        std = x.std(-1, keepdim=True)
        x = x / (std + 1e-5)
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        acts = pre.relu()
    elif cfg["architecture"] == "topk":
        top = torch.topk(pre, cfg["k"], dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    elif cfg["architecture"] == "jumprelu":
        acts = pre.relu() * (pre > w["threshold"]).to(pre.dtype)
    else:
        raise AssertionError(cfg["architecture"])
    out = acts @ w["W_dec"] + w["b_dec"]
    if mu is not None:
        out = out * std + mu
    return acts, out


def _read(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    return cfg, load_file(str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize(
    "model_type,arch,extra",
    [
        ("BatchTopKSAE", "jumprelu", {}),
        ("MatryoshkaBatchTopKSAE", "jumprelu", {}),
        ("TopKSAE", "topk", {}),
        ("VanillaSAE", "standard", {}),
        ("JumpReLUSAE", "jumprelu", {}),
        ("BatchTopKSAE", "jumprelu", {"input_unit_norm": True}),
        ("TopKSAE", "topk", {"paper_compat_no_b_enc": True}),
    ],
)
def test_every_type_exports_to_the_same_function(tmp_path, model_type, arch, extra):
    torch.manual_seed(0)
    model = build_sae(dict(act_size=16, dict_size=48, model_type=model_type, top_k=4, **extra))
    with torch.no_grad():
        model.b_enc.normal_(0, 0.2)
        model.b_dec.normal_(0, 0.5)
        if hasattr(model, "threshold"):
            model.threshold.fill_(0.15)
        if model_type == "JumpReLUSAE":
            model.jumprelu.log_threshold.fill_(-2.0)
    ckpt = save_sae(model, tmp_path / "sae_best.safetensors")
    out = export_sae(ckpt, tmp_path / "export")
    cfg, w = _read(out)
    assert SAELENS_FIELDS <= set(cfg)
    assert cfg["architecture"] == arch and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")  # no pre-6 conversion on load
    if arch == "topk":
        assert cfg["k"] == 4
    expected = {"W_enc": (16, 48), "W_dec": (48, 16), "b_enc": (48,), "b_dec": (16,)}
    if arch == "jumprelu":
        expected["threshold"] = (48,)
    assert {k: tuple(v.shape) for k, v in w.items()} == expected
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in w.values())
    x = torch.randn(30, 16) * 2 + 0.3
    acts, rec = saelens_forward(cfg, w, x)
    ours = load_sae(ckpt)
    ours_acts = ours.encode(x)
    torch.testing.assert_close(acts, ours_acts, rtol=1e-5, atol=1e-6)
    assert int((acts > 0).sum()) > 0  # the check compares real codes
    x_in, mu, sd = ours.preprocess_input(x)
    torch.testing.assert_close(rec, ours.decode(ours_acts, mu, sd), rtol=1e-5, atol=1e-5)


def test_export_of_a_trained_experiment_via_cli_with_provenance(trained, tmp_path):
    from sae1n.cli import main

    out = tmp_path / "lens"
    assert main(["export-sae", str(trained), "--format", "saelens", "--out_dir", str(out)]) == 0
    cfg, w = _read(out)
    assert cfg["architecture"] == "jumprelu" and cfg["d_sae"] == 64
    prov = read_provenance(out / "sae_weights.safetensors")
    assert prov is not None and prov.kind == "sae-export"
    assert prov.inputs["checkpoint"]["name"] == "sae_best.safetensors"
    before = (out / "sae_weights.safetensors").stat().st_mtime_ns
    assert main(["export-sae", str(trained), "--out_dir", str(out)]) == 0  # current: skipped
    assert (out / "sae_weights.safetensors").stat().st_mtime_ns == before
    # the final checkpoint is another input: refused, then replaced with --overwrite
    with pytest.raises(StaleOutputError, match="sae_weights.safetensors"):
        export_sae(trained, out, which="final")
    assert main(["export-sae", str(trained), "--out_dir", str(out), "--checkpoint", "final"]) == 1
    export_sae(trained, out, which="final", overwrite=True)
    assert read_provenance(out / "sae_weights.safetensors").inputs["checkpoint"]["name"] == (
        "sae_final.safetensors"
    )
    with pytest.raises(Sae1nError, match="unknown export format"):
        export_sae(trained, out, fmt="onnx")
