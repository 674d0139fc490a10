"""An LSTM decoder with soft attention over cached CNN region features, in two architectures.

- `spatial` (the default for new models): the spatial attention of Lu et al., "Knowing When to
  Look" (CVPR 2017), with the image reaching the words only through attention: the LSTM reads
  the word alone (its state starts from the mean feature), attention is queried with the NEW state
  h_t, and the word is read out from tanh(W [context_t; h_t]). The context that names a word is
  the one attended while choosing it, so the attention of `circle` must find the circle: on the
  shapes demo its attention lands on the named object more often than Show, Attend and Tell's, and
  the step's recurrent product is 5x smaller. Two variants were worse there (docs/demo.md): Lu et
  al.'s mean image feature as LSTM input at every step (the words could be read from it, bypassing
  attention) and their read-out W_p (c_t + h_t) (the state alone carried the caption).
- `sat`: Show, Attend and Tell (Xu et al., ICML 2015), as in the reference tutorials: attention is
  queried with the PREVIOUS state h_{t-1}, its gated context is LSTM input, and the word is read
  out from h_t alone. Kept for comparison with those implementations and for older checkpoints
  (a stored config without `architecture` is this one).

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
    architecture: str = "sat"  # sat | spatial (see the module docstring); checkpoints without it are sat


@dataclasses.dataclass(frozen=True)
class DecoderState:
    """What the decoder carries from one step to the next.

    Rows are laid out (images, beams): x and projected hold one row per image, shared by that
    image's K beams; h and c one row per caption being decoded, image i's beams being rows
    i*K .. i*K + K-1, where K = (caption rows) / (image rows). Teacher forcing and `start` have
    K = 1; beam search makes K rows per image without copying the image's features.
    """

    x: torch.Tensor  # (N, P, E) standardised features
    projected: torch.Tensor  # (N, P, A) their attention projection
    h: torch.Tensor  # (N*K, H)
    c: torch.Tensor  # (N*K, H)

    @property
    def beams(self) -> int:
        """K, the caption rows per image."""
        return self.h.size(0) // self.x.size(0) if self.x.size(0) else 1

    def _indexed(self, images: torch.Tensor | None, rows: torch.Tensor) -> DecoderState:
        """The image rows at `images` (kept whole, not copied, when None) and the caption rows at `rows`."""
        x, projected = (self.x, self.projected) if images is None else (self.x[images], self.projected[images])
        return DecoderState(x, projected, self.h[rows], self.c[rows])

    def select(self, rows: torch.Tensor) -> DecoderState:
        """The state of the given caption rows (R,), in that order, one image row each (K = 1).

        General but copies each row's image features; beam search uses `select_beams`.
        """
        images = rows // self.beams if self.beams > 1 else rows
        return self._indexed(images, rows)

    def select_beams(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> DecoderState:
        """The state of caption rows (R,) laid out (images, beams), R / n beams for each of n images.

        `images` (n,) are the images kept, in order (all of them when None: x and projected are then
        shared, not copied). rows[j] must be a row of image images[j // (R / n)] (of image
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


ARCHITECTURES = ("spatial", "sat")


class CaptionDecoder(nn.Module):
    """LSTM decoder with soft attention, `spatial` or `sat` (module docstring).

    The LSTM cell is written out so that each step has as few matrix products as possible: the
    embedding part of the input is projected for all steps at once before the loop (teacher forcing
    knows every input word), the per-step rest is one product
    ([context; h] for sat, h for spatial), and the output layer runs once after the loop. sat is the
    same function as `nn.LSTMCell(D + E, H)` with attention before it.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        if config.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown decoder architecture {config.architecture!r}; "
                             f"expected one of {', '.join(ARCHITECTURES)}")
        self.config = config
        self.spatial = config.architecture == "spatial"
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
        if self.spatial:
            self.recurrent_gates = nn.Linear(H, 4 * H, bias=False)  # h part
            self.combine = nn.Linear(E + H, H)  # [context; h] -> what the output layer reads
        else:
            self.recurrent_gates = nn.Linear(E + H, 4 * H, bias=False)  # [context; h] part
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(H, V)

    # -- pieces ---------------------------------------------------------------------------

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training features' per-channel mean and std (E,) used to standardise."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def start(self, features: torch.Tensor) -> DecoderState:
        """The state before the first word, for features (B, P, E): standardised, projected once for
        attention, and the initial LSTM state from the mean feature."""
        x = (features.float() - self.feature_mean) / self.feature_std  # (B, P, E)
        projected = self.encoder_projection(x)  # (B, P, A)
        mean = x.mean(dim=1)  # (B, E)
        return DecoderState(x, projected, torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))

    def lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM cell's update from its summed gates (B, 4H): new (h, c)."""
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        return torch.sigmoid(o) * torch.tanh(c), c

    def attend(self, x: torch.Tensor, projected: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated attention context (B, E) and weights (B, P) of the regions, queried with h (B, H)."""
        A = self.config.attention_dim
        hidden = self.hidden_projection(h)  # (B, A + E)
        context, alpha = self.attention(x, projected, hidden[:, :A])  # (B, E), (B, P)
        return torch.sigmoid(hidden[:, A:]) * context, alpha

    def read_out(self, context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of the next word from the step's context (..., E) and new state (..., H)."""
        if self.spatial:  # Lu et al. read out W_p (c_t + h_t); a learnt mix of the two (one product) here
            return self.output(self.dropout(torch.tanh(self.combine(torch.cat([context, h], dim=-1)))))
        return self.output(self.dropout(h))

    def step(self, x: torch.Tensor, projected: torch.Tensor, word_gates: torch.Tensor,
             h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step from the state (h, c) and this step's word, projected to the gates (B, 4H):
        new h, c, and the attention context (B, E) and weights (B, P) that go with the word it predicts."""
        if self.spatial:  # update with the word, then look with the new state
            h, c = self.lstm(word_gates + self.recurrent_gates(h), c)
            context, alpha = self.attend(x, projected, h)
        else:  # look with the previous state, then update with the word and what was seen
            context, alpha = self.attend(x, projected, h)
            h, c = self.lstm(word_gates + self.recurrent_gates(torch.cat([context, h], dim=1)), c)
        return h, c, context, alpha

    # -- training ---------------------------------------------------------------------------

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass. captions (B, T) = [START, w1..wn, END, PAD...].

        Returns logits (B, T-1, V) predicting captions[:, 1:], and attention (B, T-1, P).
        """
        state = self.start(features)
        x, projected, h, c = state.x, state.projected, state.h, state.c
        gates = self.word_gates(self.embedding(captions[:, :-1]))  # (B, T-1, 4H)
        hiddens, contexts, alphas = [], [], []
        # unbind, not gates[:, t]: the gradient of an indexed step fills a zero (B, T-1, 4H) tensor
        # per step (quadratic in T); unbind's is one stack
        for step_gates in gates.unbind(1):
            h, c, context, alpha = self.step(x, projected, step_gates, h, c)
            hiddens.append(h)
            alphas.append(alpha)
            if self.spatial:
                contexts.append(context)
        hidden = torch.stack(hiddens, dim=1)  # (B, T-1, H)
        # the output layer once after the loop, for every step together
        logits = self.read_out(torch.stack(contexts, dim=1) if self.spatial else None, hidden)  # (B, T-1, V)
        return logits, torch.stack(alphas, dim=1)  # ..., (B, T-1, P)

    # -- decoding: the interface beam search drives ------------------------------------------

    def advance(self, state: DecoderState, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """Feed words (B,): log-probabilities of the next word (B, V) in float32, attention (B, P), new state."""
        h, c, context, alpha = self.step(state.x, state.projected, self.word_gates(self.embedding(words)),
                                         state.h, state.c)
        log_probs = F.log_softmax(self.read_out(context, h).float(), dim=1)  # (B, V)
        return log_probs, alpha, dataclasses.replace(state, h=h, c=c)


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
