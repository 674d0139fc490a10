"""Stage `vocab`: build the vocabulary from the training captions.

    data/prepared/captions.csv (train split) -> data/vocab/vocab.json

Words seen at least `vocab.min_count` times in the training captions, most frequent first
(ties alphabetical), after the special tokens of `pipeline.text`. Validation and test captions
never contribute, so no word is known only from held-out data. A `min_count` that keeps no word
stops the stage (a model with nothing to say would train and look done), naming the largest that
keeps one.

Run: python -m pipeline.stages.vocab
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.cli import run
from pipeline.config import DatasetConfig, VocabConfig, load_section
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import read_captions
from pipeline.errors import ConfigError
from pipeline.files import atomic_path
from pipeline.text import SPECIAL_TOKENS, Vocabulary, tokenize


def count_words(captions: Iterable[str]) -> Counter[str]:
    """Word counts over normalised captions."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tokenize(caption))
    return counts


def build_vocabulary(captions: Iterable[str], min_count: int) -> tuple[Vocabulary, Counter[str]]:
    """Special tokens, then words with count >= min_count, most frequent first."""
    counts = count_words(captions)
    kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                  key=lambda w: (-counts[w], w))
    return Vocabulary((*SPECIAL_TOKENS, *kept)), counts


def check_words(vocabulary: Vocabulary, counts: Counter[str], min_count: int) -> None:
    """ConfigError when the vocabulary holds no word besides the special tokens, naming what would keep one."""
    if len(vocabulary) > len(SPECIAL_TOKENS):
        return
    words = [w for w in counts if w not in SPECIAL_TOKENS]
    if not words:
        raise DatasetError("the training captions hold no words; check the prepare stage's report")
    word = min(words, key=lambda w: (-counts[w], w))  # the first word build_vocabulary would keep
    count = counts[word]
    raise ConfigError(f"vocab.min_count is {min_count:,} but no training word occurs that often (the most frequent, "
                      f"'{word}', occurs {count:,} times): the vocabulary would hold only the special tokens and the "
                      f"model could say nothing; set vocab.min_count to at most {count}")


def main() -> None:
    """Run the stage with the params file's `dataset` and `vocab` sections."""
    dataset, config = load_section(DatasetConfig), load_section(VocabConfig)
    train = read_captions(dataset.table, "train")
    if train.empty:
        raise DatasetError(f"{dataset.table} has no training captions; check dataset.split_ratios")
    vocabulary, counts = build_vocabulary(train["caption"], config.min_count)
    check_words(vocabulary, counts, config.min_count)
    covered = sum(n for w, n in counts.items() if w in vocabulary)
    with atomic_path(config.path, "vocab.path") as tmp:
        vocabulary.to_json(tmp, counts=dict(counts.most_common()), min_count=config.min_count)
    print(f"vocab: {len(vocabulary)} tokens ({len(counts)} distinct training words, min_count {config.min_count}); "
          f"{covered / max(sum(counts.values()), 1):.1%} of training word occurrences covered")


if __name__ == "__main__":
    run(main, "vocab")
