"""Caption new photos with the trained model, and draw where it looked.

    caption photo.jpg [more.jpg ...] [--attention attention.png] [--checkpoint best.pt]
    (or: python -m pipeline.commands.caption ...)

Runs the encoder the checkpoint's features were made with (weights, input size and precision are stored
in the checkpoint; bf16 runs as fp32 on a CPU without native bf16), then batched beam search
(`pipeline.api.Captioner`), and prints one `IMAGE<TAB>caption` line per image. An image that cannot be
read is reported on stderr and the others are still captioned; the exit status is 1 when any failed.
With --attention, writes the attention figure (the image, then one heat map per word); for several
images, one file each, named after the image's path so that no two images share a figure. In a project
(./params.yaml or $PIPELINE_PARAMS) the checkpoint and decoding options default to its `scst.checkpoint`
(the final model) and `evaluate.*`; elsewhere --checkpoint is required and the decoding options are the
package's defaults. When the checkpoint's encoder is untrained and its data not the demo, one line on
stderr says so.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.api import Captioner
from pipeline.cli import exit_status
from pipeline.defaults import Defaults, command_defaults
from pipeline.evaluation.figures import draw_attention


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


def parse_args(argv: Sequence[str] | None, defaults: Defaults) -> argparse.Namespace:
    decoding = defaults.decoding
    parser = argparse.ArgumentParser(prog="caption", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files to caption")
    parser.add_argument("--attention", type=Path, help="write the attention figure to this PNG file")
    parser.add_argument("--checkpoint", type=Path, default=defaults.checkpoint, required=defaults.checkpoint is None,
                        help="the model (default in a project: scst.checkpoint, the final model)")
    parser.add_argument("--beam-size", type=int, default=decoding.beam_size)
    parser.add_argument("--length-penalty", type=float, default=decoding.length_penalty, help="alpha; 0 is off")
    parser.add_argument("--no-repeat-ngram", type=int, default=decoding.no_repeat_ngram,
                        help="block repeated n-grams; 0 is off")
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
    defaults = command_defaults()
    args = parse_args(argv, defaults)
    captioner = Captioner(args.checkpoint, args.device, beam_size=args.beam_size, length_penalty=args.length_penalty,
                          no_repeat_ngram=args.no_repeat_ngram, allow_unk=defaults.decoding.allow_unk)
    if captioner.notice:
        print(f"caption: {captioner.notice}", file=sys.stderr)
    results = captioner.caption(args.images)
    figures = attention_paths(args.attention, args.images) if args.attention else [None] * len(results)
    for result, figure in zip(results, figures):
        if result.error is not None:
            print(f"caption: {result.error}", file=sys.stderr)
            continue
        print(f"{result.source}\t{result.text}", flush=True)
        if figure is not None:
            draw_attention(result.path, result.words, result.attention.flatten(1), figure, title=result.text)
            print(f"attention figure: {figure}", file=sys.stderr)
    failed = sum(result.error is not None for result in results)
    if failed:
        print(f"caption: {failed} of {len(results)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
