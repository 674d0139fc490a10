"""How often captions of the Flickr30k-like set name what its pictures show.

    python -m benchmarks.subject_score data/evaluate/predictions.json [--seed 0]

Every picture of `benchmarks.flickr30k_like` shows one named shape on top (its subject, "purple
triangle") and every one of its captions says it; the rest of each caption is noise. For the final
model's captions and, when self-critical training ran, the cross-entropy model's beside them
(evaluate's predictions.json), this prints the share of captions that name their picture's subject,
how many different subjects they name, and how many distinct captions there are: what the captions
say about the pictures, apart from how many ways they say it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.flickr30k_like import FIRST_NAME, SUBJECT_COLOURS, SUBJECT_KINDS, subject


def says(caption: str, colour: str, kind: str) -> bool:
    """Whether the caption names this subject (its two words, together)."""
    return f" {colour} {kind} " in f" {caption} "


def subject_scores(predictions: list[dict], key: str, seed: int = 0) -> dict[str, float]:
    """Of the predictions' `key` captions: the share that name their picture's subject, the distinct
    subjects named (any colour-kind pair said), and the distinct captions."""
    captions = [p[key] for p in predictions]
    named = [says(caption, *subject(int(Path(p["image"]).stem) - FIRST_NAME, seed))
             for p, caption in zip(predictions, captions)]
    spoken = {(colour, kind) for caption in captions for colour in SUBJECT_COLOURS for kind in SUBJECT_KINDS
              if says(caption, colour, kind)}
    return {"naming_the_subject": sum(named) / len(captions), "distinct_subjects_named": len(spoken),
            "distinct_captions": len(set(captions))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="the seed the set was drawn with")
    args = parser.parse_args()
    predictions = json.loads(args.predictions.read_text(encoding="utf-8"))
    foreign = next((p["image"] for p in predictions if not Path(p["image"]).stem.isdigit()), None)
    if foreign is not None:
        raise SystemExit(f"{args.predictions}: {foreign} is not an image of benchmarks.flickr30k_like (its names are "
                         f"numbers from {FIRST_NAME}); score that set's predictions")
    for key, model in (("cross_entropy", "cross-entropy model"), ("caption", "final model")):
        if key in predictions[0]:
            scores = subject_scores(predictions, key, args.seed)
            print(f"{model}: {scores['naming_the_subject']:.1%} of {len(predictions)} captions name their picture's "
                  f"subject; {scores['distinct_subjects_named']} different subjects named (of "
                  f"{len(SUBJECT_COLOURS) * len(SUBJECT_KINDS)}); {scores['distinct_captions']} distinct captions")


if __name__ == "__main__":
    main()
