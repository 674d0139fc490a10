"""The prepared captions table: one writer, one reader."""
from __future__ import annotations

import pytest

from pipeline.datasets import table as prepared


def test_write_then_read_round_trips_and_selects_a_split(tmp_path):
    rows = [("a.jpg", "train", "a dog"), ("a.jpg", "train", "nan"), ("b/c.jpg", "test", "two, birds")]
    prepared.write_captions(prepared.captions_path(tmp_path), rows)
    table = prepared.read_captions(tmp_path)
    assert list(table.columns) == list(prepared.COLUMNS)
    assert [tuple(row) for row in table.itertuples(index=False)] == rows  # "nan" stays a word
    test = prepared.read_captions(tmp_path, "test")
    assert test["image"].tolist() == ["b/c.jpg"] and test.index.tolist() == [0]


def test_read_captions_names_a_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.csv"):
        prepared.read_captions(tmp_path / "nowhere", "train")


def test_a_table_without_the_columns_is_an_error(tmp_path):
    prepared.captions_path(tmp_path).write_text("file,words\na.jpg,a dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="image, split, caption column"):
        prepared.read_captions(tmp_path)
