"""The baseline: the way the popular "Show, Attend and Tell" tutorial (sgrvinod) writes and trains
the same model, with our maths (tanh attention and initial state where it has ReLU and none).

- `TutorialDecoder`: `nn.LSTMCell(D + E, H)` on [embedding; gated context], the encoder-side attention
  projection recomputed inside the attention at every step, the context as an elementwise product
  and sum, the output layer applied at every step, and the shrinking batch (captions sorted by
  length, the first `batch_size_t` rows decoded at step t, scores packed for the loss).
- `TutorialCaptions` + `tutorial_epoch`: a Dataset reading one image's features from HDF5 per
  caption, a shuffled DataLoader (one worker, as the tutorial), fp32, and the tutorial's step
  (forward, loss, backward, gradient clamp, Adam).

- `tutorial_beam_search`: caption.py's `caption_image_beam_search` from the encoder's output on: one
  image, its features expanded to k rows, the projection redone inside every step, the k best of all
  k*V candidates, a beam that emits END set aside and the beam narrowed by one (k shrinks), the
  features, h and c re-indexed every step.

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
from pipeline.model.architectures import build_decoder
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


@torch.no_grad()
def tutorial_beam_search(decoder: TutorialDecoder, features: torch.Tensor, beam_size: int,
                         max_length: int) -> tuple[list[int], float, torch.Tensor]:
    """One image's caption as caption.py's `caption_image_beam_search` finds it, from features (P, E).

    Returns the words (no START or END), the summed log-probability and the attention (L, P) behind
    each word. As caption.py, line for line, with three changes: `//` for the beam index (caption.py's
    `/` is a float division in today's torch), no_grad (caption.py builds autograd graphs it never
    uses), and at most `max_length` steps (caption.py's 50) with the best live beam taken when none
    ended (where caption.py fails on an empty list), so that both searches cover the same captions.
    """
    k, vocab_size = beam_size, decoder.fc.out_features
    num_pixels, encoder_dim = features.shape
    enc_image_size = round(num_pixels ** 0.5)  # 7: the 7x7 grid
    encoder_out = features.view(1, num_pixels, encoder_dim).expand(k, num_pixels, encoder_dim)  # (k, P, E)
    k_prev_words = torch.full((k, 1), START, dtype=torch.long)  # (k, 1)
    seqs = k_prev_words  # (k, 1)
    top_k_scores = torch.zeros(k, 1)  # (k, 1)
    seqs_alpha = torch.ones(k, 1, enc_image_size, enc_image_size)  # (k, 1, 7, 7)
    complete_seqs, complete_seqs_alpha, complete_seqs_scores = [], [], []
    step = 1
    mean = encoder_out.mean(dim=1)  # (k, E): the tutorial's init_hidden_state, with our tanh
    h, c = torch.tanh(decoder.init_h(mean)), torch.tanh(decoder.init_c(mean))  # (k, H)
    while True:
        embeddings = decoder.embedding(k_prev_words).squeeze(1)  # (s, D)
        awe, alpha = decoder.attention(encoder_out, h)  # (s, E), (s, P): the projection of (s, P, E) again
        alpha = alpha.view(-1, enc_image_size, enc_image_size)  # (s, 7, 7)
        gate = torch.sigmoid(decoder.f_beta(h))  # (s, E)
        awe = gate * awe
        h, c = decoder.decode_step(torch.cat([embeddings, awe], dim=1), (h, c))  # (s, H)
        scores = F.log_softmax(decoder.fc(h), dim=1)  # (s, V)
        scores = top_k_scores.expand_as(scores) + scores  # (s, V)
        if step == 1:  # all k rows are the same
            top_k_scores, top_k_words = scores[0].topk(k, 0, True, True)  # (s,)
        else:
            top_k_scores, top_k_words = scores.view(-1).topk(k, 0, True, True)  # (s,)
        prev_word_inds = top_k_words // vocab_size  # (s,)
        next_word_inds = top_k_words % vocab_size  # (s,)
        seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)  # (s, step + 1)
        seqs_alpha = torch.cat([seqs_alpha[prev_word_inds], alpha[prev_word_inds].unsqueeze(1)], dim=1)
        incomplete_inds = [ind for ind, next_word in enumerate(next_word_inds) if next_word != END]
        complete_inds = list(set(range(len(next_word_inds))) - set(incomplete_inds))
        if len(complete_inds) > 0:
            complete_seqs.extend(seqs[complete_inds].tolist())
            complete_seqs_alpha.extend(seqs_alpha[complete_inds].tolist())
            complete_seqs_scores.extend(top_k_scores[complete_inds])
        k -= len(complete_inds)  # the beam narrows
        if k == 0:
            break
        seqs = seqs[incomplete_inds]
        seqs_alpha = seqs_alpha[incomplete_inds]
        h = h[prev_word_inds[incomplete_inds]]
        c = c[prev_word_inds[incomplete_inds]]
        encoder_out = encoder_out[prev_word_inds[incomplete_inds]]
        top_k_scores = top_k_scores[incomplete_inds].unsqueeze(1)
        k_prev_words = next_word_inds[incomplete_inds].unsqueeze(1)
        if step >= max_length:  # caption.py: step > 50
            break
        step += 1
    if complete_seqs_scores:
        i = complete_seqs_scores.index(max(complete_seqs_scores))
        seq, alphas, score = complete_seqs[i][1:-1], complete_seqs_alpha[i], float(complete_seqs_scores[i])
    else:  # no beam ended: the best live one (top_k_scores stay sorted)
        seq, alphas, score = seqs[0, 1:].tolist(), seqs_alpha[0].tolist(), float(top_k_scores[0])
    attention = torch.tensor(alphas).view(-1, num_pixels)[1:len(seq) + 1]  # (L, P): the words' attention
    return seq, score, attention


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
    ours = build_decoder(DecoderConfig(vocab_size=vocab_size, embed_dim=D, encoder_dim=E, attention_dim=A,
                                       decoder_dim=H, dropout=0.5, pad_index=PAD, max_caption_length=30,
                                       architecture="sat"))
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
    gap = abs(float(mine.detach()) - float(theirs.detach()))
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
