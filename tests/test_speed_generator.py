"""The Flickr30k-sized synthetic dataset of benchmarks/flickr30k_like.py, at a tiny size: what it writes
is what prepare reads, with Flickr30k's image sizes and caption statistics."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.flickr30k_like import SIZES, SUBJECT_COLOURS, captions, draw_image, generate, subject, words
from pipeline.config import DatasetConfig
from pipeline.stages.prepare import prepare


def test_tiny_set_is_what_prepare_reads(tmp_path: Path) -> None:
    token = generate(tmp_path, num_images=50, workers=2)
    images = sorted((tmp_path / "images").iterdir())
    assert len(images) == 50
    for path in images[:10]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size in SIZES
            pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std() > 10  # a picture, not a flat fill
    (tmp_path / "no_lists").mkdir()
    config = DatasetConfig(captions=str(token), images=str(tmp_path / "images"), format="auto",
                           split_dir=str(tmp_path / "no_lists"),
                           split_ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=0, captions_per_image=5,
                           max_dropped_fraction=0.0, check_images=True, table=str(tmp_path / "captions.csv"),
                           report=str(tmp_path / "report.json"))
    prepared = prepare(config)
    assert prepared.report["format"] == "flickr_token"
    per_image = Counter(image for image, _, _ in prepared.rows)
    assert len(per_image) == 50 and set(per_image.values()) == {5}


def test_captions_have_flickr30k_lengths_and_vocabulary() -> None:
    lines = captions(2000, seed=0)
    assert len(lines) == 10_000 and lines[0].startswith("1000092795.jpg#0\t")
    lengths = np.array([len(line.split("\t")[1].split()) - 1 for line in lines])  # the final " ." is no word
    assert 11.5 < lengths.mean() < 12.5 and 20 <= np.percentile(lengths, 95) <= 24 and lengths.min() >= 3
    assert len(set(words())) == 20_000
    counts = Counter(word.lower() for line in lines for word in line.split("\t")[1].split()[:-1])
    top = [word for word, _ in counts.most_common(3)]
    assert top == ["a", "the", "of"]  # Zipf: the most frequent ranks dominate


def test_every_caption_names_the_shape_drawn_on_top() -> None:
    lines = captions(40, seed=3)
    subjects = [subject(i, 3) for i in range(40)]
    assert len(set(subjects)) > 8  # the subjects vary between pictures
    for i, line in enumerate(lines):
        colour, kind = subjects[i // 5]
        assert f" {colour} {kind} " in f" {line.split(chr(9))[1].lower()} "
    for index in range(6):  # the subject's colour covers a good share of the picture
        colour, _ = subject(index, 3)
        pixels = np.asarray(draw_image(index, 3), dtype=np.int16)
        near = (np.abs(pixels - np.array(SUBJECT_COLOURS[colour])) <= 45).all(axis=2)
        assert near.mean() > 0.03, (index, colour, near.mean())


def test_subject_score_counts_captions_that_name_their_pictures_subject() -> None:
    from benchmarks.subject_score import subject_scores

    names = [f"{1_000_092_795 + i}.jpg" for i in range(4)]
    subjects = [subject(i, 0) for i in range(4)]
    other = next((c, k) for c in SUBJECT_COLOURS for k in ("circle", "square", "triangle") if (c, k) not in subjects)
    predictions = [{"image": names[0], "caption": f"a a {' '.join(subjects[0])} a"},  # right
                   {"image": names[1], "caption": f"{' '.join(subjects[1])}"},  # right
                   {"image": names[2], "caption": f"a {' '.join(other)} a"},  # names another subject
                   {"image": names[3], "caption": f"a a {subjects[3][0]} a"}]  # the colour alone names nothing
    scores = subject_scores(predictions, "caption")
    assert scores["naming_the_subject"] == 0.5
    assert scores["distinct_subjects_named"] == len({subjects[0], subjects[1], other})
    assert scores["distinct_captions"] == 4
