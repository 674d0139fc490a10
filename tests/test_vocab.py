"""Tests for the vocab stage: counting, ordering, min_count, and only training captions counting."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import PARAMS_ENV
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import write_captions
from pipeline.stages import vocab
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.conftest import write_params


def test_build_vocabulary_orders_by_count_then_alphabetically():
    captions = ["a dog runs", "a dog sits", "a cat", "the zebra", "the cat"]
    vocabulary, counts = vocab.build_vocabulary(captions, min_count=1)
    assert vocabulary.words[:4] == SPECIAL_TOKENS
    # a:3; cat, dog, the: 2 (alphabetical); runs, sits, zebra: 1 (alphabetical)
    assert vocabulary.words[4:] == ("a", "cat", "dog", "the", "runs", "sits", "zebra")
    assert counts == Counter({"a": 3, "cat": 2, "dog": 2, "the": 2, "runs": 1, "sits": 1, "zebra": 1})


def test_build_vocabulary_min_count():
    captions = ["a dog runs", "a dog sits", "a cat", "the cat"]
    vocabulary, counts = vocab.build_vocabulary(captions, min_count=2)
    assert vocabulary.words == (*SPECIAL_TOKENS, "a", "cat", "dog")
    assert counts["runs"] == 1  # counted, but below min_count
    assert vocabulary.index("runs") == vocabulary.unk
    assert vocab.build_vocabulary(captions, min_count=4)[0].words == SPECIAL_TOKENS


def test_build_vocabulary_counts_only_the_given_captions():
    vocabulary, counts = vocab.build_vocabulary(iter(["red circle", "red square"]), min_count=1)
    assert set(counts) == {"red", "circle", "square"}
    assert vocabulary.words == (*SPECIAL_TOKENS, "red", "circle", "square")
    assert vocab.build_vocabulary([], min_count=1)[0].words == SPECIAL_TOKENS


# ----------------------------------------------------------------------------------------------
# main, end to end on a captions.csv written here


def write_project(folder: Path, rows: list[tuple[str, str, str]], min_count: int) -> None:
    """params.yaml (the repository's, with paths into `folder`) and prepared/captions.csv."""
    write_params(folder, {"dataset": {"table": str(folder / "prepared" / "captions.csv")},
                          "vocab": {"min_count": min_count, "path": str(folder / "vocab" / "vocab.json")}})
    (folder / "prepared").mkdir()
    write_captions(folder / "prepared" / "captions.csv", rows)


ROWS = [
    ("1.jpg", "train", "a red circle"),
    ("1.jpg", "train", "a red circle on the left"),
    ("2.jpg", "train", "a blue square"),
    ("2.jpg", "train", "nan"),  # a caption that pandas would read as missing by default
    ("3.jpg", "val", "a zebra and a red circle"),
    ("4.jpg", "test", "a giraffe"),
    ("4.jpg", "test", "a giraffe"),
]


def test_main_builds_the_vocabulary_from_training_captions_only(tmp_path, monkeypatch, capsys):
    write_project(tmp_path, ROWS, min_count=1)
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    vocab.main()

    path = tmp_path / "vocab" / "vocab.json"
    vocabulary = Vocabulary.from_json(path)
    assert vocabulary.words == (*SPECIAL_TOKENS, "a", "circle", "red", "blue", "left", "nan", "on",
                                "square", "the")
    assert "zebra" not in vocabulary  # validation only
    assert "giraffe" not in vocabulary  # test only, even though it is frequent there
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["counts"] == {"a": 3, "red": 2, "circle": 2, "on": 1, "the": 1, "left": 1, "blue": 1,
                                 "square": 1, "nan": 1}
    assert payload["min_count"] == 1
    assert "13 tokens" in capsys.readouterr().out
    assert not list((tmp_path / "vocab").glob(".*tmp*"))  # no temporary left behind


def test_main_applies_min_count(tmp_path, monkeypatch):
    write_project(tmp_path, ROWS, min_count=2)
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    vocab.main()
    assert Vocabulary.from_json(tmp_path / "vocab" / "vocab.json").words == (*SPECIAL_TOKENS, "a", "circle", "red")


def test_main_fails_without_training_captions(tmp_path, monkeypatch):
    write_project(tmp_path, [row for row in ROWS if row[1] != "train"], min_count=1)
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    with pytest.raises(DatasetError, match="no training captions"):
        vocab.main()
    assert not (tmp_path / "vocab" / "vocab.json").exists()
