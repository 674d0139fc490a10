"""The baseline: the way the popular "Show, Attend and Tell" tutorial (sgrvinod) writes and trains
the same model, with our maths (tanh attention and initial state where it has ReLU and none).

- `TutorialDecoder`: `nn.LSTMCell(D + E, H)` on [embedding; gated context], the encoder-side attention
  projection recomputed inside the attention at every step, the context as an elementwise product
  and sum, the output layer applied at every step, and the shrinking batch (captions sorted by
  length, the first `batch_size_t` rows decoded at step t, scores packed for the loss).
- `TutorialCaptions` + `tutorial_epoch`: a Dataset reading one image's features from HDF5 per
  caption, a shuffled DataLoader (one worker, as the tutorial), fp32, and the tutorial's step
  (forward, loss, backward, gradient clamp, Adam).

`make_pair` copies the weights across (the fused LSTM takes `weight_ih` split and the two biases
summed); `check_same_maths` asserts that both give the same fp32 loss and gradients.
"""
from __future__ import annotations

import h5py
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, Dataset

from pipeline.encoder.feature_cache import FEATURES
from pipeline.model.decoder import CaptionDecoder, DecoderConfig, caption_loss

# the seed model: E encoder, P regions, A attention, H hidden, D embedding
E, P, A, H, D = 2048, 49, 512, 512, 300
PAD, START, END = 0, 1, 2
ATTENTION_PENALTY = 1.0
GRAD_CLIP = 5.0


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
    return ours, tutorial


def check_same_maths(vocab_size: int) -> float:
    """Both decoders' fp32 loss on the same weights and batch, dropout off; asserts they agree, returns the gap."""
    ours, tutorial = make_pair(vocab_size, seed=0)
    ours.eval(), tutorial.eval()
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(6, 12, (8,), generator=generator)  # with START and END
    captions = torch.full((8, int(lengths.max())), PAD)
    for row, n in enumerate(lengths.tolist()):
        captions[row, :n] = torch.cat([torch.tensor([START]), torch.randint(3, vocab_size, (n - 2,),
                                                                            generator=generator), torch.tensor([END])])
    features = torch.randn(8, P, E, generator=generator)
    logits, alphas = ours(features, captions)
    mine = caption_loss(logits, captions[:, 1:], alphas, PAD, ATTENTION_PENALTY)[0]
    theirs = tutorial_loss(*tutorial(features, captions, lengths))
    gap = abs(float(mine) - float(theirs))
    assert gap < 1e-4, f"V={vocab_size}: the two decoders' losses differ by {gap:.2e}"
    return gap


class TutorialCaptions(Dataset):
    """Per caption: its image's features read from the HDF5 cache (one read per item), the padded
    caption and its length, as the tutorial's CaptionDataset does."""

    def __init__(self, cache: str, image_rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> None:
        self.cache, self.image_rows, self.tokens, self.lengths = cache, image_rows, tokens, lengths
        self.file: h5py.File | None = None  # opened in the worker that reads

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.file is None:
            self.file = h5py.File(self.cache, "r")
        features = torch.from_numpy(self.file[FEATURES][int(self.image_rows[i])]).float()  # (P, E)
        return features, self.tokens[i], self.lengths[i]


def tutorial_epoch(model: TutorialDecoder, optimizer: torch.optim.Optimizer, data: TutorialCaptions,
                   batch_size: int, seed: int) -> int:
    """One fp32 training epoch the tutorial's way; returns the real target tokens seen."""
    model.train()
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=1,
                        generator=torch.Generator().manual_seed(seed))
    tokens = 0
    for features, captions, lengths in loader:
        T = int(lengths.max())
        loss = tutorial_loss(*model(features, captions[:, :T], lengths))
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:  # the tutorial's clip_gradient
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.grad.data.clamp_(-GRAD_CLIP, GRAD_CLIP)
        optimizer.step()
        tokens += int((lengths - 1).sum())
    return tokens
