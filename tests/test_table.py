"""The prepared captions table: one writer, one reader, and the references grouped by image."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.datasets import table
from pipeline.errors import InputError


def test_write_then_read_round_trips_and_selects_a_split(tmp_path):
    rows = [("a.jpg", "train", "a dog"), ("a.jpg", "train", "nan"), ("b/c.jpg", "test", "two, birds")]
    path = tmp_path / "captions.csv"
    table.write_captions(path, rows)
    assert path.read_text(encoding="utf-8") == 'image,split,caption\na.jpg,train,a dog\na.jpg,train,nan\n' \
                                                'b/c.jpg,test,"two, birds"\n'
    everything = table.read_captions(path)
    assert list(everything.columns) == list(table.COLUMNS)
    assert [tuple(row) for row in everything.itertuples(index=False)] == rows  # "nan" stays a word
    test = table.read_captions(path, "test")
    assert test["image"].tolist() == ["b/c.jpg"] and test.index.tolist() == [0]
    assert table.read_captions(path, "val").empty


def test_read_captions_names_a_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/captions\.csv.*dvc repro prepare"):
        table.read_captions(tmp_path / "nowhere" / "captions.csv", "train")


def test_a_table_without_the_columns_is_an_error(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("file,words\na.jpg,a dog\n", encoding="utf-8")
    with pytest.raises(InputError, match="no image, split, caption column"):
        table.read_captions(path)


def test_references_by_image_keep_the_file_order_of_each_image():
    captions = pd.DataFrame({"image": ["b.jpg", "a.jpg", "b.jpg", "a.jpg"], "split": ["test"] * 4,
                             "caption": ["b one", "a one", "b two", "a two"]})
    assert table.references_by_image(captions) == {"a.jpg": ["a one", "a two"], "b.jpg": ["b one", "b two"]}
