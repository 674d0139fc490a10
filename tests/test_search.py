"""The search command: a photo folder indexed once (resumable, bad files listed), and ranked results
for a query over that index or over the dataset's own cached features."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.api import Captioner
from pipeline.commands import search
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.retrieval.photo_index import PhotoIndexError, open_index, update_index


@pytest.fixture
def photos(trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three demo images, a file that is not an image despite its name, and a text file."""
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    images = sorted((trained_project / "data/shapes/images").glob("*.png"))
    shutil.copy(images[0], folder / images[0].name)
    shutil.copy(images[1], folder / images[1].name)
    shutil.copy(images[2], folder / "more" / images[2].name)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("a text file")
    return folder


def summary(capsys: pytest.CaptureFixture) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out.strip().splitlines()[-1], captured.err


def test_index_encodes_each_photo_once(photos: Path, trained_project: Path, one_thread: None,
                                       capsys: pytest.CaptureFixture) -> None:
    assert search.main(["index", str(photos)]) == 0
    out, err = summary(capsys)
    assert out == ("index: 3 photos indexed (3 encoded, 3 captioned, 0 removed, 1 unreadable skipped, "
                   "1 other files ignored)")
    assert "broken.jpg" in err
    index = photos / ".caption-index"
    manifest = json.loads((index / "captions.json").read_text())
    names = ["img_00000.png", "img_00001.png", "more/img_00002.png"]
    assert sorted(manifest["captions"]) == names and list(manifest["skipped"]) == ["broken.jpg"]
    # the same encoder and preprocessing as the dataset's feature cache: the same features
    indexed, cached = FeatureStore(index / "features.h5"), FeatureStore(trained_project / "data/features/features.h5")
    for name in names:
        row = cached.index[Path(name).name]
        assert torch.allclose(indexed[indexed.index[name]].float(), cached[row].float(), atol=0.04)  # fp16 steps

    assert search.main(["index", str(photos)]) == 0  # nothing new
    assert summary(capsys)[0].startswith("index: 3 photos indexed (0 encoded, 0 captioned, 0 removed")
    shutil.copy(trained_project / "data/shapes/images/img_00003.png", photos / "new.png")
    (photos / "img_00000.png").unlink()
    assert search.main(["index", str(photos)]) == 0
    assert summary(capsys)[0].startswith("index: 3 photos indexed (1 encoded, 1 captioned, 1 removed")
    assert sorted(FeatureStore(index / "features.h5").names) == ["img_00001.png", "more/img_00002.png", "new.png"]


def test_an_interrupted_index_is_incomplete_and_resumes(photos: Path, trained_project: Path, one_thread: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    captioner = Captioner(trained_project / "data/train/best.pt", torch.device("cpu"))
    encode, calls = captioner.features, []

    def fail_second_batch(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(pixels)

    monkeypatch.setattr(captioner, "features", fail_second_batch)
    with pytest.raises(KeyboardInterrupt):
        update_index(captioner, photos, batch_size=2, show_progress=False)
    with pytest.raises(PhotoIndexError, match="not a photo index"):
        open_index(photos / ".caption-index")
    monkeypatch.setattr(captioner, "features", encode)
    report = update_index(captioner, photos, batch_size=2, show_progress=False)
    # the first batch (broken.jpg, img_00000.png) was done before the interruption: only the other two are encoded
    assert calls[0] == 1 and (report.photos, report.encoded, list(report.skipped)) == (3, 2, ["broken.jpg"])
    gallery = open_index(photos / ".caption-index")
    assert len(gallery) == 3 and all(path.is_file() for path in gallery.paths)


def test_search_prints_ranked_photos(photos: Path, trained_project: Path, one_thread: None,
                                     capsys: pytest.CaptureFixture) -> None:
    assert search.main(["index", str(photos)]) == 0
    capsys.readouterr()
    assert search.main(["a red circle", "--index", str(photos / ".caption-index"), "--top", "2"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == ["1", "2"]
    scores = [float(line[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    manifest = json.loads((photos / ".caption-index/captions.json").read_text())
    for _, _, path, caption in lines:
        name = Path(path).relative_to(photos.resolve()).as_posix()
        assert manifest["captions"][name] == caption

    # no --index: the dataset's own images, captioned once and cached
    assert search.main(["a red circle", "--top", "30", "--candidates", "0"]) == 0
    captured = capsys.readouterr()
    assert "captioning 30 images once" in captured.out
    lines = [line.split("\t") for line in captured.out.splitlines() if "\t" in line]
    assert len(lines) == 30 and len({line[2] for line in lines}) == 30
    assert np.all(np.diff([float(line[1]) for line in lines]) <= 0)
    cached = json.loads((trained_project / "data/retrieval/captions.json").read_text())["captions"]
    assert all(cached[Path(path).name] == caption for _, _, path, caption in lines)
    assert search.main(["a red circle"]) == 0
    assert "captioning" not in capsys.readouterr().out


def test_a_query_of_unknown_words_says_so_in_the_results(photos: Path, one_thread: None,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert search.main(["index", str(photos)]) == 0
    capsys.readouterr()
    assert search.main(["zebra xylophone", "--index", str(photos / ".caption-index")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# the model knows none of the words zebra, xylophone") and len(lines) == 1 + 3
    assert all(line.count("\t") == 3 for line in lines[1:])
    assert search.main(["a zebra", "--index", str(photos / ".caption-index")]) == 0
    captured = capsys.readouterr()
    assert not captured.out.startswith("#") and "never seen zebra" in captured.err


def test_bad_queries_and_missing_index_are_reported(photos: Path, capsys: pytest.CaptureFixture) -> None:
    assert search.main(["  ?! "]) == 2
    assert "no words" in capsys.readouterr().err
    assert search.main(["a red circle", "--index", str(photos)]) == 2
    assert "not a photo index" in capsys.readouterr().err


def test_an_empty_folder_makes_an_empty_index_that_says_so(photos: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert search.main(["index", str(empty)]) == 0
    assert summary(capsys)[0].startswith("index: 0 photos indexed (0 encoded")
    assert search.main(["a red circle", "--index", str(empty / ".caption-index")]) == 2
    assert "the index is empty" in capsys.readouterr().err


def test_deleted_photos_are_left_out_of_the_search_and_reported(photos: Path, one_thread: None,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert search.main(["index", str(photos)]) == 0
    (photos / "img_00000.png").unlink()
    capsys.readouterr()
    assert search.main(["a red circle", "--index", str(photos / ".caption-index"), "--top", "5"]) == 0
    captured = capsys.readouterr()
    assert f"1 of 3 indexed photos are no longer in {photos.resolve()} (first: img_00000.png)" in captured.err
    shown = [Path(line.split("\t")[2]) for line in captured.out.splitlines()]
    assert len(shown) == 2 and all(path.is_file() for path in shown)


def test_a_damaged_manifest_is_reported_and_indexing_starts_over(photos: Path, one_thread: None,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert search.main(["index", str(photos)]) == 0
    manifest = photos / ".caption-index/captions.json"
    for damage in ('{"photos": "', '{"files": []}'):
        manifest.write_text(damage)
        capsys.readouterr()
        assert search.main(["a red circle", "--index", str(photos / ".caption-index")]) == 2
        err = capsys.readouterr().err
        assert "captions.json is" in err and "run `caption-search index` on its folder again" in err
    # features.h5 names a photo that the (lost) manifest does not, and that photo is gone
    (photos / "img_00000.png").unlink()
    assert search.main(["index", str(photos)]) == 0
    out, err = summary(capsys)
    assert "encoding every photo again" in err and out.startswith("index: 2 photos indexed (2 encoded, 2 captioned")
    assert len(open_index(photos / ".caption-index")) == 2


def test_a_damaged_caption_cache_of_the_dataset_is_made_again(photos: Path, trained_project: Path, tmp_path: Path,
                                                              one_thread: None, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    from tests.conftest import write_params

    cache = tmp_path / "captions.json"
    monkeypatch.setenv("PIPELINE_PARAMS", str(write_params(tmp_path, {"retrieval": {"captions": str(cache)}},
                                                           tiny=True)))
    for damage in ('{"captions": {"img_00000.png": "a red', '{"captions": ["a red circle"]}'):
        cache.write_text(damage)
        assert search.main(["a red circle", "--top", "3"]) == 0
        captured = capsys.readouterr()
        assert f"{cache} is " in captured.out and "making it again" in captured.out
        assert "captioning 30 images once" in captured.out and len(captured.out.strip().splitlines()) == 5
        assert len(json.loads(cache.read_text())["captions"]) == 30


def test_search_over_the_dataset_refuses_features_of_another_encoder(trained_project: Path, tmp_path: Path,
                                                                    one_thread: None,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from pipeline.encoder.feature_cache import FeatureStore
    from tests.conftest import write_feature_cache, write_params

    monkeypatch.chdir(trained_project)
    store = FeatureStore(trained_project / "data/features/features.h5")
    cache = write_feature_cache(tmp_path / "features.h5", store.names, store.load().numpy(),
                                {**store.attrs, "image_size": 96, "grid": 3})
    monkeypatch.setenv("PIPELINE_PARAMS", str(write_params(tmp_path, {
        "encoder": {"cache": str(cache)}, "retrieval": {"captions": str(tmp_path / "captions.json")}}, tiny=True)))
    assert search.main(["a red circle", "--top", "3"]) != 0
    err = capsys.readouterr().err
    assert "features.h5 was made by another encoder than the checkpoint was trained on (image_size 96, not 64" in err
    errors = [line for line in err.strip().splitlines() if "encoder is untrained" not in line]  # the model's notice
    assert len(errors) == 1 and not (tmp_path / "captions.json").exists()
