"""Tests for the embeddings stage: pretrained word2vec files (binary, gzipped, text) and the trained fallback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors

from pipeline.config import PARAMS_ENV
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import write_captions
from pipeline.errors import ConfigError
from pipeline.stages import embeddings
from pipeline.stages.vocab import build_vocabulary
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.conftest import write_params

DIM = 6

# the pretrained file: mixed case, as in GoogleNews; "red" and "RED" both present
FILE_WORDS = ["Dog", "CAT", "runs", "red", "RED", "unused"]
VOCABULARY = (*SPECIAL_TOKENS, "dog", "cat", "runs", "red", "zebra")  # zebra is in no file
EXPECTED_FORM = {"dog": "Dog", "cat": "CAT", "runs": "runs", "red": "red"}  # the as-is form wins over RED


@pytest.fixture(scope="module")
def file_vectors() -> KeyedVectors:
    rng = np.random.default_rng(0)
    vectors = KeyedVectors(vector_size=DIM)
    vectors.add_vectors(FILE_WORDS, rng.normal(0.0, 0.5, size=(len(FILE_WORDS), DIM)).astype(np.float32))
    return vectors


def write_project(folder: Path, pretrained: str | None, dim: int = DIM, vocabulary: tuple[str, ...] = VOCABULARY,
                  captions: list[str] | None = None) -> Path:
    """params.yaml (the repository's, paths into `folder`), vocab/vocab.json and prepared/captions.csv."""
    path = write_params(folder, {
        "dataset": {"table": str(folder / "prepared" / "captions.csv")},
        "vocab": {"path": str(folder / "vocab" / "vocab.json")},
        "embeddings": {"dim": dim, "pretrained": pretrained, "epochs": 3, "window": 2, "seed": 0,
                       "matrix": str(folder / "embeddings" / "embeddings.npy"),
                       "metrics": str(folder / "embeddings" / "metrics.json")}})
    (folder / "vocab").mkdir(exist_ok=True)
    Vocabulary(vocabulary).to_json(folder / "vocab" / "vocab.json")
    if captions is not None:
        (folder / "prepared").mkdir(exist_ok=True)
        write_captions(folder / "prepared" / "captions.csv",
                       [(f"{i}.jpg", "train", caption) for i, caption in enumerate(captions)])
    return path


def run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, dict]:
    monkeypatch.setenv(PARAMS_ENV, str(folder / "params.yaml"))
    embeddings.main()
    matrix = np.load(folder / "embeddings" / "embeddings.npy")
    metrics = json.loads((folder / "embeddings" / "metrics.json").read_text(encoding="utf-8"))
    return matrix, metrics


@pytest.mark.parametrize("name,binary", [("vectors.bin", True), ("vectors.bin.gz", True), ("vectors.txt", False)])
def test_pretrained_file(tmp_path, monkeypatch, file_vectors, name, binary):
    path = tmp_path / name
    file_vectors.save_word2vec_format(str(path), binary=binary)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")  # really gzipped, or really not
    write_project(tmp_path, str(path))
    matrix, metrics = run(tmp_path, monkeypatch)

    assert matrix.shape == (len(VOCABULARY), DIM) and matrix.dtype == np.float32
    for word, form in EXPECTED_FORM.items():
        # the text format stores decimals: equal up to its printed precision
        np.testing.assert_allclose(matrix[VOCABULARY.index(word)], file_vectors[form], rtol=1e-5, atol=1e-6)
    zebra = matrix[VOCABULARY.index("zebra")]
    assert np.abs(zebra).sum() > 0
    assert not any(np.allclose(zebra, file_vectors[w]) for w in FILE_WORDS)
    assert not matrix[0].any()  # PAD
    assert all(np.abs(matrix[i]).sum() > 0 for i in (1, 2, 3))  # START, END, UNK: random
    assert metrics == {"vocabulary_words": 5, "found": 4, "random": 1, "coverage": pytest.approx(0.8)}


def test_pretrained_matrix_is_deterministic(tmp_path, monkeypatch, file_vectors):
    path = tmp_path / "vectors.bin"
    file_vectors.save_word2vec_format(str(path), binary=True)
    write_project(tmp_path, str(path))
    first, _ = run(tmp_path, monkeypatch)
    second, _ = run(tmp_path, monkeypatch)
    np.testing.assert_array_equal(first, second)


def test_case_variants_order():
    assert embeddings.case_variants("dog") == ("dog", "Dog", "DOG")
    assert embeddings.case_variants("iPhone") == ("iPhone", "iphone", "Iphone", "IPHONE")
    assert embeddings.case_variants("A") == ("A", "a")


def test_missing_file_names_the_path_and_the_key(tmp_path, monkeypatch):
    write_project(tmp_path, str(tmp_path / "GoogleNews-vectors.bin.gz"))
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    with pytest.raises(FileNotFoundError) as error:
        embeddings.main()
    assert "GoogleNews-vectors.bin.gz" in str(error.value) and "embeddings.pretrained" in str(error.value)
    assert not (tmp_path / "embeddings" / "embeddings.npy").exists()


@pytest.mark.parametrize("vocabulary", [VOCABULARY, (*SPECIAL_TOKENS, "zebra", "giraffe")])
def test_dimension_mismatch_names_the_file_and_the_key(tmp_path, monkeypatch, file_vectors, vocabulary):
    """Also when no vocabulary word is in the file (the second case), which once passed silently."""
    path = tmp_path / "vectors.bin"
    file_vectors.save_word2vec_format(str(path), binary=True)
    write_project(tmp_path, str(path), dim=DIM + 2, vocabulary=vocabulary)
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    with pytest.raises(ConfigError, match="embeddings.dim") as error:
        embeddings.main()
    assert str(path) in str(error.value)
    assert not (tmp_path / "embeddings" / "embeddings.npy").exists()


def test_a_binary_file_named_as_text_is_refused(tmp_path, file_vectors):
    path = tmp_path / "vectors.txt"
    file_vectors.save_word2vec_format(str(path), binary=True)
    with pytest.raises(DatasetError, match="vectors.txt.*binary files must end in .bin"):
        embeddings.load_pretrained(path)


@pytest.mark.parametrize("damage", ["not_gzip", "bad_crc"])
def test_a_damaged_gzip_file_is_refused_naming_it(tmp_path, file_vectors, damage):
    path = tmp_path / "vectors.bin.gz"
    file_vectors.save_word2vec_format(str(path), binary=True)
    data = bytearray(path.read_bytes())
    if damage == "not_gzip":
        data[:2] = b"PK"  # a zip archive, say, named .gz
    else:
        data[-8] ^= 0xFF  # the trailer's CRC-32: the data does not match it
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="vectors.bin.gz: cannot read it as a word2vec binary file"):
        embeddings.load_pretrained(path)


def test_embedding_matrix_scales_random_rows_like_the_found_ones():
    words = [*SPECIAL_TOKENS, *(f"w{i}" for i in range(400))]
    rng = np.random.default_rng(1)
    found = {w: rng.normal(0.0, 3.0, size=50).astype(np.float32) for w in words[4::2]}
    matrix, stats = embeddings.embedding_matrix(words, found.get, 50, seed=0)
    assert stats == {"vocabulary_words": 400, "found": 200, "random": 200}
    for word, vector in found.items():
        np.testing.assert_array_equal(matrix[words.index(word)], vector)
    random_rows = matrix[5::2]
    assert random_rows.std() == pytest.approx(3.0, rel=0.1)
    assert not matrix[0].any()


def test_embedding_matrix_checks_the_vector_size():
    with pytest.raises(ConfigError, match="embeddings.dim"):
        embeddings.embedding_matrix([*SPECIAL_TOKENS, "dog"], lambda word: np.ones(4, np.float32), 5, seed=0)


# ----------------------------------------------------------------------------------------------
# no pretrained file: word2vec trained on the training captions


CAPTIONS = ["a red circle", "a blue square on the left", "a red square", "two blue circles",
            "a green triangle on the right", "a red triangle and a blue circle"]


def test_trained_on_the_captions(tmp_path, monkeypatch):
    vocabulary, _ = build_vocabulary(CAPTIONS, min_count=1)
    write_project(tmp_path, None, dim=8, vocabulary=vocabulary.words, captions=CAPTIONS)
    first, metrics = run(tmp_path, monkeypatch)
    second, _ = run(tmp_path, monkeypatch)

    assert first.shape == (len(vocabulary), 8)
    assert metrics["coverage"] == 1.0 and metrics["random"] == 0
    assert metrics["vocabulary_words"] == len(vocabulary) - len(SPECIAL_TOKENS)
    np.testing.assert_array_equal(first, second)  # one worker, fixed seed: reproducible
    assert not first[0].any()
    assert len({row.tobytes() for row in first[1:]}) == len(vocabulary) - 1  # every other row distinct
