"""The quick demo's closing summary (format_summary on a constructed result; the demo is not run)."""

from pathlib import Path

from sae1n.demo.run import DemoResult, format_summary


def _result(tmp_path: Path, n_test: int | None) -> DemoResult:
    return DemoResult(
        out_dir=tmp_path,
        report=tmp_path / "output" / "sae" / "demo" / "report.html",
        unit=7,
        patch_auroc=0.912,
        patch_ap=0.55,
        neuron_slide_auroc=0.75,
        mil_test_auc={"demo_maxmil": 0.0, "demo_abmil": 1.0},
        seconds=42.0,
        n_test_slides=n_test,
    )


def test_slide_aurocs_from_4_test_slides_are_not_a_headline(tmp_path):
    text = format_summary(_result(tmp_path, 4))
    lines = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if "slide AUROC" in ln}
    assert len(lines) == 3
    for line in lines.values():
        assert "not meaningful (4 test slides" in line, line
    assert "slide AUROC demo_maxmil: 0.000" not in text
    assert "slide AUROC demo_maxmil: not meaningful (4 test slides; measured 0.000)" in text
    # the patch-level numbers (thousands of patches) stay headlines
    assert "AUROC 0.912" in text and "not meaningful" not in text.split("slide AUROC")[0]


def test_slide_aurocs_from_enough_slides_are_printed(tmp_path):
    text = format_summary(_result(tmp_path, 40))
    assert "not meaningful" not in text
    assert "slide AUROC demo_maxmil: 0.000 (40 test slides)" in text
    assert "max-pooled activation: 0.750 (40 test slides)" in text
