"""Reading images: the one decoding rule shared by prepare's check, the encoder and the figures.

    check_image(path)            decode cheaply (JPEG at 1/8 scale), raise ImageReadError if unreadable
    unreadable_images(folder, names) -> {name: error}   check_image over a dataset (prepare)
    read_rgb(path) -> (3, H, W) uint8   the full image, upright, 16-bit scaled to 8-bit (figures)
    load_image(path, size) -> (3, size, size) uint8     what the encoder sees
    pil_pixels(image), resize_pixels(pixels, size)      the same steps for an image already in memory

A file is unreadable when PIL cannot open it, it has more than MAX_PIXELS pixels (PIL's
decompression-bomb limit), or its data cannot be decoded to the end (a truncated JPEG: PIL's
`verify()` alone does not decode JPEG data, so the check decodes). `load_image` decodes with
torchvision and, when torchvision refuses or warns, lets the same strict PIL decoder decide, so
prepare drops exactly the files the encoder could not read. torch and torchvision are imported on
first decode, so that prepare, which only checks, starts without them.
"""
from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline.errors import InputError

if TYPE_CHECKING:
    import torch

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit (89,478,485 pixels); larger is refused

DRAFT_SCALE = 8  # the check decodes JPEGs at 1/8 of their size: every byte is still decoded, 64x fewer pixels

PARALLEL_FROM = 1000  # images; for fewer, starting a process pool costs more than it saves

# What PIL raises for a file that is not a readable image.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError,
                Image.DecompressionBombWarning)


class ImageReadError(InputError):
    """An image file cannot be read or decoded."""


@contextlib.contextmanager
def _strict_pil() -> Iterator[None]:
    """PIL raising on truncated data and on images over MAX_PIXELS (as errors, not warnings)."""
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def _open_checked(path: Path) -> Image.Image:
    """Open `path` with PIL (header only) and refuse images over MAX_PIXELS."""
    image = Image.open(path)
    width, height = image.size
    if MAX_PIXELS is not None and width * height > MAX_PIXELS:
        image.close()
        raise Image.DecompressionBombError(f"{width} x {height} = {width * height:,} pixels, more than the "
                                           f"{MAX_PIXELS:,} allowed (a decompression bomb, or far too large)")
    return image


def _error(path: Path, error: BaseException) -> ImageReadError:
    return ImageReadError(f"cannot read image {path}: {type(error).__name__}: {error}")


def check_image(path: str | Path) -> None:
    """Decode `path` cheaply (JPEG at 1/DRAFT_SCALE size, others in full); ImageReadError if it is unreadable."""
    path = Path(path)
    try:
        with _strict_pil(), _open_checked(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // DRAFT_SCALE), max(1, image.height // DRAFT_SCALE)))
            image.load()
    except IMAGE_ERRORS as error:
        raise _error(path, error) from error


def unreadable_images(folder: Path, images: Iterable[str], workers: int | None = None) -> dict[str, str]:
    """The images under `folder` that `check_image` refuses, with the error for each.

    From PARALLEL_FROM images on, the checks run in a pool of `workers` processes (default: one per
    CPU this process may use).
    """
    names = list(images)
    paths = [folder / name for name in names]
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(names) >= PARALLEL_FROM:
        with ProcessPoolExecutor(workers) as pool:
            errors = list(pool.map(_check_error, paths, chunksize=64))
    else:
        errors = [_check_error(path) for path in paths]
    return {name: error for name, error in zip(names, errors) if error is not None}


def _check_error(path: Path) -> str | None:
    """check_image's error for `path` as 'Type: message', or None when the image is readable."""
    try:
        check_image(path)
    except ImageReadError as error:
        return f"{type(error.__cause__).__name__}: {error.__cause__}"
    return None


def read_rgb(path: str | Path) -> torch.Tensor:
    """The whole image as RGB uint8 (3, H, W), EXIF orientation applied, 16-bit scaled (65535 -> 255).

    Decoding uses torchvision.io (JPEG, PNG, GIF: the first frame of an animation, as PIL reads it);
    when it refuses the file or warns about it, or for other formats (WebP among them: torchvision
    ignores its EXIF orientation), the strict PIL decoder decides. Raises ImageReadError naming the file.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    path = Path(path)
    try:
        with _strict_pil(), _open_checked(path) as header:  # the size limit, before any pixels are decoded
            header_format = header.format
    except IMAGE_ERRORS as error:
        raise _error(path, error) from error
    image = None
    if header_format in ("JPEG", "PNG", "GIF"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)  # (3, H, W)
            except RuntimeError:
                image = None
        if image is not None and image.ndim == 4:  # an animated GIF: (frames, 3, H, W)
            image = image[0]
        if any(not issubclass(warning.category, DeprecationWarning) for warning in caught):
            image = None  # a decoder warning (corrupt data): PIL decides, as in check_image
    if image is None:
        image = _read_with_pil(path)
    if image.dtype != torch.uint8:  # 16-bit PNG: (3, H, W) uint16
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def _read_with_pil(path: Path) -> torch.Tensor:
    """The strict PIL decode: (3, H, W) uint8, or uint16 for 16-bit greyscale."""
    try:
        with _strict_pil(), _open_checked(path) as opened:
            return pil_pixels(opened)
    except IMAGE_ERRORS as error:
        raise _error(path, error) from error


def pil_pixels(image: Image.Image) -> torch.Tensor:
    """A PIL image as the encoder reads it: upright (EXIF), RGB (3, H, W) uint8, or uint16 for 16-bit greyscale."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    upright = ImageOps.exif_transpose(image)
    if upright.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit greyscale: keep every bit
        grey = torch.from_numpy(np.asarray(upright, dtype=np.int32).clip(0, 65535).astype(np.uint16))
        return grey.expand(3, *grey.shape).contiguous()  # (3, H, W) uint16
    return TF.pil_to_tensor(upright.convert("RGB"))  # (3, H, W)


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) RGB -> (3, size, size) uint8: the WHOLE image resized with antialiasing (16-bit scaled)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    if pixels.dtype != torch.uint8:  # 16-bit: (3, H, W) uint16
        pixels = TF.to_dtype(pixels, torch.uint8, scale=True)
    return TF.resize(pixels, [size, size], antialias=True)  # (3, size, size)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read an image as RGB uint8 (3, size, size), the WHOLE image resized with antialiasing.

    No centre crop, unlike ImageNet evaluation: captions describe the whole picture, so nothing at
    its edges may be cut off, and the attention maps must align with the full image when they are
    drawn over it. Raises ImageReadError naming the file when it cannot be read (see read_rgb).
    """
    return resize_pixels(read_rgb(path), size)  # (3, size, size)


