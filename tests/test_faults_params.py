"""Params whose output the next stage cannot use stop their stage in one line naming the key and what
would work: a vocab.min_count that keeps no word, a pretrained embeddings file that covers no
vocabulary word, an evaluate.split that prepare leaves empty, a model.max_caption_length that cuts
most training captions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gensim.models import KeyedVectors
from PIL import Image

from pipeline.cli import exit_status
from pipeline.config import PARAMS_ENV
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import write_captions
from pipeline.errors import EXIT_CODE, ConfigError
from pipeline.stages import embeddings, prepare, train, vocab
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from pipeline.training import data
from pipeline.training.data import captions_cut
from tests.conftest import write_params

TRAIN_CAPTIONS = ["a red circle", "a red circle on the left", "a blue square", "a green triangle"]


def captions_project(folder: Path, changes: dict[str, dict[str, object]]) -> Path:
    """params.yaml with paths into `folder` (and `changes`), and a prepared captions table; returns params.yaml."""
    table = folder / "prepared" / "captions.csv"
    table.parent.mkdir(parents=True)
    write_captions(table, [(f"{i}.png", "train", caption) for i, caption in enumerate(TRAIN_CAPTIONS)]
                   + [("9.png", "val", "a red square")])
    vocab_path = folder / "vocab" / "vocab.json"
    return write_params(folder, {"dataset": {"table": str(table)},
                                 "vocab": {"path": str(vocab_path), **changes.get("vocab", {})},
                                 "embeddings": {"matrix": str(folder / "embeddings" / "embeddings.npy"),
                                                "metrics": str(folder / "embeddings" / "metrics.json"),
                                                **changes.get("embeddings", {})}})


def test_a_min_count_that_keeps_no_word_stops_vocab_naming_the_largest_that_keeps_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(captions_project(tmp_path, {"vocab": {"min_count": 100_000}})))
    assert exit_status(vocab.main, "vocab") == EXIT_CODE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vocab: vocab.min_count is 100,000 but no training word occurs that often (the most frequent, "
                   "'a', occurs 4 times): the vocabulary would hold only the special tokens and the model could say "
                   "nothing; set vocab.min_count to at most 4"]
    assert not (tmp_path / "vocab").exists()
    monkeypatch.setenv(PARAMS_ENV, str(captions_project(tmp_path / "again", {"vocab": {"min_count": 4}})))
    vocab.main()  # the count it names keeps a word
    assert Vocabulary.from_json(tmp_path / "again" / "vocab" / "vocab.json").words == (*SPECIAL_TOKENS, "a")


def test_a_pretrained_file_that_covers_no_vocabulary_word_stops_embeddings(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = KeyedVectors(vector_size=300)  # the repository's embeddings.dim
    vectors.add_vectors(["Hund", "Katze", "rot"], np.random.default_rng(0).normal(size=(3, 300)).astype(np.float32))
    pretrained = tmp_path / "german.txt"
    vectors.save_word2vec_format(str(pretrained), binary=False)
    monkeypatch.setenv(PARAMS_ENV, str(captions_project(tmp_path, {"embeddings": {"pretrained": str(pretrained)}})))
    vocab.main()
    with pytest.raises(ConfigError, match=rf"^{pretrained}: none of the 10 vocabulary words \(e\.g\. 'a', 'circle', "
                                          r"'red'\) has a vector there .*'Hund', 'Katze', 'rot'.*"
                                          r"give embeddings.pretrained .* or null"):
        embeddings.main()
    assert not (tmp_path / "embeddings").exists()
    vectors.add_vectors(["red"], np.ones((1, 300), dtype=np.float32))  # one word covered: a matrix is made
    vectors.save_word2vec_format(str(pretrained), binary=False)
    embeddings.main()
    assert np.load(tmp_path / "embeddings" / "embeddings.npy").shape == (len(SPECIAL_TOKENS) + 10, 300)


def write_dataset(folder: Path) -> None:
    """Ten 8-pixel images with two captions each, in the CSV format."""
    (folder / "images").mkdir()
    lines = []
    for i in range(10):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "images" / f"{i}.png")
        lines += [f"{i}.png,a red square number {i}", f"{i}.png,a square that is red {i}"]
    (folder / "captions.csv").write_text("image,caption\n" + "\n".join(lines) + "\n", encoding="utf-8")


def prepare_params(folder: Path, split_ratios: dict[str, float], evaluate_split: str) -> Path:
    """params.yaml whose prepare reads write_dataset's files; returns it."""
    return write_params(folder, {
        "dataset": {"captions": str(folder / "captions.csv"), "images": str(folder / "images"),
                    "split_ratios": split_ratios, "captions_per_image": 2,
                    "table": str(folder / "prepared" / "captions.csv"),
                    "report": str(folder / "prepared" / "report.json")},
        "evaluate": {"split": evaluate_split}})


def test_prepare_stops_when_the_evaluated_split_is_left_without_captions(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path)
    no_test = {"train": 0.8, "val": 0.2, "test": 0.0}
    monkeypatch.setenv(PARAMS_ENV, str(prepare_params(tmp_path, no_test, "test")))
    with pytest.raises(DatasetError, match=r"prepare left the test split without captions \(images per split: "
                                           r"train 8, val 2, test 0\) but evaluate.split is test: .* or set "
                                           r"evaluate.split to val. Nothing was written."):
        prepare.main()
    assert not (tmp_path / "prepared").exists()
    prepare_params(tmp_path, no_test, "val")
    prepare.main()  # evaluated on val: nothing is missing
    assert set(pd.read_csv(tmp_path / "prepared" / "captions.csv")["split"]) == {"train", "val"}


def test_captions_cut_counts_the_longer_captions_and_refuses_to_cut_most() -> None:
    captions = pd.Series(["a b c", "a b", "a b c d", "a", "a b c d e f"])  # 3, 2, 4, 1, 6 words
    assert captions_cut(captions, 6) == 0
    assert captions_cut(captions, 3) == 2  # 4 and 6 words: cut, but most fit
    with pytest.raises(ConfigError, match=r"model.max_caption_length is 2 but 3 of 5 training captions are longer .* "
                                          r"set it to at least 6 \(95% of the captions fit\)"):
        captions_cut(captions, 2)


def test_train_refuses_a_caption_length_that_cuts_most_captions_before_loading_features(
        tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tiny_project)
    out = tmp_path / "train"
    monkeypatch.setenv(PARAMS_ENV, str(write_params(tmp_path, {
        "model": {"max_caption_length": 2},
        "train": {"checkpoint": str(out / "best.pt"), "last_checkpoint": str(out / "last.pt"),
                  "metrics_dir": str(out / "metrics"), "log_dir": str(out / "tensorboard")}}, tiny=True)))
    monkeypatch.setattr(data, "FeatureMatrix", None)  # the check comes first: loading features would fail here
    table = pd.read_csv(tiny_project / "data/prepared/captions.csv")
    words = table.loc[table["split"] == "train", "caption"].str.split().str.len()
    assert exit_status(train.main, "train") == EXIT_CODE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train: model.max_caption_length is 2 but {(words > 2).sum()} of "
                                               f"{len(words)} training captions are longer")
    assert f"set it to at least {int(np.percentile(words, 95, method='higher'))}" in err[0]
    assert not out.exists()
