"""Find photos by what is in them: rank images for a text query with the trained captioner.

    caption-search index PHOTOS_DIR [--index DIR] [--checkpoint best.pt]
    caption-search "a red circle above a blue square" [--top 10] [--index DIR] [--checkpoint best.pt]
    (or: python -m pipeline.commands.search ...)

`index` encodes a folder of photos once with the checkpoint's encoder and captions every photo;
the index lives in PHOTOS_DIR/.caption-index unless --index says where. Running it again encodes
only new or changed photos; files that cannot be read are skipped and listed.

A query prints one `RANK<TAB>SCORE<TAB>IMAGE<TAB>CAPTION` line per image, best first. When the
model knows none of the query's words, a first line starting with `#` says that the order means
nothing. With --index it searches that photo index; without, inside a project, the dataset's own
images (their cached features from the `features` stage and captions generated once, kept in
params.yaml's `retrieval.captions`). The score is the query's log-likelihood given the image minus
its likelihood given an average image (params.yaml `retrieval`; see docs/search.md). In a project
the checkpoint, decoding and ranking options default to its params.yaml; elsewhere --checkpoint is
required. An untrained encoder (on data that is not the demo) is said once on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.api import Captioner, PhotoLibrary
from pipeline.cli import exit_status
from pipeline.defaults import Decoding, command_defaults, in_project
from pipeline.errors import ConfigError
from pipeline.retrieval.ranking import RankingOptions


def load_captioner(args: argparse.Namespace, decoding: Decoding) -> Captioner:
    """The model of --checkpoint on --device; its notice (an untrained encoder) said once on stderr."""
    captioner = Captioner(args.checkpoint, args.device, **dataclasses.asdict(decoding))
    if captioner.notice:
        print(f"search: {captioner.notice}", file=sys.stderr)
    return captioner


def index_main(argv: Sequence[str]) -> int:
    """`index PHOTOS_DIR`: encode and caption the folder's new photos."""
    defaults = command_defaults()
    parser = argparse.ArgumentParser(prog="caption-search index", description="Index a folder of photos.")
    parser.add_argument("photos", type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("--index", type=Path, help="where to keep the index (default: PHOTOS_DIR/.caption-index)")
    parser.add_argument("--checkpoint", type=Path, default=defaults.checkpoint, required=defaults.checkpoint is None)
    parser.add_argument("--beam-size", type=int, default=defaults.decoding.beam_size)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    decoding = dataclasses.replace(defaults.decoding, beam_size=args.beam_size)
    library = load_captioner(args, decoding).index(args.photos, args.index, args.batch_size, show_progress=True)
    report = library.report
    for name, why in sorted(report.skipped.items()):
        print(f"index: skipped {name}: {why}", file=sys.stderr)
    print(f"index: {report.photos} photos indexed ({report.encoded} encoded, {report.captioned} captioned, "
          f"{report.removed} removed, {len(report.skipped)} unreadable skipped, "
          f"{report.ignored} other files ignored)")
    return 0


def dataset_library(captioner: Captioner, ranking: RankingOptions) -> PhotoLibrary:
    """The project's own images (cached features, captions generated once) as a library."""
    from pipeline.retrieval.dataset_gallery import dataset_gallery

    gallery = dataset_gallery(captioner.model, captioner.vocabulary, captioner.checkpoint, captioner.encoder_info,
                              captioner.device)
    return PhotoLibrary(captioner, gallery, ranking)


def search_main(argv: Sequence[str]) -> int:
    """QUERY: print the best images for it."""
    defaults = command_defaults()
    parser = argparse.ArgumentParser(prog="caption-search", description=__doc__.split("\n")[0])
    parser.add_argument("query", help="what the photos should show (or `index PHOTOS_DIR` to index a folder)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--index", type=Path, help="a photo index (default in a project: the dataset's own images)")
    parser.add_argument("--candidates", type=int, default=defaults.ranking.candidates,
                        help="images the caption index passes on to the likelihood; 0: all")
    parser.add_argument("--checkpoint", type=Path, default=defaults.checkpoint, required=defaults.checkpoint is None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.top < 1 or args.candidates < 0:
        parser.error("--top must be at least 1 and --candidates at least 0")
    if args.index is None and not in_project():
        raise ConfigError("no --index given and no params.yaml here: give a photo index or run in the project")
    captioner = load_captioner(args, defaults.decoding)
    ranking = dataclasses.replace(defaults.ranking, candidates=args.candidates)
    library = (captioner.open_index(args.index, ranking) if args.index is not None
               else dataset_library(captioner, ranking))
    found = library.search(args.query, args.top)
    if found.unknown and found.notice is None:
        print(f"search: the model has never seen {', '.join(found.unknown)}; those words count as <unk>",
              file=sys.stderr)
    if found.notice:
        print(f"# {found.notice}")
    for rank, hit in enumerate(found.hits, start=1):
        print(f"{rank}\t{hit.score:.3f}\t{hit.path}\t{hit.caption}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: its exit status (an expected error is one line on stderr and status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_status(lambda: index_main(argv[1:]) if argv[:1] == ["index"] else search_main(argv), "search")


if __name__ == "__main__":
    sys.exit(main())
