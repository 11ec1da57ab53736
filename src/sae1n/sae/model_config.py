"""The SAE's architecture and loss settings (:class:`SAEConfig`, the ``sae.*``
config keys) with their validation, the model type names and aliases, and the
Matryoshka group sizes. No torch: cheap to import."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from sae1n.errors import ConfigError

MODEL_TYPES = ("BatchTopKSAE", "TopKSAE", "VanillaSAE", "JumpReLUSAE", "MatryoshkaBatchTopKSAE")
_ALIASES = {
    "matryoshka": "MatryoshkaBatchTopKSAE",
    "matryoshka_batchtopk": "MatryoshkaBatchTopKSAE",
    "batchtopk": "BatchTopKSAE",
    "batch_topk": "BatchTopKSAE",
    "topk": "TopKSAE",
    "vanilla": "VanillaSAE",
    "relu": "VanillaSAE",
    "jumprelu": "JumpReLUSAE",
}


def canonical_model_type(name: str) -> str:
    """The paper's class name for ``name`` (accepts short aliases)."""
    if name in MODEL_TYPES:
        return name
    key = str(name).lower().replace("-", "_")
    for t in MODEL_TYPES:
        if key == t.lower():
            return t
    if key in _ALIASES:
        return _ALIASES[key]
    raise ConfigError(f"unknown sae.model_type {name!r}; use one of {', '.join(MODEL_TYPES)}")


@dataclass
class SAEConfig:
    """Architecture and loss settings of one SAE (the ``sae.*`` config keys)."""

    act_size: int
    dict_size: int
    model_type: str = "BatchTopKSAE"
    top_k: int = 16
    top_k_aux: int = 512
    aux_penalty: float = 1 / 32
    n_batches_to_dead: int = 5
    l1_coeff: float = 0.0
    input_unit_norm: bool = False
    bandwidth: float = 0.001
    threshold_lr: float = 0.01
    paper_compat_no_b_enc: bool = False
    paper_compat_update_in_eval: bool = False
    fast_kernels: bool = True
    group_sizes: list[int] | None = None  # MatryoshkaBatchTopKSAE: nested prefix sizes

    @classmethod
    def from_mapping(cls, m: Mapping) -> SAEConfig:
        """Pick the known keys of an ``sae`` config section (others are ignored)."""
        known = {f.name for f in fields(cls)}
        kw = {k: m[k] for k in known if k in m and m[k] is not None}
        if (
            "dict_size" not in kw
            and m.get("act_size") is not None
            and m.get("dict_size_ratio") is not None
        ):
            kw["dict_size"] = int(round(float(m["act_size"]) * float(m["dict_size_ratio"])))
        for req in ("act_size", "dict_size"):
            if req not in kw:
                raise ConfigError(
                    f"sae.{req} is not set (give sae.{req}, or sae.act_size and sae.dict_size_ratio)"
                )
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.model_type = canonical_model_type(self.model_type)
        ints = ("act_size", "dict_size", "top_k", "top_k_aux", "n_batches_to_dead")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise ConfigError(f"sae.{name} must be an integer, got {v!r}")
            setattr(self, name, int(v))
        if self.act_size <= 0 or self.dict_size <= 0:
            raise ConfigError(
                f"sae.act_size and sae.dict_size must be positive (got {self.act_size}, {self.dict_size})"
            )
        self.group_sizes = _check_groups(self)
        if self.model_type in ("BatchTopKSAE", "TopKSAE", "MatryoshkaBatchTopKSAE") and not 0 < self.top_k <= self.dict_size:
            raise ConfigError(
                f"sae.top_k must be in 1..dict_size={self.dict_size}, got {self.top_k}"
            )
        for name in ("aux_penalty", "l1_coeff", "bandwidth", "threshold_lr"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"sae.{name} must be a finite number >= 0, got {v!r}")
            setattr(self, name, v)
        if self.top_k_aux < 0 or self.n_batches_to_dead < 0:
            raise ConfigError("sae.top_k_aux and sae.n_batches_to_dead must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def default_group_sizes(dict_size: int) -> list[int]:
    """Matryoshka groups when none are given: 1/16, 1/16, 1/8, 1/4, 1/2 of
    the dictionary (each prefix twice the previous), rest to the last group."""
    if dict_size < 16:
        first = max(1, dict_size // 2)
        return [first, dict_size - first] if dict_size > first else [dict_size]
    sizes = [dict_size // 16, dict_size // 16, dict_size // 8, dict_size // 4]
    return sizes + [dict_size - sum(sizes)]


def _check_groups(cfg: SAEConfig) -> list[int] | None:
    if cfg.model_type != "MatryoshkaBatchTopKSAE":
        return None
    sizes = cfg.group_sizes
    if sizes is None:
        return default_group_sizes(cfg.dict_size)
    if isinstance(sizes, str | bytes) or not hasattr(sizes, "__iter__"):
        raise ConfigError(f"sae.group_sizes must be a list of integers, got {sizes!r}")
    out = []
    for v in sizes:
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or int(v) <= 0:
            raise ConfigError(f"sae.group_sizes must be positive integers, got {list(sizes)!r}")
        out.append(int(v))
    if not out or sum(out) != cfg.dict_size:
        raise ConfigError(
            f"sae.group_sizes {out} must add up to the dictionary size {cfg.dict_size} "
            "(or leave sae.group_sizes=null for 1/16, 1/16, 1/8, 1/4, 1/2 of it)"
        )
    return out

