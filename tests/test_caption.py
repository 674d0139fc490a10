"""The caption command: a caption per image and the attention figures."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline import caption


def test_captions_images_and_draws_attention(trained_project: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    images = sorted((trained_project / "data/shapes/images").glob("*.png"))[:2]
    # a photo of another size and format goes through the same preprocessing
    other = trained_project / "other.jpg"
    Image.open(images[0]).resize((90, 70)).save(other)

    assert caption.main([str(images[0]), "--attention", "one.png"]) == 0
    lines = capsys.readouterr().out.splitlines()  # a caption may be empty: keep the tab
    assert len(lines) == 1 and lines[0].split("\t")[0] == str(images[0]) and lines[0].count("\t") == 1
    assert Image.open(trained_project / "one.png").size[0] > 0

    assert caption.main([str(images[1]), str(other), "--attention", "many.png", "--beam-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images[1]), str(other)]
    assert (trained_project / f"many_{images[1].stem}.png").is_file()
    assert (trained_project / "many_other.png").is_file()


def test_missing_image_is_reported(trained_project: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(trained_project)
    assert caption.main(["does-not-exist.jpg"]) == 2
    assert "does-not-exist.jpg" in capsys.readouterr().err


def test_attention_paths() -> None:
    assert caption.attention_paths(Path("out.png"), [Path("a.jpg")]) == [Path("out.png")]
    assert caption.attention_paths(Path("d/out.png"), [Path("x/a.jpg"), Path("b.png")]) == \
        [Path("d/out_a.png"), Path("d/out_b.png")]
