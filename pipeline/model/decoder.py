"""An LSTM decoder with soft attention over cached CNN region features: what every architecture shares.

Each architecture is one small module of `pipeline.model.architectures` (the names are
`pipeline.config.ARCHITECTURES`): a subclass of `CaptionDecoder` that defines its recurrent
layers, `step` (how one word updates the state and where it looks) and `read_out` (what the word
is predicted from). Everything else is here, once: the per-channel standardisation of the
features, the word embedding, the additive attention with its projection of the features computed
once per image, the initial state from the mean feature, the LSTM cell's update, the teacher-forced
`forward` (the output layer once after the step loop) and the `start`/`advance` interface that
`pipeline.model.beam_search`, SCST's sampler and retrieval's scorer drive; then the loss.

Dimension names, used in every shape comment:
    B batch, P regions (49 for a 7x7 grid), E encoder feature size (2048), A attention size,
    H decoder hidden size, D word-embedding size, T time steps, V vocabulary size, K beams.

No I/O: checkpoints live in `pipeline.model.checkpoint`.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model.step_products import StepProducts


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Everything needed to rebuild the decoder; stored in every checkpoint.

    No defaults: a decoder is built from params.yaml's `model` section (`from_params`) or from a
    checkpoint's stored config, never from values written a second time here.
    """

    vocab_size: int
    embed_dim: int
    encoder_dim: int
    attention_dim: int
    decoder_dim: int
    dropout: float
    pad_index: int
    max_caption_length: int  # words: training captions are cut here, decoding stops here
    architecture: str  # one of pipeline.config.ARCHITECTURES

    @classmethod
    def from_params(cls, model: ModelConfig, vocab_size: int, embed_dim: int, encoder_dim: int,
                    pad_index: int) -> DecoderConfig:
        """The decoder of params.yaml's `model` section for this vocabulary, embedding and feature size."""
        return cls(vocab_size=vocab_size, embed_dim=embed_dim, encoder_dim=encoder_dim,
                   attention_dim=model.attention_dim, decoder_dim=model.decoder_dim, dropout=model.dropout,
                   pad_index=pad_index, max_caption_length=model.max_caption_length,
                   architecture=model.architecture)


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


ENERGY_BLOCK_BYTES = 2 << 20  # of the attention energy computed at a time without a gradient: about an L2 cache


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
        hidden = projected_hidden.unflatten(0, (N, K))  # (N, K, A)
        if torch.is_grad_enabled() and (projected_hidden.requires_grad or projected_features.requires_grad):
            energy = torch.tanh_(projected_features.unsqueeze(1) + hidden.unsqueeze(2))  # (N, K, P, A)
            scores = self.score(energy).squeeze(3)  # (N, K, P)
        else:
            scores = self.scores_in_blocks(projected_features, hidden)
        alpha = scores.softmax(dim=2)  # (N, K, P)
        context = torch.bmm(alpha, features)  # (N, K, E)
        return context.flatten(0, 1), alpha.flatten(0, 1)  # (N*K, E), (N*K, P)

    def scores_in_blocks(self, projected_features: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The attention scores (N, K, P) w . tanh(projected_features + hidden) + b, without a gradient,
        a block of about ENERGY_BLOCK_BYTES of the (N, K, P, A) energy at a time.

        The same values as the whole-tensor path (to float rounding), in float32 whatever the inputs'
        dtype (under bf16 autocast a CPU computes tanh in float32 anyway). Decoding and scoring step
        hundreds of rows at once, whose energy is tens to hundreds of MB: made whole, it is a fresh
        allocation at every step (the kernel zeroes its pages) that no cache holds, and the step
        spends more time there than in its matrix products; a block is reused while still in cache.
        """
        N, K, A = hidden.shape
        P = projected_features.size(1)
        scores = torch.empty(N, K, P, dtype=torch.float32, device=hidden.device)
        weight = self.score.weight[0].float()  # (A,)
        row_bytes = P * A * scores.element_size()
        images = max(1, ENERGY_BLOCK_BYTES // max(1, K * row_bytes))  # whole images to a block when they fit
        rows = K if images > 1 else max(1, ENERGY_BLOCK_BYTES // row_bytes)  # else part of one image's rows
        block = torch.empty(min(N, images) * min(K, rows) * P * A, device=hidden.device)  # reused: one allocation
        for first in range(0, N, images):
            block_images = slice(first, first + images)
            for start in range(0, K, rows):
                block_rows = slice(start, start + rows)
                projected, query = projected_features[block_images], hidden[block_images, block_rows]
                energy = block[:query.size(0) * query.size(1) * P * A].view(query.size(0), query.size(1), P, A)
                torch.add(projected.float().unsqueeze(1), query.float().unsqueeze(2), out=energy)  # (n, k, P, A)
                torch.matmul(energy.tanh_(), weight, out=scores[block_images, block_rows])
        return scores.add_(self.score.bias.float())


class CaptionDecoder(nn.Module):
    """What every architecture shares (module docstring); a subclass adds its recurrent layers,
    `step` and `read_out`.

    The LSTM cell is written out so that each step has as few matrix products as possible: the
    embedding part of the LSTM input is projected for all steps at once before the loop (teacher
    forcing knows every input word), each architecture's per-step rest is one product, and the
    output layer runs once after the loop. A step makes its products with its own weights through
    `linear`, so that in a teacher-forced pass their weight gradients are computed once for all steps.
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
        self.add_recurrent_layers(config)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(H, V)
        self.step_products: StepProducts | None = None  # set during a teacher-forced pass (`linear`)

    # -- what an architecture defines -----------------------------------------------------------

    def add_recurrent_layers(self, config: DecoderConfig) -> None:
        """Create the architecture's own layers (called before the output layer, so that parameter
        order, and with it the random initialisation, follows the module's reading order)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, projected: torch.Tensor, word_gates: torch.Tensor,
             h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step from the state (h, c) (R, H) and this step's word projected to the gates (R, 4H), for
        R caption rows laid out (images, beams) over x (N, P, E) and projected (N, P, A): the new h and
        c, what `read_out` predicts the next word from (R, ...), and the attention (R, P) behind it."""
        raise NotImplementedError

    def read_out(self, out: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of the next word from what `step` returned for it (..., F)."""
        raise NotImplementedError

    # -- shared pieces -----------------------------------------------------------------------------

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training features' per-channel mean and std (E,) used to standardise."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def start(self, features: torch.Tensor) -> DecoderState:
        """The state before the first word, for features (B, P, E): standardised, projected once for
        attention, and the initial LSTM state from the mean feature.

        Under autocast the standardised features are kept in its dtype, which is what autocast would
        cast them to for every step's attention (the mean is taken before, in float32)."""
        # float16 features converted within the subtraction: one pass, the values of (features.float() - mean) / std
        x = torch.sub(features, self.feature_mean).div_(self.feature_std).float()  # (B, P, E)
        mean = x.mean(dim=1)  # (B, E)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))  # once, not once per step
        projected = self.encoder_projection(x)  # (B, P, A)
        return DecoderState(x, projected, torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """layer(x) (B, in) -> (B, out), for the products a step makes with a weight of its own: in a
        teacher-forced pass, the weight's gradient is computed once for all steps
        (`pipeline.model.step_products`); compiled or decoding, it is plainly layer(x)."""
        if torch.compiler.is_compiling() or self.step_products is None:
            return layer(x)
        return self.step_products.linear(layer, x)

    def lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM cell's update from its summed gates (B, 4H): new (h, c)."""
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        return torch.sigmoid(o) * torch.tanh(c), c

    def attend(self, x: torch.Tensor, projected: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated attention context (B, E) and weights (B, P) of the regions, queried with h (B, H)."""
        A = self.config.attention_dim
        hidden = self.linear(self.hidden_projection, h)  # (B, A + E)
        context, alpha = self.attention(x, projected, hidden[:, :A])  # (B, E), (B, P)
        return torch.sigmoid(hidden[:, A:]) * context, alpha

    # -- training ---------------------------------------------------------------------------

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass. captions (B, T) = [START, w1..wn, END, PAD...].

        Returns logits (B, T-1, V) predicting captions[:, 1:], and attention (B, T-1, P).
        """
        state = self.start(features)
        x, projected, h, c = state.x, state.projected, state.h, state.c
        gates = self.word_gates(self.embedding(captions[:, :-1]))  # (B, T-1, 4H)
        outs, alphas = [], []
        self.step_products = StepProducts() if torch.is_grad_enabled() else None
        try:
            # unbind, not gates[:, t]: the gradient of an indexed step fills a zero (B, T-1, 4H) tensor
            # per step (quadratic in T); unbind's is one stack
            for step_gates in gates.unbind(1):
                h, c, out, alpha = self.step(x, projected, step_gates, h, c)
                outs.append(out)
                alphas.append(alpha)
        finally:
            self.step_products = None
        # the output layer once after the loop, for every step together
        logits = self.read_out(torch.stack(outs, dim=1))  # (B, T-1, V)
        return logits, torch.stack(alphas, dim=1)  # ..., (B, T-1, P)

    # -- decoding: the interface beam search drives ------------------------------------------

    def word_gate_table(self) -> torch.Tensor:
        """Every word's embedding part of the LSTM gates (V, 4H): for a caller that feeds many words through
        `advance` with the same weights, a lookup per step instead of a product (see `advance`)."""
        return self.word_gates(self.embedding.weight)

    def advance(self, state: DecoderState, words: torch.Tensor, gate_table: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """Feed words (R,): log-probabilities of the next word (R, V) in float32, attention (R, P), new state.

        gate_table: `word_gate_table()` of the current weights, if the caller keeps one (the same values
        to float rounding)."""
        word_gates = self.word_gates(self.embedding(words)) if gate_table is None else gate_table[words]
        h, c, out, alpha = self.step(state.x, state.projected, word_gates, state.h, state.c)
        log_probs = F.log_softmax(self.read_out(out).float(), dim=1)  # (R, V)
        return log_probs, alpha, dataclasses.replace(state, h=h, c=c)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor, pad_index: int,
                 attention_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over non-PAD targets plus the doubly stochastic attention penalty.

    logits (B, T, V), targets (B, T), alphas (B, T, P). The penalty pushes every region's
    attention, summed over the caption's real steps, towards 1. Returns (total, cross-entropy).
    """
    cross_entropy = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                    ignore_index=pad_index)
    return cross_entropy + attention_penalty * coverage_penalty(alphas, targets != pad_index), cross_entropy


def coverage_penalty(alphas: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The doubly stochastic attention penalty (Xu et al. 2015): the mean over captions and regions of
    (1 - the region's attention summed over the caption's steps)^2. alphas (B, T, P), steps (B, T) True
    on the caption's real steps."""
    coverage = (alphas * steps.unsqueeze(2).to(alphas.dtype)).sum(dim=1)  # (B, P)
    return ((1.0 - coverage) ** 2).mean()
