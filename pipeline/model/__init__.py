"""The captioning model: attention and LSTM decoder, batched beam search, features to words, checkpoints."""
