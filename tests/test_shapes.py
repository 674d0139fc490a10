"""The built-in demo dataset: deterministic, learnable captions, boxes that match the pixels."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.stages import shapes
from pipeline.config import ShapesConfig

CONFIG = ShapesConfig(out_dir="unused", num_images=12, image_size=96, min_objects=1, max_objects=2,
                      colours=["red", "green", "blue"], shapes=["circle", "square", "triangle"],
                      object_size=[24, 32], seed=3)


def test_generate_is_deterministic_and_complete(tmp_path: Path) -> None:
    shapes.generate(CONFIG, tmp_path / "a")
    shapes.generate(CONFIG, tmp_path / "b")
    for name in ("captions.txt", "objects.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    images = sorted((tmp_path / "a/images").iterdir())
    assert len(images) == 12
    assert all((tmp_path / "a/images" / p.name).read_bytes() == (tmp_path / "b/images" / p.name).read_bytes()
               for p in images)
    lines = (tmp_path / "a/captions.txt").read_text().splitlines()
    assert len(lines) == 60
    assert lines[0].startswith("img_00000.png#0\t") and lines[4].startswith("img_00000.png#4\t")
    other = replace(CONFIG, seed=4)
    shapes.generate(other, tmp_path / "c")
    assert (tmp_path / "c/captions.txt").read_bytes() != (tmp_path / "a/captions.txt").read_bytes()


def test_boxes_hold_the_drawn_colour_and_objects_are_named_in_reading_order(tmp_path: Path) -> None:
    shapes.generate(CONFIG, tmp_path)
    objects = json.loads((tmp_path / "objects.json").read_text())
    captions: dict[str, list[str]] = {}
    for line in (tmp_path / "captions.txt").read_text().splitlines():
        key, text = line.split("\t")
        captions.setdefault(key.split("#")[0], []).append(text)
    for name, boxes in objects.items():
        pixels = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB")).astype(int)
        assert 1 <= len(boxes) <= 2
        for obj in boxes:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            centre = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
            assert np.abs(centre - np.array(shapes.RGB[obj["colour"]])).max() <= 15
        first = captions[name][0]
        named = [f"{o['colour']} {o['shape']}" for o in boxes]
        assert first == " and ".join(f"a {n}" for n in named)
        assert len(captions[name]) == 5 and len(set(captions[name])) == 5
        if len(boxes) == 2:
            (a, b) = [shapes.ShapeObject(o["colour"], o["shape"], tuple(o["box"])) for o in boxes]
            assert shapes.order_objects([b, a]) == [a, b]


def test_relation_words() -> None:
    left = shapes.ShapeObject("red", "circle", (0, 40, 20, 60))
    right = shapes.ShapeObject("blue", "square", (60, 40, 80, 60))
    top = shapes.ShapeObject("green", "triangle", (0, 0, 20, 20))
    bottom = shapes.ShapeObject("green", "square", (0, 70, 20, 90))
    assert shapes.relation(left, right) == "to the left of"
    assert shapes.relation(right, left) == "to the right of"
    assert shapes.relation(top, bottom) == "above"
    assert shapes.order_objects([bottom, top]) == [top, bottom]


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot draw"):
        shapes.check_config(replace(CONFIG, colours=["red", "mauve"]))
    with pytest.raises(ValueError, match="object_size"):
        shapes.check_config(replace(CONFIG, object_size=[40, 60]))
