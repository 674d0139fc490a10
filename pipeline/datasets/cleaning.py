"""Filtering caption records: drop the captions of bad images, give every caption its split,
normalise, drop empty and repeated captions, report very long ones, count captions per image."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from pipeline.datasets.formats import CaptionLine
from pipeline.datasets.report import LONG_CAPTION_WORDS, MAX_EXAMPLES, Problems, clip
from pipeline.text import normalise


def _lines_by_image(records: Iterable[CaptionLine]) -> dict[str, list[int]]:
    lines: dict[str, list[int]] = defaultdict(list)
    for record in records:
        lines[record.image].append(record.line)
    return lines

def drop_images(records: list[CaptionLine], bad: dict[str, str | None], reason: str,
                problems: Problems) -> list[CaptionLine]:
    """Drop the captions of the images in `bad` (image -> detail or None), counting them under `reason`."""
    if not bad:
        return records
    lines = _lines_by_image(record for record in records if record.image in bad)
    for image in sorted(lines, key=lambda name: lines[name][0]):
        example: dict[str, Any] = {"image": image, "lines": lines[image][:MAX_EXAMPLES]}
        if bad[image] is not None:
            example["error"] = bad[image]
        problems.add(reason, example, count=len(lines[image]), images=1)
    return [record for record in records if record.image not in bad]

def resolve_splits(records: list[CaptionLine], split_of: dict[str, str] | None,
                   problems: Problems) -> list[CaptionLine]:
    """Give every caption its image's split from `split_of` (or the first split seen for that image)."""
    if split_of is not None:
        records = drop_images(records, {r.image: None for r in records if r.image not in split_of},
                              "image_not_in_any_split", problems)
        return [record._replace(split=split_of[record.image]) for record in records]
    first: dict[str, str | None] = {}
    kept = []
    for record in records:
        if first.setdefault(record.image, record.split) == record.split:
            kept.append(record)
        else:
            problems.add("split_conflict", {"line": record.line, "image": record.image,
                                            "splits": [first[record.image], record.split]})
    return kept

def clean_captions(records: Iterable[CaptionLine], problems: Problems) -> list[CaptionLine]:
    """Normalise every caption; drop the empty ones and repeated (image, caption) pairs; report long ones."""
    kept = []
    first_line: dict[tuple[str, str], int] = {}
    for record in records:
        caption = normalise(record.text)
        if not caption:
            problems.add("empty_caption", {"line": record.line, "image": record.image, "text": clip(record.text)})
            continue
        key = (record.image, caption)
        if key in first_line:
            problems.add("duplicate_caption", {"line": record.line, "image": record.image, "caption": caption,
                                               "first_line": first_line[key]})
            continue
        first_line[key] = record.line
        words = caption.count(" ") + 1
        if words > LONG_CAPTION_WORDS:
            problems.add("long_caption", {"line": record.line, "image": record.image, "words": words})
        kept.append(record._replace(text=caption))
    return kept

def count_captions(records: Iterable[CaptionLine], expected: int | None, problems: Problems) -> dict[str, int]:
    """Images per number of captions; images with other than `expected` captions are reported."""
    per_image = Counter(record.image for record in records)
    if expected is not None:
        for image in sorted(per_image):
            if per_image[image] != expected:
                problems.add("wrong_caption_count", {"image": image, "captions": per_image[image]})
    return {str(count): images for count, images in sorted(Counter(per_image.values()).items())}
