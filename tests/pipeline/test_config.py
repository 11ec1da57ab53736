"""The typed pipeline config: unknown keys at every level, types, choices, docs."""

import pytest

from sae1n.errors import ConfigError
from sae1n.pipeline import load_pipeline_config


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
