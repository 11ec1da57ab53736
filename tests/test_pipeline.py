import pytest

from sae1n.cli import main
from sae1n.errors import ConfigError
from sae1n.pipeline import Pipeline, load_pipeline_config


def test_unknown_keys_and_missing_slides_are_clear_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("slides: {dir: /x}\nencodr: {name: conch_v1}\n")
    with pytest.raises(ConfigError, match="unknown pipeline keys.*encodr"):
        load_pipeline_config(bad)
    bad.write_text("task: camelyon16\n")
    with pytest.raises(ConfigError, match="slides.dir"):
        load_pipeline_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline_config(tmp_path / "missing.yaml")


def test_paper_layout_paths(tmp_path):
    cfg = load_pipeline_config(None, base={"work_dir": str(tmp_path), "slides": {"dir": "/s"}})
    p = Pipeline(cfg, echo=lambda s: None).paths
    assert (
        p.feat_dir == tmp_path / "features" / "camelyon16" / "clam_processed" / "features_conch_v1"
    )
    assert p.split_csv(0) == tmp_path / "splits" / "camelyon16_42" / "splits_0.csv"
    assert (
        p.encoded_dir
        == tmp_path
        / "output"
        / "sae"
        / "camelyon16_conch_0"
        / "encoded_features"
        / "camelyon16"
        / "features_conch_v1"
    )


def test_first_failing_stage_stops_the_run(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    (tmp_path / "slides").mkdir()
    cfg.write_text(f"work_dir: {tmp_path / 'work'}\nslides: {{dir: {tmp_path / 'slides'}}}\n")
    assert main(["pipeline", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "stage create_patches failed" in err
    assert not (
        tmp_path / "work" / "features" / "camelyon16" / "clam_processed" / "features_conch_v1"
    ).exists()
