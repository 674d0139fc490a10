"""Outputs that appear only when complete: a failed write leaves the previous file or folder as it was."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.files import atomic_path, write_json


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "out" / "result.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["result.txt"]  # no temporary left


def test_atomic_folder_replaces_the_whole_folder(tmp_path: Path) -> None:
    folder = tmp_path / "figures"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "old.png").write_text("old")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.png"]


def test_write_json(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"bleu4": 0.5, "word": "café"})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"bleu4": 0.5, "word": "café"}
