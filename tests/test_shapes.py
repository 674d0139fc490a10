"""The built-in demo dataset: deterministic, learnable captions, boxes that match the pixels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import DEMO_COLOURS, ShapesConfig
from pipeline.stages import shapes
from pipeline.stages.shapes import ShapeObject

CONFIG = ShapesConfig(out_dir="unused", num_images=12, image_size=96, min_objects=1, max_objects=2,
                      colours=["red", "green", "blue"], shapes=["circle", "square", "triangle"],
                      object_size=[24, 32], seed=3)


def test_generate_is_deterministic_and_complete(tmp_path: Path) -> None:
    shapes.generate(CONFIG, tmp_path / "a")
    shapes.generate(CONFIG, tmp_path / "b")
    for name in ("captions.txt", "objects.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    images = sorted((tmp_path / "a/images").iterdir())
    assert [p.name for p in images] == [f"img_{i:05d}.png" for i in range(12)]
    assert all((tmp_path / "a/images" / p.name).read_bytes() == (tmp_path / "b/images" / p.name).read_bytes()
               for p in images)
    lines = (tmp_path / "a/captions.txt").read_text().splitlines()
    assert len(lines) == 60
    assert lines[0].startswith("img_00000.png#0\t") and lines[4].startswith("img_00000.png#4\t")
    shapes.generate(CONFIG.model_copy(update={"seed": 4}), tmp_path / "c")
    assert (tmp_path / "c/captions.txt").read_bytes() != (tmp_path / "a/captions.txt").read_bytes()


def in_reading_order(first: dict, second: dict) -> bool:
    """Left before right, or top before bottom for a pair further apart vertically than horizontally."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = first["box"], second["box"]
    dx, dy = (bx0 + bx1) - (ax0 + ax1), (by0 + by1) - (ay0 + ay1)  # twice the centre offsets
    return dy > 0 if abs(dy) > abs(dx) else dx > 0


def test_boxes_hold_the_drawn_colour_and_objects_are_named_in_reading_order(tmp_path: Path) -> None:
    shapes.generate(CONFIG, tmp_path)
    objects = json.loads((tmp_path / "objects.json").read_text())
    captions: dict[str, list[str]] = {}
    for line in (tmp_path / "captions.txt").read_text().splitlines():
        key, text = line.split("\t")
        captions.setdefault(key.split("#")[0], []).append(text)
    assert {len(boxes) for boxes in objects.values()} == {1, 2}
    for name, boxes in objects.items():
        pixels = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB")).astype(int)
        for obj in boxes:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            centre = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
            assert np.abs(centre - np.array(DEMO_COLOURS[obj["colour"]])).max() <= 15
        first = captions[name][0]
        assert first == " and ".join(f"a {o['colour']} {o['shape']}" for o in boxes)
        assert len(captions[name]) == 5 and len(set(captions[name])) == 5
        if len(boxes) == 2:
            assert in_reading_order(*boxes), name


def test_reading_order_of_hand_placed_objects() -> None:
    left = ShapeObject("red", "circle", (0, 40, 20, 60))  # centre (10, 50)
    right = ShapeObject("blue", "square", (60, 40, 80, 60))  # centre (70, 50)
    middle_low = ShapeObject("white", "triangle", (30, 70, 50, 90))  # centre (40, 80)
    top = ShapeObject("green", "triangle", (0, 0, 20, 20))  # centre (10, 10)
    bottom = ShapeObject("green", "square", (5, 70, 25, 90))  # centre (15, 80): more below than beside
    assert shapes.order_objects([right, left]) == [left, right]
    assert shapes.order_objects([bottom, top]) == [top, bottom]  # a vertical pair: top first
    assert shapes.order_objects([top, bottom]) == [top, bottom]
    # three objects: always left to right, whatever their heights
    assert shapes.order_objects([right, middle_low, left]) == [left, middle_low, right]


def test_relation_words() -> None:
    left = ShapeObject("red", "circle", (0, 40, 20, 60))
    right = ShapeObject("blue", "square", (60, 40, 80, 60))
    top = ShapeObject("green", "triangle", (0, 0, 20, 20))
    bottom = ShapeObject("green", "square", (0, 70, 20, 90))
    assert shapes.relation(left, right) == "to the left of"
    assert shapes.relation(right, left) == "to the right of"
    assert shapes.relation(top, bottom) == "above"
    assert shapes.relation(bottom, top) == "below"


def test_captions_of_hand_placed_objects() -> None:
    left = ShapeObject("red", "circle", (0, 40, 20, 60))
    right = ShapeObject("blue", "square", (60, 40, 80, 60))
    assert shapes.captions_for([left, right], 100) == [
        "a red circle and a blue square", "there is a red circle and a blue square",
        "two shapes a red circle and a blue square", "a red circle to the left of a blue square",
        "a red circle and a blue square on a grey background"]
    assert shapes.captions_for([right], 100) == [
        "a blue square", "there is a blue square", "a blue square on the right", "a single blue square",
        "one shape a blue square"]


def test_is_demo_only_when_the_captions_lie_in_the_demo_folder(tmp_path: Path) -> None:
    config = CONFIG.model_copy(update={"out_dir": str(tmp_path / "shapes")})
    assert shapes.is_demo(config, str(tmp_path / "shapes" / "captions.txt"))
    assert not shapes.is_demo(config, str(tmp_path / "flickr" / "captions.txt"))
