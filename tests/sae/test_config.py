"""Shipped SAE configs: the paper's key names and defaults, overrides."""

from __future__ import annotations

import pytest

from sae1n.configs import available_experiments, load_experiment
from sae1n.errors import ConfigError
from sae1n.sae.config import resume_fingerprint
from sae1n.sae.model_config import SAEConfig


def test_paper_defaults_and_key_names():
    cfg = load_experiment("sae", "camelyon16_conch_0")
    assert cfg.seed == 42
    assert cfg.data.feature_dir == "../features/camelyon16/clam_processed/features_conch_v1/"
    assert cfg.data.file_type == "pt"
    assert cfg.data.split_csv_path == "./splits/camelyon16_42/splits_0.csv"
    s = cfg.sae
    assert (
        s.model_type,
        s.act_size,
        s.dict_size_ratio,
        s.top_k,
        s.top_k_aux,
        s.n_batches_to_dead,
        s.l1_coeff,
    ) == ("BatchTopKSAE", 512, 4, 16, 512, 5, 0)
    assert s.aux_penalty == pytest.approx(1 / 32) and s.device == "auto"
    assert not s.paper_compat_no_b_enc and not s.paper_compat_update_in_eval
    t = cfg.training
    assert (
        t.num_epochs,
        t.batch_size,
        t.lr,
        t.beta1,
        t.beta2,
        t.max_grad_norm,
        t.validation_freq,
    ) == (100, 4096, 1e-3, 0.9, 0.99, 100000, 500)
    assert SAEConfig.from_mapping(s).dict_size == 2048


@pytest.mark.parametrize("i", range(5))
def test_camelyon16_folds(i):
    assert load_experiment("sae", f"camelyon16_conch_{i}").data.split_csv_path.endswith(
        f"splits_{i}.csv"
    )


def test_other_shipped_configs():
    names = set(available_experiments("sae"))
    assert {
        "camelyon16_conch_0",
        "panda_conch_0",
        "camelyon16_resnet50_0",
        "camelyon16_uni_0",
        "demo",
    } <= names
    assert "_base" not in names
    panda = load_experiment("sae", "panda_conch_0")
    assert "panda" in panda.data.feature_dir and panda.data.split_csv_path.endswith(
        "panda_42/splits_0.csv"
    )
    sizes = {
        n: SAEConfig.from_mapping(
            {
                **load_experiment("sae", n).sae,
                "act_size": load_experiment("sae", n).sae.act_size or 8,
            }
        )
        for n in ("camelyon16_resnet50_0", "camelyon16_uni_0")
    }
    assert (
        sizes["camelyon16_resnet50_0"].act_size,
        sizes["camelyon16_resnet50_0"].dict_size,
        sizes["camelyon16_resnet50_0"].top_k,
    ) == (1024, 2048, 32)
    assert (
        sizes["camelyon16_uni_0"].act_size,
        sizes["camelyon16_uni_0"].dict_size,
        sizes["camelyon16_uni_0"].top_k,
    ) == (1024, 4096, 32)


def test_paper_style_overrides():
    cfg = load_experiment(
        "sae",
        "camelyon16_conch_0",
        ["sae.top_k=32", "training.lr=3e-4", "sae.device=cuda:0", "data.file_type=h5"],
    )
    assert (cfg.sae.top_k, cfg.training.lr, cfg.sae.device, cfg.data.file_type) == (
        32,
        3e-4,
        "cuda:0",
        "h5",
    )
    with pytest.raises(ConfigError):
        load_experiment("sae", "camelyon16_conch_0", ["sae.topk=32"])


def test_resume_fingerprint_ignores_logging_but_not_model():
    base = load_experiment("sae", "camelyon16_conch_0")
    same = load_experiment(
        "sae",
        "camelyon16_conch_0",
        ["training.validation_freq=7", "training.num_epochs=200", "sae.device=cpu"],
    )
    other = load_experiment("sae", "camelyon16_conch_0", ["sae.top_k=8"])
    assert resume_fingerprint(base) == resume_fingerprint(same) != resume_fingerprint(other)


def test_typed_schema_defaults_are_the_base_yaml():
    from omegaconf import OmegaConf

    from sae1n.configs import PACKAGE_DIR
    from sae1n.configs.schema import defaults
    from sae1n.sae.config import SAERunConfig

    base = OmegaConf.to_container(OmegaConf.load(PACKAGE_DIR / "sae" / "_base.yaml"))
    typed = defaults(SAERunConfig)
    # set by the loader, not by the YAML
    for key in ("exp_name", "sweep_tag", "exp_group_name", "exp_run_name"):
        assert typed.pop(key) is None
    typed["sae"].pop("init_weights")  # compat=paper only, given with +sae.init_weights=
    assert typed == base


@pytest.mark.parametrize("exp", available_experiments("sae"))
def test_every_shipped_sae_config_passes_the_schema(exp):
    from sae1n.sae.config import check_sae_config

    typed = check_sae_config(load_experiment("sae", exp))
    assert typed.exp_name == exp


def test_unknown_key_in_a_users_yaml_is_named(tmp_path, monkeypatch):
    from sae1n.sae.config import load_sae_config

    d = tmp_path / "experiments" / "sae" / "exp"
    d.mkdir(parents=True)
    (d / "mine.yaml").write_text("defaults: [_base]\ntraining:\n  lerning_rate: 0.1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"training\.lerning_rate .*'mine'"):
        load_sae_config("mine")
    (d / "mine.yaml").write_text("defaults: [_base]\nsae:\n  b_dec_init: average\n")
    with pytest.raises(ConfigError, match="sae.b_dec_init must be zeros, mean or median, not 'average'"):
        load_sae_config("mine")
    (d / "mine.yaml").write_text("defaults: [_base]\ntraining:\n  resume: maybe\n")
    with pytest.raises(ConfigError, match="training.resume.*expected true/false, got 'maybe'"):
        load_sae_config("mine")


def test_the_papers_saved_run_configs_pass_the_schema(shared_data):
    """The configs the paper's code saves beside its checkpoints (Hydra adds
    exp_group_name / exp_run_name) are accepted as they are."""
    import json

    from sae1n.sae.config import check_sae_config

    saved = sorted((shared_data / "paper_reference" / "save_sae_features").rglob("config_best.json"))
    assert saved, "no saved paper configs in the reference data"
    for path in saved:
        typed = check_sae_config(json.loads(path.read_text()), source=str(path))
        assert typed.exp_group_name == "sae" and typed.sae.dict_size == 256


def test_the_model_class_defaults_agree_with_the_schema():
    """SAEConfig (what a model is built from) and the sae.* schema share their
    defaults, so a model built in code matches one built from a YAML."""
    import dataclasses

    from sae1n.sae.config import SAEModelSettings
    from sae1n.sae.model_config import SAEConfig

    schema = {f.name: f.default for f in dataclasses.fields(SAEModelSettings)}
    shared = [f for f in dataclasses.fields(SAEConfig) if f.default is not dataclasses.MISSING]
    assert len(shared) >= 12
    assert {f.name: f.default for f in shared} == {f.name: schema[f.name] for f in shared}
