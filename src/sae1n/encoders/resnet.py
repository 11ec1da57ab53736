"""ResNet-50 truncated after layer3 + global average pooling (CLAM's
``resnet50_trunc``: 1024-d, ImageNet weights, the torchvision V1 set that timm
calls ``resnet50.tv_in1k``; both use the same parameter names)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sae1n.encoders.base import EncoderModel
from sae1n.encoders.weights import find_weight_file, load_weights, read_state_dict


class ResNetTruncModel(EncoderModel):
    def __init__(self, net):
        super().__init__()
        self.trunk = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
        )
        self.dim = int(net.layer3[-1].conv3.out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images).mean(dim=(2, 3))


def build_resnet50_trunc(spec, weights, arch: Mapping) -> ResNetTruncModel:
    """Registry builder for ``resnet50_trunc``."""
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    if weights == "hub":
        path = spec.hub_id  # torchvision's IMAGENET1K_V1 file, cached under ~/.cache/torch
        sd = torch.hub.load_state_dict_from_url(
            path, progress=False, check_hash=True, weights_only=True
        )
    elif weights is not None:
        path = find_weight_file(
            weights,
            ["resnet50-0676ba61.pth", "model.safetensors", "pytorch_model.bin"],
            "ResNet-50",
        )
        sd = read_state_dict(path)
    if weights is not None:
        # layer4 and the classifier are cut off: a checkpoint may omit them
        load_weights(net, sd, path, what="ResNet-50", ignore_missing=("layer4.", "fc."))
    return ResNetTruncModel(net)
