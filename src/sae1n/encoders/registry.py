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

The entries live in :mod:`sae1n.encoders.registry_paper` (the paper's
encoders and general baselines) and :mod:`sae1n.encoders.registry_foundation`
(pathology foundation models); :class:`EncoderSpec` in :mod:`sae1n.encoders.spec`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sae1n.encoders import registry_foundation, registry_paper
from sae1n.encoders.registry_foundation import HOPTIMUS_MEAN, HOPTIMUS_STD
from sae1n.encoders.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    EncoderSpec,
)
from sae1n.errors import ConfigError, InputFileError, Sae1nError

__all__ = [
    "HOPTIMUS_MEAN", "HOPTIMUS_STD", "IMAGENET_MEAN", "IMAGENET_STD", "NO_HUB_ENV",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "EncoderSpec", "available_encoders", "encoder_spec", "get_encoder", "missing_weights_hint",
    "model_rows", "models_table", "register_encoder", "resolve_weights", "spec_table",
]

#: Set to 1 to never try a hub download (only local checkpoints are used).
NO_HUB_ENV = "SAE1N_NO_HUB"


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


for _spec in (*registry_paper.SPECS, *registry_foundation.SPECS):
    register_encoder(_spec)



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
