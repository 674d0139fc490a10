"""Stage `vocab`: build the vocabulary from the training captions.

    data/prepared/captions.csv (train split) -> data/vocab/vocab.json

Words seen at least `vocab.min_count` times in the training captions, most frequent first
(ties alphabetical), after the special tokens of `pipeline.text`. Validation and test captions
never contribute, so no word is known only from held-out data.

Run: python -m pipeline.stages.vocab
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.cli import run
from pipeline.config import DatasetConfig, VocabConfig, load_section
from pipeline.datasets.report import DatasetError
from pipeline.datasets.table import read_captions
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


def main() -> None:
    """Run the stage with the params file's `dataset` and `vocab` sections."""
    dataset, config = load_section(DatasetConfig), load_section(VocabConfig)
    train = read_captions(dataset.table, "train")
    if train.empty:
        raise DatasetError(f"{dataset.table} has no training captions; check dataset.split_ratios")
    vocabulary, counts = build_vocabulary(train["caption"], config.min_count)
    covered = sum(n for w, n in counts.items() if w in vocabulary)
    with atomic_path(config.path, "vocab.path") as tmp:
        vocabulary.to_json(tmp, counts=dict(counts.most_common()), min_count=config.min_count)
    print(f"vocab: {len(vocabulary)} tokens ({len(counts)} distinct training words, min_count {config.min_count}); "
          f"{covered / max(sum(counts.values()), 1):.1%} of training word occurrences covered")


if __name__ == "__main__":
    run(main, "vocab")
