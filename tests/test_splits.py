"""Splits by image: the split lists of dataset.split_dir, and the seeded random split's sizes."""
from __future__ import annotations

import pytest

from pipeline.datasets.report import DatasetError
from pipeline.datasets.splits import random_split, read_split_lists, split_lists, split_sizes


def test_split_lists_map_each_image_to_its_split(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\n\nb.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("c.jpg\r\n", encoding="utf-8")
    assert read_split_lists(split_lists(tmp_path)) == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val"}


def test_an_image_in_two_split_lists_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("c.jpg\nb.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="image 'b.jpg' is in both the train and the val lists"):
        read_split_lists(split_lists(tmp_path))


def test_the_split_folder_holds_its_lists_by_name(tmp_path):
    for split in ("test", "val", "train"):
        (tmp_path / f"{split}.txt").write_text("a.jpg\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("notes\n", encoding="utf-8")  # not a list: ignored
    (tmp_path / "flickr8k").mkdir()  # nor is a folder of other lists
    (tmp_path / "flickr8k" / "train.txt").write_text("b.jpg\n", encoding="utf-8")
    assert split_lists(tmp_path) == {split: tmp_path / f"{split}.txt" for split in ("test", "train", "val")}


def test_a_split_folder_without_lists_means_no_lists(tmp_path):
    (tmp_path / "README.md").write_text("no lists here\n", encoding="utf-8")
    assert split_lists(tmp_path) == {}


def test_a_list_under_another_name_is_refused_not_ignored(tmp_path):
    for name in ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt"):
        (tmp_path / name).write_text("a.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"holds 'Flickr_8k\.devImages\.txt' \(and 1 more\): split lists there "
                                           r"are named train\.txt, val\.txt and test\.txt"):
        split_lists(tmp_path)


@pytest.mark.parametrize("present, missing", [(["test"], "train.txt and val.txt"), (["train", "test"], "val.txt")])
def test_lists_without_train_and_val_are_refused(tmp_path, present, missing):
    for split in present:
        (tmp_path / f"{split}.txt").write_text("a.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=f"but no {missing}: training needs train and val lists"):
        split_lists(tmp_path)


def test_a_missing_split_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^dataset\.split_dir: split list folder '.*nowhere' not found"):
        split_lists(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        split_lists(tmp_path / "a_file")


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
