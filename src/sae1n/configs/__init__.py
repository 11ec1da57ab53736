"""Experiment configs: ``exp=<name>`` YAMLs with ``key=value`` overrides.

Configs are looked up (first match wins) in ``./experiments/<kind>/exp/``
(the paper's layout, so its users' own YAMLs keep working), ``./configs/<kind>/``
and the configs shipped with sae1n. A config may inherit with
``defaults: [base_name, ...]``; later entries and the file itself win.
Overrides use OmegaConf dot-list syntax; a key that does not exist must be
spelled ``+key=value`` (as in Hydra) so that typos are caught.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from sae1n.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dirs(kind: str, extra: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Folders searched for ``<kind>`` configs, in priority order."""
    cwd = Path.cwd()
    dirs = [Path(d) for d in extra] + [
        cwd / "experiments" / kind / "exp",
        cwd / "configs" / kind,
        PACKAGE_DIR / kind,
    ]
    return [d for d in dirs if d.is_dir()]


def available_experiments(kind: str) -> list[str]:
    names = set()
    for d in config_dirs(kind):
        names.update(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))
    return sorted(names)


def find_experiment_file(kind: str, name: str, extra=()) -> Path:
    """The YAML file of experiment ``name`` of ``kind`` (first match in :func:`config_dirs`)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for d in config_dirs(kind, extra):
        cand = d / f"{name}.yaml"
        if cand.is_file():
            return cand
    known = ", ".join(available_experiments(kind)) or "none"
    raise ConfigError(
        f"no {kind} config named {name!r}; known: {known}. Put your own in ./experiments/{kind}/exp/{name}.yaml"
    )


def _load_tree(kind: str, name: str, extra, seen: tuple[str, ...] = ()) -> DictConfig:
    if name in seen:
        raise ConfigError(f"{kind} config {name!r} inherits from itself via {' -> '.join(seen)}")
    path = find_experiment_file(kind, name, extra)
    cfg = OmegaConf.load(path)
    bases = cfg.pop("defaults", []) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create({})
    for base in bases:
        if base == "_self_":
            continue
        merged = OmegaConf.merge(merged, _load_tree(kind, str(base), extra, (*seen, name)))
    return OmegaConf.merge(merged, cfg)


_MISSING = "__sae1n_missing__"


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, ListConfig | list):
        return "a list, e.g. [a, b]"
    if isinstance(value, DictConfig | dict):
        return "a mapping, e.g. {key: value}"
    return type(value).__name__


def _same_kind(old, new) -> bool:
    """Whether ``new`` may replace ``old`` (the YAML's value fixes the type)."""
    if old is None or new is None or isinstance(old, str):
        return True
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int | float):
        # numbers replace numbers (a ratio written 4 in the YAML may be 0.25)
        return isinstance(new, int | float) and not isinstance(new, bool)
    if isinstance(old, ListConfig | list):
        return isinstance(new, ListConfig | list)
    if isinstance(old, DictConfig | dict):
        return isinstance(new, DictConfig | dict)
    return True


def _suggest(cfg: DictConfig, key: str, value: str) -> str:
    """"did you mean <closest key>?" or how to add a key on purpose."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if isinstance(node, DictConfig):
        close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1)
        if close:
            return f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"spell it +{key}={value} to add a new key"


def apply_overrides(
    cfg: DictConfig, overrides: Sequence[str], source: str | os.PathLike | None = None
) -> DictConfig:
    """Apply ``key=value`` / ``+key=value`` overrides; unknown plain keys are errors.

    A value must have the type of the value it replaces (an integer for an
    integer, a number for a float, true/false for a boolean, a list for a
    list): ``training.lr=abc`` is one :class:`ConfigError` naming the key, the
    value and the expected type. Hydra's ``exp.training.lr=...`` spelling is
    accepted for ``training.lr=...``."""
    where = f" (in {source})" if source is not None else ""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        if key.startswith("exp.") and OmegaConf.select(cfg, key, default=_MISSING) == _MISSING:
            key = key[len("exp.") :]  # Hydra spelling of the paper's commands
        old = OmegaConf.select(cfg, key, default=_MISSING)
        if not add and old == _MISSING:
            raise ConfigError(f"unknown config key {key!r}{where}; {_suggest(cfg, key, value)}")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        except Exception as exc:  # omegaconf's grammar errors
            raise ConfigError(f"override {item!r}{where} cannot be parsed ({exc})") from exc
        new = OmegaConf.select(parsed, key)
        if old != _MISSING and not _same_kind(old, new):
            raise ConfigError(
                f"{key}={value}{where}: expected {_type_name(old)} (the config has {key}: "
                f"{OmegaConf.to_yaml(old).strip() if isinstance(old, DictConfig | ListConfig) else old!r}), "
                f"got {value!r}"
            )
        cfg = OmegaConf.merge(cfg, parsed)
    return cfg


def load_experiment(
    kind: str,
    exp: str,
    overrides: Sequence[str] = (),
    search_dirs: Sequence[str | os.PathLike] = (),
) -> DictConfig:
    """Load the ``exp`` config of ``kind`` (``sae`` or ``mil``) with overrides."""
    cfg = _load_tree(kind, exp, search_dirs)
    cfg = apply_overrides(cfg, overrides, source=find_experiment_file(kind, exp, search_dirs))
    OmegaConf.set_struct(cfg, False)
    cfg.exp_name = Path(exp).stem
    return cfg


def split_exp_args(tokens: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split CLI tokens like ``exp=foo a.b=1`` into (``foo``, [``a.b=1``])."""
    exp, rest = None, []
    for t in tokens:
        if t.startswith("exp="):
            exp = t.split("=", 1)[1]
        else:
            rest.append(t)
    return exp, rest
