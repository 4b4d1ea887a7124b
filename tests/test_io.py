"""Writers that leave a destination either as it was or complete, never half-written."""
import pytest

from massive_mt.errors import DataError
from massive_mt.io import atomic_write_json, atomic_write_texts, read_json_object, staged_dir


def test_atomic_write_texts_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    atomic_write_texts({a: "old a\n", b: "old b\n"})

    with pytest.raises(FileNotFoundError):  # the second file cannot be written: neither is replaced
        atomic_write_texts({a: "new a\n", tmp_path / "missing" / "b.txt": "new b\n"})
    assert (a.read_text(), b.read_text()) == ("old a\n", "old b\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"langs": ["fr", "ja"], "name": "déjà"})
    assert path.read_text(encoding="utf-8").endswith("\n") and "déjà" in path.read_text(encoding="utf-8")
    assert read_json_object(path) == {"langs": ["fr", "ja"], "name": "déjà"}
    with pytest.raises(DataError, match=r"x\.json: not found"):
        read_json_object(tmp_path / "x.json")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"m\.json: not valid JSON"):
        read_json_object(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"m\.json: expected a JSON object, got list"):
        read_json_object(path)


def test_staged_dir_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out" / "data-bin"
    with pytest.raises(RuntimeError, match="halfway"):
        with staged_dir(dest) as tmp:
            (tmp / "part").write_text("1")
            raise RuntimeError("halfway")
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    with staged_dir(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest
        (tmp / "done").write_text("1")
    assert [p.name for p in dest.iterdir()] == ["done"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data-bin"]


def test_staged_dir_refuses_a_non_empty_destination_unless_replacing(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    with staged_dir(dest) as tmp:  # an empty directory is fine
        (tmp / "v1").write_text("1")
    with pytest.raises(DataError, match="model: already exists and is not an empty directory"):
        with staged_dir(dest):
            pass
    with staged_dir(dest, replace=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in dest.iterdir()] == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old copy left
