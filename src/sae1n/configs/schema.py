"""Typed configs: frozen dataclasses built from YAML mappings.

A config class is a frozen dataclass whose fields are declared with
:func:`setting` (a value with a default and a one-line meaning) or
:func:`section` (a nested config class). :func:`build` turns a mapping (an
OmegaConf node or a plain dict) into an instance: every key must be a field
(an unknown key is a :class:`ConfigError` naming it by its dotted path, with
the closest known key), every value must have the field's type, and values
outside a field's ``choices`` are refused. :func:`describe` lists the keys
with their defaults and meanings, which is what ``docs/config_keys.md`` is
generated from, so the documentation cannot drift from what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from sae1n.errors import ConfigError

_NO_DEFAULT = dataclasses.MISSING


def setting(default: Any = _NO_DEFAULT, help: str = "", *, choices: Sequence | None = None):
    """A config value: its default (omit for a required key), meaning and allowed values."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, list | dict):
        if isinstance(default, list):
            items = tuple(default)
            return dataclasses.field(default_factory=lambda: items, metadata=meta)
        mapping = dict(default)
        return dataclasses.field(default_factory=lambda: dict(mapping), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str = ""):
    """A nested config class, filled with its defaults when the YAML omits it."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "section": True})


def _type_text(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple, Sequence):
        return "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if tp is bool:
        return "true/false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _plain(value):
    """An OmegaConf node (or anything mapping/list-like) as plain Python."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _coerce(tp, value, key: str, where: str):
    """``value`` as type ``tp``, or a ConfigError naming ``key``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, where)
            except ConfigError:
                continue
        raise _type_error(key, tp, value, where)
    if origin in (list, tuple, Sequence):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise _type_error(key, tp, value, where)
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value, where)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(key, tp, value, where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise _type_error(key, tp, value, where)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(key, tp, value, where)
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _type_error(key, tp, value, where)
        return str(value)
    raise TypeError(f"config field {key}: unsupported type {tp!r}")  # a bug in a config class


def _type_error(key: str, tp, value, where: str) -> ConfigError:
    return ConfigError(f"{key}{where}: expected {_type_text(tp)}, got {value!r}")


def unknown_keys(cls: type, mapping, prefix: str = "") -> list[str]:
    """Every key of ``mapping``, at any depth, that ``cls`` does not declare:
    dotted, with the closest known key when there is one."""
    mapping = _plain(mapping)
    if not isinstance(mapping, Mapping):
        return []  # build() names a section that is not a mapping
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for key in mapping:
        f = fields.get(str(key))
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            out.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
        elif f.metadata.get("section"):
            out += unknown_keys(f.default_factory, mapping[key], f"{prefix}{key}.")
    return out


def build(cls: type, mapping: Mapping | None, *, where: str = "", prefix: str = "", label: str = "config"):
    """An instance of config class ``cls`` from ``mapping``.

    Every unknown key at any depth is named in one :class:`ConfigError`.
    ``where`` (e.g. ``" (in configs/mil/foo.yaml)"``) is added to error
    messages, ``label`` names the kind of config in them (``"pipeline"``);
    ``prefix`` is the dotted path of this section."""
    mapping = _plain(mapping)
    unknown = unknown_keys(cls, mapping, prefix)
    if unknown:
        raise ConfigError(
            f"unknown {label} keys {', '.join(unknown)}{where}; "
            "every key is listed in docs/config_keys.md"
        )
    return _build(cls, mapping, where, prefix, label)


def _build(cls: type, mapping: Mapping | None, where: str, prefix: str, label: str):
    if mapping is None:  # an empty YAML section
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{prefix[:-1] or 'the config'}{where} must be a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in mapping:
            if f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT:
                raise ConfigError(f"{key} is not set{where}; add {key}: ... to the config")
            continue
        value = _plain(mapping[f.name])
        if f.metadata.get("section"):
            kwargs[f.name] = _build(f.default_factory, value, where, f"{key}.", label)
            continue
        value = _coerce(hints[f.name], value, key, where)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            allowed = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}" if len(choices) > 1 else str(choices[0])
            named = f"{label} {key}" if label != "config" else key
            raise ConfigError(f"{named} must be {allowed}, not {value!r}{where}")
        kwargs[f.name] = value
    return cls(**kwargs)


def to_dict(config) -> dict:
    """A config instance as nested plain dicts and lists (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def defaults(cls: type) -> dict:
    """The nested defaults of ``cls`` (required keys are left out)."""
    out: dict = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            out[f.name] = defaults(f.default_factory)
        elif f.default is not _NO_DEFAULT:
            out[f.name] = f.default
        elif f.default_factory is not _NO_DEFAULT:
            out[f.name] = to_dict(f.default_factory())
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, default, type, meaning) for every value of ``cls``, sections expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("section"):
            rows += describe(f.default_factory, f"{key}.")
            continue
        if f.default is not _NO_DEFAULT:
            default = _yaml_text(f.default)
        elif f.default_factory is not _NO_DEFAULT:
            default = _yaml_text(to_dict(f.default_factory()))
        else:
            default = "(required)"
        meaning = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            meaning = f"{meaning} (one of {', '.join(map(str, choices))})".lstrip()
        rows.append((key, default, _type_text(hints[f.name]), meaning))
    return rows


def _yaml_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}" if value else "{}"
    return repr(value)
