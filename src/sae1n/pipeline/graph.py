"""The stage graph and the stage fingerprints.

Each :class:`Stage` lists the stages whose outputs it reads and the config
keys (dotted) that shape its own outputs. A stage's fingerprint is a hash of
those keys' values (and the identity of the user files they name) plus the
fingerprints of the stages it reads, so a change anywhere reruns exactly what
lies downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sae1n.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline graph: the stages whose outputs it reads and
    the config keys (dotted) that shape its own outputs."""

    name: str
    reads: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()


# The graph, in run order.
GRAPH: tuple[Stage, ...] = (
    Stage("create_patches", (), ("slides.dir", "slides.ext", "patching")),
    Stage("extract_features", ("create_patches",), ("slides.dir", "slides.ext", "encoder.name", "encoder.checkpoint")),
    Stage("create_metadata", ("extract_features",), ("task", "annotations.dir", "reference_csv", "panda_csv")),
    Stage("create_splits", ("create_metadata",), ("task", "seed", "splits.k", "splits.repeats")),
    Stage("train_sae", ("extract_features", "create_splits"), ("sae", "seed", "splits.fold", "compat")),
    Stage("save_sae_features", ("train_sae", "extract_features"), ("compat",)),
    Stage(
        "analyze_sae", ("save_sae_features", "create_splits", "create_metadata"), ("neurons.pooling", "splits.fold", "compat")
    ),
    Stage("patch_labels", ("create_patches",), ("annotations", "panda_csv")),
    Stage(
        "train_mil",
        ("extract_features", "save_sae_features", "analyze_sae", "create_splits", "create_metadata"),
        ("mil", "seed", "splits.fold", "compat"),
    ),
    Stage(
        "evaluate_patches",
        ("save_sae_features", "analyze_sae", "patch_labels", "create_splits", "create_metadata", "train_mil"),
        ("neurons", "splits.fold"),
    ),
    Stage(
        "heatmaps",
        ("save_sae_features", "analyze_sae", "patch_labels", "train_mil", "create_splits", "create_metadata"),
        ("figures", "slides.dir", "slides.ext", "annotations.dir", "splits.fold"),
    ),
    Stage(
        "report",
        ("train_sae", "analyze_sae", "evaluate_patches", "heatmaps", "train_mil"),
        (),
    ),
)
STAGE_SCHEMA = 1
# subcommand spellings that differ from the stage name beyond '-' vs '_'
_ALIASES = {"heatmap": "heatmaps", "patch_label": "patch_labels"}
_BY_NAME = {s.name: s for s in GRAPH}


def stage_names() -> list[str]:
    """Every stage name, in run order."""
    return [s.name for s in GRAPH]


def resolve_stages(names) -> list[str]:
    """Stage names in pipeline order from subcommand (``train-sae``) or
    underscore (``train_sae``) spellings; unknown names are one error listing the valid ones."""
    valid = stage_names()
    if not names:
        return valid
    wanted, unknown = set(), []
    for raw in names:
        for part in str(raw).split(","):
            key = part.strip().lower().replace("-", "_")
            if not key:
                continue
            key = _ALIASES.get(key, key)
            (wanted.add(key) if key in valid else unknown.append(part))
    if unknown:
        raise ConfigError(
            f"unknown stage(s) {', '.join(map(repr, unknown))}; valid stages (in order): "
            + ", ".join(n.replace("_", "-") for n in valid)
        )
    return [n for n in valid if n in wanted]


def upstream(name: str) -> set[str]:
    """Every stage ``name`` reads from, directly or through others."""
    out, todo = set(), list(_BY_NAME[name].reads)
    while todo:
        u = todo.pop()
        if u not in out:
            out.add(u)
            todo.extend(_BY_NAME[u].reads)
    return out


def fingerprints(settings: dict) -> dict[str, str]:
    """Every stage's fingerprint from the config as nested plain dicts
    (:func:`sae1n.configs.schema.to_dict`): its own keys' values, the identity
    of the files they name, and its upstream stages' fingerprints."""
    from sae1n.io.provenance import Provenance

    out: dict[str, str] = {}
    for stage in GRAPH:
        values = {k: _select(settings, k) for k in stage.keys}
        prov = Provenance.make(
            f"pipeline_stage:{stage.name}",
            STAGE_SCHEMA,
            values,
            {**{f"stage:{u}": out[u] for u in stage.reads}, **_file_inputs(values)},
        )
        out[stage.name] = prov.fingerprint()
    return out


def _file_inputs(values: dict) -> dict:
    """Identity of the user's files a stage reads (slides, annotations, label CSVs)."""
    from sae1n.io.provenance import fingerprint_of, input_identity

    ids = {}
    for key, value in values.items():
        if key in ("reference_csv", "panda_csv") and value:
            ids[key] = input_identity(value)
        if key in ("slides.dir", "annotations.dir", "annotations") and value:
            folder = value.get("dir") if isinstance(value, dict) else value
            if folder and Path(folder).is_dir():
                ids[f"{key}:files"] = fingerprint_of(
                    [
                        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                        for p in sorted(Path(folder).iterdir())
                        if p.is_file()
                    ]
                )
    return ids


def _select(container: dict, key: str):
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
