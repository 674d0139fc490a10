"""Tests for caption text: the normalisation rule and the vocabulary."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import InputError
from pipeline.text import END, PAD, SPECIAL_TOKENS, START, UNK, Vocabulary, normalise, tokenize

# ----------------------------------------------------------------------------------------------
# normalise


@pytest.mark.parametrize("raw,expected", [
    ("A Dog Runs", "a dog runs"),                                   # case
    ("A dog, running. Fast!? (really) \"yes\"; ok: done", "a dog running fast really yes ok done"),
    ("rock-n-roll 3.5 km/h", "rock n roll 3 5 km h"),                # punctuation splits words
    ("Fish &amp; chips", "fish chips"),                             # HTML entity -> "&" -> dropped
    ("A dog&#39;s ball", "a dog's ball"),                           # numeric entity -> apostrophe
    ("&quot;Hello&quot; &lt;b&gt;", "hello b"),
    ("Café naïve Zoë São Paulo", "cafe naive zoe sao paulo"),       # accents stripped
    ("ＡＢＣ ﬁsh", "abc fish"),                                       # NFKD compatibility forms
    ("The dog\u2019s toy", "the dog's toy"),                        # curly apostrophe
    ("\u2018quoted\u2019 words", "quoted words"),                   # curly quotes are not apostrophes
    ("the dogs' toys", "the dogs toys"),                            # apostrophe not inside a word
    ("'hello' there", "hello there"),
    ("don't stop", "don't stop"),
    ("  a\tb\n\n c\u00a0 d  ", "a b c d"),                            # whitespace of every kind
    ("x_y", "x y"),
    ("straße smørrebrød æsop", "straße smørrebrød æsop"),           # letters without accents stay whole
    ("dog 🐶 runs", "dog runs"),
    ("!!! ...", ""),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", ["A Dog&#39;s  ball!", "Café naïve", "The dog\u2019s ''toy''", "x_y-z",
                                 "&amp;amp; twice-escaped", "straße", "  ", "it's 'quoted'"])
def test_normalise_is_idempotent(raw):
    once = normalise(raw)
    assert normalise(once) == once


def test_normalised_text_has_single_spaces_and_no_uppercase():
    text = normalise("  Two  Dogs\t\tPLAY,  in the   Snow .  ")
    assert text == "two dogs play in the snow"
    assert tokenize(text) == ["two", "dogs", "play", "in", "the", "snow"]


# ----------------------------------------------------------------------------------------------
# the vocabulary


def vocabulary() -> Vocabulary:
    return Vocabulary((*SPECIAL_TOKENS, "a", "dog", "runs"))


def test_special_tokens_come_first_with_fixed_indices():
    vocab = vocabulary()
    assert (vocab.pad, vocab.start, vocab.end, vocab.unk) == (0, 1, 2, 3)
    assert [vocab.words[i] for i in (vocab.pad, vocab.start, vocab.end, vocab.unk)] == [PAD, START, END, UNK]
    assert len(vocab) == 7
    assert "dog" in vocab and "cat" not in vocab


def test_encode_wraps_in_start_and_end_and_maps_unknown_words_to_unk():
    vocab = vocabulary()
    assert vocab.encode(["a", "dog", "runs"]) == [1, 4, 5, 6, 2]
    assert vocab.encode(["a", "cat", "runs"]) == [1, 4, 3, 6, 2]
    assert vocab.encode([]) == [1, 2]


def test_encode_truncates_to_max_length_words():
    vocab = vocabulary()
    assert vocab.encode(["a", "dog", "runs", "a", "dog"], max_length=2) == [1, 4, 5, 2]
    assert vocab.encode(["a", "dog"], max_length=5) == [1, 4, 5, 2]
    assert vocab.encode(["a", "dog", "runs"], max_length=None) == [1, 4, 5, 6, 2]


def test_decode_stops_at_end_and_skips_start_and_pad():
    vocab = vocabulary()
    assert vocab.decode([1, 4, 5, 6, 2, 0, 0]) == ["a", "dog", "runs"]
    assert vocab.decode([4, 0, 5, 2, 6]) == ["a", "dog"]  # nothing after END
    assert vocab.decode([4, 3, 6]) == ["a", UNK, "runs"]  # no END: all of it
    assert vocab.decode([]) == []


def test_decode_accepts_tensor_like_integers():
    torch = pytest.importorskip("torch")
    assert vocabulary().decode(torch.tensor([1, 5, 6, 2])) == ["dog", "runs"]


def test_encode_decode_round_trip():
    vocab = vocabulary()
    words = ["runs", "a", "dog", "a"]
    assert vocab.decode(vocab.encode(words)) == words


def test_json_round_trip(tmp_path):
    vocab = vocabulary()
    path = tmp_path / "vocab.json"
    vocab.to_json(path, counts={"a": 3, "dog": 2, "runs": 1}, min_count=1)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["words"] == list(vocab.words)
    assert payload["counts"] == {"a": 3, "dog": 2, "runs": 1}
    assert payload["min_count"] == 1
    loaded = Vocabulary.from_json(path)
    assert loaded == vocab
    assert loaded.encode(["a", "cat"]) == vocab.encode(["a", "cat"])


def test_json_round_trip_keeps_non_ascii_words(tmp_path):
    vocab = Vocabulary((*SPECIAL_TOKENS, "café", "smørrebrød"))
    vocab.to_json(tmp_path / "vocab.json")
    assert Vocabulary.from_json(tmp_path / "vocab.json").words == vocab.words


def test_from_json_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.from_json(tmp_path / "missing.json")


@pytest.mark.parametrize("words", [
    ("a", "dog"),
    (START, PAD, END, UNK, "dog"),           # right tokens, wrong order
    (PAD, START, END, "dog"),                # UNK missing
    (),
])
def test_rejects_a_vocabulary_not_starting_with_the_special_tokens(words, tmp_path):
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(words)
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"words": list(words)}), encoding="utf-8")
    with pytest.raises(InputError, match="is not a vocabulary file .*must start with"):
        Vocabulary.from_json(path)
