"""Benchmark the caption decoder against the way the popular captioning tutorials write it.

1. A training step (forward, loss, backward, Adam step) in tokens/s: `CaptionDecoder` against
   `TutorialDecoder` below, sgrvinod's "Show, Attend and Tell" tutorial decoder with the same maths
   (tanh attention and initial state where the tutorial has ReLU and none): `nn.LSTMCell` on
   [embedding; gated context], the encoder-side attention projection recomputed at every step, the
   context as an elementwise product and sum, the output layer applied at every step, and the
   tutorial's shrinking batch (captions sorted by length, the first `batch_size_t` rows decoded at
   step t, scores packed with `pack_padded_sequence`). The weights are copied across and the two
   losses and gradients are checked to agree in fp32.
2. Beam search in images/s: `CaptionDecoder.generate` (all images and beams as one batch) against
   one image at a time with the beams as the batch (the tutorials' way), written to the same
   semantics, with our decoder's `step` (and, with --tutorial-beam, with the tutorial decoder);
   the captions are checked to be the same.

The variants of a row are timed in turn, alternating their order, `--repeats` times; the table gives
the median rate and the median of the per-repeat ratios, which is what to compare on a shared machine.

Run from the project root: python -m benchmarks.bench_decoder [--quick] [--repeats 3] [--beam-repeats 2]
    [--threads 1] [--tutorial-beam]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.model import CaptionDecoder, DecoderConfig, caption_loss

# the seed model: E encoder, P regions, A attention, H hidden, D embedding
E, P, A, H, D = 2048, 49, 512, 512, 300
PAD, START, END = 0, 1, 2
ATTENTION_PENALTY = 1.0
DECODE_STEPS = (9, 13)  # words + END per caption, uniform in this range
MAX_LENGTH = 20


# ----------------------------------------------------------------------------------------------
# the baseline: sgrvinod's tutorial decoder, same maths as CaptionDecoder


class TutorialAttention(nn.Module):
    """The tutorial's attention: both projections inside forward, so the encoder's is redone each step."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_att = nn.Linear(E, A)
        self.decoder_att = nn.Linear(H, A)
        self.full_att = nn.Linear(A, 1)

    def forward(self, encoder_out: torch.Tensor, decoder_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att1 = self.encoder_att(encoder_out)  # (B, P, A)
        att2 = self.decoder_att(decoder_hidden)  # (B, A)
        att = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2)  # (B, P)
        alpha = att.softmax(dim=1)  # (B, P)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha  # (B, E), (B, P)


class TutorialDecoder(nn.Module):
    """The tutorial's DecoderWithAttention: LSTMCell(D + E, H), per-step output layer, shrinking batch."""

    def __init__(self, vocab_size: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.attention = TutorialAttention()
        self.embedding = nn.Embedding(vocab_size, D)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(D + E, H)
        self.init_h = nn.Linear(E, H)
        self.init_c = nn.Linear(E, H)
        self.f_beta = nn.Linear(H, E)
        self.fc = nn.Linear(H, vocab_size)

    def forward(self, encoder_out: torch.Tensor, captions: torch.Tensor, caption_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
        """captions (B, T) with caption_lengths counting START and END; returns sorted predictions."""
        B, V = encoder_out.size(0), self.fc.out_features
        caption_lengths, order = caption_lengths.sort(descending=True)
        encoder_out, captions = encoder_out[order], captions[order]  # (B, P, E), (B, T)
        embeddings = self.embedding(captions)  # (B, T, D)
        mean = encoder_out.mean(dim=1)  # (B, E)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # (B, H)
        decode_lengths = (caption_lengths - 1).tolist()
        T = max(decode_lengths)
        predictions = torch.zeros(B, T, V)  # (B, T, V)
        alphas = torch.zeros(B, T, encoder_out.size(1))  # (B, T, P)
        for t in range(T):
            batch_size_t = sum(length > t for length in decode_lengths)
            context, alpha = self.attention(encoder_out[:batch_size_t], h[:batch_size_t])  # (b, E), (b, P)
            context = torch.sigmoid(self.f_beta(h[:batch_size_t])) * context  # (b, E)
            h, c = self.decode_step(torch.cat([embeddings[:batch_size_t, t], context], dim=1),
                                    (h[:batch_size_t], c[:batch_size_t]))  # (b, H)
            predictions[:batch_size_t, t] = self.fc(self.dropout(h))  # (b, V)
            alphas[:batch_size_t, t] = alpha
        return predictions, captions, decode_lengths, alphas


def tutorial_loss(predictions: torch.Tensor, captions: torch.Tensor, decode_lengths: list[int],
                  alphas: torch.Tensor) -> torch.Tensor:
    """The tutorial's loss: cross-entropy on the packed scores plus the doubly stochastic penalty."""
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data  # (N, V)
    targets = pack_padded_sequence(captions[:, 1:], decode_lengths, batch_first=True).data  # (N,)
    return F.cross_entropy(scores, targets) + ATTENTION_PENALTY * ((1.0 - alphas.sum(dim=1)) ** 2).mean()


@torch.no_grad()
def copy_weights(tutorial: TutorialDecoder, ours: CaptionDecoder) -> None:
    """Load the tutorial decoder's weights into ours (the fused LSTM cell takes them split and summed)."""
    cell = tutorial.decode_step
    ours.embedding.weight.copy_(tutorial.embedding.weight)
    ours.encoder_projection.load_state_dict(tutorial.attention.encoder_att.state_dict())
    ours.attention.score.load_state_dict(tutorial.attention.full_att.state_dict())
    ours.init_h.load_state_dict(tutorial.init_h.state_dict())
    ours.init_c.load_state_dict(tutorial.init_c.state_dict())
    ours.hidden_projection.weight.copy_(torch.cat([tutorial.attention.decoder_att.weight, tutorial.f_beta.weight]))
    ours.hidden_projection.bias.copy_(torch.cat([tutorial.attention.decoder_att.bias, tutorial.f_beta.bias]))
    ours.word_gates.weight.copy_(cell.weight_ih[:, :D])
    ours.word_gates.bias.copy_(cell.bias_ih + cell.bias_hh)
    ours.recurrent_gates.weight.copy_(torch.cat([cell.weight_ih[:, D:], cell.weight_hh], dim=1))
    ours.output.load_state_dict(tutorial.fc.state_dict())


def make_pair(vocab_size: int, seed: int) -> tuple[CaptionDecoder, TutorialDecoder]:
    """Our decoder and the tutorial's, with the same weights."""
    torch.manual_seed(seed)
    tutorial = TutorialDecoder(vocab_size)
    ours = CaptionDecoder(DecoderConfig(vocab_size=vocab_size, embed_dim=D, encoder_dim=E, attention_dim=A,
                                        decoder_dim=H, dropout=0.5, pad_index=PAD))
    copy_weights(tutorial, ours)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(tutorial) == count(ours) + 4 * H, "only the LSTM's second bias may differ"
    return ours, tutorial


def make_batch(batch_size: int, vocab_size: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (B, P, E), captions (B, T) = [START, words, END, PAD...], lengths (B,) with START and END."""
    steps = torch.randint(DECODE_STEPS[0], DECODE_STEPS[1] + 1, (batch_size,), generator=generator)  # words + END
    captions = torch.full((batch_size, int(steps.max()) + 1), PAD)
    for row, n in enumerate(steps.tolist()):
        captions[row, 0] = START
        captions[row, 1:n] = torch.randint(3, vocab_size, (n - 1,), generator=generator)
        captions[row, n] = END
    features = torch.randn(batch_size, P, E, generator=generator)
    return features, captions, steps + 1


# ----------------------------------------------------------------------------------------------
# training steps


def ours_loss(model: CaptionDecoder, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Our loss, as pipeline.train.run_epoch computes it."""
    logits, alphas = model(features, captions)  # (B, T-1, V), (B, T-1, P)
    return caption_loss(logits, captions[:, 1:], alphas, PAD, ATTENTION_PENALTY)[0]


def training_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                  autocast: contextlib.AbstractContextManager) -> None:
    """Forward and loss (under autocast), backward, Adam step."""
    with autocast:
        loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def check_same_maths(vocab_size: int) -> tuple[float, float]:
    """Both decoders' fp32 loss and gradients on the same weights and batch, dropout off.

    Returns the loss difference and the largest gradient difference (relative to the largest
    gradient) over the output layer, the encoder projection and the LSTM's recurrent weights.
    """
    ours, tutorial = make_pair(vocab_size, seed=0)
    ours.eval(), tutorial.eval()
    features, captions, lengths = make_batch(16, vocab_size, torch.Generator().manual_seed(1))
    ours_value, tutorial_value = ours_loss(ours, features, captions), tutorial_loss(*tutorial(features, captions, lengths))
    (ours_value + tutorial_value).backward()
    loss_difference = abs(float(ours_value.detach()) - float(tutorial_value.detach()))
    cell = tutorial.decode_step
    pairs = [(ours.output.weight.grad, tutorial.fc.weight.grad),
             (ours.encoder_projection.weight.grad, tutorial.attention.encoder_att.weight.grad),
             (ours.recurrent_gates.weight.grad, torch.cat([cell.weight_ih.grad[:, D:], cell.weight_hh.grad], dim=1))]
    gradient_difference = max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)
    assert loss_difference < 1e-4, f"V={vocab_size}: losses differ by {loss_difference:.2e}"
    assert gradient_difference < 1e-3, f"V={vocab_size}: gradients differ by {gradient_difference:.2e} (relative)"
    return loss_difference, gradient_difference


def time_variants(variants: dict[str, Callable[[], object]], repeats: int
                  ) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds per call of each variant over `repeats` rounds in alternating order, and the last results."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, object] = {}
    names = list(variants)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            results[name] = variants[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def ratio(slow: list[float], fast: list[float]) -> float:
    """Median of the paired per-repeat ratios."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def bench_training(vocab_size: int, batch_size: int, precision: str, repeats: int) -> dict[str, object]:
    """Tokens/s of a training step, ours and the tutorial's, on the same batch."""
    ours, tutorial = make_pair(vocab_size, seed=0)
    ours.train(), tutorial.train()
    generator = torch.Generator().manual_seed(2)
    features, captions, lengths = make_batch(batch_size, vocab_size, generator)
    tokens = int((lengths - 1).sum())  # real targets: words + END
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    ours_optimizer, tutorial_optimizer = torch.optim.Adam(ours.parameters()), torch.optim.Adam(tutorial.parameters())
    ours_step = lambda f, c: training_step(lambda: ours_loss(ours, f, c), ours_optimizer, autocast)  # noqa: E731
    tutorial_step = lambda f, c, l: training_step(lambda: tutorial_loss(*tutorial(f, c, l)),  # noqa: E731
                                                  tutorial_optimizer, autocast)
    small = make_batch(4, vocab_size, generator)  # warm-up: Adam's state, the kernels' first calls
    ours_step(*small[:2]), tutorial_step(*small)
    seconds, _ = time_variants({"ours": lambda: ours_step(features, captions),
                                "tutorial": lambda: tutorial_step(features, captions, lengths)}, repeats)
    return {"precision": precision, "V": vocab_size, "B": batch_size, "tokens": tokens,
            "ours": tokens / statistics.median(seconds["ours"]),
            "tutorial": tokens / statistics.median(seconds["tutorial"]),
            "ratio": ratio(seconds["tutorial"], seconds["ours"])}


# ----------------------------------------------------------------------------------------------
# beam search one image at a time, with the semantics of CaptionDecoder.generate

# a decoder as three functions: init(features (1, P, E), K) -> state; step(state, words (K,)) ->
# (log-probs (K, V), alpha (K, P), state); reorder(state, rows (K,)) -> state
Stepper = tuple[Callable, Callable, Callable]


def our_stepper(model: CaptionDecoder) -> Stepper:
    def init(features: torch.Tensor, K: int) -> tuple[torch.Tensor, ...]:
        x, projected, h, c = model.prepare_features(features)
        return x.expand(K, -1, -1), projected.expand(K, -1, -1), h.expand(K, -1), c.expand(K, -1)

    def step(state: tuple[torch.Tensor, ...], words: torch.Tensor):
        x, projected, h, c = state
        h, c, alpha = model.step(x, projected, model.word_gates(model.embedding(words)), h, c)
        return F.log_softmax(model.output(h).float(), dim=1), alpha, (x, projected, h, c)

    def reorder(state: tuple[torch.Tensor, ...], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, projected, h, c = state
        return x, projected, h[rows], c[rows]  # all K rows of x and projected are the same image

    return init, step, reorder


def tutorial_stepper(model: TutorialDecoder) -> Stepper:
    def init(features: torch.Tensor, K: int) -> tuple[torch.Tensor, ...]:
        mean = features.mean(dim=1)  # (1, E)
        h, c = torch.tanh(model.init_h(mean)), torch.tanh(model.init_c(mean))
        return features.expand(K, -1, -1), h.expand(K, -1), c.expand(K, -1)

    def step(state: tuple[torch.Tensor, ...], words: torch.Tensor):
        encoder_out, h, c = state
        context, alpha = model.attention(encoder_out, h)  # (K, E), (K, P)
        context = torch.sigmoid(model.f_beta(h)) * context
        h, c = model.decode_step(torch.cat([model.embedding(words), context], dim=1), (h, c))
        return F.log_softmax(model.fc(h), dim=1), alpha, (encoder_out, h, c)

    def reorder(state: tuple[torch.Tensor, ...], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder_out, h, c = state
        return encoder_out, h[rows], c[rows]

    return init, step, reorder


@torch.no_grad()
def beam_search_one_image(stepper: Stepper, features: torch.Tensor, beam_size: int,
                          max_length: int) -> tuple[list[int], float, int]:
    """Beam search for one image (1, P, E), beams as the batch: (words, score, steps run)."""
    init, step, reorder = stepper
    K = beam_size
    state = init(features, K)
    scores = torch.full((K,), float("-inf"))
    scores[0] = 0.0
    words = torch.full((K,), START)
    sequences = torch.empty(K, 0, dtype=torch.long)  # (K, t)
    attention = torch.empty(K, 0, features.size(1))  # (K, t, P)
    best_score, best_sequence = float("-inf"), None
    for t in range(max_length):
        log_probs, alpha, state = step(state, words)  # (K, V), (K, P)
        V = log_probs.size(1)
        top_scores, top_index = (scores.unsqueeze(1) + log_probs).view(-1).topk(min(2 * K, K * V))  # (2K,)
        source, word = top_index // V, top_index % V
        is_end = word == END
        for j in torch.nonzero(is_end[:K]).flatten().tolist():  # only a top-K candidate takes a beam
            if float(top_scores[j]) > best_score:
                best_score, best_sequence = float(top_scores[j]), sequences[source[j]].clone()
        scores, order = top_scores.masked_fill(is_end, float("-inf")).topk(K)  # (K,)
        source, words = source[order], word[order]
        state = reorder(state, source)
        sequences = torch.cat([sequences[source], words.unsqueeze(1)], dim=1)
        attention = torch.cat([attention[source], alpha[source].unsqueeze(1)], dim=1)
        if best_score >= float(scores[0]):
            break
    if best_sequence is None:
        best_score, best_sequence = float(scores[0]), sequences[0]
    return best_sequence.tolist(), best_score, t + 1


# per vocabulary size, the END bias that gives captions of about 12 words (quartiles about 9 and 14)
END_BIAS = {32: -19.5, 10_000: -15.0}


def beam_model(vocab_size: int) -> tuple[CaptionDecoder, TutorialDecoder]:
    """An eval-mode pair that decodes like a trained model: peaked next-word distributions (about
    -2 nats per word at V=10,000) and captions that end after 4-20 words.

    A fresh decoder's END is equally likely at every step, so beam search ends at once or never.
    Here hidden unit 0 counts: its input and forget gates are held open and its cell grows by 0.1
    per step from a start that varies with the image, and only that unit drives END's logit.
    """
    ours, tutorial = make_pair(vocab_size, seed=3)
    cell, counter = tutorial.decode_step, torch.arange(4) * H  # unit 0 of the gates i, f, g, o
    with torch.no_grad():
        cell.weight_ih[counter], cell.weight_hh[counter], cell.bias_hh[counter] = 0.0, 0.0, 0.0
        cell.bias_ih[counter] = torch.tensor([10.0, 10.0, 0.1, 10.0])  # c += tanh(0.1) per step
        tutorial.init_c.weight[0] *= 4.0  # start values spread over about +-0.3
        tutorial.init_c.bias[0] = 0.0
        tutorial.fc.weight.mul_(40.0)
        tutorial.fc.weight[END] = 0.0
        tutorial.fc.weight[END, 0] = 30.0
        tutorial.fc.bias[END] = END_BIAS[vocab_size]
    copy_weights(tutorial, ours)
    return ours.eval(), tutorial.eval()


def bench_beam(vocab_size: int, beam_size: int, num_images: int, repeats: int,
               with_tutorial: bool) -> dict[str, object]:
    """Images/s of beam search: batched (ours) vs one image at a time (our step; the tutorial decoder)."""
    ours, tutorial = beam_model(vocab_size)
    features = torch.randn(num_images, P, E, generator=torch.Generator().manual_seed(4))
    batched = lambda images: ours.generate(images, START, END, beam_size, MAX_LENGTH)[0]  # noqa: E731
    one_at_a_time = lambda stepper, images: [  # noqa: E731
        beam_search_one_image(stepper, image[None], beam_size, MAX_LENGTH) for image in images]
    variants = {"batched": lambda images: batched(images),
                "our step": lambda images: one_at_a_time(our_stepper(ours), images)}
    if with_tutorial:
        variants["tutorial"] = lambda images: one_at_a_time(tutorial_stepper(tutorial), images)
    for variant in variants.values():  # warm-up
        variant(features[:2])
    seconds, results = time_variants({name: lambda v=v: v(features) for name, v in variants.items()}, repeats)
    tokens = results["batched"]
    for name in variants.keys() - {"batched"}:
        different = sum(words != caption for (words, _, _), caption in zip(results[name], tokens))
        assert different == 0, f"V={vocab_size} K={beam_size}: {different} of {num_images} captions differ ({name})"
    steps = [n for _, _, n in results["our step"]]
    return {"V": vocab_size, "K": beam_size, "images": num_images,
            **{name: num_images / statistics.median(seconds[name]) for name in variants},
            **{f"ratio {name}": ratio(seconds[name], seconds["batched"]) for name in variants},
            "batched steps": max(steps), "mean steps": statistics.mean(steps),
            "mean words": statistics.mean(len(t) for t in tokens)}


# ----------------------------------------------------------------------------------------------
# where the time of a training step goes

MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"}


def kind_of(name: str, input_shapes: list, vocab_size: int) -> str:
    """The kind of a profiled operation, told from its name and input shapes."""
    if name not in MATRIX_PRODUCTS:
        return "elementwise and other"
    shapes = [shape for shape in input_shapes if isinstance(shape, list)]
    sizes = {size for shape in shapes for size in shape}
    if vocab_size in sizes:
        return "output layer"
    if E in sizes and any(len(shape) == 2 and size % P == 0 for shape in shapes for size in shape):
        return "encoder projection"  # (b*P, E) rows: no other 2-D size is a multiple of P, checked below
    return "other matrix products"


def time_split(vocab_size: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Share of the profiled self CPU time of one fp32 training step, by kind of operation.

    Matrix products are told apart by their input shapes: one with V among its sizes is the output
    layer, one with a 2-D input of a multiple of P rows (or columns) is the encoder-side attention
    projection; everything else (tanh, softmax, the gating, copies, Adam) is elementwise or other.
    """
    ours, tutorial = make_pair(vocab_size, seed=0)
    for seed in range(2, 100):  # a batch whose shrinking batch sizes are no multiple of P (see kind_of)
        features, captions, lengths = make_batch(batch_size, vocab_size, torch.Generator().manual_seed(seed))
        if all((lengths - 1 > t).sum() % P for t in range(int(lengths.max()) - 1)):
            break
    steps = {"ours": (ours, lambda: ours_loss(ours, features, captions)),
             "tutorial": (tutorial, lambda: tutorial_loss(*tutorial(features, captions, lengths)))}
    split = {}
    for name, (model, loss_fn) in steps.items():
        optimizer = torch.optim.Adam(model.parameters())
        training_step(loss_fn, optimizer, contextlib.nullcontext())  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
            training_step(loss_fn, optimizer, contextlib.nullcontext())
        shares = {"output layer": 0.0, "encoder projection": 0.0, "other matrix products": 0.0,
                  "elementwise and other": 0.0}
        for event in profile.key_averages(group_by_input_shape=True):
            shares[kind_of(event.key, event.input_shapes, vocab_size)] += event.self_cpu_time_total
        total = sum(shares.values())
        split[name] = {kind: value / total for kind, value in shares.items()} | {"ms": total / 1e3}
    return split


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per variant and row")
    parser.add_argument("--beam-repeats", type=int, default=2, help="timed beam searches per variant and row")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; more than the idle cores stalls every parallel op on a shared machine")
    parser.add_argument("--tutorial-beam", action="store_true",
                        help="also time beam search one image at a time with the tutorial decoder (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, beam_repeats = (1, 1) if args.quick else (args.repeats, args.beam_repeats)
    batch_sizes, vocab_sizes = ((4,), (32,)) if args.quick else ((64, 256), (32, 10_000))
    beam_images, beam_sizes, beam_vocab = (2, (3,), 32) if args.quick else (100, (3, 5), 10_000)
    print(f"{platform.machine()}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    started = time.perf_counter()

    for V in vocab_sizes:
        loss_difference, gradient_difference = check_same_maths(V)
        print(f"fp32, ours vs tutorial, same weights, V={V:,}: loss differs by {loss_difference:.1e}, "
              f"gradients by {gradient_difference:.1e} (relative)")

    print(f"\ntraining step (forward, loss, backward, Adam), median of {repeats}")
    print("| precision | V | B | tokens/step | ours tokens/s | tutorial tokens/s | ours / tutorial |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for precision in ("fp32", "bf16"):
        for V in vocab_sizes:
            for B in batch_sizes:
                row = bench_training(V, B, precision, repeats)
                print(f"| {precision} | {V:,} | {B} | {row['tokens']:,} | {row['ours']:,.0f} | {row['tutorial']:,.0f} "
                      f"| {row['ratio']:.2f}x |", flush=True)

    print(f"\nbeam search, V={beam_vocab:,}, max length {MAX_LENGTH}, {beam_images} images, median of {beam_repeats}")
    tutorial_columns = " one at a time, tutorial decoder | batched / that |" if args.tutorial_beam else ""
    print(f"| beams | batched images/s | one at a time, our step | batched / that |{tutorial_columns} "
          "steps (batched) | mean steps per image | mean words |")
    print("| ---: | ---: | ---: | ---: |" + " ---: | ---: |" * args.tutorial_beam + " ---: | ---: | ---: |")
    for K in beam_sizes:
        row = bench_beam(beam_vocab, K, beam_images, beam_repeats, args.tutorial_beam)
        tutorial_cells = f" {row['tutorial']:.1f} | {row['ratio tutorial']:.1f}x |" if args.tutorial_beam else ""
        print(f"| {K} | {row['batched']:.1f} | {row['our step']:.1f} | {row['ratio our step']:.1f}x |{tutorial_cells} "
              f"{row['batched steps']} | {row['mean steps']:.1f} | {row['mean words']:.1f} |", flush=True)

    B = batch_sizes[0]
    split = time_split(10_000, B)
    print(f"\none fp32 training step under the profiler, V=10,000, B={B}: share of self CPU time")
    print("| | " + " | ".join(split["ours"]) + " |")
    print("| --- |" + " ---: |" * len(split["ours"]))
    for name, shares in split.items():
        print(f"| {name} | " + " | ".join(f"{v:.0%}" if k != "ms" else f"{v:,.0f}" for k, v in shares.items()) + " |")
    print(f"\nbench_decoder: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
