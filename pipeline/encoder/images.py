"""Reading images: the one decoder used by prepare's check and by the encoder, and folder listing.

`load_image` is what the encoder sees; `unreadable_images` runs the same decode over a dataset,
so prepare drops exactly the files the encoder could not read.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

# What PIL raises for a file that is not a readable image.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


class ImageReadError(RuntimeError):
    """An image file cannot be read or decoded."""


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read an image as RGB uint8 (3, size, size), the WHOLE image resized with antialiasing.

    No centre crop, unlike ImageNet evaluation: captions describe the whole picture, so nothing at
    its edges may be cut off, and the attention maps must align with the full image when they are
    drawn over it. EXIF orientation is applied, so the pixels are the way people saw the photo.
    Decoding uses torchvision.io (JPEG, PNG, WebP, GIF) and falls back to PIL for other formats.
    Raises ImageReadError naming the file when it cannot be read.
    """
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)  # (3, H, W)
    except RuntimeError:
        image = _load_with_pil(Path(path))
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return TF.resize(image, [size, size], antialias=True)  # (3, size, size)


def _load_with_pil(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as pil_image:
            rgb = ImageOps.exif_transpose(pil_image).convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    return TF.pil_to_tensor(rgb)  # (3, H, W)


def list_images(folder: Path) -> set[str]:
    """Every file under `folder`, as a '/'-separated path relative to it (one directory walk)."""
    top = str(folder)
    names: set[str] = set()
    for root, _, files in os.walk(top, followlinks=True):
        relative = os.path.relpath(root, top).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        names.update(prefix + name for name in files)
    return names

def unreadable_images(folder: Path, images: Iterable[str]) -> dict[str, str]:
    """Images that PIL cannot open and verify, with the error for each."""
    errors = {}
    for image in images:
        try:
            with Image.open(folder / image) as opened:
                opened.verify()
        except IMAGE_ERRORS as error:
            errors[image] = f"{type(error).__name__}: {error}"
    return errors
