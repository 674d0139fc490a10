"""Fault injection, bad inputs: every bad image or caption line ends as a counted drop or fix in
report.json, odd-but-good images decode to the right pixels, prepare's check and the encoder refuse
exactly the same files, symlink loops are cut, and failures are one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import corpus
import numpy as np
import pytest
import torch
import torchvision.io
import yaml
from PIL import Image

from pipeline.cli import DEBUG_ENV, run
from pipeline.config import PARAMS_ENV, DatasetConfig
from pipeline.datasets.report import DatasetError
from pipeline.encoder import images as image_module
from pipeline.encoder.images import ImageReadError, check_image, load_image, unreadable_images
from pipeline.evaluation.figures import draw_attention
from pipeline.files import list_files
from pipeline.stages.prepare import prepare
from tests.conftest import ROOT, params_with


def dataset_config(folder: Path, **overrides: Any) -> DatasetConfig:
    """Prepare's settings for a captions file and image folder under `folder` (and no split lists)."""
    (folder / "no_lists").mkdir(parents=True, exist_ok=True)
    values = {"captions": str(folder / "captions.txt"), "images": str(folder / "images"), "format": "auto",
              "split_dir": str(folder / "no_lists"), "split_ratios": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0,
              "captions_per_image": None, "max_dropped_fraction": 1.0, "check_images": True,
              "table": str(folder / "out" / "captions.csv"), "report": str(folder / "out" / "report.json")}
    return DatasetConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the corpus: images/ and captions.txt."""
    folder = tmp_path_factory.mktemp("corpus")
    corpus.write_images(folder / "images")
    corpus.write_captions(folder / "captions.txt")
    return folder


def within(seconds: float, function: Callable[..., Any], *args: Any) -> Any:
    """function(*args), failing the test when it has not returned after `seconds`."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(value=function(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} did not finish within {seconds} s"
    return result["value"]


# ----------------------------------------------------------------------------------------------
# prepare on the corpus


def test_prepare_counts_every_bad_input_and_keeps_the_good_ones(corpus_folder: Path) -> None:
    report = (prepared := prepare(dataset_config(corpus_folder))).report
    assert report["lines_read"] == 40  # 9 good images x 2, 10 odd lines, 6 bad images x 2
    counts = {reason: (entry["captions"], entry.get("images"))
              for reason, entry in report["dropped"].items() if entry["captions"]}
    assert counts == {"missing_image": (2, 1), "unreadable_image": (10, 5), "empty_caption": (2, None),
                      "duplicate_caption": (1, None)}
    errors = {example["image"]: example["error"] for example in report["dropped"]["unreadable_image"]["examples"]}
    assert set(errors) == set(corpus.UNREADABLE)
    assert "truncated" in errors["truncated.jpg"]
    assert "178997641 pixels" in errors["bomb.png"] and "144000000 pixels" in errors["huge.png"]
    assert report["dropped"]["missing_image"]["examples"][0]["image"] == corpus.MISSING
    assert {reason: entry["lines"] for reason, entry in report["fixed"].items() if entry["lines"]} == \
        {"non_utf8_line": 2, "crlf_line_end": 2}
    reported = report["reported"]
    assert (reported["long_caption"]["captions"], reported["long_caption"]["max_words"]) == (1, 100)
    assert reported["long_caption"]["examples"][0]["words"] == 300
    assert reported["duplicate_id"]["lines"] == 1 and reported["duplicate_id"]["examples"][0]["id"] == "plain_2.jpg#0"
    assert reported["wrong_caption_count"]["images"] == 0

    assert {image for image, _, _ in prepared.rows} == set(corpus.GOOD)
    assert len(prepared.rows) == 40 - 15
    captions = {caption for _, _, caption in prepared.rows}
    assert {"a dog outside a cafe", "he said hello to me", corpus.LONG_CAPTION,
            "the same id as an earlier line another caption"} <= captions
    assert not any("caf " in caption or caption.endswith("caf") for caption in captions)


def test_prepare_check_and_the_encoder_refuse_exactly_the_same_files(corpus_folder: Path, tmp_path: Path) -> None:
    folder = corpus_folder / "images"
    whole = (folder / corpus.PLAIN[0]).read_bytes()
    cut = tmp_path / "cut_then_end_marker.jpg"  # data cut short but closed by an end marker: both decode it
    cut.write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    paths = [*sorted(folder.iterdir()), folder / corpus.MISSING, cut]
    refused_by_check = {path for path in paths if unreadable_images(path.parent, [path.name])}
    refused_by_encoder = set()
    for path in paths:
        try:
            load_image(path, 32)
        except ImageReadError:
            refused_by_encoder.add(path)
    assert refused_by_check == refused_by_encoder == {folder / name for name in corpus.BAD_IMAGES}


def test_unreadable_images_gives_the_same_answer_from_a_process_pool(corpus_folder: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = corpus_folder / "images"
    names = sorted(path.name for path in folder.iterdir())
    serial = unreadable_images(folder, names, workers=1)
    monkeypatch.setattr(image_module, "PARALLEL_FROM", 1)
    assert unreadable_images(folder, names, workers=2) == serial
    assert set(serial) == set(corpus.UNREADABLE)


@pytest.mark.parametrize("name", sorted(corpus.ODD))
def test_load_image_reads_odd_images_right(corpus_folder: Path, name: str) -> None:
    left, right, tolerance = corpus.ODD[name]
    check_image(corpus_folder / "images" / name)
    image = load_image(corpus_folder / "images" / name, 32)  # (3, 32, 32) from 64 x 64
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    for columns, colour in ((slice(1, 14), left), (slice(18, 31), right)):
        difference = (image[:, :, columns].int() - torch.tensor(colour).view(3, 1, 1)).abs()
        assert int(difference.max()) <= tolerance, (name, colour, image[:, 16, columns].tolist())


def test_load_image_reads_a_1_by_1_image(corpus_folder: Path) -> None:
    image = load_image(corpus_folder / "images" / corpus.TINY, 32)
    assert torch.equal(image, torch.tensor(corpus.TINY_RGB, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))


def test_when_torchvision_refuses_or_warns_the_strict_pil_decoder_decides(corpus_folder: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = corpus_folder / "images"
    expected = {name: load_image(folder / name, 32) for name in corpus.GOOD}

    def refuses(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("Unsupported image file")

    def warns(*args: Any, **kwargs: Any) -> torch.Tensor:
        warnings.warn("Corrupt JPEG data: premature end of data segment", UserWarning, stacklevel=2)
        return torch.zeros(3, 4, 4, dtype=torch.uint8)  # what a decoder that only warns might hand back

    for decoder in (refuses, warns):
        monkeypatch.setattr(torchvision.io, "decode_image", decoder)
        for name in corpus.GOOD:
            got = load_image(folder / name, 32)
            assert (got.int() - expected[name].int()).abs().max() <= 2, (decoder.__name__, name)  # PIL's rounding
        with pytest.raises(ImageReadError, match="truncated"):
            load_image(folder / "truncated.jpg", 32)


def test_attention_figure_of_a_16_bit_png_shows_its_greys_not_white(corpus_folder: Path, tmp_path: Path) -> None:
    figure = tmp_path / "attention.png"
    draw_attention(corpus_folder / "images" / "grey16.png", ["a"], torch.full((1, 4), 0.25), figure)
    pixels = np.asarray(Image.open(figure).convert("RGB")).astype(int)  # (H, W, 3)
    for grey in (100, 200):  # the two halves of the image panel: 16-bit 25700 and 51400
        assert (np.abs(pixels - grey) <= 2).all(axis=2).sum() > 2000, grey


# ----------------------------------------------------------------------------------------------
# symbolic links


@pytest.mark.parametrize("loops", [1, 2])
def test_list_files_cuts_symlink_loops(tmp_path: Path, loops: int) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i:02d}.jpg").write_bytes(b"x")
    for n in range(loops):
        (folder / f"loop{n}").symlink_to(".", target_is_directory=True)  # a link to the folder itself
    assert within(20, list_files, folder) == {f"{i:02d}.jpg" for i in range(20)}


def test_list_files_follows_links_that_are_not_loops(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(b"x")
    (folder / "sub" / "b.jpg").write_bytes(b"x")
    (folder / "more").symlink_to(elsewhere, target_is_directory=True)
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop through a parent
    (folder / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")  # broken: not a file
    assert within(20, list_files, folder) == {"more/a.jpg", "sub/b.jpg"}


# ----------------------------------------------------------------------------------------------
# messages


@pytest.mark.parametrize("present", [["other.jpg"], []])
def test_prepare_without_any_of_the_images_says_the_pipeline_needs_them(tmp_path: Path, present: list[str]) -> None:
    (tmp_path / "images").mkdir()
    for name in present:
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / name)
    (tmp_path / "captions.txt").write_text("".join(f"{name}#0\tA caption .\n" for name in ("a.jpg", "b.jpg", "c.jpg")))
    with pytest.raises(DatasetError) as caught:
        prepare(dataset_config(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "max_dropped_fraction" not in message
    assert f"none of the 3 images named by {tmp_path / 'captions.txt'} (e.g. 'a.jpg') is under dataset.images " \
           f"({tmp_path / 'images'})" in message
    assert "the pipeline needs the images" in message
    assert ("it holds 1 files, e.g. 'other.jpg'" if present else "it holds no files") in message


def test_a_missing_image_folder_is_one_line_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "captions.txt").write_text("a.jpg#0\tA caption .\n")
    params = params_with({"dataset": {"captions": str(tmp_path / "captions.txt"), "images": str(tmp_path / "nowhere"),
                                       "table": str(tmp_path / "captions.csv"), "report": str(tmp_path / "report.json")}},
                         tiny=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    environment = {**os.environ, PARAMS_ENV: str(tmp_path / "params.yaml")}
    environment.pop(DEBUG_ENV, None)
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    expected = (f"prepare: dataset.images: image folder '{tmp_path / 'nowhere'}' not found; "
                f"fix the path in params.yaml (relative to the project root)")
    assert result.stderr.splitlines() == [expected]
    assert not (tmp_path / "captions.csv").exists()


def test_run_prints_expected_errors_in_one_line_and_keeps_tracebacks_for_bugs(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_data() -> None:
        raise DatasetError("no captions found in captions.txt")

    def bug() -> None:
        raise KeyError("split")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        run(bad_data, "prepare")
    assert exited.value.code == 2 and capsys.readouterr().err == "prepare: no captions found in captions.txt\n"
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit):
        run(bad_data, "prepare")
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("\nprepare: no captions found in captions.txt\n")
    with pytest.raises(KeyError):
        run(bug, "prepare")
    with pytest.raises(SystemExit) as exited:
        run(lambda: None, "prepare")
    assert exited.value.code == 0
