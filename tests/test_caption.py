"""The caption command: a caption per image, the attention figures, and images that cannot be read."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline.commands import caption
from tests.conftest import with_encoder_info


@pytest.fixture
def in_trained_project(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    return trained_project


def dataset_images(project: Path, count: int) -> list[Path]:
    return sorted((project / "data/shapes/images").glob("*.png"))[:count]


def test_captions_images_and_draws_attention(in_trained_project: Path, capsys: pytest.CaptureFixture) -> None:
    images = dataset_images(in_trained_project, 2)
    # a photo of another size and format goes through the same preprocessing
    other = in_trained_project / "other.jpg"
    Image.open(images[0]).resize((90, 70)).save(other)

    assert caption.main([str(images[0]), "--attention", "one.png"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0] == str(images[0]) and lines[0].count("\t") == 1
    assert lines[0].split("\t")[1]  # the trained model says something
    assert Image.open(in_trained_project / "one.png").size[0] > 0

    assert caption.main([str(images[1]), str(other), "--attention", "many.png", "--beam-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images[1]), str(other)]
    assert (in_trained_project / f"many_{images[1].stem}.png").is_file()
    assert (in_trained_project / "many_other.png").is_file()


def test_an_unreadable_image_among_good_ones(in_trained_project: Path, capsys: pytest.CaptureFixture) -> None:
    good = dataset_images(in_trained_project, 2)
    broken = in_trained_project / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert caption.main([str(good[0]), str(broken), str(good[1])]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(good[0]), str(good[1])]
    assert all(line.split("\t")[1] for line in lines)
    assert "broken.png" in captured.err and "1 of 3 images could not be read" in captured.err
    assert str(good[0]) not in captured.err


def test_same_file_names_in_two_folders_get_two_figures(in_trained_project: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    first, second = dataset_images(in_trained_project, 2)
    for folder, source in (("left", first), ("right", second)):
        (in_trained_project / "photos" / folder).mkdir(parents=True, exist_ok=True)
        Image.open(source).save(in_trained_project / "photos" / folder / "photo.png")
    images = ["photos/left/photo.png", "photos/right/photo.png"]
    assert caption.main([*images, "--attention", "figures/pair.png"]) == 0
    capsys.readouterr()
    figures = sorted(p.name for p in (in_trained_project / "figures").glob("*.png"))
    assert figures == ["pair_photos_left_photo.png", "pair_photos_right_photo.png"]


def test_missing_checkpoint_is_reported(in_trained_project: Path, capsys: pytest.CaptureFixture) -> None:
    assert caption.main(["x.png", "--checkpoint", "nowhere/best.pt"]) == 2
    assert "nowhere/best.pt: checkpoint not found" in capsys.readouterr().err


def test_missing_image_is_reported(in_trained_project: Path, capsys: pytest.CaptureFixture) -> None:
    assert caption.main(["does-not-exist.jpg"]) == 1
    assert "does-not-exist.jpg" in capsys.readouterr().err


def test_attention_paths() -> None:
    assert caption.attention_paths(Path("out.png"), [Path("a.jpg")]) == [Path("out.png")]
    assert caption.attention_paths(Path("d/out.png"), [Path("x/a.jpg"), Path("b.png")]) == \
        [Path("d/out_a.png"), Path("d/out_b.png")]
    twice = caption.attention_paths(Path("out.png"), [Path("x/a.jpg"), Path("y/a.jpg"), Path("x/a.jpg")])
    assert twice[1] == Path("out_y_a.png") and len(set(twice)) == 3  # the same file given twice: still two figures


def test_an_attention_folder_is_refused_and_kept(in_trained_project: Path, capsys: pytest.CaptureFixture) -> None:
    folder = in_trained_project / "figures"
    folder.mkdir(exist_ok=True)
    (folder / "keep.png").write_bytes(b"an earlier figure")
    with pytest.raises(SystemExit) as exited:
        caption.main([str(dataset_images(in_trained_project, 1)[0]), "--attention", str(folder)])
    assert exited.value.code == 2 and "is a folder; give a PNG file name" in capsys.readouterr().err
    assert (folder / "keep.png").read_bytes() == b"an earlier figure"


def test_a_damaged_checkpoint_is_one_line(in_trained_project: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    damaged = tmp_path / "best.pt"
    damaged.write_bytes((in_trained_project / "data/train/best.pt").read_bytes()[:5000])
    assert caption.main([str(dataset_images(in_trained_project, 1)[0]), "--checkpoint", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"caption: {damaged} cannot be loaded: it is cut off") and err.count("\n") == 1


def test_an_untrained_encoder_on_real_photos_is_said_once(in_trained_project: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    images = [str(path) for path in dataset_images(in_trained_project, 2)]
    for demo in (False, True):
        with_encoder_info(in_trained_project / "data/train/best.pt", tmp_path / "model.pt", weights="none",
                          demo_dataset=demo)
        assert caption.main([*images, "--checkpoint", str(tmp_path / "model.pt")]) == 0
        captured = capsys.readouterr()
        said = [line for line in captured.err.splitlines() if "the encoder is untrained" in line]
        assert len(said) == 1 and len(captured.out.splitlines()) == 2
        assert said[0].startswith("caption: the encoder is untrained (encoder.weights: none)")
        assert ("the built-in demo's model" in said[0]) == demo  # the demo's model says what it knows
