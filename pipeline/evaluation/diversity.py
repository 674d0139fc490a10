"""Does the caption depend on the image? Diversity of a set of generated captions.

As diversity papers report it (e.g. Shetty et al. 2017, van Miltenburg et al. 2018): how many
distinct captions and words the model uses, and how many captions it copies verbatim from the
training set. And the two known failures of self-critical training (Hu et al. 2023): degenerate
repetition (a word right after itself: "a a", "the the") and sentence fragments (a caption that ends
in a word that cannot end a sentence: an article, a preposition, a conjunction).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

# words an English caption cannot end with: articles, prepositions, conjunctions, possessives
DANGLING = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "or", "but", "for", "from", "by", "near",
    "into", "onto", "over", "under", "above", "below", "behind", "beside", "between", "through", "across",
    "towards", "toward", "while", "its", "his", "her", "their", "some", "is", "are", "next",
})


def repeats_a_word(caption: str) -> bool:
    """Whether a word follows itself ("a a dog", "on the the grass")."""
    words = caption.split()
    return any(first == second for first, second in zip(words, words[1:]))


def ends_dangling(caption: str) -> bool:
    """Whether the caption ends in a word that cannot end a sentence ("a dog runs in the")."""
    words = caption.split()
    return bool(words) and words[-1] in DANGLING


def caption_diversity(captions: Mapping[str, str], training_captions: Iterable[str]) -> dict[str, float]:
    """Distinct captions, vocabulary used, most repeated caption, share copied from the training set, and the
    shares with a word repeated right after itself and with a dangling last word."""
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
        "repeated_word_fraction": sum(map(repeats_a_word, texts)) / len(texts),
        "dangling_end_fraction": sum(map(ends_dangling, texts)) / len(texts),
    }


def distinct_descriptions(captions: Iterable[str], object_words: set[str]) -> int:
    """How many different things the captions say about the objects, whatever their phrasing: the distinct
    sequences of their object words ("there is a red circle" and "one shape a red circle" say the same).
    Where every image has the same phrasings among its references (the demo), a model that settles on one
    of them says fewer distinct captions without saying fewer distinct things."""
    return len({tuple(word for word in text.split() if word in object_words) for text in captions})
