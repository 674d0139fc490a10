"""Finding images by text with the captioner: likelihood ranking, the caption index, photo indexes."""
