"""docs/config_keys.md is generated from the shipped configs and kept current."""

from __future__ import annotations

from sae1n.devtools.config_docs import DOC_PATH, base_keys, experiment_changes, main, render


def test_config_keys_doc_is_current():
    assert DOC_PATH.is_file(), "run python -m sae1n.devtools.config_docs"
    assert main(["--check"]) == 0, "docs/config_keys.md is stale: python -m sae1n.devtools.config_docs"


def test_every_base_key_is_documented_with_its_default():
    keys = {k: (d, t, m) for k, d, t, m in base_keys("sae")}
    assert keys["training.batch_size"] == ("4096", "an integer", "patches per step")
    assert keys["sae.b_dec_init"][2].endswith("(one of zeros, mean, median)")
    assert "sae.top_k" in keys and "sae.model_type" in keys
    text = render()
    for key in keys:
        assert f"| `{key}` |" in text
    undocumented = [k for k, (_, _, meaning) in keys.items() if not meaning]
    assert undocumented == []


def test_every_kind_is_generated_from_its_config_class():
    from sae1n.devtools.config_docs import KINDS

    assert set(KINDS) == {"sae", "mil", "pipeline"}
    text = render()
    for kind in KINDS:
        rows = base_keys(kind)
        assert rows, kind
        assert [k for k, _, _, meaning in rows if not meaning] == [], kind
        for key, *_ in rows:
            assert f"| `{key}` |" in text
    mil = {k: d for k, d, _, _ in base_keys("mil")}
    assert mil["model.k_sample"] == "null" and mil["optimizer.lr"] == "0.0001"


def test_experiment_changes_list_only_differences():
    changes = experiment_changes("sae")
    assert "demo" in changes
    assert changes["demo"]["sae.top_k"] == 8
    assert "seed" not in changes["demo"]
