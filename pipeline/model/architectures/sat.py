"""`sat`, the default: Show, Attend and Tell (Xu et al., ICML 2015), the seed's decoder.

Attention is queried with the PREVIOUS state h_{t-1}; the LSTM reads [word embedding (D); gated
attention context (E)] with its state (H); the word is read out from the new state h_t alone.
The same function as `nn.LSTMCell(D + E, H)` with attention before it (tests/test_decoder.py).

    step:  context, alpha = attend(h_{t-1})              (B, E), (B, P)
           h_t, c_t = LSTM([w_t; context], h_{t-1})      the embedding part of the gates is
                                                         projected for all steps before the loop
    read out: logits = W_o dropout(h_t)                  (B, V)
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.model.decoder import CaptionDecoder, DecoderConfig


class Decoder(CaptionDecoder):
    """Show, Attend and Tell: look with the previous state, then update with the word and what was seen."""

    def add_recurrent_layers(self, config: DecoderConfig) -> None:
        # [context (E); h (H)] -> the rest of the LSTM gates (4H), in one product
        self.recurrent_gates = nn.Linear(config.encoder_dim + config.decoder_dim, 4 * config.decoder_dim, bias=False)

    def step(self, x: torch.Tensor, projected: torch.Tensor, word_gates: torch.Tensor,
             h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        context, alpha = self.attend(x, projected, h)  # (B, E), (B, P)
        gates = word_gates + self.linear(self.recurrent_gates, torch.cat([context, h], dim=1))  # (B, 4H)
        h, c = self.lstm(gates, c)  # (B, H) each
        return h, c, h, alpha

    def read_out(self, out: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(out))  # (..., H) -> (..., V)
