"""Caption new images with the trained model, and draw where it looked.

    python -m pipeline.caption photo.jpg [more.jpg ...] [--attention attention.png]

Runs the encoder the checkpoint's features were made with (architecture, weights and input size
are stored in the checkpoint), then batched beam search, and prints one `IMAGE<TAB>caption` line
per image. With --attention, writes the attention figure (the image, then one heat map per word);
for several images, one file each, named `<stem>_<image stem><suffix>`. Defaults for the
checkpoint, beam size and maximum length come from params.yaml when it is there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from pipeline.config import ConfigError, EvaluateConfig, TrainConfig, load_section, params_path
from pipeline.encoder import build_encoder, encode, load_image
from pipeline.figures import draw_attention
from pipeline.model import BEST_CHECKPOINT, load_checkpoint
from pipeline.text import Vocabulary
from pipeline.utils import resolve_device

FALLBACK = {"checkpoint": f"data/train/{BEST_CHECKPOINT}", "beam_size": 3, "max_length": 30}


def defaults() -> dict[str, object]:
    """Checkpoint path, beam size and max length from params.yaml, else built-in values."""
    if not params_path().is_file():
        return dict(FALLBACK)
    train, evaluate = load_section(TrainConfig), load_section(EvaluateConfig)
    return {"checkpoint": str(Path(train.out_dir) / BEST_CHECKPOINT), "beam_size": evaluate.beam_size,
            "max_length": evaluate.max_length}


def attention_paths(target: Path, images: Sequence[Path]) -> list[Path]:
    """The figure file for each image: `target` itself for one image, else one per image."""
    if len(images) == 1:
        return [target]
    return [target.with_name(f"{target.stem}_{image.stem}{target.suffix or '.png'}") for image in images]


def caption_files(images: Sequence[Path], checkpoint: Path, beam_size: int, max_length: int, device: torch.device,
                  batch_size: int = 16) -> list[tuple[list[str], torch.Tensor]]:
    """(words, attention (L, P)) for each image file."""
    model, payload = load_checkpoint(checkpoint, device)
    vocabulary = Vocabulary(tuple(payload["vocabulary"]))
    info = payload["encoder"]
    encoder = build_encoder(str(info["architecture"]), str(info["weights"])).to_device(device)
    size = int(info["image_size"])
    results = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([load_image(path, size) for path in images[start:start + batch_size]])  # (B, 3, S, S)
        features = encode(encoder, pixels, device)  # (B, P, E), already on the device
        tokens, alphas, _ = model.generate(features, vocabulary.start, vocabulary.end, beam_size, max_length)
        results += [([vocabulary.words[i] for i in sequence], alpha) for sequence, alpha in zip(tokens, alphas)]
    return results


def parse_args(argv: Sequence[str] | None, fallback: dict[str, object]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.caption", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files to caption")
    parser.add_argument("--attention", type=Path, help="write the attention figure to this PNG file")
    parser.add_argument("--checkpoint", type=Path, default=Path(str(fallback["checkpoint"])))
    parser.add_argument("--beam-size", type=int, default=fallback["beam_size"])
    parser.add_argument("--max-length", type=int, default=fallback["max_length"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv, defaults())
    except ConfigError as error:
        print(f"caption: {error}", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"caption: no such image file(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.beam_size < 1 or args.max_length < 1:
        print("caption: --beam-size and --max-length must be at least 1", file=sys.stderr)
        return 2
    results = caption_files(args.images, args.checkpoint, args.beam_size, args.max_length,
                            resolve_device(args.device))
    for image, (words, _) in zip(args.images, results):
        print(f"{image}\t{' '.join(words)}")
    if args.attention:
        for image, (words, alphas), out in zip(args.images, results, attention_paths(args.attention, args.images)):
            draw_attention(image, words, alphas, out, title=" ".join(words))
            print(f"attention figure: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
