"""Training pieces: batching, the epoch loop, precision, the resume identity and per-epoch logging."""
