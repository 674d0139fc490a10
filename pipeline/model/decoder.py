"""Show, Attend and Tell: an LSTM decoder with soft attention over cached CNN region features.

Dimension names, used in every shape comment:
    B batch, P regions (49 for a 7x7 grid), E encoder feature size (2048), A attention size,
    H decoder hidden size, D word-embedding size, T time steps, V vocabulary size, K beams.

The file reads top to bottom: configuration, attention, the decoder (one step, the
teacher-forced forward, and the start/advance interface that `pipeline.model.beam_search`
drives), then the loss. No I/O: checkpoints live in `pipeline.model.checkpoint`.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Everything needed to rebuild the decoder; stored in every checkpoint."""

    vocab_size: int
    embed_dim: int = 300
    encoder_dim: int = 2048
    attention_dim: int = 512
    decoder_dim: int = 512
    dropout: float = 0.5
    pad_index: int = 0
    max_caption_length: int = 30  # words: training captions are cut here, decoding stops here


PER_IMAGE = {"per": "image"}  # DecoderState field metadata: one row per image, shared by its beams


@dataclasses.dataclass(frozen=True)
class DecoderState:
    """What the decoder carries from one step to the next.

    Rows are laid out (images, beams): the fields marked PER_IMAGE hold one row per image, shared by
    that image's K beams, and every other tensor field one row per caption being decoded, image i's
    beams being rows i*K .. i*K + K-1, where K = (caption rows) / (image rows). Teacher forcing and
    `start` have K = 1; beam search makes K rows per image without copying the image's features.
    A field is per caption row unless its metadata is PER_IMAGE; fields that are not tensors are
    carried as they are.
    """

    x: torch.Tensor = dataclasses.field(metadata=PER_IMAGE)  # (N, P, E) standardised features
    projected: torch.Tensor = dataclasses.field(metadata=PER_IMAGE)  # (N, P, A) their attention projection
    h: torch.Tensor  # (N*K, H)
    c: torch.Tensor  # (N*K, H)

    @property
    def beams(self) -> int:
        """K, the caption rows per image."""
        return self.h.size(0) // self.x.size(0) if self.x.size(0) else 1

    def _indexed(self, images: torch.Tensor | None, rows: torch.Tensor) -> DecoderState:
        """Per-image fields at `images` (kept whole when None), every other tensor field at `rows`."""
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, torch.Tensor):
                continue
            if field.metadata.get("per") == "image":
                if images is not None:
                    changes[field.name] = value[images]
            else:
                changes[field.name] = value[rows]
        return dataclasses.replace(self, **changes)

    def select(self, rows: torch.Tensor) -> DecoderState:
        """The state of the given caption rows (R,), in that order, one image row each (K = 1).

        General but copies each row's image features; beam search uses `select_beams`.
        """
        images = rows // self.beams if self.beams > 1 else rows
        return self._indexed(images, rows)

    def select_beams(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> DecoderState:
        """The state of caption rows (R,) laid out (images, beams), R / n beams for each of n images.

        `images` (n,) are the images kept, in order (all of them when None: the per-image fields are
        then shared, not copied). rows[j] must be a row of image images[j // (R / n)] (of image
        j // (R / n) when `images` is None): what a beam search's reordering of beams and dropping of
        finished images produce. Not checked here, where it would cost a sync per step;
        tests/test_beam_search.py checks that beams never mix images.
        """
        n = self.x.size(0) if images is None else images.numel()
        if n and rows.numel() % n:
            raise ValueError(f"{rows.numel()} rows cannot be laid out as beams of {n} images")
        return self._indexed(images, rows)


class Attention(nn.Module):
    """Additive (Bahdanau) attention of the decoder state over the P image regions."""

    def __init__(self, attention_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, projected_features: torch.Tensor,
                projected_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (N*K, E) and attention (N*K, P) of K rows per image (rows laid out (images, beams)).

        features (N, P, E) and projected_features (N, P, A), one row per image; projected_hidden
        (N*K, A). Each image's K rows attend to that image's features without copying them.
        """
        N, P = features.shape[:2]
        K = projected_hidden.size(0) // N if N else 1
        hidden = projected_hidden.unflatten(0, (N, K)).unsqueeze(2)  # (N, K, 1, A)
        energy = torch.tanh_(projected_features.unsqueeze(1) + hidden)  # (N, K, P, A)
        alpha = self.score(energy).squeeze(3).softmax(dim=2)  # (N, K, P)
        context = torch.bmm(alpha, features)  # (N, K, E)
        return context.flatten(0, 1), alpha.flatten(0, 1)  # (N*K, E), (N*K, P)


class CaptionDecoder(nn.Module):
    """LSTM decoder whose input at each step is [word embedding; gated attention context].

    The LSTM cell is written out so that the three matrix products of a step become two:
    the embedding part of the input is projected for all steps at once before the loop
    (teacher forcing knows every input word), and [context; h] -> gates is one product.
    This is the same function as `nn.LSTMCell(D + E, H)`.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        E, A, H, D, V = (config.encoder_dim, config.attention_dim, config.decoder_dim,
                         config.embed_dim, config.vocab_size)
        # per-channel standardisation of the features, set from the training split
        self.register_buffer("feature_mean", torch.zeros(E))
        self.register_buffer("feature_std", torch.ones(E))
        self.embedding = nn.Embedding(V, D, padding_idx=config.pad_index)
        self.encoder_projection = nn.Linear(E, A)  # applied once per image, not per step
        self.attention = Attention(A)
        self.init_h = nn.Linear(E, H)
        self.init_c = nn.Linear(E, H)
        # h -> [attention projection (A); context gate (E)] in one product
        self.hidden_projection = nn.Linear(H, A + E)
        self.word_gates = nn.Linear(D, 4 * H)  # embedding part of the LSTM input
        self.recurrent_gates = nn.Linear(E + H, 4 * H, bias=False)  # [context; h] part
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(H, V)

    # -- pieces ---------------------------------------------------------------------------

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training features' per-channel mean and std (E,) used to standardise."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def prepare_features(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Standardise, project once for attention, and build the initial LSTM state."""
        x = (features.float() - self.feature_mean) / self.feature_std  # (B, P, E)
        projected = self.encoder_projection(x)  # (B, P, A)
        mean = x.mean(dim=1)  # (B, E)
        return x, projected, torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # ..., (B, H), (B, H)

    def step(self, x: torch.Tensor, projected: torch.Tensor, word_gates: torch.Tensor,
             h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step: attend with h, gate the context, update the LSTM state."""
        A = self.config.attention_dim
        hidden = self.hidden_projection(h)  # (B, A + E)
        context, alpha = self.attention(x, projected, hidden[:, :A])  # (B, E), (B, P)
        context = torch.sigmoid(hidden[:, A:]) * context  # (B, E)
        gates = word_gates + self.recurrent_gates(torch.cat([context, h], dim=1))  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
        return h, c, alpha

    # -- training ---------------------------------------------------------------------------

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass. captions (B, T) = [START, w1..wn, END, PAD...].

        Returns logits (B, T-1, V) predicting captions[:, 1:], and attention (B, T-1, P).
        """
        x, projected, h, c = self.prepare_features(features)
        word_gates = self.word_gates(self.embedding(captions[:, :-1]))  # (B, T-1, 4H)
        hiddens, alphas = [], []
        for t in range(captions.size(1) - 1):
            h, c, alpha = self.step(x, projected, word_gates[:, t], h, c)
            hiddens.append(h)
            alphas.append(alpha)
        hidden = torch.stack(hiddens, dim=1)  # (B, T-1, H)
        logits = self.output(self.dropout(hidden))  # (B, T-1, V): one product after the loop
        return logits, torch.stack(alphas, dim=1)  # ..., (B, T-1, P)

    # -- decoding: the interface beam search drives ------------------------------------------

    def start(self, features: torch.Tensor) -> DecoderState:
        """The state before the first word, for features (B, P, E)."""
        x, projected, h, c = self.prepare_features(features)
        return DecoderState(x, projected, h, c)

    def advance(self, state: DecoderState, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """Feed words (B,): log-probabilities of the next word (B, V) in float32, attention (B, P), new state."""
        h, c, alpha = self.step(state.x, state.projected, self.word_gates(self.embedding(words)), state.h, state.c)
        log_probs = F.log_softmax(self.output(h).float(), dim=1)  # (B, V)
        return log_probs, alpha, DecoderState(state.x, state.projected, h, c)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor, pad_index: int,
                 attention_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over non-PAD targets plus the doubly stochastic attention penalty.

    logits (B, T, V), targets (B, T), alphas (B, T, P). The penalty pushes every region's
    attention, summed over the caption's real steps, towards 1. Returns (total, cross-entropy).
    """
    cross_entropy = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                    ignore_index=pad_index)
    mask = (targets != pad_index).unsqueeze(2).to(alphas.dtype)  # (B, T, 1)
    coverage = (alphas * mask).sum(dim=1)  # (B, P)
    penalty = ((1.0 - coverage) ** 2).mean()
    return cross_entropy + attention_penalty * penalty, cross_entropy
