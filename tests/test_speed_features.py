"""The faster encode path: folded BatchNorm, channels_last, bf16, and the batch decoding used on CUDA
(nvJPEG), exercised here with device='cpu' (the same code, libjpeg behind decode_jpeg)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.encoder.extraction import DONE, ImageFiles, extract, open_partial
from pipeline.encoder.feature_cache import FEATURES
from pipeline.encoder.images import load_image
from pipeline.encoder.resnet import build_encoder, encode, encoder_info, fold_batch_norms

CPU = torch.device("cpu")
SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def pixels(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def photo(path: Path, seed: int, orientation: int | None = None) -> Path:
    """A smooth picture (JPEG compresses it as it does photos), optionally with an EXIF orientation."""
    rng = np.random.default_rng(seed)
    height, width = 48 + 8 * seed, 80
    ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1.0, 3)
    array = (ramp + rng.integers(0, 30, (height, width, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    if orientation is None:
        image.save(path, quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, quality=90, exif=exif)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for seed in range(4):
        photo(root / f"plain{seed}.jpg", seed)
    photo(root / "rotated.jpg", 5, orientation=6)  # must be turned: decoded on the CPU, with load_image
    Image.fromarray(np.full((30, 40, 3), 90, dtype=np.uint8)).save(root / "flat.png")
    Image.open(root / "plain3.jpg").convert("CMYK").save(root / "cmyk.jpg", quality=90)  # decoded on the CPU too
    good = (root / "plain0.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[:len(good) // 3])  # headers fine, the scan cut short
    return root


def test_folding_batch_norms_keeps_the_function() -> None:
    plain, folded = build_encoder("none"), build_encoder("none")
    fold_batch_norms(folded.body)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in plain.modules()) == 53
    images = pixels(2)
    with torch.inference_mode():
        expected, got = plain(images), folded(images)
    assert float((got - expected).norm() / expected.norm()) < 1e-5
    before = [parameter.clone() for parameter in folded.parameters()]
    fold_batch_norms(folded.body)  # again: nothing left to fold
    assert all(torch.equal(a, b) for a, b in zip(before, folded.parameters(), strict=True))


def test_bf16_features_stay_close_to_fp32() -> None:
    images = pixels(4, seed=1)
    fp32 = encode(build_encoder("none").to_device(CPU, "fp32"), images, CPU, torch.float32, "fp32")
    bf16 = encode(build_encoder("none").to_device(CPU, "bf16"), images, CPU, torch.float32, "bf16")
    error = float((bf16 - fp32).norm() / fp32.norm())
    assert 0 < error < 0.03, error  # bf16 keeps 8 bits of mantissa: about 1% here, never exact


def test_batch_decoding_gives_the_pixels_of_load_image(folder: Path) -> None:
    names = ["plain0.jpg", "rotated.jpg", "plain1.jpg", "flat.png", "plain2.jpg", "cmyk.jpg"]
    files = ImageFiles([folder / name for name in names], SIZE, raw_jpegs=True)
    items = [files[row] for row in range(len(names))]
    # plain JPEGs travel as bytes, to be decoded together; the rotated one, the PNG and the CMYK come decoded
    assert [bool(item.raw.numel()) for item in items] == [True, False, True, False, True, False]
    batch = files.collate(items)
    decoded, errors = files.to_device(batch, CPU)
    assert errors == [""] * len(names)
    for row, name in enumerate(names):
        assert torch.equal(decoded[row], load_image(folder / name, SIZE)), name


def test_a_jpeg_that_cannot_be_decoded_is_named_and_its_batch_mates_kept(folder: Path) -> None:
    names = ["plain3.jpg", "broken.jpg", "plain1.jpg"]
    files = ImageFiles([folder / name for name in names], SIZE, raw_jpegs=True)
    decoded, errors = files.to_device(files.collate([files[row] for row in range(3)]), CPU)
    assert errors[0] == errors[2] == "" and str(folder / "broken.jpg") in errors[1]
    assert torch.equal(decoded[0], load_image(folder / "plain3.jpg", SIZE))
    assert torch.equal(decoded[2], load_image(folder / "plain1.jpg", SIZE))


def test_extracting_with_batch_decoding_stores_the_same_features(folder: Path, tmp_path: Path) -> None:
    names = ["flat.png", "plain0.jpg", "plain1.jpg", "plain2.jpg", "rotated.jpg"]
    encoder = build_encoder("none").to_device(CPU, "fp32")
    stored = {}
    for raw_jpegs in (False, True):
        attrs = {**encoder_info("none", SIZE, "fp32"), "dtype": "float32"}
        with open_partial(tmp_path / f"{raw_jpegs}.partial", names, attrs, 4, "float32") as store:
            files = ImageFiles([folder / name for name in names], SIZE, raw_jpegs=raw_jpegs)
            assert extract(encoder, files, store, 2, 0, CPU, show_progress=False) == len(names)
        with h5py.File(tmp_path / f"{raw_jpegs}.partial", "r") as file:
            assert file[DONE][()].all()
            stored[raw_jpegs] = file[FEATURES][()]
    expected = encode(encoder, torch.stack([load_image(folder / name, SIZE) for name in names]), CPU)
    np.testing.assert_array_equal(stored[True], stored[False])
    # batches of 2 against one of 5: oneDNN blocks the sums differently, so equal up to rounding
    assert np.linalg.norm(stored[False] - expected.numpy()) / np.linalg.norm(expected.numpy()) < 1e-5
