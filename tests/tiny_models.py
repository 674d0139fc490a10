"""Tiny decoders and inputs shared by the decoder, beam-search, captioner and checkpoint tests."""
from __future__ import annotations

import torch

from pipeline.model.architectures import build_decoder
from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import CaptionDecoder, DecoderConfig

# tiny dimensions: V vocab, D embedding, E encoder, A attention, H hidden, P regions
V, D, E, A, H, P = 12, 8, 16, 8, 16, 4
PAD, START, END, UNK = 0, 1, 2, 3  # the order of pipeline.text.SPECIAL_TOKENS
ARCHITECTURE = "sat"  # make_model's default (its random models are tuned for it); see each_architecture


def make_model(seed: int = 0, dropout: float = 0.0, end_bias: float | None = None,
               sharpness: float = 1.0, architecture: str | None = None) -> CaptionDecoder:
    """A tiny decoder in eval mode.

    `sharpness` scales the output weights: a fresh model's next-word distribution is nearly
    uniform, so beam search and greedy decoding would agree trivially; peaked distributions make
    them differ. `end_bias` sets the output bias of END (to make END likelier, or impossible).
    """
    torch.manual_seed(seed)
    model = build_decoder(DecoderConfig(vocab_size=V, embed_dim=D, encoder_dim=E, attention_dim=A,
                                        decoder_dim=H, dropout=dropout, pad_index=PAD, max_caption_length=30,
                                        architecture=architecture or ARCHITECTURE))
    with torch.no_grad():
        model.output.weight.mul_(sharpness)
        if end_bias is not None:
            model.output.bias[END] = end_bias
    return model.eval()


def make_features(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, P, E, generator=torch.Generator().manual_seed(seed))  # (B, P, E)


def padded(captions: list[list[int]]) -> torch.Tensor:
    """[START, words, END, PAD...] rows as a (B, T) tensor."""
    rows = [[START, *c, END] for c in captions]
    T = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (T - len(r)) for r in rows])


def generate(model: CaptionDecoder, features: torch.Tensor, beam_size: int,
             max_length: int) -> tuple[list[list[int]], list[torch.Tensor], torch.Tensor]:
    """Beam search with no banned tokens: per image its word ids and attention (L, P), and the scores (B,)."""
    found = beam_search(model, features, START, END, SearchOptions(beam_size=beam_size, max_length=max_length))
    return ([h.tokens for h in found], [h.attention for h in found],
            torch.tensor([h.score for h in found]))
