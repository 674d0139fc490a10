"""Stage `embeddings`: a (V, D) word-embedding matrix for the vocabulary.

    data/vocab/vocab.json, data/prepared/captions.csv -> data/embeddings/embeddings.npy,
                                                         data/embeddings/metrics.json

Either a pretrained word2vec file (`embeddings.pretrained`: GoogleNews `.bin` / `.bin.gz`, or
the word2vec text format), read with gensim's KeyedVectors, or a gensim Word2Vec trained on the
training captions. Row i belongs to vocabulary word i. Missing-word rule for a pretrained file:
the word as is, then lower-case, Capitalised and UPPER-case forms; a word still missing gets a
random vector with the scale of the found ones. PAD is all zeros; START, END and UNK are random.
The coverage (how many vocabulary words got a real vector) is a DVC metric; a pretrained file that
covers no vocabulary word stops the stage (every row would be random).

Run: python -m pipeline.stages.embeddings
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors, Word2Vec

from pipeline.cli import run
from pipeline.config import DatasetConfig, EmbeddingsConfig, VocabConfig, load_section
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import read_captions
from pipeline.errors import ConfigError
from pipeline.files import atomic_paths, json_text
from pipeline.text import PAD, SPECIAL_TOKENS, Vocabulary, tokenize


def train_word2vec(sentences: list[list[str]], dim: int, window: int, epochs: int, seed: int) -> KeyedVectors:
    """Skip-gram Word2Vec on tokenised captions; one worker so that the result is reproducible."""
    model = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=1, sg=1,
                     epochs=epochs, seed=seed, workers=1)
    return model.wv


def load_pretrained(path: str | Path) -> KeyedVectors:
    """Read a word2vec binary (.bin, .bin.gz) or text file with gensim."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: word2vec file not found (params.yaml embeddings.pretrained); "
                                "put the file there or set embeddings.pretrained to null to train on the captions")
    binary = path.name.endswith((".bin", ".bin.gz"))
    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=binary)
    except (ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        kind = "binary" if binary else "text"
        raise DatasetError(f"{path}: cannot read it as a word2vec {kind} file ({error}); "
                         "binary files must end in .bin or .bin.gz") from error


def case_variants(word: str) -> tuple[str, ...]:
    """The forms tried, in order, when looking a vocabulary word up in pretrained vectors."""
    return tuple(dict.fromkeys((word, word.lower(), word.capitalize(), word.upper())))


def embedding_matrix(words: Iterable[str], lookup: Callable[[str], np.ndarray | None], dim: int,
                     seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Rows from `lookup` (None when missing); PAD zero; other rows random at the found rows' scale."""
    words = list(words)
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(words), dim), dtype=np.float32)
    found = np.zeros(len(words), dtype=bool)
    for i, word in enumerate(words):
        vector = None if word in SPECIAL_TOKENS else lookup(word)
        if vector is not None:
            if vector.shape != (dim,):
                raise ConfigError(f"word vectors have {vector.shape[0]} dimensions but embeddings.dim is {dim}; "
                                 "set embeddings.dim to match the pretrained file")
            matrix[i], found[i] = vector, True
    scale = float(matrix[found].std()) if found.any() else 0.1
    missing = ~found
    matrix[missing] = rng.normal(0.0, scale, size=(int(missing.sum()), dim))
    matrix[words.index(PAD)] = 0.0
    regular = len(words) - len(SPECIAL_TOKENS)
    stats = {"vocabulary_words": regular, "found": int(found.sum()), "random": regular - int(found.sum())}
    return matrix, stats


def main() -> None:
    """Run the stage with the params file's `dataset`, `vocab` and `embeddings` sections."""
    dataset, vocab_config, config = (load_section(DatasetConfig), load_section(VocabConfig),
                                     load_section(EmbeddingsConfig))
    vocabulary = Vocabulary.from_json(Path(vocab_config.path))
    if config.pretrained:
        vectors = load_pretrained(config.pretrained)
        if vectors.vector_size != config.dim:  # checked here too: with no vocabulary word found, nothing else would
            raise ConfigError(f"{config.pretrained}: word vectors have {vectors.vector_size} dimensions but "
                             f"embeddings.dim is {config.dim}; set embeddings.dim to match the pretrained file")
        source = config.pretrained
    else:
        sentences = [tokenize(c) for c in read_captions(dataset.table, "train")["caption"]]
        vectors = train_word2vec(sentences, config.dim, config.window, config.epochs, config.seed)
        source = "word2vec trained on the training captions"  # every vocabulary word is in it as is

    def lookup(word: str) -> np.ndarray | None:
        form = next((v for v in case_variants(word) if v in vectors.key_to_index), None)
        return None if form is None else vectors[form]

    matrix, stats = embedding_matrix(vocabulary.words, lookup, config.dim, config.seed)
    if config.pretrained and stats["vocabulary_words"] and not stats["found"]:
        words = [word for word in vocabulary.words if word not in SPECIAL_TOKENS][:3]
        raise ConfigError(f"{config.pretrained}: none of the {stats['vocabulary_words']:,} vocabulary words (e.g. "
                          f"{', '.join(map(repr, words))}) has a vector there in any case form (its words look like "
                          f"{', '.join(map(repr, vectors.index_to_key[:3]))}): every row would be random; give "
                          "embeddings.pretrained word vectors of the captions' language, or null to train them on "
                          "the captions")
    stats["coverage"] = stats["found"] / max(stats["vocabulary_words"], 1)
    with atomic_paths((config.matrix, "embeddings.matrix"), (config.metrics, "embeddings.metrics")) as (tmp, metrics):
        with open(tmp, "wb") as handle:
            np.save(handle, matrix)
        metrics.write_text(json_text(stats), encoding="utf-8")
    print(f"embeddings: {matrix.shape[0]} x {matrix.shape[1]} from {source}; "
          f"coverage {stats['coverage']:.1%} ({stats['random']} random rows)")


if __name__ == "__main__":
    run(main, "embeddings")
