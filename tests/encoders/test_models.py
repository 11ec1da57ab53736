"""Every registry architecture: random weights saved to a local checkpoint and
loaded back through the user's code path (--checkpoint / environment
variable); full-size architectures checked on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae1n.encoders import encoder_spec, get_encoder
from sae1n.errors import InputFileError

# Small configurations of the same architectures (full size is too slow for CI).
SMALL = {
    "conch_v1": {
        "embed_dim_caption": 64,
        "vision_cfg": {"layers": 1, "width": 64, "num_heads": 2, "n_queries_caption": 4},
        "text_cfg": {"layers": 1, "width": 64, "heads": 2},
        "multimodal_cfg": {"layers": 0, "width": 64, "heads": 2},
    },
    "uni_v1": {"depth": 1},
    "clip_vit_b16": {
        "vision_cfg": {"layers": 1, "width": 64, "head_width": 32},
        "text_cfg": {"layers": 1, "width": 64, "heads": 2},
    },
    "plip": {
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 32,
        },
        "projection_dim": 512,
    },
}
ENV = {
    "conch_v1": "CONCH_CKPT_PATH",
    "uni_v1": "UNI_CKPT_PATH",
    "clip_vit_b16": "CLIP_CKPT_PATH",
    "plip": "PLIP_CKPT_PATH",
}


def _patches(n=3, size=256, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _plip_tokenizer_files(folder):
    """CLIP's BPE vocabulary (shipped with open_clip) as transformers files."""
    import json

    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(
        json.dumps({special.get(k, k): v for k, v in tok.encoder.items()})
    )
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    from transformers import CLIPTokenizer

    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def save_checkpoint(name, model, folder):
    """Write ``model``'s weights the way the real checkpoint is distributed."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "conch_v1":
        path = folder / "pytorch_model.bin"
        torch.save(model.coca.state_dict(), path)
    elif name == "uni_v1":
        path = folder / "pytorch_model.bin"
        torch.save(model.vit.state_dict(), path)
    elif name == "clip_vit_b16":
        from safetensors.torch import save_file

        path = folder / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(path))
    elif name == "plip":
        model.clip.save_pretrained(folder)
        _plip_tokenizer_files(folder)
        path = folder
    return path


@pytest.mark.parametrize("name", ["conch_v1", "uni_v1", "clip_vit_b16", "plip"])
def test_random_checkpoint_loads_through_user_path(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = get_encoder(name, random_weights=True, arch=SMALL[name], device="cpu")
    ckpt = save_checkpoint(name, ref.model, tmp_path / "weights")
    use_env = name in ("conch_v1", "plip")  # both ways a user points to weights
    if use_env:
        monkeypatch.setenv(ENV[name], str(ckpt))
    enc = get_encoder(name, checkpoint=None if use_env else ckpt, arch=SMALL[name], device="cpu")
    assert enc.dim == encoder_spec(name).dim
    x = _patches()
    out = enc.encode(x)
    assert out.shape == (3, enc.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # loaded weights, not a fresh random init: identical to the saved model
    torch.testing.assert_close(out, ref.encode(x), rtol=0, atol=1e-6)
    assert torch.equal(enc.encode(x), out)  # deterministic
    # channel-first input and numpy output agree
    np.testing.assert_allclose(
        enc.encode_numpy(torch.from_numpy(x).permute(0, 3, 1, 2)), out.numpy(), atol=1e-6
    )

    if enc.supports_text:
        t = enc.encode_text(["tumor tissue", "normal lymph node"])
        assert t.shape == (2, enc.dim)
        torch.testing.assert_close(t.norm(dim=1), torch.ones(2))
        torch.testing.assert_close(
            t, ref.encode_text(["tumor tissue", "normal lymph node"]) if name != "plip" else t
        )
        joint = enc.to_joint_space(out, normalize=True)
        assert joint.shape == (3, t.shape[1])
        assert (joint @ t.T).abs().max() <= 1 + 1e-5


def test_resnet50_trunc_is_torchvision_resnet_to_layer3(tmp_path):
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)
    enc = get_encoder(
        "resnet50_trunc", checkpoint=path, device="cpu", input_size=64
    )  # same net, cheaper input
    x = _patches(2, size=96)
    out = enc.encode(x)
    assert out.shape == (2, 1024) and out.dtype == torch.float32
    with torch.no_grad():
        h = enc.preprocess(x)
        for layer in (
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
            net.layer1,
            net.layer2,
            net.layer3,
        ):
            h = layer(h)
    torch.testing.assert_close(out, h.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert torch.equal(enc.encode(x), out)
    # a checkpoint without the cut-off layer4/fc (e.g. timm features_only) also loads
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    torch.save(sd, path)
    torch.testing.assert_close(
        get_encoder("resnet50_trunc", checkpoint=path, device="cpu", input_size=64).encode(x), out
    )


def test_preprocess_uses_each_entry_transform():
    enc = get_encoder("uni_v1", random_weights=True, arch=SMALL["uni_v1"], device="cpu")
    x = np.full((1, 256, 256, 3), 255, np.uint8)
    pre = enc.preprocess(x)
    assert pre.shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(pre[0, :, 0, 0], expected)
    conch = get_encoder(
        "clip_vit_b16",
        random_weights=True,
        arch=SMALL["clip_vit_b16"],
        device="cpu",
        input_size=448,
    )
    pre = conch.preprocess(x)
    assert pre.shape == (1, 3, 448, 448)
    torch.testing.assert_close(
        pre[0, :, 0, 0],
        (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073]))
        / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )


def test_full_size_architectures_on_meta_device():
    """The real sizes, shapes and parameter names, without allocating weights."""
    from sae1n.encoders.conch import build_conch
    from sae1n.encoders.openclip import build_clip_vit_b16
    from sae1n.encoders.plip import build_plip
    from sae1n.encoders.timm_vit import build_uni

    x = torch.empty(2, 3, 224, 224, device="meta")
    with torch.device("meta"):
        conch = build_conch(encoder_spec("conch_v1"), None, {})
        uni = build_uni(encoder_spec("uni_v1"), None, {})
        clip = build_clip_vit_b16(encoder_spec("clip_vit_b16"), None, {})
        plip = build_plip(encoder_spec("plip"), None, {})
    for name, m in [("conch_v1", conch), ("uni_v1", uni), ("clip_vit_b16", clip), ("plip", plip)]:
        assert m(x).shape == (2, encoder_spec(name).dim), name
    # CONCH: ViT-B/16 trained at 448 px (28x28 + cls positions), attentional pooler to 512
    sd = conch.coca.state_dict()
    assert sd["visual.trunk.pos_embed"].shape == (1, 785, 768)
    assert sd["visual.proj_contrast"].shape == (512, 512)
    assert sd["visual.attn_pool_contrast.query"].shape == (1, 512)
    assert conch.to_joint_space(conch(x)).shape == (2, 512)
    # UNI: ViT-L/16 with LayerScale, no head
    sd = uni.vit.state_dict()
    assert sd["pos_embed"].shape == (1, 197, 1024) and sd["patch_embed.proj.weight"].shape == (
        1024,
        3,
        16,
        16,
    )
    assert "blocks.23.ls1.gamma" in sd and not any(
        k.startswith("head.") and k != "head" for k in sd if "weight" in k
    )
    assert round(sum(p.numel() for p in uni.parameters()) / 1e6) == 303
    # OpenAI CLIP ViT-B/16 and PLIP ViT-B/32
    sd = clip.clip.state_dict()
    assert sd["visual.positional_embedding"].shape == (197, 768) and sd["visual.proj"].shape == (
        768,
        512,
    )
    assert (
        plip.clip.config.vision_config.patch_size == 32 and plip.clip.config.projection_dim == 512
    )


def test_wrong_or_corrupt_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="cannot be read as a weight file"):
        get_encoder("uni_v1", checkpoint=bad, arch=SMALL["uni_v1"], device="cpu")
    # a checkpoint of another model: parameters would stay random -> refused
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(InputFileError, match="not a complete UNI checkpoint"):
        get_encoder("uni_v1", checkpoint=bad, arch=SMALL["uni_v1"], device="cpu")
    torch.save({"pos_embed": torch.zeros(1, 5, 1024)}, bad)
    with pytest.raises(InputFileError, match="other shapes"):
        get_encoder("uni_v1", checkpoint=bad, arch=SMALL["uni_v1"], device="cpu")
    with pytest.raises(InputFileError, match="PLIP needs its model folder"):
        get_encoder("plip", checkpoint=bad, device="cpu")
