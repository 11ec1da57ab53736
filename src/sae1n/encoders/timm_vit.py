"""UNI (MahmoodLab): timm ViT-L/16, LayerScale init 1e-5, no head."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict

#: timm ``vit_large_patch16_224`` as UNI configures it (CLAM's builder).
UNI_ARCH = dict(
    img_size=224,
    patch_size=16,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    mlp_ratio=4.0,
    init_values=1e-5,
    num_classes=0,
    dynamic_img_size=True,
)


class TimmViTModel(EncoderModel):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit
        self.dim = int(vit.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)


def build_uni(spec, weights, arch: Mapping) -> TimmViTModel:
    """Registry builder for ``uni_v1``."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if weights == "hub":
        vit = timm.create_model(
            f"hf-hub:{spec.hub_id}", pretrained=True, init_values=1e-5, dynamic_img_size=True
        )
        return TimmViTModel(vit)
    vit = VisionTransformer(**{**UNI_ARCH, **arch})
    if weights is not None:
        path = find_weight_file(weights, ["pytorch_model.bin", "model.safetensors"], "UNI")
        load_weights(vit, read_state_dict(path), path, what="UNI")
    return TimmViTModel(vit)
