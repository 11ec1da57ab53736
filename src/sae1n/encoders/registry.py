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
from dataclasses import dataclass, field
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
