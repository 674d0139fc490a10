"""What prepare dropped, fixed and reported, and why: the counts, the report.json payload, the
threshold check and the one-line summary."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import SPLITS, DatasetConfig
from pipeline.errors import InputError

MAX_EXAMPLES = 5  # examples kept per reason in the report

MAX_EXAMPLE_CHARS = 200

# A caption of more words is kept but reported as `long_caption`: far more than one sentence, it is
# usually several captions glued together by a lost line end. Training cuts captions to
# model.max_caption_length words anyway.
LONG_CAPTION_WORDS = 100

DROPPED = {
    "malformed_line": "fix or remove those lines, or set dataset.format if '{format}' is not the file's format",
    "missing_image": "the captions name images that are not under dataset.images ({images}); "
                     "point dataset.images at the right folder or add the images",
    "image_not_in_any_split": "add those images to one of the lists in dataset.split_dir ({split_dir}), "
                              "or set dataset.split_dir to a folder without lists (splits) for a random split",
    "split_conflict": "the same image is listed in two splits; keep one entry per image",
    "unreadable_image": "replace or delete the damaged image files (or set dataset.check_images to false)",
    "empty_caption": "those captions are empty once punctuation is removed; fill them in or remove the lines",
    "duplicate_caption": "remove the repeated (image, caption) lines",
}

FIXED = ("non_utf8_line", "repaired_line", "crlf_line_end", "cr_line_end", "byte_order_mark")

REPORTED = {"wrong_caption_count": "images", "restval_as_train": "images",  # reason -> what is counted
            "duplicate_id": "lines", "long_caption": "captions",
            "image_without_captions": "images"}  # a Karpathy entry with an empty 'sentences' list

IMAGE_REASONS = ("missing_image", "image_not_in_any_split", "unreadable_image")  # also count images


class DatasetError(InputError):
    """The captions or images cannot be prepared as configured."""



@dataclass
class Problems:
    """Counts and first examples of everything dropped, fixed or reported, by reason."""

    counts: Counter[str] = field(default_factory=Counter)  # captions dropped, lines fixed, REPORTED[reason]
    images: Counter[str] = field(default_factory=Counter)  # images, for the image-level reasons
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, example: dict[str, Any] | None = None, count: int = 1, images: int = 0) -> None:
        """Count `count` items (and `images` images) for `reason`, keeping the first few examples."""
        self.counts[reason] += count
        self.images[reason] += images
        if example is not None and len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(example)

    def dropped(self) -> int:
        """Captions dropped, for all reasons."""
        return sum(self.counts[reason] for reason in DROPPED)


def clip(text: str) -> str:
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[:MAX_EXAMPLE_CHARS] + "..."


def build_report(config: DatasetConfig, fmt: str, split_source: str, lines_read: int,
                 rows: Sequence[tuple[str, str, str]], histogram: dict[str, int], problems: Problems) -> dict[str, Any]:
    """The report.json payload."""
    images = {split: set() for split in SPLITS}
    captions = Counter()
    for image, split, _ in rows:
        images[split].add(image)
        captions[split] += 1
    dropped = problems.dropped()

    def entry(reason: str, unit: str) -> dict[str, Any]:
        item: dict[str, Any] = {unit: problems.counts[reason]}
        if reason in IMAGE_REASONS:
            item["images"] = problems.images[reason]
        if reason == "long_caption":
            item["max_words"] = LONG_CAPTION_WORDS
        item["examples"] = problems.examples.get(reason, [])
        return item

    return {
        "captions_file": config.captions,
        "images": config.images,
        "format": fmt,
        "format_detected": config.format == "auto",
        "split_source": split_source,
        "split_dir": config.split_dir,
        "check_images": config.check_images,
        "lines_read": lines_read,
        "dropped_captions": dropped,
        "dropped_fraction": dropped / lines_read if lines_read else 0.0,
        "max_dropped_fraction": config.max_dropped_fraction,
        "splits": {split: {"images": len(images[split]), "captions": captions[split]} for split in SPLITS},
        "total": {"images": sum(len(v) for v in images.values()), "captions": len(rows)},
        "captions_per_image": {"expected": config.captions_per_image, "histogram": histogram},
        "dropped": {reason: entry(reason, "captions") for reason in DROPPED},
        "fixed": {reason: entry(reason, "lines") for reason in FIXED},
        "reported": {reason: entry(reason, unit) for reason, unit in REPORTED.items()},
    }

def check_dropped(report: dict[str, Any]) -> None:
    """Raise DatasetError, saying what to fix, when too much was dropped or nothing is left."""
    if report["lines_read"] == 0:
        raise DatasetError(f"no captions found in {report['captions_file']} (read as {report['format']}); "
                           f"check dataset.captions and dataset.format in params.yaml")
    fraction, limit = report["dropped_fraction"], report["max_dropped_fraction"]
    everything = report["total"]["captions"] == 0
    if everything:
        headline = f"prepare dropped all {report['lines_read']} caption lines"
    elif fraction > limit:
        headline = (f"prepare dropped {report['dropped_captions']} of {report['lines_read']} caption lines "
                    f"({fraction:.1%}), more than dataset.max_dropped_fraction = {limit} in params.yaml allows")
    else:
        return
    reasons = sorted(((item["captions"], reason) for reason, item in report["dropped"].items() if item["captions"]),
                     reverse=True)
    details = []
    for count, reason in reasons[:3]:
        examples = json.dumps(report["dropped"][reason]["examples"][:3])
        advice = DROPPED[reason].format(format=report["format"], images=report["images"],
                                        split_dir=report["split_dir"])
        details.append(f"{reason}: {count} captions, e.g. {examples} -> {advice}")
    advice = ("Fix the data" if everything else
              "Fix the data, or raise dataset.max_dropped_fraction if this loss is expected")
    raise DatasetError(f"{headline}. Top reasons: " + "; ".join(details) + f". {advice}. Nothing was written.")


def check_splits(report: dict[str, Any]) -> None:
    """Raise DatasetError when the train or the val split is left without captions (training needs both)."""
    empty = [split for split in ("train", "val") if report["splits"][split]["captions"] == 0]
    if not empty:
        return
    source = report["split_source"]
    if source == "split_lists":
        advice = f"list images that have captions in {empty[0]}.txt of dataset.split_dir ({report['split_dir']})"
    elif source == "karpathy":
        advice = (f"the file names no {empty[0]} images, or all of them were dropped (missing, unreadable or "
                  f"without captions); add them, or give split lists in dataset.split_dir")
    else:
        advice = (f"{report['total']['images']} images are too few for dataset.split_ratios to give every split one; "
                  f"add images")
    counts = ", ".join(f"{split} {item['images']}" for split, item in report["splits"].items())
    raise DatasetError(f"prepare left the {' and the '.join(empty)} split without captions (images per split, from "
                       f"{source}: {counts}); training needs train and val: {advice}. Nothing was written.")


def no_images_found(captions: str, images: str, named: list[str], files: set[str]) -> DatasetError:
    """The error when none of the images the captions name is in the image folder."""
    found = (f"it holds {len(files)} files, e.g. '{min(files)}', none of them named by the captions" if files
             else "it holds no files")
    return DatasetError(f"none of the {len(named)} images named by {captions} (e.g. '{named[0]}') is under "
                        f"dataset.images ({images}): {found}; the pipeline needs the images: put them there or point "
                        f"dataset.images at the folder that holds them. Nothing was written.")

def _nonzero(entries: dict[str, dict[str, Any]], unit: str | dict[str, str]) -> str:
    """'reason N, reason N' for the reasons that occurred (`unit`: the count's key, or one per reason)."""
    units = unit if isinstance(unit, dict) else dict.fromkeys(entries, unit)
    return ", ".join(f"{reason} {entry[units[reason]]}" for reason, entry in entries.items() if entry[units[reason]])

def summary(report: dict[str, Any]) -> str:
    """One line: format, images/captions per split, what was dropped, fixed and reported, and why."""
    splits = ", ".join(f"{split} {counts['images']} images / {counts['captions']} captions"
                       for split, counts in report["splits"].items())
    line = (f"prepare: {report['format']}: {splits}; dropped {report['dropped_captions']} of "
            f"{report['lines_read']} caption lines ({report['dropped_fraction']:.2%})")
    for label, key, unit in (("dropped", "dropped", "captions"), ("fixed", "fixed", "lines"),
                             ("reported", "reported", REPORTED)):
        reasons = _nonzero(report[key], unit)
        if reasons:
            line += f"; {label}: {reasons}"
    return line
