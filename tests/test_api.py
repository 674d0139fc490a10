"""The Python API: one Captioner captions files, PIL images and tensors alike, in batches; indexes a folder
and searches it; and the defaults come from the project's params.yaml or from the package's copy."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from PIL import Image

from pipeline import runtime
from pipeline.api import Captioner, SearchResults
from pipeline.defaults import command_defaults, package_defaults, package_params
from pipeline.encoder.images import load_image
from pipeline.errors import InputError
from tests.conftest import ROOT, with_encoder_info, write_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def captioner(trained_project: Path) -> Captioner:
    return Captioner(trained_project / "data/train/best.pt", "cpu")


def images(project: Path, count: int) -> list[Path]:
    return sorted((project / "data/shapes/images").glob("*.png"))[:count]


def test_files_pil_images_and_tensors_get_the_same_captions(captioner: Captioner, trained_project: Path) -> None:
    paths = images(trained_project, 3)
    from_files = captioner.caption(paths)
    pil = [Image.open(path) for path in paths]
    tensors = torch.stack([load_image(path, 64) for path in paths])  # (3, 3, 64, 64) uint8, one batch
    large = torch.nn.functional.interpolate(tensors.float(), size=(128, 96)).round().to(torch.uint8)
    assert [r.text for r in captioner.caption(pil, batch_size=2)] == [r.text for r in from_files]
    assert [r.text for r in captioner.caption(tensors)] == [r.text for r in from_files]
    assert len(captioner.caption(large)) == 3  # any size: resized to the encoder's input like a file
    assert captioner.caption(paths[0])[0].text == from_files[0].text  # one image, not a list
    for result in from_files:
        assert result.error is None and result.text == " ".join(result.words) and result.words
        grid = 64 // 32
        assert result.attention.shape == (len(result.words), grid, grid)  # (L, G, G)
        torch.testing.assert_close(result.attention.sum((1, 2)), torch.ones(len(result.words)))
    assert [r.source for r in captioner.caption(pil)] == ["image 0", "image 1", "image 2"]


def test_unreadable_files_get_their_error_and_the_others_a_caption(captioner: Captioner, trained_project: Path,
                                                                   tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = images(trained_project, 1)[0]
    results = captioner.caption([broken, good, tmp_path / "missing.png"])
    assert [r.text is None for r in results] == [True, False, True]
    assert "broken.jpg" in results[0].error and "missing.png" in results[2].error
    assert results[1].text == captioner.caption([good])[0].text
    with pytest.raises(InputError, match="give a file path, a PIL image or a uint8 tensor"):
        captioner.caption([torch.zeros(3, 8, 8)])  # float pixels


def test_index_and_search_a_folder(captioner: Captioner, trained_project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images(trained_project, 4):
        shutil.copy(path, folder / path.name)
    library = captioner.index(folder)
    assert len(library) == 4 and library.report.encoded == 4
    assert (folder / ".caption-index/features.h5").is_file()
    found = captioner.open_index(folder / ".caption-index").search("a red circle", top=2)
    assert isinstance(found, SearchResults) and len(found.hits) == 2 and found.notice is None
    assert found.hits[0].score >= found.hits[1].score and found.hits[0].path.parent == folder.resolve()
    assert captioner.index(folder).report.encoded == 0  # nothing new


def test_a_query_of_unknown_words_says_its_order_means_nothing(captioner: Captioner, trained_project: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images(trained_project, 3):
        shutil.copy(path, folder / path.name)
    library = captioner.index(folder)
    unknown = library.search("zebra xylophone", top=3)
    assert unknown.unknown == ["zebra", "xylophone"] and len(unknown.hits) == 3
    assert "knows none of the words zebra, xylophone" in unknown.notice and "say nothing about the query" in unknown.notice
    partly = library.search("a zebra circle", top=3)
    assert partly.unknown == ["zebra"] and partly.notice is None


def test_untrained_encoder_notice_follows_the_checkpoint(trained_project: Path, tmp_path: Path) -> None:
    for demo in (True, False):
        checkpoint = with_encoder_info(trained_project / "data/train/best.pt", tmp_path / f"demo_{demo}.pt",
                                       demo_dataset=demo)
        notice = Captioner(checkpoint, "cpu").notice
        # the demo's model says what it knows: the photos given to it are not the demo's shapes
        assert notice.startswith("the encoder is untrained") and ("the built-in demo's model" in notice) == demo


def test_bf16_features_are_encoded_in_fp32_where_the_cpu_would_emulate_bf16(
        trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # features made under bf16 elsewhere
    checkpoint = with_encoder_info(trained_project / "data/train/best.pt", tmp_path / "bf16.pt", precision="bf16")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert Captioner(checkpoint, "cpu").precision == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    captioner = Captioner(checkpoint, "cpu")
    assert captioner.precision == "fp32"
    pixels = torch.stack([load_image(path, 64) for path in images(trained_project, 2)])
    features = captioner.features(pixels)
    assert features.dtype == torch.float32
    # the encoder ran without bf16 autocast: its features are those of the fp32 checkpoint's Captioner
    torch.testing.assert_close(features, Captioner(trained_project / "data/train/best.pt", "cpu").features(pixels),
                               rtol=0, atol=0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images(trained_project, 2):
        shutil.copy(path, folder / path.name)
    captioner.index(folder)
    with h5py.File(folder / ".caption-index/features.h5", "r") as file:
        assert file.attrs["precision"] == "fp32"  # what the photos were encoded in, not the checkpoint's bf16


def test_decoding_options_default_to_the_packaged_params(trained_project: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    repository = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert package_params() == ROOT / "params.yaml"  # a clone: the repository's own file, no second copy
    defaults = package_defaults()
    assert defaults.checkpoint is None and defaults.decoding.beam_size == repository["evaluate"]["beam_size"]
    assert defaults.ranking.candidates == repository["retrieval"]["candidates"]
    # the API ignores the folder's params.yaml; the commands take it
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"evaluate": {"beam_size": 7}, "retrieval": {"candidates": 3},
                            "scst": {"checkpoint": "models/best.pt"}})  # the final model
    captioner = Captioner(trained_project / "data/train/best.pt", "cpu")
    assert captioner.options.beam_size == repository["evaluate"]["beam_size"]
    assert Captioner(trained_project / "data/train/best.pt", "cpu", beam_size=2).options.beam_size == 2
    project = command_defaults()
    assert (project.checkpoint, project.decoding.beam_size, project.ranking.candidates) == (Path("models/best.pt"), 7, 3)
    (tmp_path / "params.yaml").unlink()
    assert command_defaults() == package_defaults()
