"""Show, Attend and Tell: an LSTM decoder with soft attention over cached CNN region features.

Dimension names, used in every shape comment:
    B batch, P regions (49 for a 7x7 grid), E encoder feature size (2048), A attention size,
    H decoder hidden size, D word-embedding size, T time steps, V vocabulary size, K beams.

The file reads top to bottom: configuration, attention, the decoder (one step, teacher-forced
forward), decoding (batched beam search; greedy is beam size 1), the loss, and checkpoints.
No I/O besides the checkpoint helpers at the end.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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

    # -- decoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, features: torch.Tensor, start: int, end: int, beam_size: int = 3,
                 max_length: int = 30) -> tuple[list[list[int]], list[torch.Tensor], torch.Tensor]:
        """Batched beam search over images and beams; beam_size 1 is greedy decoding.

        A hypothesis that emits END among the K best candidates of a step is set aside (an END
        ranked below them would not have won a beam, and with K = 1 only the argmax may end, so
        beam size 1 is exactly greedy decoding); the search stops for good when no live beam can
        still beat an image's best finished one (scores are summed log-probabilities and only
        fall), or after `max_length` words, when images with no finished hypothesis take their
        best live beam of `max_length` words. Returns per image: word indices (without START and
        END), the attention (L, P) for each of those words, and the scores (B,).
        """
        B, K, V = features.size(0), beam_size, self.config.vocab_size
        x, projected, h, c = self.prepare_features(features)
        P, device = x.size(1), x.device
        x, projected = x.repeat_interleave(K, 0), projected.repeat_interleave(K, 0)  # (B*K, P, E), (B*K, P, A)
        h, c = h.repeat_interleave(K, 0), c.repeat_interleave(K, 0)  # (B*K, H)
        active = torch.arange(B, device=device)  # (n,) the images still searching, n <= B
        scores = torch.full((B, K), float("-inf"), device=device)  # (n, K)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        words = torch.full((B * K,), start, dtype=torch.long, device=device)  # (n*K,)
        sequences = torch.empty(B, K, 0, dtype=torch.long, device=device)  # (n, K, t)
        attention = torch.empty(B, K, 0, P, device=device)  # (n, K, t, P)
        best_scores = torch.full((B,), float("-inf"), device=device)
        best_sequences: list[torch.Tensor | None] = [None] * B
        best_attention: list[torch.Tensor | None] = [None] * B

        for t in range(max_length):
            n = active.numel()
            h, c, alpha = self.step(x, projected, self.word_gates(self.embedding(words)), h, c)
            log_probs = F.log_softmax(self.output(h).float(), dim=1).view(n, K, V)
            candidates = (scores.unsqueeze(2) + log_probs).view(n, K * V)
            top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # (n, 2K)
            source, word = top_index // V, top_index % V  # (n, 2K) beam each came from, its word
            is_end = word == end
            in_beam = torch.arange(top_scores.size(1), device=device) < K  # (2K,) candidates that take a beam

            # finished hypotheses: keep each image's best
            end_scores, end_position = top_scores.masked_fill(~(is_end & in_beam), float("-inf")).max(dim=1)  # (n,)
            for i in torch.nonzero(end_scores > best_scores[active]).flatten().tolist():
                b, k = int(active[i]), int(source[i, end_position[i]])
                best_scores[b] = end_scores[i]
                best_sequences[b] = sequences[i, k].clone()
                best_attention[b] = torch.cat([attention[i, k], alpha.view(n, K, P)[i, k, None]])

            # live beams: the K best candidates that did not end
            scores, order = top_scores.masked_fill(is_end, float("-inf")).topk(K, dim=1)  # (n, K)
            source, word = source.gather(1, order), word.gather(1, order)  # (n, K)
            flat = (torch.arange(n, device=device).unsqueeze(1) * K + source).view(-1)  # (n*K,) previous rows
            h, c, words = h[flat], c[flat], word.view(-1)
            sequences = torch.cat([sequences.view(n * K, -1)[flat].view(n, K, -1), word.unsqueeze(2)], dim=2)
            attention = torch.cat([attention.view(n * K, t, P)[flat].view(n, K, t, P),
                                   alpha[flat].view(n, K, 1, P)], dim=2)

            # an image is done once no live beam can beat its best finished caption
            searching = best_scores[active] < scores[:, 0]  # (n,)
            if not bool(searching.any()):
                break
            if int(searching.sum()) <= 3 * n // 4:  # drop finished images, in steps worth a copy
                keep = torch.nonzero(searching).flatten()  # (n',)
                beam_rows = (keep.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)  # (n'*K,)
                x, projected, h, c, words = (x[beam_rows], projected[beam_rows], h[beam_rows], c[beam_rows],
                                             words[beam_rows])
                active, scores, sequences, attention = active[keep], scores[keep], sequences[keep], attention[keep]

        for i, b in enumerate(active.tolist()):
            if best_sequences[b] is None:  # no beam ever emitted END: the best live one, max_length words
                best_scores[b] = scores[i, 0]
                best_sequences[b] = sequences[i, 0]
                best_attention[b] = attention[i, 0]
        tokens = [seq.tolist() for seq in best_sequences]  # type: ignore[union-attr]
        alphas = [a[: len(seq)].cpu() for a, seq in zip(best_attention, tokens)]  # type: ignore[index]
        return tokens, alphas, best_scores


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


# ----------------------------------------------------------------------------------------------
# checkpoints: a state dict plus what is needed to rebuild the model, loadable with weights_only

BEST_CHECKPOINT = "best.pt"  # in train.out_dir: the epoch that evaluate and caption use



def checkpoint_payload(model: CaptionDecoder, vocabulary: list[str], encoder: dict[str, Any],
                       **extra: Any) -> dict[str, Any]:
    """The dict saved in a checkpoint: model config, weights, vocabulary and encoder description."""
    return {"model_config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
            "vocabulary": list(vocabulary), "encoder": dict(encoder), **extra}


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[CaptionDecoder, dict[str, Any]]:
    """Rebuild the decoder from a checkpoint (eval mode) and return it with the whole payload."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run `dvc repro train` (or `dvc pull`) first")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = CaptionDecoder(DecoderConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload
