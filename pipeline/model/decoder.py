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


@dataclasses.dataclass(frozen=True)
class DecoderState:
    """What the decoder carries from one step to the next, one row per caption being decoded."""

    x: torch.Tensor  # (B, P, E) standardised features
    projected: torch.Tensor  # (B, P, A) their attention projection, computed once
    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)

    def select(self, rows: torch.Tensor) -> DecoderState:
        """The state of the given rows (R,), in that order."""
        return DecoderState(self.x[rows], self.projected[rows], self.h[rows], self.c[rows])


class Attention(nn.Module):
    """Additive (Bahdanau) attention of the decoder state over the P image regions."""

    def __init__(self, attention_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, projected_features: torch.Tensor,
                projected_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # features (B, P, E), projected_features (B, P, A), projected_hidden (B, A)
        energy = torch.tanh(projected_features + projected_hidden.unsqueeze(1))  # (B, P, A)
        alpha = self.score(energy).squeeze(2).softmax(dim=1)  # (B, P)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, E)
        return context, alpha


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
