"""Models distributed as transformers folders: Phikon-v2 (DINOv2 ViT-L/16,
``transformers.Dinov2Model``) and KEEP (UNI-style ViT-L/16 + a BERT text
tower, built here from KEEP's published module layout so no remote code
from the model folder is ever executed)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.timm_vit import UNI_ARCH
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict
from sae1n.errors import InputFileError, Sae1nError


def _snapshot(spec, weights, patterns) -> Path | None:
    """The model folder: a local path, or a hub snapshot when online."""
    if weights is None:
        return None
    if weights == "hub":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.hub_id, allow_patterns=list(patterns)))
    path = Path(weights)
    if not path.is_dir():
        raise InputFileError(
            path,
            f"{spec.name} needs its model folder, not a single file",
            "pass the folder holding config.json and the weights (a hub snapshot)",
        )
    return path


def _read_json(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise InputFileError(path, "not found", fix)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"is not valid JSON ({exc})", fix) from exc
    if not isinstance(data, dict):
        raise InputFileError(path, "does not hold a JSON object", fix)
    return data


# ----------------------------------------------------------------------------- Phikon-v2

#: owkin/phikon-v2: DINOv2 ViT-L/16 at 224 px (the folder's config.json wins when loading)
PHIKON_V2_CONFIG = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4,
    patch_size=16,
    image_size=224,
    layerscale_value=1e-5,
    use_swiglu_ffn=False,
    layer_norm_eps=1e-6,
)


class Dinov2Encoder(EncoderModel):
    """``last_hidden_state[:, 0]``: the class token after the final LayerNorm."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.dim = int(model.config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).last_hidden_state[:, 0]


def build_phikon_v2(spec, weights, arch: Mapping) -> Dinov2Encoder:
    """Registry builder for ``phikon_v2``: a transformers Dinov2Model folder
    (config.json + model.safetensors)."""
    from transformers import Dinov2Config, Dinov2Model

    folder = _snapshot(spec, weights, ["config.json", "*.safetensors", "*.bin"])
    if folder is None:
        return Dinov2Encoder(Dinov2Model(Dinov2Config(**{**PHIKON_V2_CONFIG, **dict(arch)})))
    cfg = _read_json(folder / "config.json", "use the full owkin/phikon-v2 folder (config.json + model.safetensors)")
    if cfg.get("model_type") != "dinov2":
        raise InputFileError(
            folder / "config.json",
            f"describes a {cfg.get('model_type')!r} model, not Phikon-v2's dinov2",
            "pass the owkin/phikon-v2 folder",
        )
    find_weight_file(folder, ["model.safetensors", "pytorch_model.bin"], "Phikon-v2")
    # transformers maps the published (older) key names onto its current modules
    try:
        model, info = Dinov2Model.from_pretrained(str(folder), output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise InputFileError(folder, f"cannot be loaded as a Dinov2Model folder ({str(exc)[:200]})", "pass the owkin/phikon-v2 folder") from exc
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    if missing:
        raise InputFileError(
            folder,
            f"is not a complete Phikon-v2 checkpoint: {len(missing)} parameters missing (e.g. {', '.join(sorted(missing)[:3])})",
            "pass the full owkin/phikon-v2 folder (the loader never leaves parameters random)",
        )
    return Dinov2Encoder(model)


# ----------------------------------------------------------------------------- KEEP

#: KEEP's vision tower: vit_large_patch16_224 as UNI configures it
KEEP_VIT = UNI_ARCH
#: a PubMedBERT-base-sized text tower (the folder's config.json text_config wins)
KEEP_TEXT = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)


class KeepModel(EncoderModel):
    """KEEP: ``visual`` (timm ViT-L/16) -> ``visual_head`` (Linear-GELU-Linear
    to the 768-d joint space); ``text`` (BertModel) pooled output is the text
    embedding. Image features are the projected embedding (unnormalised)."""

    has_text = True

    def __init__(self, vit_args: Mapping, text_config: Mapping, projection_dim: int = 768):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        from transformers import BertConfig, BertModel

        self.visual = VisionTransformer(**dict(vit_args))
        self.visual_head = nn.Sequential(
            nn.Linear(self.visual.num_features, projection_dim),
            nn.GELU(),
            nn.Linear(projection_dim, projection_dim),
        )
        self.text = BertModel(BertConfig(**dict(text_config)))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.04))
        self.dim = int(projection_dim)
        self.tokenizer = None
        self.max_length = 256  # KEEP tokenizes to 256 tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_head(self.visual(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise Sae1nError("this KEEP model was built without its folder, so it has no tokenizer")
        tok = self.tokenizer(
            list(texts), max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        device = self.logit_scale.device
        return self.text(**{k: v.to(device) for k, v in tok.items()}).pooler_output


def build_keep(spec, weights, arch: Mapping) -> KeepModel:
    """Registry builder for ``keep``: the Astaxanthin/KEEP folder (config.json
    with ``text_config`` and ``projection_dim``, pytorch_model.bin with
    ``visual.*``, ``visual_head.*``, ``text.*``, ``logit_scale``, BERT
    tokenizer files)."""
    from transformers import BertTokenizer

    arch = dict(arch)
    folder = _snapshot(spec, weights, ["*.json", "*.bin", "*.safetensors", "vocab.txt"])
    vit_args = {**KEEP_VIT, **dict(arch.get("vit", {}))}
    text_cfg = {**KEEP_TEXT, **dict(arch.get("text", {}))}
    proj = int(arch.get("projection_dim", 768))
    if folder is None:
        return KeepModel(vit_args, text_cfg, proj)
    fix = "use the full Astaxanthin/KEEP folder (config.json, pytorch_model.bin, vocab.txt)"
    cfg = _read_json(folder / "config.json", fix)
    text_cfg = {**KEEP_TEXT, **dict(cfg.get("text_config") or {})}
    model = KeepModel(vit_args, text_cfg, int(cfg.get("projection_dim", proj)))
    path = find_weight_file(folder, ["pytorch_model.bin", "model.safetensors"], "KEEP")
    load_weights(model, read_state_dict(path), path, what="KEEP")
    try:
        model.tokenizer = BertTokenizer.from_pretrained(str(folder), do_lower_case=True)
    except Exception as exc:  # missing/corrupt vocabulary
        raise InputFileError(folder, f"has no usable BERT tokenizer ({type(exc).__name__})", fix) from exc
    return model
