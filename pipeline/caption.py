"""Caption new photos with the trained model, and draw where it looked.

    python -m pipeline.caption photo.jpg [more.jpg ...] [--attention attention.png]

Runs the encoder the checkpoint's features were made with (weights, input size and precision are
stored in the checkpoint), then batched beam search, and prints one `IMAGE<TAB>caption` line per
image. An image that cannot be read is reported on stderr and the others are still captioned; the
exit status is 1 when any failed. With --attention, writes the attention figure (the image, then
one heat map per word); for several images, one file each, named after the image's path so that
no two images share a figure. The checkpoint and beam size default to params.yaml's
`train.checkpoint` and `evaluate.beam_size` when run in the project.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import exit_status
from pipeline.config import EvaluateConfig, TrainConfig, load_section, params_path
from pipeline.evaluation.figures import draw_attention
from pipeline.model.beam_search import SearchOptions
from pipeline.photos import PhotoCaptioner
from pipeline.runtime import resolve_device


def defaults() -> dict[str, object]:
    """The checkpoint and beam size of params.yaml when it is there."""
    if not params_path().is_file():
        return {"checkpoint": None, "beam_size": SearchOptions.beam_size}
    train, evaluate = load_section(TrainConfig), load_section(EvaluateConfig)
    return {"checkpoint": train.checkpoint, "beam_size": evaluate.beam_size}


def attention_paths(target: Path, images: Sequence[Path]) -> list[Path]:
    """The figure file for each image: `target` itself for one image, else one per image, all distinct."""
    if len(images) == 1:
        return [target]
    suffix = target.suffix or ".png"
    stems = [image.stem for image in images]
    paths = []
    for image, stem in zip(images, stems):
        # same stem in two folders (or twice the same file): name the figure after the whole path
        if stems.count(stem) > 1:
            stem = "_".join(part for part in image.with_suffix("").parts if part not in ("/", "..", "."))
        paths.append(target.with_name(f"{target.stem}_{stem}{suffix}"))
    for index, path in enumerate(paths):  # still equal (the same path given twice): number them
        if paths.count(path) > 1:
            paths[index] = path.with_name(f"{path.stem}_{index}{suffix}")
    return paths


def parse_args(argv: Sequence[str] | None, fallback: dict[str, object]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.caption", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files to caption")
    parser.add_argument("--attention", type=Path, help="write the attention figure to this PNG file")
    parser.add_argument("--checkpoint", type=Path, default=fallback["checkpoint"],
                        required=fallback["checkpoint"] is None, help="the model (default: train.checkpoint)")
    parser.add_argument("--beam-size", type=int, default=fallback["beam_size"])
    parser.add_argument("--length-penalty", type=float, default=0.0, help="alpha; 0 is off")
    parser.add_argument("--no-repeat-ngram", type=int, default=0, help="block repeated n-grams; 0 is off")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.beam_size < 1 or args.length_penalty < 0 or args.no_repeat_ngram < 0:
        parser.error("--beam-size must be at least 1; --length-penalty and --no-repeat-ngram at least 0")
    if args.attention is not None and args.attention.is_dir():
        parser.error(f"--attention {args.attention} is a folder; give a PNG file name such as attention.png")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command: its exit status (an expected error is one line on stderr and status 2)."""
    return exit_status(lambda: caption(argv), "caption")


def caption(argv: Sequence[str] | None = None) -> int:
    """Caption the images; 1 when any could not be read."""
    args = parse_args(argv, defaults())
    captioner = PhotoCaptioner(args.checkpoint, resolve_device(args.device, "--device"), args.beam_size,
                               args.length_penalty, args.no_repeat_ngram)
    results = captioner.caption_files(args.images)
    figures = attention_paths(args.attention, args.images) if args.attention else [None] * len(results)
    for result, figure in zip(results, figures):
        if result.caption is None:
            print(f"caption: {result.error}", file=sys.stderr)
            continue
        print(f"{result.path}\t{result.caption.text}", flush=True)
        if figure is not None:
            draw_attention(result.path, result.caption.words, result.caption.attention, figure,
                           title=result.caption.text)
            print(f"attention figure: {figure}", file=sys.stderr)
    failed = sum(result.caption is None for result in results)
    if failed:
        print(f"caption: {failed} of {len(results)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
