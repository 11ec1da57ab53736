"""open_clip CLIP models: OpenAI CLIP ViT-B/16 and QuiltNet-B-32 (CLIP
ViT-B/32 fine-tuned on Quilt-1M), projected image embedding and text tower."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict
from sae1n.errors import InputFileError

MODEL_NAME = "ViT-B-16"
WEIGHT_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


class OpenClipModel(EncoderModel):
    has_text = True

    def __init__(self, clip, tokenizer):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.dim = (
            int(clip.text_projection.shape[1])
            if clip.text_projection is not None
            else int(clip.visual.output_dim)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=False)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.clip.logit_scale.device)
        return self.clip.encode_text(tokens, normalize=False)


def _folder_config(weights) -> dict | None:
    """``model_cfg`` of an open_clip hub snapshot (``open_clip_config.json``
    beside the weights), else None."""
    if weights in (None, "hub"):
        return None
    folder = Path(weights)
    folder = folder if folder.is_dir() else folder.parent
    path = folder / "open_clip_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(path, f"is not an open_clip config ({exc})", "re-download open_clip_config.json") from exc
    return dict(cfg)


def build_open_clip(spec, weights, arch: Mapping) -> OpenClipModel:
    """Registry builder for open_clip CLIP entries. ``arch``: ``model_name``
    (open_clip config, e.g. ``ViT-B-32``), ``quick_gelu`` (OpenAI-initialised
    weights use QuickGELU) and config overrides (``vision_cfg``, ``text_cfg``).
    A snapshot's ``open_clip_config.json`` describes its own architecture."""
    import open_clip

    from sae1n.encoders.registry import _deep_merge

    arch = dict(arch)
    name = arch.pop("model_name", MODEL_NAME)
    quick_gelu = bool(arch.pop("quick_gelu", True))
    what = spec.description.split(" (")[0] or spec.name
    if weights == "hub":
        clip = open_clip.create_model(f"hf-hub:{spec.hub_id}", require_pretrained=True)
        cfg = open_clip.get_model_config(name)
    else:
        folder_cfg = _folder_config(weights)
        if folder_cfg is not None:
            quick_gelu = bool(folder_cfg.pop("quick_gelu", quick_gelu))
        cfg = _deep_merge(folder_cfg or open_clip.get_model_config(name), arch)
        clip = open_clip.CLIP(**cfg, quick_gelu=quick_gelu)
        if weights is not None:
            path = find_weight_file(weights, WEIGHT_FILES, what)
            load_weights(clip, read_state_dict(path), path, what=what)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=cfg["text_cfg"].get("context_length", 77)
    )
    return OpenClipModel(clip, tokenizer)


def build_clip_vit_b16(spec, weights, arch: Mapping) -> OpenClipModel:
    """Registry builder for ``clip_vit_b16``. OpenAI's weights use QuickGELU."""
    return build_open_clip(spec, weights, {"model_name": MODEL_NAME, "quick_gelu": True, **dict(arch)})
