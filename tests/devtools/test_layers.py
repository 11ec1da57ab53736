"""The layer rule holds over the real import graph, and the checker catches a violation."""

from __future__ import annotations

from pathlib import Path

from sae1n.devtools.layers import import_cycles, layer_of, package_cycles, upward_imports


def test_no_import_points_up_a_layer():
    assert [str(b) for b in upward_imports()] == []


def test_no_import_cycles_between_modules_or_packages():
    assert import_cycles() == []
    assert package_cycles() == []


def test_layers_of_known_modules():
    assert layer_of("sae1n.io.features") == 0
    assert layer_of("sae1n.wsi.patch_files") < layer_of("sae1n.encoders.extract")
    assert layer_of("sae1n.sae.train") < layer_of("sae1n.neurons.ranking") < layer_of("sae1n.mil.train")
    assert layer_of("sae1n.viz.reporting") < layer_of("sae1n.pipeline") < layer_of("sae1n.cli")
    assert layer_of("numpy") is None


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "sae1n"
    for rel, text in files.items():
        f = pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return pkg


def test_checker_flags_a_backward_import_inside_a_function(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "neurons/__init__.py": "",
            "neurons/evaluate.py": "def f():\n    from sae1n.viz.curves import plot\n",
            "viz/__init__.py": "",
            "viz/curves.py": "from sae1n.neurons import evaluate\n",
        },
    )
    bad = upward_imports(pkg)
    assert [(b.module, b.line, b.module_layer, b.imported_layer) for b in bad] == [
        ("sae1n.neurons.evaluate", 2, 4, 6)
    ]
    assert import_cycles(pkg) == [["sae1n.neurons.evaluate", "sae1n.viz.curves"]]
    assert package_cycles(pkg) == [("sae1n.neurons", "sae1n.viz")]


def test_checker_resolves_relative_and_from_package_imports(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "demo/__init__.py": "",
            "demo/a.py": "from . import b\n",
            "demo/b.py": "def g():\n    from sae1n.demo import a\n",
            "wsi/__init__.py": "",
            "wsi/slide.py": "from ..sae import models\n",
            "sae/__init__.py": "",
            "sae/models.py": "",
        },
    )
    assert import_cycles(pkg) == [["sae1n.demo.a", "sae1n.demo.b"]]
    assert [b.module for b in upward_imports(pkg)] == ["sae1n.wsi.slide"]
