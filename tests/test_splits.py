"""Splits by image: the official split lists, and the seeded random split's sizes."""
from __future__ import annotations

import pytest

from pipeline.datasets.report import DatasetError
from pipeline.datasets.splits import random_split, read_split_lists, split_sizes


def test_split_lists_map_each_image_to_its_split(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\n\nb.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("c.jpg\r\n", encoding="utf-8")
    assert read_split_lists({"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}) == \
        {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val"}


def test_an_image_in_two_split_lists_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("c.jpg\nb.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="image 'b.jpg' is in both the train and the val lists"):
        read_split_lists({"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")})


def test_missing_split_list_names_the_key(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"dataset\.split_files\.test.*nowhere\.txt"):
        read_split_lists({"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "nowhere.txt")})


@pytest.mark.parametrize("num_images, ratios, expected", [
    (10, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 8, "val": 1, "test": 1}),
    (3, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 1, "val": 1, "test": 1}),
    (2, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 2, "val": 0, "test": 0}),
    (7, {"train": 0.5, "test": 0.5}, {"train": 4, "val": 0, "test": 3}),
    (31783, {"train": 0.9, "val": 0.05, "test": 0.05}, {"train": 28605, "val": 1589, "test": 1589}),
    (0, {"train": 1.0}, {"train": 0, "val": 0, "test": 0}),
])
def test_split_sizes(num_images, ratios, expected):
    assert split_sizes(num_images, ratios) == expected


def test_random_split_is_seeded_and_by_image():
    images = [f"{i:02d}.jpg" for i in range(10)]
    split_of = random_split(images + images[:3], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=5)
    assert sorted(split_of) == images  # one entry per image, however often it is named
    assert [split_of[i] for i in images].count("train") == 6
    assert split_of == random_split(list(reversed(images)), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=5)
    assert split_of != random_split(images, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=6)


def test_validation_is_carved_from_train_keeping_the_test_split() -> None:
    """The seed's 80/20 train/test split stays reproducible: adding a val split takes it from train."""
    images = [f"{i:05d}.jpg" for i in range(1000)]
    two_way = random_split(images, {"train": 0.8, "test": 0.2}, seed=7)
    three_way = random_split(images, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=7)
    test_two = {i for i, s in two_way.items() if s == "test"}
    assert len(test_two) == 200
    assert test_two == {i for i, s in three_way.items() if s == "test"}
    val = {i for i, s in three_way.items() if s == "val"}
    assert len(val) == 100 and all(two_way[i] == "train" for i in val)
