import pandas as pd
import pytest

from sae1n.cli import main
from tests.mil.conftest import make_cohort, write_splits


def test_train_mil_cli_with_paper_style_overrides(tmp_path, monkeypatch, capsys):
    c = make_cohort(tmp_path, n_per_class=4, patches=(4, 8), n_val=1, n_test=1)
    splits = {k: list(v) for k, v in c.splits.items()}
    splits["test"].append("not_extracted")
    write_splits(c.split_dir, splits)
    df = pd.read_csv(c.csv_path)
    pd.concat(
        [
            df,
            pd.DataFrame(
                [{"case_id": "x", "slide_id": "not_extracted", "label": "normal", "isup_grade": 0}]
            ),
        ]
    ).to_csv(c.csv_path, index=False)
    monkeypatch.chdir(tmp_path)
    args = [
        "train-mil",
        "exp=camelyon16_conch_meanmil",
        *c.overrides(max_epochs=2, **{"+model.hidden_dim": 8}),
    ]
    assert main(args) == 1
    assert "not_extracted" in capsys.readouterr().err
    assert main([*args, "--allow_missing", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test_auc" in out and "mean" in out
    assert (tmp_path / "output/mil/camelyon16_conch_meanmil/summary.csv").is_file()


def test_train_mil_cli_needs_an_experiment(capsys):
    assert main(["train-mil", "max_epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "exp=<name>" in err and "camelyon16_conch_maxmil" in err


@pytest.mark.parametrize(
    "exp", ["camelyon16_conch_sae_1n_maxmil", "panda_conch_transmil", "demo_sae_1n_maxmil"]
)
def test_packaged_configs_keep_the_paper_keys(exp):
    from sae1n.configs import load_experiment

    cfg = load_experiment("mil", exp)
    for key in (
        "seed",
        "task",
        "n_classes",
        "dataset.csv_path",
        "dataset.data_dir",
        "features.backbone",
        "features.use_sae_selected_units",
        "features.num_top_sae_units",
        "split_dir",
        "max_epochs",
        "model.type",
        "model.in_dim",
        "k",
        "k_start",
        "k_end",
        "results_dir_base",
    ):
        assert key.split(".")[-1] in (cfg.get(key.split(".")[0]) if "." in key else cfg), key
    assert cfg.optimizer.lr == 1e-4 or exp.startswith("demo")
    assert (
        cfg.optimizer.reg == 1e-5
        and cfg.model.drop_out == 0.25
        and cfg.patience == 20
        and cfg.stop_epoch == 50
    )
