"""Does the caption depend on the image? Diversity of a set of generated captions.

As diversity papers report it (e.g. Shetty et al. 2017, van Miltenburg et al. 2018): how many
distinct captions and words the model uses, and how many captions it copies verbatim from the
training set.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def caption_diversity(captions: Mapping[str, str], training_captions: Iterable[str]) -> dict[str, float]:
    """Distinct captions, vocabulary used, most repeated caption and share copied from the training set."""
    texts = list(captions.values())
    if not texts:
        raise ValueError("no captions to measure")
    counts = Counter(texts)
    training = set(training_captions)
    words = {word for text in texts for word in text.split()}
    return {
        "distinct_captions": len(counts),
        "distinct_caption_fraction": len(counts) / len(texts),
        "vocabulary_used": len(words),
        "most_repeated_caption_count": counts.most_common(1)[0][1],
        "novel_caption_fraction": sum(text not in training for text in texts) / len(texts),
    }
