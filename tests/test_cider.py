"""CIDEr-D on token ids (pipeline.evaluation.cider) against pycocoevalcap's Cider on the same captions.

pycocoevalcap's Cider is pure Python: it gets each id written as a distinct word, joined by spaces.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider import cider_scorer
from pycocoevalcap.cider.cider import Cider

from pipeline.errors import PipelineError
from pipeline.evaluation.cider import CiderD, VocabularyTooLargeError, corpus_cider, max_token_id
from pipeline.text import SPECIAL_TOKENS, Vocabulary, tokenize
from tests.conftest import run_stages, write_params

TOLERANCE = 1e-6


def words(caption: list[int]) -> str:
    """The caption as pycocoevalcap reads it: one distinct word per id."""
    return " ".join(f"w{token}" for token in caption)


def pycoco(candidates: list[list[int]], references: list[list[list[int]]], n: int = 4,
           sigma: float = 6.0) -> np.ndarray:
    """pycocoevalcap's per-image CIDEr-D: candidate i against references[i], df from these references."""
    gts = {i: [words(ref) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [words(candidate)] for i, candidate in enumerate(candidates)}
    mean, scores = Cider(n=n, sigma=sigma).compute_score(gts, res)
    assert mean == pytest.approx(np.mean(scores))
    return np.asarray(scores)


def random_set(seed: int, num_images: int = 30, samples: int = 1,
               largest: int = max_token_id(4)) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
    """`samples` candidates per image and 1-7 references per image, captions of 0-20 ids over a small
    vocabulary (so n-grams repeat): a few ids spread over the whole range the packing allows, its top
    included. Returns the candidates (samples, images) and the references (images, references)."""
    rng = np.random.default_rng(seed)
    ids = np.append(rng.choice(largest, size=int(rng.integers(2, 8)), replace=False), largest)

    def caption() -> list[int]:
        return [int(i) for i in rng.choice(ids, size=int(rng.integers(0, 21)))]

    references = [[caption() for _ in range(int(rng.integers(1, 8)))] for _ in range(num_images)]
    return [[caption() for _ in range(num_images)] for _ in range(samples)], references


@pytest.mark.parametrize("seed", range(6))
def test_corpus_mode_equals_pycocoevalcap(seed: int) -> None:
    (candidates,), references = random_set(seed)
    theirs = pycoco(candidates, references)
    assert theirs.max() > 0.5  # captions that share n-grams with their references: the test sees real scores
    np.testing.assert_allclose(corpus_cider(candidates, references), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("n", "sigma"), [(1, 6.0), (2, 3.0), (3, 6.0), (4, 1.5), (5, 6.0)])
def test_other_orders_and_penalties_equal_pycocoevalcap(n: int, sigma: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """pycocoevalcap 1.2 counts n-grams up to 4 whatever its n (n < 4 fails, n > 4 never counts the
    longer ones): for n != 4 its own counting is given n, the rest of its computation unchanged."""
    monkeypatch.setattr(cider_scorer, "cook_refs", functools.partial(cider_scorer.cook_refs, n=n))
    monkeypatch.setattr(cider_scorer, "cook_test", functools.partial(cider_scorer.cook_test, n=n))
    (candidates,), references = random_set(100 + n, largest=max_token_id(n))
    np.testing.assert_allclose(corpus_cider(candidates, references, n=n, sigma=sigma),
                               pycoco(candidates, references, n=n, sigma=sigma), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("seed", range(3))
def test_training_df_mode_equals_pycocoevalcap_on_the_df_references(seed: int) -> None:
    """Several candidates per image, scored in a shuffled order with repeats and a subset of images,
    by one scorer built once: each equals pycocoevalcap's score on the whole reference set."""
    rng = np.random.default_rng(seed)
    samples, references = random_set(seed, samples=4)
    theirs = np.stack([pycoco(sample, references) for sample in samples])  # (samples, images)
    pairs = [(s, int(i)) for s in range(len(samples)) for i in rng.choice(len(references), size=20)]
    pairs = [pairs[k] for k in rng.permutation(len(pairs))]
    scorer = CiderD(references)
    ours = scorer.score([samples[s][i] for s, i in pairs], [i for _, i in pairs])
    np.testing.assert_allclose(ours, [theirs[s, i] for s, i in pairs], rtol=0, atol=TOLERANCE)


def test_training_df_differs_from_a_subsets_own_df() -> None:
    """Scoring a subset of images: the scorer keeps its own df (pycocoevalcap over all references);
    corpus mode on the subset takes the subset's df (pycocoevalcap over the subset), and they differ."""
    (candidates,), references = random_set(7, num_images=40)
    subset = list(range(0, 40, 3))
    whole = pycoco(candidates, references)[subset]
    alone = pycoco([candidates[i] for i in subset], [references[i] for i in subset])
    trained = CiderD(references).score([candidates[i] for i in subset], subset)
    np.testing.assert_allclose(trained, whole, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(corpus_cider([candidates[i] for i in subset], [references[i] for i in subset]),
                               alone, rtol=0, atol=TOLERANCE)
    assert np.abs(whole - alone).max() > 0.1


@pytest.fixture(scope="module")
def demo_captions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The demo's captions ({image: its five normalised captions}) from the shapes and prepare stages."""
    from pipeline.datasets.table import read_captions, references_by_image
    from pipeline.stages import prepare, shapes

    folder = tmp_path_factory.mktemp("demo")
    write_params(folder, {"shapes": {"num_images": 60}, "dataset": {"check_images": False}}, tiny=True)
    (folder / "splits").mkdir()  # dataset.split_dir without lists: a random split
    run_stages(folder, shapes, prepare)
    return references_by_image(read_captions(Path(folder, "data/prepared/captions.csv")))


def test_demo_captions_with_end_equal_pycocoevalcap(demo_captions: dict[str, list[str]]) -> None:
    """The demo's tokenised captions as ids with END appended to all (as self-critical training scores):
    a caption of the image itself or of another image, in both modes; the words go to pycocoevalcap."""
    words_seen = sorted({word for captions in demo_captions.values() for c in captions for word in tokenize(c)})
    vocabulary = Vocabulary((*SPECIAL_TOKENS, *words_seen))
    encoded = [[vocabulary.encode(tokenize(c))[1:] for c in captions] for captions in demo_captions.values()]
    assert all(caption[-1] == vocabulary.end for captions in encoded for caption in captions)
    rng = np.random.default_rng(0)
    candidates = [encoded[int(rng.integers(len(encoded)))][int(rng.integers(5))] for _ in encoded[:30]]
    candidates += [captions[int(rng.integers(5))] for captions in encoded[30:]]

    def as_words(caption: list[int]) -> str:
        return " ".join(vocabulary.words[i] for i in caption)

    gts = {i: [as_words(c) for c in captions] for i, captions in enumerate(encoded)}
    _, theirs = Cider().compute_score(gts, {i: [as_words(c)] for i, c in enumerate(candidates)})
    assert len(vocabulary) < 40 and theirs.max() > 1.0
    np.testing.assert_allclose(corpus_cider(candidates, encoded), theirs, rtol=0, atol=TOLERANCE)
    order = rng.permutation(len(encoded))
    ours = CiderD(encoded).score([candidates[i] for i in order], order)
    np.testing.assert_allclose(ours, theirs[order], rtol=0, atol=TOLERANCE)


def test_identical_caption_scores_by_hand() -> None:
    """Two images; the candidate is image 0's only reference: every n-gram has idf log 2, cosines 1 at
    orders 1-2 and 0 at orders 3-4 (no trigram), no length penalty: 10 * mean(1, 1, 0, 0) = 5."""
    scorer = CiderD([[[1, 2]], [[3]]])
    assert scorer.score([[1, 2]], [0])[0] == pytest.approx(5.0, abs=1e-12)


def test_repeated_ngrams_are_clipped_by_hand() -> None:
    """[5 5 5 5] against [5 5]: unigram min(4, 2) * 2 / (4 * 2) = 1/2, bigram min(3, 1) * 1 / 3 = 1/3,
    no reference trigram; 3 bigrams against 1: penalty exp(-4 / 72). Repeating does not pay."""
    references = [[[5, 5]], [[6]]]
    expected = 10 * (1 / 2 + 1 / 3) / 4 * math.exp(-4 / 72)
    scores = CiderD(references).score([[5, 5, 5, 5], [5, 5]], [0, 0])
    assert scores[0] == pytest.approx(expected, abs=1e-12)
    assert scores[1] == pytest.approx(5.0, abs=1e-12) and scores[0] < scores[1]
    np.testing.assert_allclose(scores[:1], pycoco([[5, 5, 5, 5], [6]], references)[:1], rtol=0, atol=TOLERANCE)


def test_edge_cases_stay_finite_and_equal_pycocoevalcap() -> None:
    """An empty candidate, an image with one reference, an empty reference, a candidate longer than
    every reference (its own n-grams repeated: clipped, and the length penalty), a candidate of words
    no reference holds."""
    references = [[[1, 2, 3]], [[1, 2], []], [[2, 3, 4], [4, 4, 4]], [[7]]]
    candidates = [[], [1, 2], [2, 3, 4] * 8, [9, 9]]
    ours = corpus_cider(candidates, references)
    assert np.isfinite(ours).all() and ours[0] == 0.0 and ours[3] == 0.0 and ours[1] > 0
    np.testing.assert_allclose(ours, pycoco(candidates, references), rtol=0, atol=TOLERANCE)
    shorter = corpus_cider([[], [1, 2], [2, 3, 4], [9, 9]], references)
    assert 0 < ours[2] < shorter[2] / 100
    assert np.array_equal(CiderD(references).score([[], []], [0, 1]), [0.0, 0.0])


def test_degenerate_sets_stay_finite() -> None:
    """References without any n-gram, one image (idf 0 everywhere), nothing to score."""
    assert np.array_equal(corpus_cider([[1], []], [[[]], [[]]]), [0.0, 0.0])
    assert np.array_equal(CiderD([[[1, 2]]]).score([[1, 2]], [0]), [0.0])
    assert CiderD([[[1, 2]]]).score([], []).shape == (0,)


def test_bad_input_is_refused() -> None:
    scorer = CiderD([[[1, 2]], [[3]]])
    with pytest.raises(VocabularyTooLargeError, match=f"token id {max_token_id(4) + 1}") as error:
        scorer.score([[1, max_token_id(4) + 1]], [0])
    assert isinstance(error.value, PipelineError)
    with pytest.raises(VocabularyTooLargeError, match="ids must be <= 4094"):
        CiderD([[[5000]]], n=5)
    with pytest.raises(ValueError, match="must be >= 0"):
        scorer.score([[-1]], [0])
    with pytest.raises(ValueError, match=r"image indices must lie in \[0, 2\)"):
        scorer.score([[1]], [2])
    with pytest.raises(ValueError, match="2 candidates but 1 image indices"):
        scorer.score([[1], [2]], [0])
    with pytest.raises(ValueError, match="image 1 has no references"):
        CiderD([[[1]], []])
    with pytest.raises(ValueError, match="one per image"):
        corpus_cider([[1]], [[[1]], [[2]]])


def test_benchmark_runs_and_agrees_at_a_small_size() -> None:
    """benchmarks/cider_bench.py at 40 candidates: both caption sets, END ending every caption, and
    pycocoevalcap's scores equal to both of ours (the benchmark asserts it; the sizes are checked here)."""
    from benchmarks.cider_bench import bench_all, demo_like, flickr30k_like

    for _, candidates, references in (flickr30k_like(40), demo_like(40)):
        assert len(candidates) == 40 and all(len(refs) == 5 for refs in references)
        assert all(caption[-1] == Vocabulary.end for caption in [*candidates, *(c for r in references for c in r)])
    results = bench_all(40, 1)
    assert [result["set"] for result in results] == ["flickr30k-like", "demo"]
    assert all(result["max difference"] <= TOLERANCE and result["mean CIDEr-D"] > 0.5 for result in results)
