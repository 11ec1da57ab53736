"""The typed pipeline config: unknown keys at every level, types, choices, docs."""

from dataclasses import FrozenInstanceError

import pytest

from sae1n.configs.schema import defaults, describe, to_dict
from sae1n.errors import ConfigError
from sae1n.pipeline import PipelineConfig, load_pipeline_config


def _yaml(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(f"slides: {{dir: {tmp_path}}}\n" + text)
    return p


def test_unknown_nested_keys_are_named_by_their_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"encoder\.nme \(did you mean encoder\.name\?\).*p\.yaml"):
        load_pipeline_config(_yaml(tmp_path, "encoder: {nme: uni}\n"))
    with pytest.raises(ConfigError, match=r"patching\.patch_sise.*splits\.fodl"):
        load_pipeline_config(_yaml(tmp_path, "patching: {patch_sise: 128}\nsplits: {fodl: 1}\n"))
    with pytest.raises(ConfigError, match=r"figures\.galery"):
        load_pipeline_config(None, base={"slides": {"dir": str(tmp_path)}, "figures": {"galery": 3}})
    with pytest.raises(ConfigError, match=r"unknown pipeline keys sae\.exps \(did you mean sae\.exp\?\) \(in the overrides\)"):
        load_pipeline_config(None, ["+sae.exps=x"], base={"slides": {"dir": str(tmp_path)}})


@pytest.mark.parametrize(
    "text, message",
    [
        ("splits: {k: 2.5}\n", r"splits\.k \(in .*p\.yaml\): expected an integer, got 2\.5"),
        ("seed: true\n", r"seed \(in .*p\.yaml\): expected an integer, got True"),
        ("mil: {exps: demo_maxmil}\n", r"mil\.exps \(in .*p\.yaml\): expected a list"),
        ("annotations: {threshold: half}\n", r"annotations\.threshold .*expected a number, got 'half'"),
        ("encoder: 3\n", r"encoder \(in .*p\.yaml\) must be a mapping"),
        ("slides: {dir: /s, backend: openslid}\n", r"slides\.backend must be auto, openslide or tiffslide, not 'openslid'"),
        ("annotations: {format: xml}\n", r"annotations\.format must be auto, asap, geojson or panda_mask, not 'xml'"),
        ("neurons: {pooling: median}\n", r"neurons\.pooling must be max, mean, topk_mean or quantile"),
        ("task: tcga\n", r"pipeline task must be camelyon16 or panda, not 'tcga'"),
        ("- a\n- b\n", "must be a mapping of keys"),
        ("slides: {dir: [unclosed\n", "is not valid YAML"),
    ],
)
def test_wrong_types_and_choices_are_one_error_naming_the_key(tmp_path, text, message):
    p = tmp_path / "p.yaml"
    p.write_text(text if text.startswith(("slides", "- ")) else f"slides: {{dir: {tmp_path}}}\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(p)


def test_overrides_are_type_checked(tmp_path):
    base = {"slides": {"dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match="splits.k=abc.*expected a number"):
        load_pipeline_config(None, ["splits.k=abc"], base=base)
    with pytest.raises(ConfigError, match=r"splits\.k \(in the overrides\): expected an integer, got 2\.5"):
        load_pipeline_config(None, ["splits.k=2.5"], base=base)
    cfg = load_pipeline_config(None, ["splits.k=3", "mil.exps=[a,b]", "patching.target_mpp=0.5"], base=base)
    assert (cfg.splits.k, cfg.mil.exps, cfg.patching.target_mpp) == (3, ("a", "b"), 0.5)


def test_the_config_is_frozen_and_typed(tmp_path):
    cfg = load_pipeline_config(_yaml(tmp_path, "splits: {k: 3.0}\nmil: {exps: [demo_abmil]}\n"))
    assert isinstance(cfg, PipelineConfig)
    assert cfg.splits.k == 3 and isinstance(cfg.splits.k, int)
    assert cfg.mil.exps == ("demo_abmil",) and cfg.slides.dir == str(tmp_path)
    with pytest.raises(FrozenInstanceError):
        cfg.splits.fold = 1


def test_the_demo_config_builds_and_its_yaml_is_the_same_config(tmp_path):
    from omegaconf import OmegaConf

    from sae1n.demo.run import demo_config

    for quick, tiles in ((True, None), (False, "tiles")):
        base = demo_config(tmp_path, quick, tiles)
        cfg = load_pipeline_config(None, base=base)
        assert (cfg.encoder.name, cfg.sae.exp, cfg.annotations.format) == ("handcrafted", "demo", "asap")
        assert cfg.mil.exps == ("demo_maxmil", "demo_abmil", "demo_sae_1n_maxmil")
        (tmp_path / "pipeline.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(base)))
        assert load_pipeline_config(tmp_path / "pipeline.yaml") == cfg
        # every value the demo sets is kept as given
        flat = to_dict(cfg)
        for section_name, values in base.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    assert flat[section_name][key] == value, f"{section_name}.{key}"
            else:
                assert flat[section_name] == values


# The keys and defaults of the dict the typed config replaced (pipeline.py before issue 18).
OLD_DEFAULTS = {
    "work_dir": "./sae1n-run",
    "task": "camelyon16",
    "seed": 42,
    "compat": "default",
    "slides": {"dir": None, "ext": ".tif", "backend": "auto"},
    "annotations": {"dir": None, "format": "auto", "threshold": 0.5},
    "reference_csv": None,
    "panda_csv": None,
    "patching": {
        "patch_size": 256,
        "step_size": None,
        "patch_level": 1,
        "preset": "bwh_biopsy",
        "target_mpp": None,
        "magnification": None,
    },
    "encoder": {"name": "conch_v1", "checkpoint": None, "batch_size": 512, "num_workers": None, "device": "auto"},
    "splits": {"k": 5, "repeats": 1, "fold": 0},
    "sae": {"exp": "camelyon16_conch_0", "overrides": []},
    "neurons": {"pooling": "max", "top_n": 10},
    "mil": {"exps": [], "overrides": []},
    "figures": {"n_slides": 2, "gallery": 16},
}


def _flat(d, prefix=""):
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_every_old_key_is_kept_with_its_default_and_documented():
    assert defaults(PipelineConfig) == OLD_DEFAULTS
    rows = describe(PipelineConfig)
    assert [r[0] for r in rows] == _flat(OLD_DEFAULTS)
    short = [key for key, _, _, meaning in rows if len(meaning) < 15]
    assert not short, f"keys without a help line: {short}"
    assert dict((r[0], r[3]) for r in rows)["compat"].endswith("(one of default, paper)")


def test_choices_are_the_stages_own_lists():
    from sae1n.datasets.annotations import FORMATS
    from sae1n.datasets.metadata import TASKS
    from sae1n.neurons.pooling import POOLINGS
    from sae1n.pipeline import config
    from sae1n.wsi.readers import BACKENDS

    assert config.TASKS == TASKS and config.BACKENDS == BACKENDS
    assert config.ANNOTATION_FORMATS == FORMATS and config.POOLINGS == POOLINGS


def test_fingerprints_are_those_of_the_dict_config():
    """Measured with the pre-typed pipeline.py (commit 3e0627b): the same config
    gives the same stage fingerprints, so existing pipeline_state.json files stay current."""
    from sae1n.pipeline import Pipeline

    base = {"work_dir": "/nonexistent/w", "slides": {"dir": "/nonexistent/slides"}}
    for overrides, expected in (
        ([], ("25ed56871df74511", "372442a25715b80b", "eded82550983cf8a")),
        (
            ["compat=paper", "mil.exps=[demo_maxmil]", "annotations.threshold=0.3"],
            ("25ed56871df74511", "2fbb65c85e872a11", "65c200a4de6a8079"),
        ),
    ):
        fp = Pipeline(load_pipeline_config(None, overrides, base=base), echo=lambda s: None).fingerprints()
        assert (fp["create_patches"], fp["train_sae"], fp["report"]) == expected


def test_every_stage_key_is_a_config_key():
    """A misspelt key in the graph would silently fingerprint None (never rerun)."""
    from sae1n.pipeline import GRAPH

    keys = {row[0] for row in describe(PipelineConfig)}
    for stage in GRAPH:
        for key in stage.keys:
            assert key in keys or any(k.startswith(f"{key}.") for k in keys), (stage.name, key)
