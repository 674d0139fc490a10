"""Reading images: the one decoder that prepare's check and the encoder share, and folder listing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.encoder.images import ImageReadError, load_image, read_rgb, unreadable_images
from pipeline.files import list_files


def test_load_image_resizes_the_whole_image_without_cropping(tmp_path: Path) -> None:
    # a wide image: a centre crop would cut off the green stripe at its left edge
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, :10] = (0, 255, 0)
    array[:, 10:] = (255, 0, 0)
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert (image[1, :, :6] > 200).all() and (image[0, :, :6] < 50).all()  # stripe kept, 10/80 of the width
    assert (image[0, :, 10:] > 200).all()


def test_pil_fallback_matches_torchvision_decoding(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "image.png")
    Image.fromarray(array).save(tmp_path / "image.bmp")  # a format torchvision.io does not decode
    Image.fromarray(array).convert("L").save(tmp_path / "grey.png")
    assert torch.equal(load_image(tmp_path / "image.png", 32), load_image(tmp_path / "image.bmp", 32))
    assert load_image(tmp_path / "grey.png", 32).shape == (3, 32, 32)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        load_image(path, 64)
    with pytest.raises(ImageReadError, match="absent.png"):
        load_image(tmp_path / "absent.png", 64)


def test_list_files_walks_sub_folders(tmp_path: Path) -> None:
    for name in ("a.png", "sub/b.jpg", "sub/deeper/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_files(tmp_path) == {"a.png", "sub/b.jpg", "sub/deeper/c.png"}


def test_unreadable_images_names_each_bad_file(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    errors = unreadable_images(tmp_path, ["good.png", "bad.png", "absent.png"])
    assert sorted(errors) == ["absent.png", "bad.png"]
    assert errors["absent.png"].startswith("FileNotFoundError")


def test_an_animated_gif_is_read_as_its_first_frame(tmp_path: Path) -> None:
    red, blue = (Image.new("RGB", (40, 20), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    red.save(tmp_path / "animated.gif", save_all=True, append_images=[blue], duration=100)
    image = load_image(tmp_path / "animated.gif", 16)
    assert image.shape == (3, 16, 16)
    assert image[0].min() > 200 and image[2].max() < 50  # red: the first frame, as prepare's check reads it


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])
def test_exif_orientation_is_applied_in_every_format(tmp_path: Path, suffix: str) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # stored wide: red left half, blue right half
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: tall, red on top
    Image.fromarray(array).save(tmp_path / f"turned.{suffix}", exif=exif.tobytes(), quality=95)
    image = read_rgb(tmp_path / f"turned.{suffix}")
    assert image.shape == (3, 40, 20)
    assert image[0, 5].min() > 200 and image[2, 35].min() > 200
