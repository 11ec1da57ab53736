"""The encoder registry: one small entry per patch encoder.

An entry (:class:`EncoderSpec`) names the encoder, its output dimension, its
input transform (square resize to ``input_size`` + mean/std normalisation),
where its weights come from (``--checkpoint``, an environment variable, or a
hub id when online) and a builder that returns an :class:`EncoderModel`.
:func:`get_encoder` resolves the weights, builds the model and wraps it in an
:class:`Encoder`, which owns preprocessing, device placement and autocast.

Weights are never silently random: when no checkpoint is given, none is set
in the environment and the hub cannot be reached, :func:`get_encoder` raises
one error saying where to put the file. ``random_weights=True`` is an
explicit opt-in for benchmarks.

Importing this module is cheap (no torch); builders are imported on use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sae1n.errors import ConfigError, InputFileError, Sae1nError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Set to 1 to never try a hub download (only local checkpoints are used).
NO_HUB_ENV = "SAE1N_NO_HUB"


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry. ``builder`` is a callable or ``"module:function"``
    with signature ``builder(spec, weights, arch) -> EncoderModel`` where
    ``weights`` is a local path, ``"hub"`` or ``None`` (random init)."""

    name: str
    dim: int
    input_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    builder: str | Callable
    description: str = ""
    env_var: str | None = None
    hub_id: str | None = None
    needs_weights: bool = True
    has_text: bool = False
    pip_extra: str | None = None
    autocast: bool = True
    checkpoint_hint: str = "the model's weight file"
    arch: Mapping = field(default_factory=dict)
    #: antialiased resize kernel of the model's own eval transform
    interpolation: str = "bilinear"
    #: resize to this size, then centre-crop ``input_size`` (None: resize only)
    resize_size: int | None = None
    #: microns per pixel of the tiles the model was trained on (None: mixed / not stated)
    mpp: float | None = None
    mpp_note: str = ""
    licence: str = ""
    #: where a user gets the weights (a page, not fetched by sae1n unless online)
    weights_url: str = ""

    def resolve_builder(self) -> Callable:
        if callable(self.builder):
            return self.builder
        module, _, fn = self.builder.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            extra = f" (`pip install 'sae-1n[{self.pip_extra}]'`)" if self.pip_extra else ""
            raise Sae1nError(
                f"encoder {self.name!r} needs a package that is not installed: {exc}. Install it{extra}"
            ) from exc
        return getattr(mod, fn)


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec, *, replace: bool = False) -> EncoderSpec:
    """Add an entry to the registry (``replace=True`` to overwrite one)."""
    if spec.name in _REGISTRY and not replace:
        raise ConfigError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available_encoders() -> list[str]:
    """Names of all registered encoders."""
    return sorted(_REGISTRY)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``; a clear error for unknown names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown encoder {name!r}; available: {', '.join(available_encoders())}"
        ) from None


def resolve_weights(spec: EncoderSpec, checkpoint: str | os.PathLike | None) -> str | Path | None:
    """Where ``spec``'s weights come from: an existing local path (from
    ``checkpoint``, else ``spec.env_var``), else ``"hub"`` when downloads are
    allowed. Raises one clear error when neither is possible."""
    if not spec.needs_weights:
        return None
    source = "--checkpoint"
    if checkpoint in (None, "") and spec.env_var and os.environ.get(spec.env_var):
        checkpoint, source = os.environ[spec.env_var], f"${spec.env_var}"
    if checkpoint not in (None, ""):
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise InputFileError(
                path,
                f"checkpoint for encoder {spec.name!r} (from {source}) not found",
                missing_weights_hint(spec),
            )
        return path
    if os.environ.get(NO_HUB_ENV, "").lower() in ("1", "true", "yes") or not spec.hub_id:
        raise Sae1nError(f"no weights for encoder {spec.name!r}: {missing_weights_hint(spec)}")
    return "hub"


def missing_weights_hint(spec: EncoderSpec) -> str:
    """One sentence saying where ``spec``'s weights go."""
    hint = f"download {spec.checkpoint_hint} and pass it with --checkpoint PATH"
    if spec.env_var:
        hint += f" (or set {spec.env_var}=PATH)"
    if spec.hub_id:
        hint += f", or run once online so it is fetched from {spec.hub_id}"
        if "/" in spec.hub_id and not spec.hub_id.startswith("http"):
            hint += " (gated models need `huggingface-cli login` after accepting their terms)"
        if os.environ.get(NO_HUB_ENV):
            hint += f" with {NO_HUB_ENV} unset"
    return hint


def get_encoder(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    *,
    input_size: int | None = None,
    arch: Mapping | None = None,
    random_weights: bool = False,
):
    """Build the encoder ``name`` with its weights on ``device``.

    ``checkpoint``: local weight file/folder (default: the entry's environment
    variable, then the hub). ``input_size`` overrides the entry's square input
    size (e.g. 448 for CONCH's native resolution). ``arch`` overrides
    architecture hyper-parameters (smaller test configs of the same family).
    ``random_weights=True`` builds random weights on purpose (benchmarks).
    """
    from sae1n.encoders.base import Encoder

    spec = encoder_spec(name)
    weights = None if random_weights else resolve_weights(spec, checkpoint)
    merged = _deep_merge(dict(spec.arch), dict(arch or {}))
    try:
        model = spec.resolve_builder()(spec, weights, merged)
    except Sae1nError:
        raise
    except Exception as exc:
        if weights == "hub":
            raise Sae1nError(
                f"could not fetch weights for encoder {name!r} from the hub ({type(exc).__name__}: {str(exc)[:300]}); "
                + missing_weights_hint(spec)
            ) from exc
        raise
    return Encoder(spec, model, device=device, input_size=input_size, weights=weights)


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v)
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            else v
        )
    return out


def _builtin(name: str, **kw) -> None:
    register_encoder(EncoderSpec(name=name, **kw))


# ----------------------------------------------------------------------------- built-in entries
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


# ---- pathology foundation models (facts: each model card / its authors' loading code)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_NC = "CC-BY-NC-ND-4.0, gated (accept the terms on the model page)"


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

_OLD = {
    "conch_v1": dict(mpp=0.5, mpp_note="20x (CLAM feeds 224 px; native 448)", licence=_NC, weights_url="https://huggingface.co/MahmoodLab/conch"),
    "uni_v1": dict(mpp=0.5, mpp_note="20x", licence=_NC, weights_url="https://huggingface.co/MahmoodLab/UNI"),
    "resnet50_trunc": dict(mpp=None, mpp_note="ImageNet (natural images)", licence="BSD-3-Clause (torchvision)", weights_url="https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "clip_vit_b16": dict(mpp=None, mpp_note="natural images", licence="MIT", weights_url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai"),
    "plip": dict(mpp=None, mpp_note="mixed (Twitter pathology images)", licence="research use (see the PLIP model card)", weights_url="https://huggingface.co/vinid/plip"),
    "handcrafted": dict(mpp=None, mpp_note="any (stain statistics)", licence="none needed", weights_url=""),
}
for _name, _extra in _OLD.items():
    _REGISTRY[_name] = replace(_REGISTRY[_name], **_extra)


def spec_table(names: Sequence[str] | None = None) -> str:
    """A plain-text table of the registry (for --help and the README)."""
    rows = [f"{'name':<16}{'dim':>6}  weights"]
    for n in names or available_encoders():
        s = _REGISTRY[n]
        w = (
            "none"
            if not s.needs_weights
            else (f"${s.env_var} / --checkpoint" + (f" / hub {s.hub_id}" if s.hub_id else ""))
        )
        rows.append(f"{n:<16}{s.dim:>6}  {w}")
    return "\n".join(rows)


def model_rows(names: Sequence[str] | None = None) -> list[dict]:
    """One dict per entry: name, dim, text tower, input, mpp, licence,
    weights source (what ``extract-features --list-models`` prints)."""
    rows = []
    for n in names or available_encoders():
        s = _REGISTRY[n]
        crop = f" (resize {s.resize_size}, crop)" if s.resize_size else ""
        rows.append(
            {
                "name": n,
                "dim": s.dim,
                "text": "yes" if s.has_text else "no",
                "input": f"{s.input_size} px {s.interpolation}{crop}" if s.input_size else "any",
                "mpp": (f"{s.mpp:g}" if s.mpp else "-") + (f" ({s.mpp_note})" if s.mpp_note else ""),
                "licence": s.licence or "-",
                "weights": "none needed"
                if not s.needs_weights
                else ", ".join(
                    x
                    for x in (
                        "--checkpoint",
                        f"${s.env_var}" if s.env_var else "",
                        f"hub {s.hub_id}" if s.hub_id else "",
                        s.weights_url if s.weights_url and s.hub_id and s.hub_id not in s.weights_url else "",
                    )
                    if x
                ),
            }
        )
    return rows


def models_table(names: Sequence[str] | None = None) -> str:
    """``model_rows`` as an aligned plain-text table."""
    rows = model_rows(names)
    cols = ["name", "dim", "text", "input", "mpp", "licence", "weights"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    lines = ["  ".join(f"{c:<{width[c]}}" for c in cols[:-1]) + "  weights"]
    for r in rows:
        lines.append("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols[:-1]) + "  " + r["weights"])
    return "\n".join(lines)
