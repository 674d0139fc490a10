"""Stage `shapes`: draw the built-in synthetic captioning dataset.

    params shapes.* -> data/shapes/images/img_NNNNN.png, captions.txt, objects.json

Each image holds `min_objects`..`max_objects` filled shapes of distinct (colour, shape) on a
plain background, placed without overlap. Five captions per image, written in the Flickr token
format (`img_00000.png#0<TAB>a red circle to the left of a blue square`) so that `prepare`
reads the demo exactly as it reads Flickr8k. Objects are always named left to right (top to
bottom when one is above the other), so what the decoder must say next is always "the next
object along": a caption is learnable from the features, and attention has one right place to
look for each colour and shape word. `objects.json` keeps each object's colour, shape and box
(x0, y0, x1, y1 in pixels) for the attention-correctness score of `evaluate`.

Drawn only when `dataset.captions` lies in `shapes.out_dir` (the demo is the dataset in use);
for a real dataset the stage writes an empty folder and draws nothing. Deterministic from `shapes.seed`.
Run: python -m pipeline.stages.shapes
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.cli import run
from pipeline.config import DEMO_COLOURS, DatasetConfig, ShapesConfig, load_section
from pipeline.errors import ConfigError
from pipeline.files import atomic_path, lies_in

BACKGROUND = (60, 60, 60)
MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def _overlaps(box: tuple[int, int, int, int], others: list[ShapeObject], gap: int) -> bool:
    return any(box[0] < o.box[2] + gap and o.box[0] < box[2] + gap and
               box[1] < o.box[3] + gap and o.box[1] < box[3] + gap for o in others)


def sample_objects(rng: np.random.Generator, config: ShapesConfig) -> list[ShapeObject]:
    """Distinct (colour, shape) objects at non-overlapping places, in reading order."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    pairs = [(c, s) for c in config.colours for s in config.shapes]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    for _ in range(MAX_PLACEMENT_TRIES):  # a whole new layout when the last object does not fit
        objects: list[ShapeObject] = []
        for index in chosen:
            side = int(rng.integers(config.object_size[0], config.object_size[1] + 1))
            x0 = int(rng.integers(0, config.image_size - side + 1))
            y0 = int(rng.integers(0, config.image_size - side + 1))
            box = (x0, y0, x0 + side, y0 + side)
            if _overlaps(box, objects, gap=side // 4):
                break
            objects.append(ShapeObject(*pairs[index], box))
        if len(objects) == count:
            return order_objects(objects)
    raise ConfigError("could not place the objects apart; lower shapes.object_size or max_objects")


def order_objects(objects: list[ShapeObject]) -> list[ShapeObject]:
    """Reading order: left to right, except that a pair far more vertical than horizontal goes top first."""
    if len(objects) == 2:
        (ax, ay), (bx, by) = objects[0].centre, objects[1].centre
        if abs(by - ay) > abs(bx - ax):
            return sorted(objects, key=lambda o: o.centre[1])
    return sorted(objects, key=lambda o: o.centre[0])


def relation(first: ShapeObject, second: ShapeObject) -> str:
    """Where `first` is relative to `second`, for objects in reading order."""
    (ax, ay), (bx, by) = first.centre, second.centre
    if abs(by - ay) > abs(bx - ax):
        return "above" if ay < by else "below"
    return "to the left of" if ax < bx else "to the right of"


def place_word(obj: ShapeObject, image_size: int) -> str:
    """Coarse horizontal position of a single object."""
    x = obj.centre[0] / image_size
    return "on the left" if x < 0.4 else "on the right" if x > 0.6 else "in the middle"


def captions_for(objects: list[ShapeObject], image_size: int) -> list[str]:
    """Five varied captions; objects are always mentioned in reading order."""
    names = [f"a {o.name}" for o in objects]
    if len(objects) == 1:
        (one,) = names
        return [one, f"there is {one}", f"{one} {place_word(objects[0], image_size)}",
                f"a single {objects[0].name}", f"one shape {one}"]
    listed = " and ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + f" and {names[-1]}"
    count = {2: "two", 3: "three"}.get(len(names), str(len(names)))
    return [listed, f"there is {listed}", f"{count} shapes {listed}",
            f"{names[0]} {relation(objects[0], objects[1])} {' and '.join(names[1:])}",
            f"{listed} on a grey background"]


def draw(objects: list[ShapeObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Render the objects as filled shapes with a little colour jitter."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for obj in objects:
        colour = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in DEMO_COLOURS[obj.colour])
        x0, y0, x1, y1 = obj.box
        w, h = x1 - x0, y1 - y0
        if obj.shape == "circle":
            pen.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
        elif obj.shape == "square":
            inset = w // 10
            pen.rectangle((x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), fill=colour)
        elif obj.shape == "triangle":
            pen.polygon([(x0 + w / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
        elif obj.shape == "diamond":
            pen.polygon([(x0 + w / 2, y0), (x1 - 1, y0 + h / 2), (x0 + w / 2, y1 - 1), (x0, y0 + h / 2)], fill=colour)
        elif obj.shape == "cross":
            arm = math.ceil(w / 3)
            pen.rectangle((x0 + arm, y0, x1 - 1 - arm, y1 - 1), fill=colour)
            pen.rectangle((x0, y0 + arm, x1 - 1, y1 - 1 - arm), fill=colour)
    return image


def generate(config: ShapesConfig, out_dir: Path) -> dict[str, list[ShapeObject]]:
    """Write images, captions.txt and objects.json into `out_dir`; return the objects per image."""
    rng = np.random.default_rng(config.seed)
    (out_dir / "images").mkdir(parents=True)
    scene: dict[str, list[ShapeObject]] = {}
    lines = []
    for i in tqdm(range(config.num_images), desc="shapes", unit="img", mininterval=2.0):
        name = f"img_{i:05d}.png"
        objects = sample_objects(rng, config)
        draw(objects, config.image_size, rng).save(out_dir / "images" / name)
        lines += [f"{name}#{n}\t{caption}" for n, caption in enumerate(captions_for(objects, config.image_size))]
        scene[name] = objects
    (out_dir / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    boxes = {name: [{"colour": o.colour, "shape": o.shape, "box": list(o.box)} for o in objects]
             for name, objects in scene.items()}
    (out_dir / "objects.json").write_text(json.dumps(boxes, indent=1), encoding="utf-8")
    return scene


def is_demo(config: ShapesConfig, captions: str) -> bool:
    """Whether the dataset in use is this demo: its captions file lies in the demo's folder."""
    return lies_in(captions, config.out_dir)


def main() -> None:
    config = load_section(ShapesConfig)
    captions = load_section(DatasetConfig).captions
    if not is_demo(config, captions):
        # a real dataset: draw nothing, leave an empty output so that DVC's graph stays the same
        with atomic_path(config.out_dir, "shapes.out_dir") as tmp:
            tmp.mkdir(parents=True)
            (tmp / "README.txt").write_text(f"Not drawn: dataset.captions ({captions}) is a real dataset.\n")
        print(f"shapes: skipped; dataset.captions ({captions}) is not the demo's, nothing drawn")
        return
    with atomic_path(config.out_dir, "shapes.out_dir") as tmp:
        scene = generate(config, tmp)
    counts = np.bincount([len(o) for o in scene.values()])
    print(f"shapes: {config.num_images} images of {config.image_size}px in {config.out_dir} "
          f"(objects per image: {dict((k, int(v)) for k, v in enumerate(counts) if v)}), 5 captions each")


if __name__ == "__main__":
    run(main, "shapes")
