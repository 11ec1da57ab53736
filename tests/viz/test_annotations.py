import json

import numpy as np
import pytest

from sae1n.errors import InputFileError
from sae1n.viz.annotations import find_annotation, read_asap_polygons, read_outline_polygons


def test_real_camelyon16_asap_xml_matches_ncrf_json(shared_data):
    xml = shared_data / "annotations" / "camelyon16_asap_xml" / "tumor_004.xml"
    ncrf = json.loads(
        (shared_data / "annotations" / "camelyon16_ncrf_json" / "Tumor_004.json").read_text()
    )
    polys = read_outline_polygons(xml)
    want = [np.asarray(p["vertices"], float) for p in ncrf["positive"]]
    assert len(polys) == len(want)
    for got, ref in zip(polys, want):
        np.testing.assert_allclose(got, ref)


def test_asap_exclusion_groups_are_skipped(tmp_path):
    xml = tmp_path / "s.xml"
    xml.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        '<Annotation Name="a" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="1" X="10" Y="0"/><Coordinate Order="0" X="0" Y="0"/><Coordinate Order="2" X="10" Y="10"/>'
        "</Coordinates></Annotation>"
        '<Annotation Name="b" PartOfGroup="_2"><Coordinates>'
        '<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="2" Y="1"/><Coordinate Order="2" X="2" Y="2"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    polys = read_asap_polygons(xml)
    assert len(polys) == 1 and polys[0].tolist() == [[0, 0], [10, 0], [10, 10]]
    assert find_annotation(tmp_path, "s") == xml and find_annotation(tmp_path, "t") is None
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(InputFileError, match="not valid XML"):
        read_asap_polygons(tmp_path / "bad.xml")
    with pytest.raises(InputFileError, match="unsupported annotation type"):
        read_outline_polygons(tmp_path / "x.txt")
