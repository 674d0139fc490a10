"""What travels from the DataLoader workers to the encoder, and JPEG decoding on the GPU.

Decoding runs in DataLoader workers (one torch thread each, so they do not fight the encoder's
threads for cores) with `load_image`, the decoder every other part of the project uses (see
`ImageFiles` in pipeline/encoder/extraction.py). On CUDA, JPEGs can instead be decoded on the GPU
with nvJPEG, a batch at a time (`torchvision.io.decode_jpeg` with a list and device='cuda'): the
workers then only read the files' bytes. It is on by default on
CUDA, where CPU decoding of large photos is what limits the stage; PIPELINE_GPU_DECODE=0 turns it
off. Files that are not plain JPEGs (other formats, CMYK, or an EXIF rotation, which nvJPEG does not apply)
are still decoded in the workers. nvJPEG's pixels differ from libjpeg's by a level or so here and
there, so the cache records which decoder made them (attribute `image_decoder`).

This GPU path has been exercised here only with device='cpu' (the same code, CPU libjpeg behind
`decode_jpeg`); it has not been run on a GPU yet.
"""
from __future__ import annotations

import io
import logging
import os
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as TF

from pipeline.encoder.images import IMAGE_ERRORS

logger = logging.getLogger(__name__)

GPU_DECODE_ENV = "PIPELINE_GPU_DECODE"  # 0 turns nvJPEG decoding off on CUDA
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112  # EXIF tag; 1 is upright
NO_BYTES = torch.empty(0, dtype=torch.uint8)


class Item(NamedTuple):
    """One image as a worker returns it: decoded pixels (3, S, S) or the raw JPEG bytes (L,) to decode
    on the GPU (the other one empty; both when unreadable), and an error message ('' when readable)."""

    row: int
    pixels: torch.Tensor
    raw: torch.Tensor
    error: str


class Batch(NamedTuple):
    """Items collated: rows (B,), pixels (B, 3, S, S) uint8 (zeros where raw bytes or an error
    stand), the positions of the JPEGs still to decode, their bytes end to end (one tensor, so a
    worker hands over one shared-memory block per batch, not one per image) and where each one
    ends, and the errors."""

    rows: torch.Tensor
    pixels: torch.Tensor
    raw_positions: list[int]
    raw: torch.Tensor
    raw_ends: list[int]
    errors: list[str]


def gpu_decode_wanted(device: torch.device) -> bool:
    """Whether JPEGs are decoded on the GPU: on CUDA, unless PIPELINE_GPU_DECODE=0, and if nvJPEG works."""
    if device.type != "cuda" or os.environ.get(GPU_DECODE_ENV, "1") == "0":
        return False
    probe = encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))  # (L,) a tiny JPEG
    try:
        decode_jpeg([probe], mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:  # torchvision built without nvJPEG
        logger.info(f"features: nvJPEG is not available ({str(error).splitlines()[0]}); decoding on the CPU")
        return False
    return True


def plain_jpeg(data: bytes) -> bool:
    """A colour or grey JPEG that needs no EXIF rotation: what nvJPEG decodes to the same picture as
    `load_image` (CMYK and YCCK JPEGs are decoded in the workers: only the CPU decoder's CMYK -> RGB
    conversion is tested against PIL's)."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the headers only
            return image.mode in ("RGB", "L") and image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except IMAGE_ERRORS:
        return False  # let load_image report it


def decode_jpegs(raw: torch.Tensor, ends: list[int], size: int, device: torch.device) -> list[torch.Tensor | str]:
    """JPEGs given end to end as bytes `raw` (L,) ending at `ends`: each decoded on `device` (nvJPEG
    on CUDA, all in one call) and resized to (3, size, size) uint8, or the reason it cannot be."""
    parts = list(raw.tensor_split(ends[:-1]))  # B' x (L_i,)
    try:
        images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=device)  # B' x (3, H, W)
    except RuntimeError:  # one bad file fails the whole call: decode each on the CPU to find it
        images = [decode_one(part) for part in parts]
    return [image if isinstance(image, str) else TF.resize(image.to(device), [size, size], antialias=True)
            for image in images]


def decode_one(raw: torch.Tensor) -> torch.Tensor | str:
    """One JPEG decoded on the CPU (3, H, W), or the reason it cannot be."""
    try:
        return decode_jpeg(raw, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        return str(error).splitlines()[0]
