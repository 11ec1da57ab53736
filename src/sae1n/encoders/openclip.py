"""OpenAI CLIP ViT-B/16 (open_clip): projected image embedding and text tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict

MODEL_NAME = "ViT-B-16"


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


def build_clip_vit_b16(spec, weights, arch: Mapping) -> OpenClipModel:
    """Registry builder for ``clip_vit_b16``. OpenAI's weights use QuickGELU."""
    import open_clip

    from sae1n.encoders.registry import _deep_merge

    if weights == "hub":
        clip = open_clip.create_model(f"hf-hub:{spec.hub_id}", require_pretrained=True)
        cfg = open_clip.get_model_config(MODEL_NAME)
    else:
        cfg = _deep_merge(open_clip.get_model_config(MODEL_NAME), dict(arch))
        clip = open_clip.CLIP(**cfg, quick_gelu=True)
        if weights is not None:
            path = find_weight_file(
                weights,
                ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
                "CLIP ViT-B/16",
            )
            load_weights(clip, read_state_dict(path), path, what="CLIP ViT-B/16")
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=cfg["text_cfg"].get("context_length", 77)
    )
    return OpenClipModel(clip, tokenizer)
