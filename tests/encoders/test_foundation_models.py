"""The pathology foundation-model entries: random weights saved in each
model's published checkpoint layout and loaded back through the user's path
(--checkpoint / environment variable); full-size architectures on the meta
device against the parameter counts the model cards publish; each entry's
preprocessing; the real Prov-GigaPath reference tile."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from sae1n.encoders import encoder_spec, get_encoder
from sae1n.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from sae1n.errors import InputFileError

_TINY_VIT = {"depth": 1, "embed_dim": 48, "num_heads": 2}
SMALL = {
    "uni2_h": {"vit": _TINY_VIT},
    "virchow2": {"vit": _TINY_VIT},
    "hoptimus0": {"vit": _TINY_VIT},
    "hoptimus1": {"vit": _TINY_VIT},
    "h0_mini": {"vit": _TINY_VIT},
    "gigapath": {"vit": _TINY_VIT},
    "conch_v15": {"vit": {"depth": 1, "embed_dim": 64, "num_heads": 2}, "pool_dim": 768, "pool_heads": 4},
    "ctranspath": {"swin": {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}},
    "phikon_v2": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "quiltnet_b32": {
        "vision_cfg": {"layers": 1, "width": 64, "head_width": 32},
        "text_cfg": {"layers": 1, "width": 64, "heads": 2},
    },
    "keep": {
        "vit": {"depth": 1, "embed_dim": 64, "num_heads": 2},
        "text": {"vocab_size": 40, "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    },
    "musk": {"vit": {"depth": 1, "embed_dim": 64, "num_heads": 2}, "vocab_size": 40, "text_positions": 110},
}
NEW = list(SMALL)
TINY_DIM = {"uni2_h": 48, "virchow2": 96, "hoptimus0": 48, "hoptimus1": 48, "h0_mini": 48, "gigapath": 48, "ctranspath": 256, "phikon_v2": 64, "musk": 64}
ENV = {
    "uni2_h": "UNI2_CKPT_PATH",
    "virchow2": "VIRCHOW2_CKPT_PATH",
    "hoptimus0": "HOPTIMUS0_CKPT_PATH",
    "hoptimus1": "HOPTIMUS1_CKPT_PATH",
    "h0_mini": "H0_MINI_CKPT_PATH",
    "gigapath": "GIGAPATH_CKPT_PATH",
    "conch_v15": "CONCH_V15_CKPT_PATH",
    "ctranspath": "CTRANSPATH_CKPT_PATH",
    "phikon_v2": "PHIKON_V2_CKPT_PATH",
    "quiltnet_b32": "QUILTNET_CKPT_PATH",
    "keep": "KEEP_CKPT_PATH",
    "musk": "MUSK_CKPT_PATH",
}
#: the user's real Prov-GigaPath weights, read before the fixtures clear the variables
REAL_GIGAPATH = os.environ.get("GIGAPATH_CKPT_PATH")
KEEP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "tumor", "tissue", "normal", "lymph", "node", "an", "image", "of", "h", "&", "e", "."]


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


def _patches(n=2, size=256, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save_torch(sd, path):
    torch.save({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def _save_safetensors(sd, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _old_swin_layout(sd):
    """timm's Swin state dict -> the TransPath / CHIEF file: downsampling at
    the end of a stage (timm: start of the next), the non-persistent buffers
    saved, everything under "model"."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return {"model": out}


def save_checkpoint(name, model, folder, tiny_cfg):
    """Write ``model``'s weights the way the real checkpoint is distributed."""
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("uni2_h", "gigapath"):
        return _save_torch(model.vit.state_dict(), folder / "pytorch_model.bin")
    if name in ("virchow2", "hoptimus0", "hoptimus1"):
        return _save_safetensors(model.vit.state_dict(), folder / "model.safetensors")
    if name == "h0_mini":  # a hub snapshot folder: config.json (timm) + model.safetensors
        (folder / "config.json").write_text(
            json.dumps({"architecture": "vit_base_patch14_reg4_dinov2", "num_classes": 0, "model_args": tiny_cfg["vit"]})
        )
        _save_safetensors(model.vit.state_dict(), folder / "model.safetensors")
        return folder
    if name == "conch_v15":
        return _save_torch(model.state_dict(), folder / "pytorch_model_vision.bin")
    if name == "ctranspath":
        path = folder / "CHIEF_CTransPath.pth"
        torch.save(_old_swin_layout(model.swin.state_dict()), path)
        return path
    if name == "phikon_v2":
        model.model.save_pretrained(folder)
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the published (legacy) key names
            assert "encoder.layer.0.attention.attention.query.weight" in set(f.keys())
        return folder
    if name == "quiltnet_b32":
        import open_clip

        from sae1n.encoders.registry import _deep_merge

        cfg = _deep_merge(open_clip.get_model_config("ViT-B-32"), tiny_cfg)
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**cfg, "quick_gelu": True}}))
        _save_torch(model.clip.state_dict(), folder / "open_clip_pytorch_model.bin")
        return folder
    if name == "keep":
        cfg = {"model_type": "keep", "projection_dim": 768, "text_config": tiny_cfg["text"]}
        (folder / "config.json").write_text(json.dumps(cfg))
        _save_torch(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "vocab.txt").write_text("\n".join(KEEP_VOCAB + [f"tok{i}" for i in range(40 - len(KEEP_VOCAB))]) + "\n")
        return folder
    if name == "musk":
        _save_safetensors(_musk_layout(model), folder / "model.safetensors")
        _train_spm(folder / "tokenizer.spm")
        return folder
    raise AssertionError(name)


def _musk_layout(model):
    """Our two towers -> MUSK's BEiT-3 checkpoint keys (A: image experts, B: text)."""
    out = {}

    def put(sd, br):
        for k, v in sd.items():
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
            if m is None:
                continue
            i, rest = m.groups()
            pre = f"beit3.encoder.layers.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for part, t in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{pre}self_attn.{part}_proj.{br}.{kind}"] = t
                continue
            for a, b in (
                ("norm1.", "self_attn_layer_norm.{br}."),
                ("norm2.", "final_layer_norm.{br}."),
                ("attn.norm.", "self_attn.inner_attn_ln.{br}."),
                ("attn.proj.", "self_attn.out_proj.{br}."),
                ("mlp.norm.", "ffn.{br}.ffn_layernorm."),
                ("mlp.", "ffn.{br}."),
            ):
                if rest.startswith(a):
                    out[pre + b.format(br=br) + rest[len(a):]] = v
                    break
            else:
                raise AssertionError(k)

    vis = model.vision.state_dict()
    put(vis, "A")
    put({f"blocks.{k}": v for k, v in model.text_blocks.state_dict().items()}, "B")
    out["beit3.vision_embed.cls_token"] = vis["cls_token"]
    out["beit3.vision_embed.mask_token"] = torch.zeros_like(vis["cls_token"])
    out["beit3.vision_embed.proj.weight"] = vis["patch_embed.proj.weight"]
    out["beit3.vision_embed.proj.bias"] = vis["patch_embed.proj.bias"]
    pe = vis["pos_embed"][0]
    out["beit3.encoder.embed_positions.A.weight"] = torch.cat([torch.zeros(2, pe.shape[1]), pe])
    out["beit3.encoder.embed_positions.B.weight"] = model.text_pos.weight
    for br, sd in (("A", {k[5:]: v for k, v in vis.items() if k.startswith("norm.")}), ("B", model.text_norm.state_dict())):
        for k, v in sd.items():
            out[f"beit3.encoder.layer_norm.{br}.{k}"] = v
    out["beit3.text_embed.weight"] = model.text_embed.weight
    out["vision_head.weight"] = model.vision_head.weight
    out["language_head.weight"] = model.language_head.weight
    out["logit_scale"] = model.logit_scale.detach().reshape(())
    return {k: v.detach().clone() for k, v in out.items()}


def _train_spm(path):
    """A tiny sentencepiece model standing in for MUSK's tokenizer.spm."""
    import io

    import sentencepiece as spm

    text = ["tumor tissue", "normal lymph node", "an h&e image of tumor", "stroma with lymphocytes"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=30, model_type="unigram", minloglevel=2)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("name", NEW)
def test_random_checkpoint_loads_through_user_path(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    arch = SMALL[name]
    ref = get_encoder(name, random_weights=True, arch=arch, device="cpu")
    ckpt = save_checkpoint(name, ref.model, tmp_path / "weights", arch)
    use_env = NEW.index(name) % 2 == 0  # both ways a user points to weights
    if use_env:
        monkeypatch.setenv(ENV[name], str(ckpt))
    # h0_mini's folder describes its own (tiny) architecture in config.json
    enc = get_encoder(name, checkpoint=None if use_env else ckpt, arch={} if name == "h0_mini" else arch, device="cpu")
    assert enc.dim == TINY_DIM.get(name, encoder_spec(name).dim)
    x = _patches()
    out = enc.encode(x)
    assert out.shape == (2, enc.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # loaded weights, not a fresh random init: identical to the saved model
    torch.testing.assert_close(out, ref.encode(x), rtol=0, atol=1e-5)
    assert not torch.allclose(out, get_encoder(name, random_weights=True, arch=arch, device="cpu").encode(x))
    if enc.supports_text:
        t = enc.encode_text(["tumor tissue", "normal lymph node"])
        assert t.shape == (2, enc.dim)
        torch.testing.assert_close(t.norm(dim=1), torch.ones(2))
        assert not torch.allclose(t[0], t[1])  # the text matters
        if getattr(ref.model, "tokenizer", 1) is None:  # built without a folder: lend it the tokenizer
            ref.model.tokenizer = enc.model.tokenizer
        # the text tower's weights were loaded too (for MUSK: the B experts)
        torch.testing.assert_close(t, ref.encode_text(["tumor tissue", "normal lymph node"]), rtol=0, atol=1e-5)
        joint = enc.to_joint_space(out, normalize=True)
        assert (joint @ t.T).abs().max() <= 1 + 1e-5


def test_text_towers_feed_the_naming_code(tmp_path):
    """report --encoder NAME: naming gets (encode_text, to_joint_space) from the registry."""
    from sae1n.neurons.naming import registry_text_encoder

    torch.manual_seed(0)
    ref = get_encoder("quiltnet_b32", random_weights=True, arch=SMALL["quiltnet_b32"], device="cpu")
    folder = save_checkpoint("quiltnet_b32", ref.model, tmp_path / "q", SMALL["quiltnet_b32"])
    encode_text, to_joint = registry_text_encoder("quiltnet_b32", checkpoint=folder, arch=SMALL["quiltnet_b32"])
    emb = encode_text(["tumor", "stroma"])
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(to_joint(np.eye(512, dtype=np.float32)[:3]), np.eye(512)[:3], atol=1e-6)
    with pytest.raises(Exception, match="no text tower"):
        registry_text_encoder(get_encoder("conch_v15", random_weights=True, arch=SMALL["conch_v15"], device="cpu"))


# Published parameter counts (model cards / papers), millions, and tolerance.
PUBLISHED = {
    "uni2_h": (681, 1),  # MahmoodLab/UNI2-h card: 681M
    "virchow2": (632, 1),  # paige-ai/Virchow2 card: 632M
    "hoptimus0": (1134, 10),  # bioptimus/H-optimus-0: "1.1B"
    "hoptimus1": (1134, 10),  # bioptimus/H-optimus-1: "1.1B"
    "gigapath": (1134, 5),  # Prov-GigaPath paper: 1.13B tile encoder
    "phikon_v2": (303, 3),  # owkin/phikon-v2: ViT-L, ~300M
    "ctranspath": (28, 1),  # TransPath paper: 28M
    "quiltnet_b32": (151, 1),  # CLIP ViT-B/32: 151M
}


def test_full_size_architectures_on_meta_device():
    """The real sizes, token layouts and parameter names, without allocating weights."""
    counts, models = {}, {}
    for name in NEW:
        spec = encoder_spec(name)
        arch = dict(spec.arch)
        if "vit" in arch:  # no initialisation work on the meta device
            arch["vit"] = {**arch["vit"], "weight_init": "skip"}
        with torch.device("meta"):
            m = spec.resolve_builder()(spec, None, arch)
        s = spec.input_size
        assert m(torch.empty(2, 3, s, s, device="meta")).shape == (2, spec.dim), name
        counts[name] = sum(p.numel() for p in m.parameters()) / 1e6
        models[name] = m
    for name, (n, tol) in PUBLISHED.items():
        assert abs(counts[name] - n) <= tol, (name, counts[name])
    sd = models["uni2_h"].vit.state_dict()
    assert sd["reg_token"].shape == (1, 8, 1536) and sd["pos_embed"].shape == (1, 256, 1536)  # no class pos
    assert sd["blocks.23.mlp.fc1.weight"].shape == (8192, 1536) and "blocks.23.ls2.gamma" in sd  # SwiGLU packed
    sd = models["virchow2"].vit.state_dict()
    # timm keeps positions for the class and register tokens when the class token is embedded
    assert sd["reg_token"].shape == (1, 4, 1280) and sd["pos_embed"].shape == (1, 261, 1280)
    assert models["virchow2"].vit.num_prefix_tokens == 5  # mean over the 256 patch tokens only
    sd = models["hoptimus0"].vit.state_dict()
    assert sd["reg_token"].shape == (1, 4, 1536) and len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) == 40
    sd = models["gigapath"].vit.state_dict()
    assert sd["patch_embed.proj.weight"].shape == (1536, 3, 16, 16) and sd["pos_embed"].shape == (1, 197, 1536)
    sd = models["h0_mini"].vit.state_dict()
    assert sd["patch_embed.proj.weight"].shape == (768, 3, 14, 14) and sd["reg_token"].shape == (1, 4, 768)
    sd = models["conch_v15"].state_dict()
    assert sd["trunk.pos_embed"].shape == (1, 785, 1024)  # 448 px / 16 = 28x28 + class
    assert sd["attn_pool_contrast.query"].shape == (1, 768) and sd["attn_pool_contrast.to_kv.weight"].shape == (1536, 1024)
    assert sd["trunk.blocks.0.ls1.gamma"].shape == (1024,)
    sd = models["ctranspath"].swin.state_dict()
    assert sd["patch_embed.proj.0.weight"].shape == (12, 3, 3, 3) and sd["patch_embed.proj.6.weight"].shape == (96, 24, 1, 1)
    assert sd["layers.3.downsample.reduction.weight"].shape == (768, 1536)
    assert models["phikon_v2"].model.config.patch_size == 16
    sd = models["quiltnet_b32"].clip.state_dict()
    assert sd["visual.conv1.weight"].shape == (768, 3, 32, 32) and sd["text_projection"].shape == (512, 512)
    sd = models["musk"].state_dict()
    assert sd["vision.pos_embed"].shape == (1, 577, 1024) and sd["text_embed.weight"].shape == (64010, 1024)
    assert "vision.blocks.23.attn.norm.weight" in sd and "text_blocks.23.mlp.norm.weight" in sd  # sub-LayerNorms
    sd = models["keep"].state_dict()
    assert sd["visual_head.0.weight"].shape == (768, 1024) and sd["text.pooler.dense.weight"].shape == (768, 768)


@pytest.mark.parametrize(
    "name, size, mean, std, interp",
    [
        ("uni2_h", 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ("virchow2", 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        ("hoptimus0", 224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "bilinear"),
        ("hoptimus1", 224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "bilinear"),
        ("h0_mini", 224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "bicubic"),
        ("gigapath", 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        ("phikon_v2", 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ("conch_v15", 448, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ("ctranspath", 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ("quiltnet_b32", 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic"),
        ("keep", 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        ("musk", 384, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
    ],
)
def test_preprocessing_of_each_entry(name, size, mean, std, interp):
    from PIL import Image
    from torchvision import transforms as T

    spec = encoder_spec(name)
    assert (spec.input_size, spec.mean, spec.std, spec.interpolation) == (size, mean, std, interp)
    enc = get_encoder(name, random_weights=True, arch=SMALL[name], device="cpu")
    x = _patches(1, size=300, seed=3)
    pre = enc.preprocess(x)
    assert pre.shape == (1, 3, size, size)
    # the model's own torchvision eval transform on the PIL image
    mode = T.InterpolationMode.BICUBIC if interp == "bicubic" else T.InterpolationMode.BILINEAR
    steps = [T.Resize(spec.resize_size or size, interpolation=mode), T.CenterCrop(size)]
    ref = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])(Image.fromarray(x[0]))
    grey = (pre[0] - ref).abs() * torch.tensor(std).view(3, 1, 1) * 255
    # uint8 kernels agree with PIL to rounding (bicubic on noise: 2 grey levels)
    assert grey.max() <= (2.01 if interp == "bicubic" else 1.01), (name, grey.max())
    assert grey.mean() < 0.05, (name, grey.mean())


def test_gigapath_resize_then_crop_is_exact_on_a_256_tile():
    enc = get_encoder("gigapath", random_weights=True, arch=SMALL["gigapath"], device="cpu")
    x = _patches(1, size=256, seed=1)
    pre = enc.preprocess(x)
    crop = torch.from_numpy(x[0, 16:240, 16:240]).permute(2, 0, 1).float() / 255
    ref = (crop - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(pre[0], ref, atol=1e-5, rtol=0)
    # another input size keeps the 224/256 crop fraction
    assert get_encoder("gigapath", random_weights=True, arch=SMALL["gigapath"], device="cpu", input_size=112).transform.resize_size == 128


def test_real_gigapath_tile_and_reference_embedding(shared_data):
    """prov-gigapath's demo tile: our input pipeline equals its eval transform,
    and (with GIGAPATH_CKPT_PATH) our embedding equals the published one."""
    from PIL import Image
    from torchvision import transforms as T

    folder = shared_data / "features" / "gigapath_tile"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    img = Image.open(folder / "prov_normal_000_1.png").convert("RGB")
    expected = torch.load(folder / "prov_normal_000_1.pt", weights_only=True).float().flatten()
    assert expected.shape == (encoder_spec("gigapath").dim,) and torch.isfinite(expected).all()
    transform = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ref = transform(img)
    enc = get_encoder("gigapath", random_weights=True, arch=SMALL["gigapath"], device="cpu")
    pre = enc.preprocess(np.array(img)[None])
    assert pre.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pre[0], ref, atol=1e-3, rtol=0)
    for tile in ("01581x_25327y.png", "01581x_25583y.png"):  # the repo's 256 px tiles
        arr = np.array(Image.open(folder / tile).convert("RGB"))
        assert enc.preprocess(arr[None]).shape == (1, 3, 224, 224)
    ckpt = REAL_GIGAPATH
    if not ckpt:
        pytest.skip("the published-embedding comparison needs the real weights: set GIGAPATH_CKPT_PATH")
    real = get_encoder("gigapath", checkpoint=ckpt, device="cpu")
    got = real.encode(np.array(img)[None])[0]
    cos = torch.nn.functional.cosine_similarity(got, expected, dim=0)
    assert cos > 0.999, cos
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)


def test_wrong_checkpoints_are_one_clear_error(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(InputFileError, match="not a complete UNI2-h checkpoint"):
        get_encoder("uni2_h", checkpoint=bad, arch=SMALL["uni2_h"], device="cpu")
    with pytest.raises(InputFileError, match="needs its model folder"):
        get_encoder("phikon_v2", checkpoint=bad, device="cpu")
    (tmp_path / "keep").mkdir()
    with pytest.raises(InputFileError, match="config.json.*not found"):
        get_encoder("keep", checkpoint=tmp_path / "keep", device="cpu")
    with pytest.raises(InputFileError, match="not found"):
        get_encoder("virchow2", checkpoint=tmp_path / "missing.safetensors", device="cpu")


def test_list_models_prints_every_entry(capsys):
    from sae1n.cli import main
    from sae1n.encoders import available_encoders

    assert main(["extract-features", "--list-models"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert set(lines) == set(available_encoders()) and len(lines) >= 17
    for name in available_encoders():
        spec = encoder_spec(name)
        cols = lines[name].split()
        assert cols[1] == str(spec.dim) and cols[2] == ("yes" if spec.has_text else "no")
    assert "0.5 (20x" in lines["uni2_h"] and "$UNI2_CKPT_PATH" in lines["uni2_h"] and "MahmoodLab/UNI2-h" in lines["uni2_h"]
    assert "resize 256" in lines["gigapath"] and "Apache-2.0" in lines["gigapath"]
    assert lines["quiltnet_b32"].split()[2] == "yes" and lines["conch_v15"].split()[2] == "no"
