"""Caption metrics: hand-computed BLEU values, perfect scores for identical captions, the checks on inputs and Java."""
from __future__ import annotations

import math

import pytest

from pipeline.evaluation import scoring
from pipeline.evaluation.scoring import JavaError


@pytest.mark.slow  # pycocoevalcap's Java tokenizer and METEOR, 15 s
def test_coco_scores_are_perfect_for_identical_captions_and_lower_otherwise() -> None:
    references = {"1": ["a red circle to the left of a blue square", "there is a red circle and a blue square"],
                  "2": ["a green triangle on a grey background", "a single green triangle"]}
    perfect = scoring.coco_scores(references, {"1": references["1"][0], "2": references["2"][0]})
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["meteor"] > 0.9
    worse = scoring.coco_scores(references, {"1": "a blue square", "2": "a red circle"})
    for key in ("bleu1", "bleu4", "meteor", "rouge_l", "cider"):
        assert worse[key] < perfect[key], key
    # by hand: image 1 matches all 3 words ("a" clipped to once) and both bigrams, closest reference length 9;
    # image 2 matches "a" only, no bigram, closest reference length 4. c = 6 words, r = 13, so the
    # brevity penalty is exp(1 - 13/6); unigram precision 4/6, bigram precision 2/4
    penalty = math.exp(1 - 13 / 6)
    assert worse["bleu1"] == pytest.approx(penalty * 4 / 6, abs=1e-6)
    assert worse["bleu2"] == pytest.approx(penalty * math.sqrt(4 / 6 * 2 / 4), abs=1e-6)
    # a subset of the metrics (as train's validation asks for) gives the same values
    subset = scoring.coco_scores(references, {"1": "a blue square", "2": "a red circle"}, ("bleu4", "cider"))
    assert set(subset) == {"bleu4", "cider"}
    assert subset["bleu4"] == pytest.approx(worse["bleu4"], abs=1e-9)
    assert subset["cider"] == pytest.approx(worse["cider"], abs=1e-9)
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.coco_scores(references, {"1": "a", "2": "b"}, ("spice",))


def test_hypotheses_must_cover_the_references() -> None:
    with pytest.raises(ValueError, match="same images"):
        scoring.coco_scores({"1": ["a dog"], "2": ["a cat"]}, {"1": "a dog"})
    with pytest.raises(ValueError, match="no captions"):
        scoring.coco_scores({}, {})


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring.shutil, "which", lambda name: None)
    with pytest.raises(JavaError, match="default-jre-headless"):
        scoring.coco_scores({"1": ["a red circle"]}, {"1": "a red circle"})


def test_tokenizer_gives_pycocoevalcaps_tokens() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {"a": ["A dog's café, running!", "naïve   résumé -- ok.", "Two men (one in red) play."],
                "b": ["", "It's 5:30 p.m. \"quoted\" & more ..."], "c": ["x"], "d": ["ends empty", ""]}
    library = PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    assert scoring.ptb_tokenize(captions) == library
    assert library["a"][0] == "a dog 's café running"  # what the library makes of it: lower case, no punctuation


def test_a_line_break_inside_a_caption_stays_in_that_caption() -> None:
    # the Java tokenizer reads one caption a line and takes \r, \u2028 and form feeds for line ends too
    tokens = scoring.ptb_tokenize({"a": ["one\rtwo", "three\u2028four\x0cfive"], "b": ["six\nseven"]})
    assert tokens == {"a": ["one two", "three four five"], "b": ["six seven"]}


@pytest.mark.slow  # pycocoevalcap's Java tokenizer and METEOR
def test_scoring_writes_nothing_on_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    """The Java tokenizer's speed line (printed by its process on the inherited stderr) stays out of sight."""
    scoring.coco_scores({"1": ["a red circle", "a circle"]}, {"1": "a red circle"})
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
