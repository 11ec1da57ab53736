"""One encoder registry entry (:class:`EncoderSpec`) and the shared
normalisation constants; the entries themselves are in
:mod:`sae1n.encoders.registry_paper` and :mod:`sae1n.encoders.registry_foundation`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sae1n.errors import Sae1nError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: licence of the MahmoodLab / Bioptimus gated non-commercial models
NON_COMMERCIAL_GATED = "CC-BY-NC-ND-4.0, gated (accept the terms on the model page)"


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


class EntryList(list):
    """The registry entries of one module, in order: ``add(name, **fields)``
    appends an :class:`EncoderSpec`; :mod:`sae1n.encoders.registry` registers them."""

    def add(self, name: str, **kw) -> None:
        self.append(EncoderSpec(name=name, **kw))
