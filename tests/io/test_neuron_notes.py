"""The notes file: merge-on-save under concurrency, versions, validation."""

import json
import threading

import pytest

from sae1n.errors import ConfigError, InputFileError
from sae1n.io.neuron_notes import NoteConflict, NotesStore, read_notes


def test_concurrent_saves_of_different_neurons_all_survive(tmp_path):
    def tab(units):
        store = NotesStore(tmp_path)  # one store per tab, one file
        for u in units:
            store.save(u, {"name": f"n{u}", "tags": ["Stroma", "stroma"]})

    threads = [threading.Thread(target=tab, args=(range(i, 60, 3),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    notes = read_notes(tmp_path)
    assert sorted(notes) == list(range(60))
    assert all(n["name"] == f"n{u}" and n["tags"] == ["stroma"] and n["version"] == 1 for u, n in notes.items())
    assert not list(tmp_path.glob(".*.tmp-*"))  # atomic writes leave no temp files
    assert json.loads((tmp_path / "neuron_notes.json").read_text())["schema"] == 1


def test_versions_and_validation(tmp_path):
    s = NotesStore(tmp_path)
    assert s.save(3, {"name": "a"}, base_version=0)["version"] == 1
    assert s.save(3, {"name": "b"}, base_version=1)["version"] == 2
    with pytest.raises(NoteConflict) as exc:
        s.save(3, {"name": "stale"}, base_version=1)
    assert exc.value.current["name"] == "b"
    with pytest.raises(ConfigError, match="rating"):
        s.save(4, {"rating": 7})
    with pytest.raises(ConfigError, match="tags"):
        s.save(4, {"tags": "tumour"})
    assert s.save(5, {"name": "x" * 500})["name"] == "x" * 200
    assert "3,b," in s.to_csv()
    (tmp_path / "neuron_notes.json").write_text("{broken")
    with pytest.raises(InputFileError, match="not valid JSON"):
        read_notes(tmp_path)
