"""Retrieval at Flickr8k's size: the likelihood re-ranking one image at a time against grouped by image.

Data (deterministic): 1,000 images of random float16 features (49 x 2048, the ReLU of a normal, like
the last convolution's maps); generated captions as repetitive as a captioner's: 300 captions of
8-12 words drawn for the images with Zipf frequencies (rank^-1), so that ~200 are distinct and the
commonest describes ~160 images (Flickr8k's random-encoder model made 108 distinct captions for
1,000 images); 5,000 queries, 5 per image (the answer), of 8-20 words (Flickr-like gamma lengths,
mean 12.3), about a third of their words from their image's caption and the rest drawn with Zipf
frequencies (rank^-1.1) from a 2,537-token vocabulary (Flickr8k's with min_count 5). The first stage
is the real one: BM25 over the captions, `retrieval.candidates` (20) per query; repetitive captions
make some images candidates of ~470 queries and 29% of the images of none. The
decoder has the seed's sizes (E=2048, A=H=512, D=300, params.yaml's architecture) and random weights,
made to depend on the image: the output bias is the words' log-frequencies, the output weights
are scaled up and the features' standard deviation set low, so that a word costs about 7 nats and
a query's 20 candidates differ by about a nat (standard deviation 1.3).

Timed, in turn in this process, each scoring every distinct query against its 20 candidates plus
its query prior (`prior: mean`), which is what the retrieval stage's per-query time counts:
- one at a time: the scorer as it was before the grouping (`baseline_pairs`, `baseline_given` below: one
  image at a time, its queries sharing prefixes, the features of 256 images read at a time);
- grouped fp32, (where the CPU multiplies bf16 natively) grouped bf16 and (where it has int8 dot
  products, AVX512-VNNI or AVX-VNNI) grouped int8: `LikelihoodScorer`.
Reported: ms per query each way, the ratio, and how the answers' ranks agree (same rank for how
many queries, Recall@1/5/10 and median rank of each).

OpenMP's wait policy matters here: the scorer's step is many operations of a few hundred
microseconds, and with OMP_WAIT_POLICY=PASSIVE (what benchmarks.run sets for its other sections,
for shared machines) each one wakes a sleeping thread. This module leaves the policy to the
environment, and benchmarks.run runs it in a child process with OpenMP's default (threads spin a
while before sleeping), as the retrieval stage runs. The policy is printed with the machine.

Run alone: python -m benchmarks.retrieval_bench [--images 1000] [--queries 5000] [--repeats 1] [--threads 2]
[--bf16 auto|always|never] [--int8 auto|always|never] [--batch-size N] [--json PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Timings, machine_line, spread, time_variants
from benchmarks.flickr30k_like import words
from pipeline.config import ModelConfig, RetrievalConfig, load_section
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig
from pipeline.retrieval.likelihood import LikelihoodScorer, corrected, encode_queries, evaluating
from pipeline.retrieval.metrics import rank_counts, rerank, retrieval_scores
from pipeline.retrieval.text_index import CaptionIndex, top_candidates
from pipeline.runtime import cpu_has_bf16, cpu_has_int8_dot
from pipeline.text import SPECIAL_TOKENS, Vocabulary

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
E, P, A, H, D = 2048, 49, 512, 512, 300  # the seed model's sizes
VOCABULARY = 2_537  # Flickr8k's tokens (official split, min_count 5), special tokens counted
QUERY_WORDS, QUERY_GAMMA, CAPTION_WORDS = (8, 20), (5.0, 2.4), (8, 12)  # gamma: Flickr's mean ~12 words
ZIPF, FROM_CAPTION, SHARPNESS, FEATURE_STD = 1.1, 0.35, 6.0, 0.25
CAPTION_POOL, POOL_ZIPF = 0.3, 1.0  # generated captions repeat: ~200 distinct of 1,000, the commonest ~90 times
BASELINE_CHUNK = 256  # images whose features the old scorer reads at a time (its batch_size)
VARIANTS = ("one at a time", "grouped fp32", "grouped bf16", "grouped int8")


# -- the old scorer, as pipeline/retrieval/likelihood.py had it before the grouping -------------------


def baseline_log_likelihood(model: CaptionDecoder, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities (B,) of tokens[:, 1:] given one image's features (P, E), prefixes shared."""
    pad = model.config.pad_index
    start = model.start(features[None])  # 1 row
    h, c = start.h, start.c  # (N, H): one row per distinct prefix decoded so far
    total = torch.zeros(tokens.size(0), device=tokens.device)  # (B,)
    node = torch.zeros(tokens.size(0), dtype=torch.long, device=tokens.device)  # (B,)
    for t in range(1, tokens.size(1)):
        target = tokens[:, t]  # (B,)
        live = (target != pad).nonzero().squeeze(1)  # (L,)
        if not len(live):
            break
        keys = torch.stack([node[live], tokens[live, t - 1]], dim=1)  # (L, 2)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (U, 2), (L,)
        state = dataclasses.replace(start, h=h[unique[:, 0]], c=c[unique[:, 0]])  # one image, U rows of it
        log_probs, _, state = model.advance(state, unique[:, 1])  # (U, V)
        h, c = state.h, state.c
        total[live] += log_probs[inverse, target[live]]
        node[live] = inverse
    return total


def baseline_pairs(model: CaptionDecoder, features_of, tokens: torch.Tensor, query_rows: np.ndarray,
                   image_rows: np.ndarray) -> np.ndarray:
    """Scores (M,) of the pairs: the old `LikelihoodScorer.pairs`, one image at a time."""
    pad = model.config.pad_index
    lengths = (tokens != pad).sum(dim=1).numpy()  # (Q,)
    order = np.lexsort((*tokens.numpy()[query_rows].T[::-1], image_rows))
    scores = np.empty(len(order), dtype=np.float64)
    images, first = np.unique(image_rows[order], return_index=True)
    bounds = [*first.tolist(), len(order)]
    with evaluating(model):
        for group in range(0, len(images), BASELINE_CHUNK):
            chunk = features_of(images[group:group + BASELINE_CHUNK])  # (G, P, E)
            for offset, features in enumerate(chunk):
                pairs = order[bounds[group + offset]:bounds[group + offset + 1]]
                length = int(lengths[query_rows[pairs]].max())
                scored = baseline_log_likelihood(model, features, tokens[query_rows[pairs], :length])
                scores[pairs] = scored.double().numpy()
    return scores


def baseline_given(model: CaptionDecoder, tokens: torch.Tensor, features: torch.Tensor) -> np.ndarray:
    """Scores (Q,) of every query given one context (P, E): the old `LikelihoodScorer.given`."""
    with evaluating(model):
        return baseline_log_likelihood(model, features, tokens).double().numpy()


# -- the data ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    vocabulary: Vocabulary
    features: torch.Tensor  # (N, P, E) float16
    captions: list[str]  # (N,) generated captions, what BM25 indexes
    queries: list[str]  # (Q,)
    answers: np.ndarray  # (Q,) each query's image


def make_data(num_images: int, num_queries: int, seed: int = 0) -> Data:
    """Features, captions and queries as the module docstring says."""
    rng = np.random.default_rng(seed)
    vocabulary = Vocabulary(SPECIAL_TOKENS + tuple(words(VOCABULARY - len(SPECIAL_TOKENS))))
    known = np.array(vocabulary.words[len(SPECIAL_TOKENS):])
    frequency = zipf(len(known), ZIPF)
    pool = [rng.choice(known, rng.integers(CAPTION_WORDS[0], CAPTION_WORDS[1] + 1), p=frequency)
            for _ in range(max(1, round(CAPTION_POOL * num_images)))]
    captions = [pool[i] for i in rng.choice(len(pool), num_images, p=zipf(len(pool), POOL_ZIPF))]
    answers = np.arange(num_queries) % num_images
    lengths = np.clip(np.rint(rng.gamma(*QUERY_GAMMA, num_queries)), *QUERY_WORDS).astype(int)
    queries = []
    for image, length in zip(answers, lengths):
        drawn = rng.choice(known, length, p=frequency)
        own = rng.random(length) < FROM_CAPTION
        drawn[own] = rng.choice(captions[image], int(own.sum()))
        queries.append(" ".join(drawn))
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_images, P, E, generator=generator).relu_().half()  # (N, P, E), like post-ReLU maps
    return Data(vocabulary, features, [" ".join(caption) for caption in captions], queries, answers)


def zipf(count: int, exponent: float) -> np.ndarray:
    """Probabilities (count,) proportional to rank^-exponent."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def make_decoder(vocabulary: Vocabulary, seed: int = 0) -> CaptionDecoder:
    """The seed-sized decoder with random weights, its output layer made to score like a trained one."""
    torch.manual_seed(seed)
    architecture = load_section(ModelConfig, ROOT / "params.yaml").architecture
    model = build_decoder(DecoderConfig(vocab_size=len(vocabulary), embed_dim=D, encoder_dim=E, attention_dim=A,
                                        decoder_dim=H, dropout=0.5, pad_index=vocabulary.pad, max_caption_length=30,
                                        architecture=architecture))
    with torch.no_grad():
        ranks = torch.arange(1, len(vocabulary) + 1, dtype=torch.float32)
        model.output.bias.copy_(-ZIPF * ranks.log())
        model.output.weight.mul_(SHARPNESS)
        # the statistics training would set; a small std makes the features count: candidates differ by ~1 nat
        mean = torch.randn(E, generator=torch.Generator().manual_seed(seed)).relu_()
        model.set_feature_statistics(mean, torch.full((E,), FEATURE_STD))
    return model.eval()


# -- timing -------------------------------------------------------------------------------------------


class StepCounter:
    """Counts the decoder rows (padding rows included) each variant steps, by wrapping the model class's
    `advance` (so that the int8 scorer's copy of the model is counted too; for this process only)."""

    def __init__(self, model: CaptionDecoder) -> None:
        self.rows, self.counted = {}, 0
        decoder_class, plain, counter = type(model), type(model).advance, self

        def advance(decoder: CaptionDecoder, state: object, words: torch.Tensor, *rest: object) -> object:
            counter.counted += len(words)
            return plain(decoder, state, words, *rest)

        decoder_class.advance = advance

    def counting(self, name: str, run: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        """`run`, keeping the rows its last call stepped as rows[name]."""
        def counted() -> np.ndarray:
            self.counted = 0
            result = run()
            self.rows[name] = self.counted
            return result
        return counted


def answer_ranks(first: np.ndarray, candidates: np.ndarray, final: np.ndarray, answers: np.ndarray
                 ) -> tuple[np.ndarray, dict[str, float]]:
    """Each answer's expected rank (Q,) among all images, and the retrieval scores."""
    better, tied = rank_counts(rerank(first, candidates, final), answers)
    return better + 1 + tied / 2, retrieval_scores(better, tied)


def bench_retrieval(num_images: int, num_queries: int, repeats: int, bf16: bool | None = None,
                    int8: bool | None = None, batch_size: int | None = None) -> dict[str, object]:
    """ms per query of the old scorer and the grouped one, fp32, (bf16: None = where native) bf16 and
    (int8: None = where the CPU has int8 dot products) int8, and how each one's answer ranks and recalls
    compare with the old one's. batch_size: the grouped scorer's pairs at once (None: params.yaml's)."""
    data = make_data(num_images, num_queries)
    model = make_decoder(data.vocabulary)
    options = load_section(RetrievalConfig, ROOT / "params.yaml")
    tokens = encode_queries(data.queries, data.vocabulary, model.config.max_caption_length)  # (Q, T)
    first = CaptionIndex(data.captions).score_matrix(data.queries)  # (Q, N)
    candidates = top_candidates(first, options.candidates)  # (Q, C)
    query_rows = np.repeat(np.arange(len(tokens)), candidates.shape[1])
    context = data.features.float().mean(0)  # (P, E): the query prior's context, `prior: mean`

    def features_of(rows: np.ndarray) -> torch.Tensor:
        return data.features[torch.as_tensor(rows)]

    def one_at_a_time() -> np.ndarray:
        raw = baseline_pairs(model, features_of, tokens, query_rows, candidates.reshape(-1)).reshape(candidates.shape)
        return corrected(raw, baseline_given(model, tokens, context))

    def grouped(precision: str) -> np.ndarray:
        scorer = LikelihoodScorer(model, data.vocabulary, features_of, CPU, batch_size or options.batch_size, precision)
        return corrected(scorer.matrix(tokens, candidates), scorer.given(tokens, context))

    variants = {"one at a time": one_at_a_time, "grouped fp32": lambda: grouped("fp32")}
    if cpu_has_bf16() if bf16 is None else bf16:
        variants["grouped bf16"] = lambda: grouped("bf16")
    if cpu_has_int8_dot() if int8 is None else int8:
        variants["grouped int8"] = lambda: grouped("int8")
    steps = StepCounter(model)
    timings: Timings = time_variants({name: steps.counting(name, run) for name, run in variants.items()}, repeats)
    reference, _ = answer_ranks(first, candidates, timings.results["one at a time"], data.answers)
    result: dict[str, object] = {"images": num_images, "queries": len(tokens), "pairs": len(query_rows),
                                 "candidate recall": 100.0 * float((candidates == data.answers[:, None]).any(1).mean()),
                                 "native bf16": cpu_has_bf16()}
    for name in variants:
        final = timings.results[name]
        ranks, scores = answer_ranks(first, candidates, final, data.answers)
        result[name] = {"ms/query": 1000 * timings.median(name) / len(tokens),
                        "cpu ms/query": 1000 * statistics.median(timings.cpu[name]) / len(tokens), **scores,
                        "same rank": int((ranks == reference).sum()), "rows/query": steps.rows[name] / len(tokens),
                        "score gap": float(np.abs(final - timings.results["one at a time"]).max())}
        if name != "one at a time":
            result[name]["ratio"] = timings.ratio("one at a time", name)
    return result


def describe(result: dict[str, object]) -> list[str]:
    """Lines for a person: the data, then each variant's time, ratio and rank agreement."""
    lines = [f"{result['queries']} queries x 20 candidates over {result['images']} images ({result['pairs']} pairs; "
             f"the answer among the candidates for {result['candidate recall']:.1f}%)"]
    for name in VARIANTS:
        if name in result:
            row = result[name]
            ratio = f", old / this {spread(*row['ratio'])}" if "ratio" in row else ""
            emulated = " (emulated: no native bf16 here)" if "bf16" in name and not result["native bf16"] else ""
            lines.append(f"{name}{emulated}: {row['ms/query']:.1f} ms/query wall, {row['cpu ms/query']:.1f} CPU"
                         f"{ratio}; {row['rows/query']:.0f} decoder rows per query; "
                         f"R@1 {row['r1']:.2f} R@5 {row['r5']:.2f} R@10 {row['r10']:.2f} median rank "
                         f"{row['median_rank']:g}; the answer ranks as the old scorer's for {row['same rank']} of "
                         f"{result['queries']} queries; scores within {row['score gap']:.2g} nats of its")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto",
                        help="time grouped bf16: where native (auto), even emulated (always: its time says "
                             "nothing, its ranks do), or not")
    parser.add_argument("--int8", choices=("auto", "always", "never"), default="auto",
                        help="time grouped int8: where the CPU has int8 dot products (auto), always, or not")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="(query, image) pairs the grouped scorer steps at once (default: params.yaml's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{machine_line()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(OpenMP default)')}", flush=True)
    choice = {"auto": None, "always": True, "never": False}
    result = bench_retrieval(args.images, args.queries, args.repeats, choice[args.bf16], choice[args.int8],
                             args.batch_size)
    for line in describe(result):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
