"""Find photos by what is in them: rank images for a text query with the trained captioner.

    python -m pipeline.search index PHOTOS_DIR [--index DIR]
    python -m pipeline.search "a red circle above a blue square" [--top 10] [--index DIR]

`index` encodes a folder of photos once with the checkpoint's encoder and captions every photo;
the index lives in PHOTOS_DIR/.caption-index unless --index says where. Running it again encodes
only new or changed photos; files that cannot be read are skipped and listed.

A query prints one `RANK<TAB>SCORE<TAB>IMAGE<TAB>CAPTION` line per image, best first. With --index
it searches that photo index; without, the dataset's own images (their cached features from the
`features` stage and captions generated once, kept in params.yaml's `retrieval.captions`).
The score is the query's log-likelihood given the image minus its likelihood given an average
image (params.yaml `retrieval`; see docs/search.md). The checkpoint defaults to `train.checkpoint`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import exit_status
from pipeline.config import EvaluateConfig, RetrievalConfig, TrainConfig, load_section, params_path
from pipeline.errors import ConfigError
from pipeline.model.beam_search import SearchOptions
from pipeline.model.checkpoint import load_checkpoint
from pipeline.retrieval.likelihood import unknown_words
from pipeline.retrieval.ranking import RankingOptions, Searcher
from pipeline.runtime import resolve_device
from pipeline.text import Vocabulary

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the repository's


def project_defaults() -> tuple[str | None, int, RankingOptions]:
    """(checkpoint, beam size, ranking options) from params.yaml when run in the project."""
    if not params_path().is_file():  # the ranking's values from the repository's params.yaml, its one source
        return None, SearchOptions.beam_size, RankingOptions.from_config(load_section(RetrievalConfig, PARAMS))
    options = RankingOptions.from_config(load_section(RetrievalConfig))
    return load_section(TrainConfig).checkpoint, load_section(EvaluateConfig).beam_size, options


def index_main(argv: Sequence[str]) -> int:
    """`index PHOTOS_DIR`: encode and caption the folder's new photos."""
    from pipeline.photos import PhotoCaptioner
    from pipeline.retrieval.photo_index import update_index

    checkpoint, beam_size, _ = project_defaults()
    parser = argparse.ArgumentParser(prog="python -m pipeline.search index", description="Index a folder of photos.")
    parser.add_argument("photos", type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("--index", type=Path, help="where to keep the index (default: PHOTOS_DIR/.caption-index)")
    parser.add_argument("--checkpoint", type=Path, default=checkpoint, required=checkpoint is None)
    parser.add_argument("--beam-size", type=int, default=beam_size)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    captioner = PhotoCaptioner(args.checkpoint, resolve_device(args.device, "--device"), args.beam_size)
    report = update_index(captioner, args.photos, args.index, args.batch_size)
    for name, why in sorted(report.skipped.items()):
        print(f"index: skipped {name}: {why}", file=sys.stderr)
    print(f"index: {report.photos} photos indexed ({report.encoded} encoded, {report.captioned} captioned, "
          f"{report.removed} removed, {len(report.skipped)} unreadable skipped, "
          f"{report.ignored} other files ignored)")
    return 0


def search_main(argv: Sequence[str]) -> int:
    """QUERY: print the best images for it."""
    from pipeline.retrieval.dataset_gallery import dataset_gallery
    from pipeline.retrieval.photo_index import open_index

    checkpoint, _, options = project_defaults()
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.split("\n")[0])
    parser.add_argument("query", help="what the photos should show (or `index PHOTOS_DIR` to index a folder)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--index", type=Path, help="a photo index (default: the dataset's own images)")
    parser.add_argument("--candidates", type=int, default=options.candidates,
                        help="images the caption index passes on to the likelihood; 0: all")
    parser.add_argument("--checkpoint", type=Path, default=checkpoint, required=checkpoint is None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.top < 1 or args.candidates < 0:
        parser.error("--top must be at least 1 and --candidates at least 0")
    device = resolve_device(args.device, "--device")
    model, payload = load_checkpoint(args.checkpoint, device)
    vocabulary = Vocabulary(tuple(payload["vocabulary"]))
    if args.index is not None:
        gallery = open_index(args.index, args.checkpoint)
    else:
        if not params_path().is_file():
            raise ConfigError("no --index given and no params.yaml here: give a photo index or run in the project")
        gallery = dataset_gallery(model, vocabulary, args.checkpoint, payload["encoder"], device)
    unknown = unknown_words(args.query, vocabulary)
    if unknown:
        print(f"search: the model has never seen {', '.join(unknown)}; those words count as <unk>", file=sys.stderr)
    searcher = Searcher(model, vocabulary, gallery, device, dataclasses.replace(options, candidates=args.candidates))
    for rank, hit in enumerate(searcher.search(args.query, args.top), start=1):
        print(f"{rank}\t{hit.score:.3f}\t{hit.path}\t{hit.caption}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: its exit status (an expected error is one line on stderr and status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_status(lambda: index_main(argv[1:]) if argv[:1] == ["index"] else search_main(argv), "search")


if __name__ == "__main__":
    sys.exit(main())
