"""Registry entries of the paper's encoders and the general baselines:
CONCH v1, UNI v1, ResNet-50 (truncated), CLIP ViT-B/16, PLIP, hand-crafted."""

from __future__ import annotations

from dataclasses import replace

from sae1n.encoders.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NON_COMMERCIAL_GATED,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    EntryList,
)

_NC = NON_COMMERCIAL_GATED
SPECS = EntryList()
_builtin = SPECS.add


_builtin(
    "conch_v1",
    dim=512,
    input_size=224,  # CLAM (and so the paper) feeds 224 px; CONCH's native size is 448
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    builder="sae1n.encoders.conch:build_conch",
    description="CONCH ViT-B/16 image tower, encode_image(proj_contrast=False, normalize=False)",
    env_var="CONCH_CKPT_PATH",
    hub_id="MahmoodLab/conch",
    has_text=True,
    pip_extra="conch",
    checkpoint_hint="CONCH's pytorch_model.bin (huggingface.co/MahmoodLab/conch)",
)
_builtin(
    "uni_v1",
    dim=1024,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.timm_vit:build_uni",
    description="UNI ViT-L/16 (timm, init_values 1e-5, no head)",
    env_var="UNI_CKPT_PATH",
    hub_id="MahmoodLab/UNI",
    pip_extra="encoders",
    checkpoint_hint="UNI's pytorch_model.bin (huggingface.co/MahmoodLab/UNI)",
)
_builtin(
    "resnet50_trunc",
    dim=1024,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.resnet:build_resnet50_trunc",
    description="ResNet-50 (ImageNet, torchvision V1 weights) truncated after layer3 + global average pool",
    env_var="RESNET50_CKPT_PATH",
    hub_id="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    checkpoint_hint="torchvision's resnet50-0676ba61.pth (or timm resnet50.tv_in1k weights)",
)
_builtin(
    "clip_vit_b16",
    dim=512,
    input_size=224,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    builder="sae1n.encoders.openclip:build_clip_vit_b16",
    description="OpenAI CLIP ViT-B/16 image tower (open_clip), projected 512-d embedding",
    env_var="CLIP_CKPT_PATH",
    hub_id="timm/vit_base_patch16_clip_224.openai",
    has_text=True,
    pip_extra="encoders",
    checkpoint_hint="open_clip_model.safetensors of timm/vit_base_patch16_clip_224.openai",
)
_builtin(
    "plip",
    dim=512,
    input_size=224,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    builder="sae1n.encoders.plip:build_plip",
    description="PLIP (CLIP ViT-B/32 fine-tuned on pathology; transformers CLIPModel), projected 512-d embedding",
    env_var="PLIP_CKPT_PATH",
    hub_id="vinid/plip",
    has_text=True,
    pip_extra="encoders",
    checkpoint_hint="the vinid/plip model folder (config.json + weights + tokenizer files)",
)
_builtin(
    "handcrafted",
    dim=64,
    input_size=128,  # ~1 um/px for 256-px patches at 20x: nuclei stay visible, 3x cheaper than 224
    mean=None,
    std=None,
    builder="sae1n.encoders.handcrafted:build_handcrafted",
    description="no weights: colour-deconvolution (H/E/D) statistics, nuclear granulometry, colour histograms, texture",
    needs_weights=False,
    autocast=False,
)

_OLD = {
    "conch_v1": dict(mpp=0.5, mpp_note="20x (CLAM feeds 224 px; native 448)", licence=_NC, weights_url="https://huggingface.co/MahmoodLab/conch"),
    "uni_v1": dict(mpp=0.5, mpp_note="20x", licence=_NC, weights_url="https://huggingface.co/MahmoodLab/UNI"),
    "resnet50_trunc": dict(mpp=None, mpp_note="ImageNet (natural images)", licence="BSD-3-Clause (torchvision)", weights_url="https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "clip_vit_b16": dict(mpp=None, mpp_note="natural images", licence="MIT", weights_url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai"),
    "plip": dict(mpp=None, mpp_note="mixed (Twitter pathology images)", licence="research use (see the PLIP model card)", weights_url="https://huggingface.co/vinid/plip"),
    "handcrafted": dict(mpp=None, mpp_note="any (stain statistics)", licence="none needed", weights_url=""),
}
SPECS[:] = [replace(s, **_OLD.get(s.name, {})) for s in SPECS]
