import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from sae1n.cli import main
from sae1n.errors import ConfigError, InputFileError
from sae1n.neurons.naming import (
    DEFAULT_PATHOLOGY_PROMPTS,
    decoder_directions,
    name_neurons,
    registry_text_encoder,
    write_neuron_names,
)

# a small configuration of the registry's CLIP ViT-B/16 architecture
TINY_CLIP_ARCH = {
    "vision_cfg": {"layers": 1, "width": 64, "head_width": 32},
    "text_cfg": {"layers": 1, "width": 64, "heads": 2},
}


def test_planted_directions_get_their_prompt():
    rng = np.random.default_rng(0)
    prompts = ["tumor", "lymphocytes", "adipose tissue", "necrosis"]
    emb = rng.normal(size=(4, 16))
    dec = rng.normal(size=(10, 16)) * 0.05
    dec[3] += emb[2] * 2.0  # neuron 3 points at "adipose tissue"
    dec[7] += emb[0]  # neuron 7 at "tumor"
    names = name_neurons(dec, emb, prompts, top_k=2).set_index("unit_id")
    assert names.loc[3, "name"] == "adipose tissue" and names.loc[7, "name"] == "tumor"
    assert names.loc[3, "cosine"] > 0.95
    assert names.loc[7, "top_prompts"].split("; ")[0] == "tumor"
    sub = name_neurons(dec, emb, prompts, units=[7])
    assert sub["unit_id"].tolist() == [7]
    with pytest.raises(ConfigError, match="16 dims but text embeddings 8"):
        name_neurons(dec, emb[:, :8], prompts)
    # a projection into the text space fixes a dimension mismatch
    proj = np.eye(16)[:, :8]
    assert len(name_neurons(dec, emb[:, :8], prompts, image_projection=proj)) == 10


def test_random_weight_clip_text_tower_through_the_registry(tmp_path, monkeypatch):
    """Mechanics only: a small random-weight CLIP (the registry's clip_vit_b16
    architecture) saved as a local checkpoint and loaded by the same code path
    as real weights. The names mean nothing."""
    from sae1n.encoders import encoder_spec, get_encoder, registry

    spec = dataclasses.replace(
        encoder_spec("clip_vit_b16"), name="clip_tiny_naming_test", arch=TINY_CLIP_ARCH
    )
    # registered for this test only, so registry listings elsewhere stay unchanged
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    torch.manual_seed(0)
    ref = get_encoder(spec.name, random_weights=True, device="cpu")
    ckpt = tmp_path / "weights" / "open_clip_model.safetensors"
    ckpt.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.model.clip.state_dict().items()}, str(ckpt))
    encode, to_joint = registry_text_encoder(spec.name, ckpt)
    want = ref.encode_text(["tumor"], normalize=False).numpy()
    np.testing.assert_allclose(encode(["tumor"]), want, rtol=1e-5, atol=1e-6)

    # an SAE checkpoint with W_dec (dict, act) in the image-embedding space
    w_dec = torch.randn(24, ref.dim)
    sae_ckpt = tmp_path / "sae_best.safetensors"
    save_file({"W_dec": w_dec, "W_enc": w_dec.T.contiguous()}, str(sae_ckpt))
    names = name_neurons(sae_ckpt, encode, top_k=3, image_projection=to_joint)
    assert len(names) == 24 and set(names["name"]) <= set(DEFAULT_PATHOLOGY_PROMPTS)
    assert names["cosine"].between(-1, 1).all()
    path = write_neuron_names(names, tmp_path / "exp")
    assert pd.read_csv(path)["unit_id"].tolist() == list(range(24))
    # nn.Linear layout is transposed back to (dict, act)
    save_file({"decoder.weight": w_dec.T.contiguous()}, str(tmp_path / "lin.safetensors"))
    np.testing.assert_allclose(
        decoder_directions(tmp_path / "lin.safetensors"), w_dec.numpy(), rtol=1e-6
    )

    # the report command names an experiment's neurons through the same path
    exp = tmp_path / "exp_named"
    (exp / "checkpoints").mkdir(parents=True)
    save_file({"W_dec": w_dec}, str(exp / "checkpoints" / "sae_best.safetensors"))
    (tmp_path / "prompts.txt").write_text("# tissue\ntumor\n\nadipose tissue\nnecrosis\n")
    args = [
        "report",
        str(exp),
        "--encoder",
        spec.name,
        "--encoder_checkpoint",
        str(ckpt),
        "--prompts",
        str(tmp_path / "prompts.txt"),
    ]
    assert main(args) == 0
    named = pd.read_csv(exp / "analysis" / "neuron_names.csv")
    assert len(named) == 24 and set(named["name"]) <= {"tumor", "adipose tissue", "necrosis"}
    assert "Prompt names" in (exp / "report.html").read_text()
    with pytest.raises(ConfigError, match="no text tower"):
        registry_text_encoder(get_encoder("handcrafted", device="cpu"))


def test_decoder_loading_errors(tmp_path):
    with pytest.raises(InputFileError, match="SAE checkpoint not found"):
        decoder_directions(tmp_path / "none.safetensors")
    save_file({"other": torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputFileError, match="no decoder weights"):
        decoder_directions(tmp_path / "x.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputFileError, match="cannot be read as safetensors"):
        decoder_directions(tmp_path / "bad.safetensors")


def test_paper_checkpoint_read_through_the_sae_loader(tmp_path):
    """An experiment holding only the paper's sae_best.pt (+ config_best.json) is
    named from its decoder, read by sae1n.sae.checkpoints (issue 13)."""
    import json

    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    w_dec = torch.randn(16, 8)
    state = {"W_enc": torch.randn(8, 16), "W_dec": w_dec, "b_enc": torch.zeros(16), "b_dec": torch.zeros(8), "threshold": torch.tensor(0.5)}
    torch.save(state, exp / "checkpoints" / "sae_best.pt")
    cfg = {"sae": {"model_type": "BatchTopKSAE", "act_size": 8, "dict_size": 16, "top_k": 2, "top_k_aux": 4, "aux_penalty": 0.03, "n_batches_to_dead": 5}}
    (exp / "checkpoints" / "config_best.json").write_text(json.dumps(cfg))
    for src in (exp, exp / "checkpoints" / "sae_best.pt"):
        np.testing.assert_array_equal(decoder_directions(src), w_dec.numpy().astype(np.float64))
    (exp / "checkpoints" / "config_best.json").unlink()
    with pytest.raises(InputFileError, match="config missing"):
        decoder_directions(exp)


def _tiny_clip_experiment(tmp_path, monkeypatch):
    """A random-weight tiny CLIP saved as a local checkpoint plus an SAE experiment in its space."""
    from sae1n.encoders import encoder_spec, get_encoder, registry

    spec = dataclasses.replace(encoder_spec("clip_vit_b16"), name="clip_tiny_cmd_test", arch=TINY_CLIP_ARCH)
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    torch.manual_seed(1)
    ref = get_encoder(spec.name, random_weights=True, device="cpu")
    ckpt = tmp_path / "weights" / "open_clip_model.safetensors"
    ckpt.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.model.clip.state_dict().items()}, str(ckpt))
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    save_file({"W_dec": torch.randn(12, ref.dim)}, str(exp / "checkpoints" / "sae_best.safetensors"))
    return spec.name, ckpt, exp


def test_name_neurons_command_writes_names_with_provenance_and_report_reads_them(tmp_path, monkeypatch, capsys):
    from sae1n.io.provenance import read_provenance

    name, ckpt, exp = _tiny_clip_experiment(tmp_path, monkeypatch)
    (tmp_path / "p.txt").write_text("tumor\nnecrosis\n")
    args = ["name-neurons", str(exp), "--encoder", name, "--encoder-checkpoint", str(ckpt), "--prompts", str(tmp_path / "p.txt")]
    assert main(args) == 0
    out = exp / "analysis" / "neuron_names.csv"
    named = pd.read_csv(out)
    assert named["unit_id"].tolist() == list(range(12)) and set(named["name"]) <= {"tumor", "necrosis"}
    prov = read_provenance(out)
    assert prov.kind == "neuron_names" and prov.settings["encoder"] == name
    assert prov.settings["prompts"] == ["tumor", "necrosis"]
    capsys.readouterr()
    assert main(args) == 0
    assert "is current" in capsys.readouterr().out
    # other prompts: refused (one clear error) until --overwrite
    (tmp_path / "q.txt").write_text("adipose tissue\nstroma\n")
    other = args[:-1] + [str(tmp_path / "q.txt")]
    assert main(other) == 1
    err = capsys.readouterr().err
    assert "neuron_names.csv" in err and "--overwrite" in err
    assert main(other + ["--overwrite"]) == 0
    assert set(pd.read_csv(out)["name"]) <= {"adipose tissue", "stroma"}
    # the report reads the file; it does not name the neurons itself
    assert main(["report", str(exp)]) == 0
    html = (exp / "report.html").read_text()
    assert "Prompt names" in html and ("adipose tissue" in html or "stroma" in html)


def test_name_neurons_help_and_missing_experiment(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["name-neurons", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "neuron_names.csv" in text and "(default: 3)" in text
    assert main(["name-neurons", str(tmp_path / "nope"), "--encoder", "clip_vit_b16"]) == 1
    assert "train-sae" in capsys.readouterr().err
