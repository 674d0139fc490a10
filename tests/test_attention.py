"""Attention correctness on the shapes demo, and the grid geometry it rests on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.errors import InputError
from pipeline.evaluation.attention import attention_correctness, load_objects, peak_point
from pipeline.evaluation.figures import attention_grid, draw_attention
from pipeline.model.captioner import Caption


def one_hot(cell: int, regions: int = 4) -> torch.Tensor:
    alpha = torch.full((regions,), 0.1 / (regions - 1))
    alpha[cell] = 0.9
    return alpha


def test_peak_point_is_the_centre_of_the_most_attended_cell() -> None:
    # 2x2 grid over a 100 x 60 image: cell 3 is bottom right
    assert peak_point(one_hot(3), width=100, height=60) == (75.0, 45.0)
    assert peak_point(one_hot(0), width=100, height=60) == (25.0, 15.0)
    assert peak_point(one_hot(1), width=100, height=60) == (75.0, 15.0)  # row-major: cell 1 is top right
    assert peak_point(one_hot(5, regions=9), width=90, height=90) == (75.0, 45.0)  # 3x3: middle row, right


def test_attention_grid_needs_a_square_number_of_regions() -> None:
    assert attention_grid(torch.arange(9.0)).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="6 attention weights"):
        attention_grid(torch.ones(6))


def test_attention_correctness_counts_colour_and_shape_words() -> None:
    objects = {"a.png": [{"colour": "red", "shape": "circle", "box": [0, 0, 50, 50]},
                         {"colour": "blue", "shape": "square", "box": [50, 50, 100, 100]}]}
    words = ["a", "red", "circle", "and", "a", "blue", "square"]
    # red looks top left (right), circle bottom right (wrong), blue bottom right (right), square top left (wrong)
    alphas = torch.stack([one_hot(0), one_hot(0), one_hot(3), one_hot(0), one_hot(0), one_hot(3), one_hot(0)])
    scores = attention_correctness({"a.png": Caption(words, alphas, -1.0)}, objects, {"a.png": (100, 100)})
    assert scores == {"attention_correctness": 0.5, "attention_correctness_colour": 1.0,
                      "attention_correctness_shape": 0.0, "attention_words": 4,
                      "attention_correctness_std": 0.0,  # one image: every resample is the same image
                      "hallucinated_words": 0, "hallucination_rate": 0.0, "hallucination_rate_colour": 0.0,
                      "hallucination_rate_shape": 0.0}


def test_words_naming_nothing_in_the_image_are_counted_apart_not_scored() -> None:
    objects = {"a.png": [{"colour": "red", "shape": "circle", "box": [0, 0, 50, 50]}],
               "b.png": [{"colour": "blue", "shape": "square", "box": [50, 50, 100, 100]},
                         {"colour": "blue", "shape": "triangle", "box": [0, 50, 50, 100]}]}
    captions = {
        # a.png has no square: `square` is hallucinated, whatever its attention; `red` looks at the circle
        "a.png": Caption(["a", "red", "square"], torch.stack([one_hot(0), one_hot(0), one_hot(0)]), -1.0),
        # b.png: `blue` may look at either blue object (bottom left here); `triangle` looks top left (wrong);
        # `green` names nothing
        "b.png": Caption(["a", "blue", "triangle", "and", "a", "green", "square"],
                         torch.stack([one_hot(0), one_hot(2), one_hot(0), one_hot(0), one_hot(0), one_hot(1),
                                      one_hot(3)]), -1.0),
    }
    sizes = {"a.png": (100, 100), "b.png": (100, 100)}
    scores = attention_correctness(captions, objects, sizes, ({"red", "blue", "green"}, {"circle", "square", "triangle"}))
    # scored: red (hit), blue (hit), triangle (miss), square in b (hit) -> 3 of 4
    assert scores["attention_words"] == 4
    assert scores["attention_correctness"] == 0.75
    assert scores["attention_correctness_colour"] == 1.0
    assert scores["attention_correctness_shape"] == 0.5
    assert scores["hallucinated_words"] == 2  # square in a.png, green in b.png
    assert scores["hallucination_rate"] == 2 / 6
    assert scores["hallucination_rate_colour"] == 1 / 3
    assert scores["hallucination_rate_shape"] == 1 / 3


def test_load_objects_checks_the_images(tmp_path: Path) -> None:
    path = tmp_path / "objects.json"
    green, red = ({"colour": "green", "shape": "cross", "box": [0, 0, 4, 4]},
                  {"colour": "red", "shape": "circle", "box": [1, 2, 5.5, 6]})
    path.write_text(json.dumps({"a.png": [green], "b.png": [red]}), encoding="utf-8")
    # the boxes of the images asked for; the words of the whole file
    assert load_objects(path, ["b.png"]) == ({"b.png": [red]}, ({"green", "red"}, {"cross", "circle"}))
    with pytest.raises(InputError, match=r"objects\.json has no boxes for 1 evaluated images \(first: c\.png\)"):
        load_objects(path, ["a.png", "c.png"])
    with pytest.raises(FileNotFoundError, match="evaluate.objects"):
        load_objects(tmp_path / "none.json", ["a.png"])


@pytest.mark.parametrize("text", ['{"a.png": [', "[1, 2]", '{"a.png": {"colour": "red"}}',
                                  '{"a.png": [{"colour": "red", "shape": "circle"}]}',
                                  '{"a.png": [{"colour": "red", "shape": "circle", "box": "0 0 4 4"}]}'])
def test_a_malformed_objects_file_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "objects.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"objects\.json is not .*set evaluate\.objects to null"):
        load_objects(path, ["a.png"])


def test_draw_attention_writes_a_png(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
    draw_attention(tmp_path / "photo.jpg", ["a", "red"], torch.stack([one_hot(0), one_hot(3)]), tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > figure.size[1]  # one row of five panels
