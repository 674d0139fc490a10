"""CIDEr-D: our scorer on token ids (pipeline.evaluation.cider) against pycocoevalcap's Cider.

Two seeded caption sets, each of 5,000 images with 5 references and one candidate, END appended to
every caption (as self-critical training scores them):
- flickr30k-like: words from a 10,000-word list with Zipf frequencies and caption lengths from a
  gamma distribution (mean ~12 words), as `benchmarks.flickr30k_like` draws them; each candidate is
  one of its image's references with about a third of its words redrawn (a sampled caption shares
  some n-grams with the references, not all);
- demo: the shapes demo's captions (`pipeline.stages.shapes`, the repository's shapes params, no
  image drawn): 5 per image, 2-12 words over a vocabulary of ~25; the candidate is a caption of the
  image itself or, half the time, of another image.

Three ways to score the same candidates, timed in turn (`benchmarks.common.time_variants`):
- pycocoevalcap: `Cider().compute_score(gts, res)` on the captions as strings (dicts built before);
- rewards: `CiderD.score` with a scorer built before (document frequencies once, as self-critical
  training scores every batch); the target, >= 50x pycocoevalcap, is for this one;
- corpus: `corpus_cider`, which builds the scorer from these references and scores: pycocoevalcap's
  whole job, document frequencies included.
The three agree to 1e-6 (asserted). `rewards` is called INNER times per repeat (a single call takes
tens of milliseconds, below what one timing on a shared machine resolves).

Run alone: python -m benchmarks.cider_bench [--candidates 5000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider

from benchmarks.common import machine_line, spread, time_variants
from benchmarks.flickr30k_like import LENGTH_SCALE, LENGTH_SHAPE, MIN_WORDS, ZIPF_EXPONENT, words
from pipeline.config import ShapesConfig, load_section
from pipeline.evaluation.cider import CiderD, corpus_cider
from pipeline.stages.shapes import captions_for, sample_objects
from pipeline.text import END, SPECIAL_TOKENS, Vocabulary, tokenize

REFERENCES = 5
FLICKR_VOCABULARY = 10_000
REDRAWN = 1 / 3  # share of a flickr30k-like candidate's words drawn afresh
INNER = 10
AGREE = 1e-6
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

flickr_words = functools.cache(words)  # builds ~1M pseudo-words to keep 10,000: once per process

CaptionSet = tuple[list[str], list[list[int]], list[list[list[int]]]]  # words by id, candidates, references


def flickr30k_like(num_images: int, seed: int = 0) -> CaptionSet:
    """Zipf words, gamma lengths; candidates are references with a third of their words redrawn."""
    rng = np.random.default_rng(seed)
    vocabulary = [*SPECIAL_TOKENS, *flickr_words(FLICKR_VOCABULARY)]
    ranks = np.arange(1, FLICKR_VOCABULARY + 1, dtype=np.float64)
    probabilities = ranks ** -ZIPF_EXPONENT / (ranks ** -ZIPF_EXPONENT).sum()

    def draw(size: int) -> np.ndarray:
        return rng.choice(FLICKR_VOCABULARY, size=size, p=probabilities) + len(SPECIAL_TOKENS)

    lengths = np.maximum(MIN_WORDS, np.rint(rng.gamma(LENGTH_SHAPE, LENGTH_SCALE, num_images * REFERENCES)))
    captions = np.split(draw(int(lengths.sum())), np.cumsum(lengths.astype(np.int64))[:-1])
    end = Vocabulary.end
    references = [[[*captions[i * REFERENCES + k].tolist(), end] for k in range(REFERENCES)]
                  for i in range(num_images)]
    candidates = []
    for image in range(num_images):
        caption = captions[image * REFERENCES + int(rng.integers(REFERENCES))].copy()
        redrawn = rng.random(caption.size) < REDRAWN
        caption[redrawn] = draw(int(redrawn.sum()))
        candidates.append([*caption.tolist(), end])
    return vocabulary, candidates, references


def demo_like(num_images: int, seed: int = 0) -> CaptionSet:
    """The shapes demo's captions as ids; candidates are the image's own caption or another image's."""
    config = load_section(ShapesConfig, PARAMS)
    rng = np.random.default_rng(seed)
    texts = [captions_for(sample_objects(rng, config), config.image_size) for _ in range(num_images)]
    seen = sorted({word for captions in texts for caption in captions for word in tokenize(caption)})
    vocabulary = Vocabulary((*SPECIAL_TOKENS, *seen))
    references = [[vocabulary.encode(tokenize(caption))[1:] for caption in captions] for captions in texts]
    others = rng.integers(num_images, size=num_images)
    chosen = np.where(rng.random(num_images) < 0.5, others, np.arange(num_images))
    candidates = [references[image][int(rng.integers(REFERENCES))] for image in chosen]
    return list(vocabulary.words), candidates, references


def bench_cider(name: str, caption_set: CaptionSet, repeats: int) -> dict[str, object]:
    """Candidates/s of pycocoevalcap, of our rewards and of our corpus mode; the ratios; the agreement."""
    vocabulary, candidates, references = caption_set
    assert vocabulary[Vocabulary.end] == END

    def text(caption: list[int]) -> str:
        return " ".join(vocabulary[token] for token in caption)

    gts = {i: [text(reference) for reference in refs] for i, refs in enumerate(references)}
    res = {i: [text(candidate)] for i, candidate in enumerate(candidates)}
    scorer, images = CiderD(references), np.arange(len(candidates))
    timings = time_variants({
        "pycocoevalcap": lambda: Cider().compute_score(gts, res)[1],
        "rewards": lambda: [scorer.score(candidates, images) for _ in range(INNER)][-1],
        "corpus": lambda: corpus_cider(candidates, references)}, repeats)
    timings.wall["rewards"] = [seconds / INNER for seconds in timings.wall["rewards"]]
    theirs = np.asarray(timings.results["pycocoevalcap"])
    gap = max(float(np.abs(timings.results[ours] - theirs).max()) for ours in ("rewards", "corpus"))
    assert gap <= AGREE, f"{name}: CIDEr-D differs from pycocoevalcap's by {gap:.2e}"
    count = len(candidates)
    return {"set": name, "candidates": count, "references": REFERENCES, "vocabulary": len(vocabulary),
            "mean words": float(np.mean([len(c) - 1 for refs in references for c in refs])),
            "mean CIDEr-D": float(theirs.mean()), "max difference": gap,
            "pycocoevalcap s": timings.median("pycocoevalcap"), "rewards s": timings.median("rewards"),
            "corpus s": timings.median("corpus"),
            "pycocoevalcap/s": count / timings.median("pycocoevalcap"), "rewards/s": count / timings.median("rewards"),
            "corpus/s": count / timings.median("corpus"),
            "rewards ratio": timings.ratio("pycocoevalcap", "rewards"),
            "corpus ratio": timings.ratio("pycocoevalcap", "corpus")}


def bench_all(num_candidates: int, repeats: int) -> list[dict[str, object]]:
    """Both caption sets, `num_candidates` images each."""
    return [bench_cider("flickr30k-like", flickr30k_like(num_candidates), repeats),
            bench_cider("demo", demo_like(num_candidates), repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    for result in bench_all(args.candidates, args.repeats):
        print(f"{result['set']}: {result['candidates']} candidates x {result['references']} references, "
              f"V={result['vocabulary']}, {result['mean words']:.1f} words per reference, mean CIDEr-D "
              f"{result['mean CIDEr-D']:.3f}, max |ours - pycocoevalcap| {result['max difference']:.1e}")
        rewards, corpus = spread(*result["rewards ratio"]), spread(*result["corpus ratio"])
        print(f"  pycocoevalcap {result['pycocoevalcap s']:.3f} s; rewards (df once) "
              f"{result['rewards s'] * 1e3:.1f} ms: {rewards}; corpus mode {result['corpus s'] * 1e3:.1f} ms: "
              f"{corpus}", flush=True)

if __name__ == "__main__":
    main()
