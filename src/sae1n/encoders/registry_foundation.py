"""Registry entries of the pathology foundation models (facts: each model card /
its authors' loading code): UNI2-h, Virchow2, H-optimus-0/1, H0-mini,
Prov-GigaPath, Phikon-v2, CONCH v1.5, CTransPath, QuiltNet, KEEP, MUSK."""

from __future__ import annotations

from sae1n.encoders.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NON_COMMERCIAL_GATED,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    EntryList,
)

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_NC = NON_COMMERCIAL_GATED
SPECS = EntryList()
_builtin = SPECS.add


def _vit(**kw) -> dict:
    return {"num_classes": 0, "dynamic_img_size": True, "img_size": 224, **kw}


_builtin(
    "uni2_h",
    dim=1536,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.timm_family:build_timm_vit",
    description="UNI2-h (ViT-H/14, 8 register tokens, SwiGLU, layer-scale; class token)",
    env_var="UNI2_CKPT_PATH",
    hub_id="MahmoodLab/UNI2-h",
    pip_extra="encoders",
    checkpoint_hint="UNI2-h's pytorch_model.bin (huggingface.co/MahmoodLab/UNI2-h)",
    arch={
        "vit": _vit(
            patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
            mlp_ratio=2.66667 * 2, no_embed_class=True, mlp_layer="swiglu_packed",
            act_layer="silu", reg_tokens=8,
        ),
        "pool": "cls",
        "weight_files": ("pytorch_model.bin", "model.safetensors"),
    },
    mpp=0.5,
    mpp_note="20x",
    licence=_NC,
    weights_url="https://huggingface.co/MahmoodLab/UNI2-h",
)
_builtin(
    "virchow2",
    dim=2560,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bicubic",
    builder="sae1n.encoders.timm_family:build_timm_vit",
    description="Virchow2 (ViT-H/14, 4 register tokens, SwiGLU; class token + mean patch token)",
    env_var="VIRCHOW2_CKPT_PATH",
    hub_id="paige-ai/Virchow2",
    pip_extra="encoders",
    checkpoint_hint="Virchow2's model.safetensors or pytorch_model.bin (huggingface.co/paige-ai/Virchow2)",
    arch={
        "vit": _vit(
            patch_size=14, embed_dim=1280, depth=32, num_heads=16, init_values=1e-5,
            mlp_ratio=5.3375, reg_tokens=4, global_pool="", mlp_layer="swiglu_packed",
            act_layer="silu",
        ),
        "pool": "cls+mean",
    },
    mpp=0.5,
    mpp_note="trained on 5x-40x; 20x recommended",
    licence=_NC,
    weights_url="https://huggingface.co/paige-ai/Virchow2",
)
for _name, _hub, _lic, _desc in (
    ("hoptimus0", "bioptimus/H-optimus-0", "Apache-2.0", "H-optimus-0"),
    ("hoptimus1", "bioptimus/H-optimus-1", "non-commercial licence, gated", "H-optimus-1"),
):
    _builtin(
        _name,
        dim=1536,
        input_size=224,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        builder="sae1n.encoders.timm_family:build_timm_vit",
        description=f"{_desc} (ViT-g/14, 4 register tokens, SwiGLU, layer-scale; class token)",
        env_var=f"{_name.upper()}_CKPT_PATH",
        hub_id=_hub,
        pip_extra="encoders",
        checkpoint_hint=f"{_desc}'s pytorch_model.bin or model.safetensors (huggingface.co/{_hub})",
        arch={
            "vit": _vit(
                patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5,
                mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act_layer="silu",
                reg_tokens=4, no_embed_class=True, global_pool="token",
            ),
            "pool": "cls",
        },
        mpp=0.5,
        mpp_note="20x",
        licence=_lic,
        weights_url=f"https://huggingface.co/{_hub}",
    )
_builtin(
    "h0_mini",
    dim=768,
    input_size=224,
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
    interpolation="bicubic",
    builder="sae1n.encoders.timm_family:build_timm_vit",
    description="H0-mini (ViT-B/14 distilled from H-optimus-0, 4 register tokens, SwiGLU; class token)",
    env_var="H0_MINI_CKPT_PATH",
    hub_id="bioptimus/H0-mini",
    pip_extra="encoders",
    checkpoint_hint="H0-mini's model.safetensors + config.json (huggingface.co/bioptimus/H0-mini)",
    arch={
        "vit": _vit(
            patch_size=14, embed_dim=768, depth=12, num_heads=12, init_values=1e-5,
            mlp_ratio=4.0, mlp_layer="swiglu_packed", act_layer="silu", reg_tokens=4,
            no_embed_class=True, global_pool="token",
        ),
        "pool": "cls",
    },
    mpp=0.5,
    mpp_note="20x",
    licence=_NC,
    weights_url="https://huggingface.co/bioptimus/H0-mini",
)
_builtin(
    "gigapath",
    dim=1536,
    input_size=224,
    resize_size=256,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bicubic",
    builder="sae1n.encoders.timm_family:build_timm_vit",
    description="Prov-GigaPath tile encoder (ViT-g/16 DINOv2, SwiGLU, layer-scale; class token)",
    env_var="GIGAPATH_CKPT_PATH",
    hub_id="prov-gigapath/prov-gigapath",
    pip_extra="encoders",
    checkpoint_hint="Prov-GigaPath's pytorch_model.bin (huggingface.co/prov-gigapath/prov-gigapath)",
    arch={
        "vit": _vit(
            patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5,
            mlp_ratio=5.33334, mlp_layer="swiglu_packed", act_layer="silu",
            global_pool="token",
        ),
        "pool": "cls",
        "weight_files": ("pytorch_model.bin", "model.safetensors"),
    },
    mpp=0.5,
    mpp_note="20x; resize 256 (bicubic) + centre crop 224",
    licence="Apache-2.0, gated",
    weights_url="https://huggingface.co/prov-gigapath/prov-gigapath",
)
_builtin(
    "phikon_v2",
    dim=1024,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.hf_models:build_phikon_v2",
    description="Phikon-v2 (DINOv2 ViT-L/16, transformers Dinov2Model; class token)",
    env_var="PHIKON_V2_CKPT_PATH",
    hub_id="owkin/phikon-v2",
    pip_extra="encoders",
    checkpoint_hint="the owkin/phikon-v2 folder (config.json + model.safetensors)",
    mpp=0.5,
    mpp_note="20x",
    licence="Owkin non-commercial licence",
    weights_url="https://huggingface.co/owkin/phikon-v2",
)
_builtin(
    "conch_v15",
    dim=768,
    input_size=448,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.timm_family:build_conch_v15",
    description="CONCH v1.5 (TITAN's patch encoder: ViT-L/16 + attentional pooler, 768-d; no public text tower)",
    env_var="CONCH_V15_CKPT_PATH",
    hub_id="MahmoodLab/conchv1_5",
    pip_extra="encoders",
    checkpoint_hint="CONCH v1.5's pytorch_model_vision.bin (huggingface.co/MahmoodLab/conchv1_5)",
    arch={
        "vit": _vit(
            img_size=448, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
            mlp_ratio=4.0, init_values=1.0, qkv_bias=True, global_pool="token",
        ),
        "pool_dim": 768,
        "pool_heads": 8,
    },
    mpp=0.5,
    mpp_note="20x, 512 px tiles resized to 448",
    licence=_NC,
    weights_url="https://huggingface.co/MahmoodLab/conchv1_5",
)
_builtin(
    "ctranspath",
    dim=768,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    builder="sae1n.encoders.timm_family:build_ctranspath",
    description="CTransPath (Swin-T/4 with a convolutional stem; global average pool)",
    env_var="CTRANSPATH_CKPT_PATH",
    pip_extra="encoders",
    checkpoint_hint="ctranspath.pth (TransPath) or CHIEF_CTransPath.pth (huggingface.co/datasets/MahmoodLab/hest-bench, fm_v1/ctranspath)",
    arch={
        "swin": dict(
            img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
            num_heads=(3, 6, 12, 24), strict_img_size=False,
        )
    },
    mpp=None,
    mpp_note="not stated on a model card (TRIDENT runs it at 20x, 224 px)",
    licence="GPL-3.0 (TransPath code and weights)",
    weights_url="https://github.com/Xiyue-Wang/TransPath",
)
_builtin(
    "quiltnet_b32",
    dim=512,
    input_size=224,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    interpolation="bicubic",
    builder="sae1n.encoders.openclip:build_open_clip",
    description="QuiltNet-B-32 (CLIP ViT-B/32 fine-tuned on Quilt-1M, open_clip), projected 512-d embedding",
    env_var="QUILTNET_CKPT_PATH",
    hub_id="wisdomik/QuiltNet-B-32",
    has_text=True,
    pip_extra="encoders",
    checkpoint_hint="QuiltNet-B-32's open_clip_pytorch_model.bin (+ open_clip_config.json) from huggingface.co/wisdomik/QuiltNet-B-32",
    arch={"model_name": "ViT-B-32", "quick_gelu": True},
    mpp=None,
    mpp_note="mixed (video frames at many magnifications)",
    licence="MIT",
    weights_url="https://huggingface.co/wisdomik/QuiltNet-B-32",
)
_builtin(
    "keep",
    dim=768,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bicubic",
    builder="sae1n.encoders.hf_models:build_keep",
    description="KEEP (ViT-L/16 + BERT text tower, 768-d joint space; projected image embedding)",
    env_var="KEEP_CKPT_PATH",
    hub_id="Astaxanthin/KEEP",
    has_text=True,
    pip_extra="encoders",
    checkpoint_hint="the Astaxanthin/KEEP folder (config.json, pytorch_model.bin, vocab.txt)",
    mpp=None,
    mpp_note="mixed (public image-text pairs)",
    licence="MIT",
    weights_url="https://huggingface.co/Astaxanthin/KEEP",
)

_builtin(
    "musk",
    dim=1024,
    input_size=384,
    mean=(0.5, 0.5, 0.5),  # timm IMAGENET_INCEPTION_MEAN / STD, as MUSK's card uses
    std=(0.5, 0.5, 0.5),
    interpolation="bicubic",
    builder="sae1n.encoders.musk:build_musk",
    description="MUSK (BEiT-3 multiway ViT-L/16 at 384 px; image class token, text tower via the B experts)",
    env_var="MUSK_CKPT_PATH",
    hub_id="xiangjx/musk",
    has_text=True,
    pip_extra="encoders",
    checkpoint_hint="MUSK's model.safetensors (huggingface.co/xiangjx/musk) with tokenizer.spm (github.com/lilab-stanford/MUSK, musk/models/) in the same folder",
    mpp=None,
    mpp_note="mixed (not fixed on the card); TRIDENT: 384 px, bicubic, centre crop",
    licence=_NC,
    weights_url="https://huggingface.co/xiangjx/musk",
)
