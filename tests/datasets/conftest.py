"""Small generated inputs for the datasets tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

REFERENCE = "sae1n_reference"


def write_asap_xml(path: Path, annotations: list[tuple[str, list[tuple[float, float]]]]) -> Path:
    """An ASAP XML file with one polygon per (group, points) item."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, (group, points) in enumerate(annotations):
        lines.append(
            f'\t\t<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
        )
        lines.append("\t\t\t<Coordinates>")
        # Written in reverse order: the reader must sort by Order.
        for order in reversed(range(len(points))):
            x, y = points[order]
            lines.append(f'\t\t\t\t<Coordinate Order="{order}" X="{x}" Y="{y}" />')
        lines.append("\t\t\t</Coordinates>")
        lines.append("\t\t</Annotation>")
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group in sorted({g for g, _ in annotations}):
        lines.append(
            f'\t\t<Group Name="{group}" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>'
        )
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(lines))
    return path


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def write_coords(path: Path, coords, **attrs) -> Path:
    """A create-patches style h5: ``coords`` with CLAM attributes on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        for k, v in attrs.items():
            ds.attrs[k] = v
    return path


@pytest.fixture
def reference_dir(shared_data) -> Path:
    ref = shared_data / REFERENCE
    if not ref.is_dir():
        pytest.skip(f"the paper's reference files are not in {ref}")
    return ref
