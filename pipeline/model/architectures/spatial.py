"""`spatial`: the spatial attention of Lu et al., "Knowing When to Look" (CVPR 2017).

The image reaches the words only through attention: the LSTM reads the word alone (its state starts
from the mean feature), attention is queried with the NEW state h_t, and the word is read out from
tanh(W [context_t; h_t]). The context that names a word is the one attended while choosing it; the
step's recurrent product reads the 512-wide state, not [2048-wide context; state]. Two variants of
Lu et al. were measured and dropped (docs/demo.md): their mean image feature as LSTM input at every
step, and their read-out W_p (c_t + h_t).

    step:  h_t, c_t = LSTM(w_t, h_{t-1})                 (B, H)
           context, alpha = attend(h_t)                  (B, E), (B, P)
    read out: logits = W_o dropout(tanh(W_c [context; h_t]))   (B, V)
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.model.decoder import CaptionDecoder, DecoderConfig


class Decoder(CaptionDecoder):
    """Spatial attention: update with the word, then look with the new state."""

    def add_recurrent_layers(self, config: DecoderConfig) -> None:
        E, H = config.encoder_dim, config.decoder_dim
        self.recurrent_gates = nn.Linear(H, 4 * H, bias=False)  # h part of the LSTM gates
        self.combine = nn.Linear(E + H, H)  # [context; h] -> what the output layer reads

    def step(self, x: torch.Tensor, projected: torch.Tensor, word_gates: torch.Tensor,
             h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c = self.lstm(word_gates + self.linear(self.recurrent_gates, h), c)  # (B, H) each
        context, alpha = self.attend(x, projected, h)  # (B, E), (B, P)
        return h, c, torch.cat([context, h], dim=1), alpha  # ..., (B, E + H), (B, P)

    def read_out(self, out: torch.Tensor) -> torch.Tensor:
        # Lu et al. read out W_p (c_t + h_t); a learnt mix of the two (one product) here
        return self.output(self.dropout(torch.tanh(self.combine(out))))  # (..., E + H) -> (..., V)
