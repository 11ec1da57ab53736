import pytest

from sae1n.cli import main
from sae1n.errors import ConfigError, Sae1nError
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


# --------------------------------------------------------------- the stage graph

from sae1n.pipeline import GRAPH, resolve_stages  # noqa: E402


def test_stage_spellings_order_and_unknown_names(tmp_path, capsys):
    assert resolve_stages(["train-sae", "create_patches", "heatmap"]) == [
        "create_patches",
        "train_sae",
        "heatmaps",
    ]
    assert resolve_stages(None) == [s.name for s in GRAPH]
    with pytest.raises(ConfigError, match=r"'train_sea'.*create-patches, extract-features"):
        resolve_stages(["train_sea"])
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"work_dir: {tmp_path / 'work'}\nslides: {{dir: {tmp_path}}}\n")
    assert main(["pipeline", str(cfg), "--stages", "train_sea"]) == 1
    err = capsys.readouterr().err
    assert "unknown stage(s) 'train_sea'" in err and "train-sae" in err and "report" in err
    assert not (tmp_path / "work").exists()  # nothing was started


class FakeStages(Pipeline):
    """The real driver, graph, fingerprints and output handling, with each
    stage's work replaced by writing its marker outputs (fast)."""

    ran: list

    def _fake_stage(self, name):
        self.ran.append(name)
        if name == self.fail:
            raise RuntimeError("boom")
        p = self.paths
        target = {
            "create_patches": p.clam_dir / "process_list_autogen.csv",
            "extract_features": p.feat_dir / "h5_files" / "a.h5",
            "create_metadata": p.metadata_csv,
            "create_splits": p.split_csv(int(self.cfg.splits.fold)),
            "train_sae": p.sae_dir / "checkpoints" / "sae_best.safetensors",
            "save_sae_features": p.encoded_dir / "h5_files" / "a.h5",
            "analyze_sae": p.ranking_csv,
            "patch_labels": p.patch_label_dir / "a.h5",
            "train_mil": p.mil_root / "mil" / "x" / "summary.csv",
            "evaluate_patches": p.sae_dir / "evaluation" / "patch_metrics.json",
            "heatmaps": p.sae_dir / "figures" / "a.png",
            "report": p.sae_dir / "report.html",
        }[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{name} {self._fingerprint(name)}")
        if name == "create_splits":  # like the real stage: every fold's file
            for k in range(int(self.cfg.splits.k)):
                p.split_csv(k).write_text("train,val,test\n")
        return {"stage": name}


for _stage in GRAPH:
    setattr(FakeStages, f"_stage_{_stage.name}", lambda self, n=_stage.name: self._fake_stage(n))


def _fake(tmp_path, overrides=(), fail=None):
    from sae1n.pipeline import load_pipeline_config

    slides = tmp_path / "slides"
    slides.mkdir(exist_ok=True)
    base = {"work_dir": str(tmp_path / "work"), "slides": {"dir": str(slides)}, "mil": {"exps": ["x"]}}
    cfg = load_pipeline_config(None, overrides, base=base)
    pipe = FakeStages(cfg, echo=lambda s: None)
    pipe.ran, pipe.fail = [], fail
    return pipe


ALL = [s.name for s in GRAPH]
AFTER_MIL = ["train_mil", "evaluate_patches", "heatmaps", "report"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("mil.overrides=[optimizer.lr=0.01]", AFTER_MIL),
        ("neurons.top_n=3", ["evaluate_patches", "report"]),
        ("figures.gallery=4", ["heatmaps", "report"]),
        ("annotations.threshold=0.3", ["patch_labels", "evaluate_patches", "heatmaps", "report"]),
        ("splits.k=3", ["create_splits", "train_sae", "save_sae_features", "analyze_sae", *AFTER_MIL]),
        ("sae.overrides=[training.lr=0.1]", ["train_sae", "save_sae_features", "analyze_sae", *AFTER_MIL]),
        ("splits.fold=1", ["train_sae", "save_sae_features", "analyze_sae", *AFTER_MIL]),
        ("encoder.checkpoint=w.pt", ALL[1:7] + AFTER_MIL),
        ("patching.patch_size=128", ALL),
        ("compat=paper", ["train_sae", "save_sae_features", "analyze_sae", *AFTER_MIL]),
        ("encoder.batch_size=7", []),  # does not change any output
    ],
)
def test_a_change_reruns_exactly_the_downstream_stages(tmp_path, override, expected):
    first = _fake(tmp_path)
    first.run()
    assert first.ran == ALL
    again = _fake(tmp_path)
    again.run()
    assert again.ran == []
    changed = _fake(tmp_path, [override])
    changed.run()
    assert changed.ran == expected
    assert set(changed.results) == set(ALL)
    assert _fake(tmp_path, [override]).run() and True  # and then nothing again
    assert all(r.status == "skipped" for r in _fake(tmp_path, [override]).run().values())


def test_changed_inputs_and_failed_stages(tmp_path):
    _fake(tmp_path).run()
    # a new slide in slides.dir is a changed input of create_patches
    (tmp_path / "slides" / "s.tif").write_bytes(b"x")
    pipe = _fake(tmp_path)
    pipe.run()
    assert pipe.ran == ALL
    # a failing stage restores its old outputs and is not recorded as done
    ckpt = pipe.paths.sae_dir / "checkpoints" / "sae_best.safetensors"
    old = ckpt.read_text()
    failing = _fake(tmp_path, ["sae.overrides=[training.lr=0.5]"], fail="train_sae")
    with pytest.raises(Sae1nError, match="stage train_sae failed"):
        failing.run()
    assert ckpt.read_text() == old
    assert not [p for p in pipe.paths.sae_dir.iterdir() if "pipeline-old" in p.name]
    retry = _fake(tmp_path, ["sae.overrides=[training.lr=0.5]"])
    retry.run()
    assert retry.ran[0] == "train_sae" and ckpt.read_text() != old
    # a changed SAE setting replaced the SAE run (no resume of the old one)
    assert retry._fingerprint("train_sae") in ckpt.read_text()


def test_stages_subset_refuses_out_of_date_upstream(tmp_path):
    _fake(tmp_path).run()
    pipe = _fake(tmp_path, ["patching.patch_size=128"])
    with pytest.raises(ConfigError, match="train_mil reads the outputs of .*create_patches"):
        pipe.run(["train-mil"])
    assert pipe.ran == []
    ok = _fake(tmp_path, ["mil.overrides=[optimizer.lr=0.01]"])
    ok.run(["train-mil"])  # downstream stages may stay behind; they are rerun later
    assert ok.ran == ["train_mil"]
    with pytest.raises(ConfigError, match="report reads the outputs of .*heatmaps"):
        _fake(tmp_path, ["mil.overrides=[optimizer.lr=0.01]"]).run(["report"])
    rest = _fake(tmp_path, ["mil.overrides=[optimizer.lr=0.01]"])
    rest.run(["report", "heatmap", "evaluate-patches"])
    assert rest.ran == ["evaluate_patches", "heatmaps", "report"]


def test_compat_reaches_the_stages_that_have_a_paper_mode(tmp_path):
    pipe = _fake(tmp_path, ["compat=paper"])
    assert pipe.sae_config().compat == "paper"
    assert "compat=paper" in pipe.mil_overrides("demo_maxmil")
    with pytest.raises(ConfigError, match="compat must be default or paper"):
        _fake(tmp_path, ["compat=papr"])
