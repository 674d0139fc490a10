"""Self-critical sequence training (Rennie et al., CVPR 2017) on the cached features.

For each training image the decoder samples `samples` captions; each is rewarded with its CIDEr-D
against the image's training references (`pipeline.evaluation.cider`, document frequencies from the
training references, END appended to candidates and references: see that module for why), and the
decoder follows the policy gradient

    loss = - sum over sampled tokens of (reward - baseline) * log p(token) / (number of sampled tokens)

with a baseline that does not depend on the sample: the reward of the image's greedy caption
(`greedy`, Rennie et al.: the model is pushed towards samples better than what it would say now) or
the mean reward of the image's other samples (`mean`, Luo 2020 and most codebases since). With
`xe_weight` > 0 the cross-entropy of one reference caption per image is added (the mixed objective
of Paulus et al. 2018): the reward alone pulls every image towards the one phrasing CIDEr-D likes
best, the references keep the model's other ways of saying it. With `kl_weight` > 0 the loss adds

    kl_weight x sum over sampled steps of KL(p(. | step) || p_xe(. | step)) / (number of sampled tokens)

where p_xe is the cross-entropy model the stage started from, frozen and teacher-forced on the samples:
KL-regularised policy gradient, as in RL fine-tuning of language models since (Jaques et al. 2017,
Ziegler et al. 2019). The reward moves the model only where it gains enough to pay for leaving the
cross-entropy model's distributions, which keeps that model's spread of phrasings and where it looks.

Layout: n images, S samples each, R = n*S caption rows laid out (images, samples), so every row
reads its image's features through `DecoderState` without copying them, as beam search's beams do.

    features    (n, P, E)
    tokens      (R, T)  sampled ids: words, then END (forced at the length limit), then PAD
    log_probs   (R, T)  log p of each sampled token under the model (0 on PAD), differentiable
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.evaluation.cider import CiderD
from pipeline.model.decoder import CaptionDecoder, caption_loss, coverage_penalty
from pipeline.runtime import Processes
from pipeline.text import Vocabulary, tokenize
from pipeline.training.data import TrainingData
from pipeline.training.loop import update
from pipeline.training.precision import autocast_for


@dataclasses.dataclass
class Samples:
    """Captions decoded for n images, S rows each (images, samples)."""

    tokens: torch.Tensor  # (R, T) words, END, PAD...
    log_probs: torch.Tensor  # (R, T) log-probability of each token that was sampled (0 on PAD and forced END)
    alphas: torch.Tensor  # (R, T-1, P) the attention of each decoding step (the forced END has none)
    log_distributions: torch.Tensor | None  # (R, T-1, V) log p of every word at each step (banned: -inf), if kept

    @property
    def mask(self) -> torch.Tensor:
        """(R, T) True on the tokens the decoder chose."""
        return self.log_probs != 0


def without_banned(log_probs: torch.Tensor, banned_ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the vocabulary (last dimension) renormalised with the banned words at p = 0."""
    return log_probs.index_fill(-1, banned_ids, float("-inf")).log_softmax(dim=-1)


def sample(model: CaptionDecoder, features: torch.Tensor, per_image: int, max_length: int, banned: Sequence[int],
           start: int, end: int, pad: int, greedy: bool = False, distributions: bool = False) -> Samples:
    """Sample `per_image` captions of each image of features (n, P, E), at most `max_length` words and END
    (forced at the limit, without a gradient); `greedy` takes the likeliest word instead of a sample.
    Gradients flow through the log-probabilities when grad mode is on. `distributions` keeps every step's
    whole distribution too (for the divergence from a reference model)."""
    state = model.start(features)  # n rows
    state = dataclasses.replace(state, h=state.h.repeat_interleave(per_image, 0),
                                c=state.c.repeat_interleave(per_image, 0))  # R rows, the image's features shared
    rows = state.h.size(0)
    words = torch.full((rows,), start, dtype=torch.long, device=features.device)
    alive = torch.ones(rows, dtype=torch.bool, device=features.device)
    banned_ids = torch.tensor(list(banned), dtype=torch.long, device=features.device)
    tokens, log_probs, alphas, steps = [], [], [], []
    for _ in range(max_length):
        scores, alpha, state = model.advance(state, words)  # (R, V) log-probabilities, (R, P)
        alphas.append(alpha)
        scores = without_banned(scores, banned_ids)
        if distributions:
            steps.append(scores)
        words = scores.argmax(dim=1) if greedy else torch.multinomial(scores.exp(), 1).squeeze(1)  # (R,)
        chosen = scores.gather(1, words[:, None]).squeeze(1)  # (R,)
        tokens.append(torch.where(alive, words, pad))
        log_probs.append(torch.where(alive, chosen, torch.zeros_like(chosen)))
        alive = alive & (words != end)
        if not bool(alive.any()):
            break
    tokens.append(torch.where(alive, end, pad))  # END where the limit was reached, chosen by no one
    log_probs.append(torch.zeros(rows, device=features.device))
    return Samples(torch.stack(tokens, dim=1), torch.stack(log_probs, dim=1), torch.stack(alphas, dim=1),
                   torch.stack(steps, dim=1) if distributions else None)


class Rewards:
    """CIDEr-D of sampled captions against their image's training references, END included on both sides."""

    def __init__(self, references: dict[str, list[str]], vocabulary: Vocabulary) -> None:
        self.names = sorted(references)
        self.row = {name: i for i, name in enumerate(self.names)}
        self.end, self.pad = vocabulary.end, vocabulary.pad
        self.scorer = CiderD([[[*(vocabulary.index(word) for word in tokenize(caption)), vocabulary.end]
                               for caption in references[name]] for name in self.names])

    def __call__(self, names: Sequence[str], tokens: torch.Tensor) -> np.ndarray:
        """Rewards (R,) of token rows (R, T) laid out (images, samples) for the images `names` (n,)."""
        per_image = tokens.size(0) // len(names)
        candidates = [[token for token in row if token != self.pad] for row in tokens.tolist()]
        images = np.repeat([self.row[name] for name in names], per_image)
        return self.scorer.score(candidates, images)


def baseline_rewards(rewards: np.ndarray, per_image: int, greedy: np.ndarray | None) -> np.ndarray:
    """The baseline of each sample (R,): its image's greedy reward (greedy (n,)), or the mean reward of
    the image's other samples (greedy None; needs per_image >= 2)."""
    if greedy is not None:
        return np.repeat(greedy, per_image)
    grouped = rewards.reshape(-1, per_image)  # (n, S)
    return ((grouped.sum(axis=1, keepdims=True) - grouped) / (per_image - 1)).reshape(-1)


def policy_loss(samples: Samples, advantage: torch.Tensor, token_count: float) -> torch.Tensor:
    """- sum of advantage (R,) x log p over the chosen tokens, divided by `token_count` (the global batch's)."""
    return -(advantage[:, None] * samples.log_probs).sum() / max(token_count, 1.0)


def reference_log_distributions(reference: CaptionDecoder, features: torch.Tensor, samples: Samples,
                                start: int, banned: Sequence[int]) -> torch.Tensor:
    """(R, T-1, V) the reference model's log p of every word at each step of the sampled captions (teacher
    forced on them, banned words renormalised away as in `sample`), without a gradient; features (n, P, E)."""
    steps = samples.log_distributions.size(1)
    captions = torch.cat([torch.full_like(samples.tokens[:, :1], start), samples.tokens[:, :steps]], dim=1)
    per_image = samples.tokens.size(0) // features.size(0)
    with torch.no_grad():
        logits, _ = reference(features.repeat_interleave(per_image, 0), captions)  # predicts captions[:, 1:]
        banned_ids = torch.tensor(list(banned), dtype=torch.long, device=logits.device)
        return without_banned(logits.float(), banned_ids)


def reference_divergence(samples: Samples, reference: torch.Tensor) -> torch.Tensor:
    """Sum over the chosen steps of KL(policy || reference) between the step's word distributions (R, T-1, V):
    the penalty of KL-regularised policy gradient (Jaques et al. 2017; Ziegler et al. 2019), which keeps the
    fine-tuned model's distributions, and so its spread of phrasings, near the cross-entropy model's."""
    steps = samples.mask[:, :samples.log_distributions.size(1)]  # (R, T-1)
    policy = samples.log_distributions.float().clamp_min(-1e4)  # banned words: p = 0 on both sides
    per_step = (policy.exp() * (policy - reference.clamp_min(-1e4))).sum(dim=2)  # (R, T-1)
    return per_step[steps].sum()


@dataclasses.dataclass(frozen=True)
class ScstSettings:
    """What one self-critical epoch needs of params.yaml's `scst` section."""

    samples: int
    baseline: str  # greedy | mean
    batch_size: int  # images per step, over all processes
    grad_clip: float
    amp: str
    xe_weight: float  # weight of the cross-entropy of one reference caption per image, added to the policy loss
    attention_penalty: float  # weight of the doubly stochastic attention penalty on the samples' attention
    kl_weight: float  # weight of the per-token KL divergence from `run_scst_epoch`'s reference model


def reference_cross_entropy(model: CaptionDecoder, data: TrainingData, x: torch.Tensor, rows: torch.Tensor,
                            captions_of: dict[int, list[int]]) -> tuple[torch.Tensor, float]:
    """Cross-entropy of one reference caption of each image, drawn at random (the images' feature rows (n,),
    their features x (n, P, E)): the mixed objective that keeps the model close to how people caption.
    Returns the token mean and the number of tokens it is taken over."""
    chosen = [captions_of[row][int(torch.randint(len(captions_of[row]), ()))] for row in rows.tolist()]
    lengths = data.train_set.lengths[chosen]
    tokens = data.train_set.tokens[chosen, :int(lengths.max())].to(x.device)  # (n, T)
    logits, alphas = model(x, tokens)  # (n, T-1, V), (n, T-1, P)
    targets = tokens[:, 1:]
    return (caption_loss(logits, targets, alphas, model.config.pad_index, 0.0)[1],
            float((targets != model.config.pad_index).sum()))


def captions_by_row(image_rows: torch.Tensor) -> dict[int, list[int]]:
    """Each feature row's captions, as indices into the encoded set whose image rows (C,) are given."""
    captions_of: dict[int, list[int]] = {}
    for caption, row in enumerate(image_rows.tolist()):
        captions_of.setdefault(row, []).append(caption)
    return captions_of


def image_batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The epoch's shuffled batches of image indices (the same on every process, replayed on resume)."""
    return list(torch.randperm(count, generator=generator).split(batch_size))


def run_scst_epoch(model: CaptionDecoder, data: TrainingData, rewards: Rewards, batches: list[torch.Tensor],
                   settings: ScstSettings, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   processes: Processes, banned: Sequence[int], progress: str | None = None,
                   reference: CaptionDecoder | None = None) -> dict[str, float]:
    """One self-critical pass over the training images of `batches` (global batches of indices into
    `rewards.names`; each process takes every world_size-th image of each, and a batch with fewer images
    than processes is left out); the mean reward and baseline of every process's samples, and the speeds
    of all processes together. With a `reference` model (the frozen cross-entropy model) the loss adds
    `settings.kl_weight` x the divergence from it, and the mean divergence per sampled token is returned
    as `kl`."""
    vocabulary, S = data.vocabulary, settings.samples
    autocast, _ = autocast_for(processes.device, settings.amp)
    special = {"start": vocabulary.start, "end": vocabulary.end, "pad": vocabulary.pad}
    max_length = model.config.max_caption_length
    totals = np.zeros(4)  # over this process's samples: reward, baseline, chosen tokens, KL from the reference
    images, started = 0, time.perf_counter()
    shared = [batch for batch in batches if len(batch) >= processes.world_size]
    captions_of = captions_by_row(data.train_set.image_rows) if settings.xe_weight else {}
    with tqdm(total=sum(map(len, shared)), disable=progress is None, desc=progress, unit="image", mininterval=1.0,
              leave=False) as bar:
        for batch in shared:
            names = [rewards.names[i] for i in batch[processes.rank::processes.world_size].tolist()]
            rows = data.features.rows_of(names)  # (n,)
            x = data.features[rows]  # (n, P, E)
            greedy = None
            if settings.baseline == "greedy":
                model.eval()
                with torch.no_grad(), autocast:
                    greedy = rewards(names, sample(model, x, 1, max_length, banned, greedy=True, **special).tokens)
            model.train()
            with autocast:
                samples = sample(model, x, S, max_length, banned, distributions=reference is not None, **special)
            reward = rewards(names, samples.tokens)  # (R,)
            baseline = baseline_rewards(reward, S, greedy)  # (R,)
            chosen = float(samples.mask.sum())
            advantage = torch.as_tensor(reward - baseline, dtype=torch.float32, device=processes.device)  # (R,)
            tokens = processes.sum(chosen)
            loss = policy_loss(samples, advantage, tokens)  # a token mean over the global batch
            if reference is not None:  # the stage passes one when scst.kl_weight > 0
                with autocast:
                    fixed = reference_log_distributions(reference, x, samples, vocabulary.start, banned)
                divergence = reference_divergence(samples, fixed)
                loss = loss + settings.kl_weight * divergence / max(tokens, 1.0)
                totals[3] += float(divergence.detach())
            # the means below are this process's; weighted by its share of the global batch, the gradients
            # that `update` sums over the processes are those of the global batch's mean
            if settings.attention_penalty:
                steps = samples.mask[:, :samples.alphas.size(1)]  # (R, T-1) the steps that chose a token
                share = len(names) / len(batch)  # its rows' share: every image's samples stay on one process
                loss = loss + settings.attention_penalty * share * coverage_penalty(samples.alphas, steps)
            if settings.xe_weight:
                with autocast:
                    cross_entropy, targets = reference_cross_entropy(model, data, x, rows, captions_of)
                loss = loss + settings.xe_weight * (targets / processes.sum(targets)) * cross_entropy
            update(model, loss, optimizer, scaler, settings.grad_clip, processes)
            totals[:3] += (reward.sum(), baseline.sum(), chosen)
            images += len(names)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    reward, baseline, tokens, kl, images = (processes.sum(float(value)) for value in (*totals, images))
    count = max(images * S, 1)
    return {"reward": reward / count, "baseline": baseline / count, "kl": kl / max(tokens, 1.0),
            "images_per_s": images / seconds, "sampled_tokens_per_s": tokens / seconds}
