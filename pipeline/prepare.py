"""Prepare: turn a captions file and an image folder into one clean (image, split, caption) table.

Reads `dataset.captions` in one of the formats below (`dataset.format: auto` detects it) and
`dataset.images`, and writes into `dataset.out_dir`, all at once or not at all:

- `captions.csv`: columns `image,split,caption`; `image` is the path relative to the image folder,
  `split` is train, val or test, `caption` is normalised by `text.normalise`. Rows are ordered by
  split (train, val, test), then image, then the captions' order in the source file.
- `report.json`: the detected format, where the splits came from, images and captions per split,
  and every caption dropped (and why), every line fixed and every oddity kept, each with counts and
  the first few examples (line numbers, image names) so that the source can be fixed.

Formats:
- `flickr_token`: `IMAGE#N<TAB>caption` (Flickr8k `Flickr8k.token.txt`, Flickr30k
  `results_20130124.token`, the built-in shapes demo);
- `csv`: a header naming an image and a caption column (`image,caption`, `image_name,comment`, ...),
  quoted fields allowed;
- `pipe`: Flickr30k's `results.csv`, `image_name| comment_number| comment`;
- `karpathy`: the Karpathy split JSON (`dataset_flickr8k.json`, `dataset_flickr30k.json`,
  `dataset_coco.json`), which carries its own splits (restval counts as train).

Splits are by image, never by caption: from `dataset.split_files` when given, else from the Karpathy
JSON, else a seeded random split of the images with `dataset.split_ratios`. When the dropped captions
exceed `dataset.max_dropped_fraction` of the caption lines read, the stage fails and writes nothing.

Run: `python -m pipeline.prepare` (reads params.yaml, or the file named by $PIPELINE_PARAMS).
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import posixpath
import re
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from pipeline.config import DatasetConfig, load_section
from pipeline.prepared import CAPTIONS_FILE, write_captions
from pipeline.text import normalise
from pipeline.utils import atomic_path, write_json

SPLITS = ("train", "val", "test")
FORMATS = ("flickr_token", "csv", "pipe", "karpathy")
REPORT_FILE = "report.json"
MAX_EXAMPLES = 5  # examples kept per reason in the report
MAX_EXAMPLE_CHARS = 200

# Header names accepted by the csv and pipe formats (compared lower-case, stripped).
IMAGE_COLUMNS = ("image", "image_name", "image_file", "image_path", "filename", "file_name", "img")
CAPTION_COLUMNS = ("caption", "comment", "sentence", "text", "description", "raw")
NUMBER_COLUMNS = ("comment_number", "caption_number", "sentence_number", "number")

# Everything prepare drops, with what to do about it; `{...}` fields are filled from the config.
DROPPED = {
    "malformed_line": "fix or remove those lines, or set dataset.format if '{format}' is not the file's format",
    "missing_image": "the captions name images that are not under dataset.images ({images}); "
                     "point dataset.images at the right folder or add the images",
    "image_not_in_any_split": "add those images to one of the lists in dataset.split_files, "
                              "or set dataset.split_files to null for a random split",
    "split_conflict": "the same image is listed in two splits; keep one entry per image",
    "unreadable_image": "replace or delete the damaged image files (or set dataset.check_images to false)",
    "empty_caption": "those captions are empty once punctuation is removed; fill them in or remove the lines",
    "duplicate_caption": "remove the repeated (image, caption) lines",
}
FIXED = ("non_utf8_line", "repaired_line", "crlf_line_end", "byte_order_mark")
REPORTED = ("wrong_caption_count", "restval_as_train")
IMAGE_REASONS = ("missing_image", "image_not_in_any_split", "unreadable_image")  # also count images

# What PIL raises for a file that is not a readable image.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)

_TOKEN_KEY = re.compile(r"^(?P<image>.*)#\d+$")
_TOKEN_NO_TAB = re.compile(r"^(?P<key>\S+#\d+)(?:\s+(?P<caption>.*))?$")
_GLUED_NUMBER = re.compile(r"^(?P<number>\d+)\s+(?P<caption>\S.*)$")


class DatasetError(ValueError):
    """The captions or images cannot be prepared as configured."""


class CaptionLine(NamedTuple):
    """One caption as read: `line` is its line in the file (JSON: its image's position, from 1)."""

    image: str
    text: str
    line: int
    split: str | None = None


@dataclass(frozen=True)
class TextFile:
    """A decoded text file: `lines[i]` is line i + 1, without its line end."""

    lines: list[str]
    non_utf8_lines: list[int]
    crlf_lines: int
    byte_order_mark: bool


@dataclass
class Problems:
    """Counts and first examples of everything dropped, fixed or reported, by reason."""

    counts: Counter[str] = field(default_factory=Counter)  # captions (dropped), lines (fixed), images (reported)
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


@dataclass(frozen=True)
class Prepared:
    """The output table, as (image, split, caption) rows in output order, and the report."""

    rows: list[tuple[str, str, str]]
    report: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# reading text and detecting the format


def _clip(text: str) -> str:
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[:MAX_EXAMPLE_CHARS] + "..."


def decode_text(data: bytes) -> TextFile:
    """Decode bytes as UTF-8 (BOM removed), line by line with replacement where a line is not UTF-8."""
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetError("the text starts with a UTF-16 byte order mark; save the file as UTF-8")
    non_utf8: list[int] = []
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace"))
                non_utf8.append(number)
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    crlf = sum(1 for line in lines if line.endswith("\r"))
    if crlf:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return TextFile(lines, non_utf8, crlf, bom)


def detect_format(filename: str, lines: Sequence[str]) -> str:
    """Guess the captions format from the file name and its first non-blank line."""
    first = next((line.strip() for line in lines if line.strip()), "")
    if filename.lower().endswith(".json") or first.startswith(("{", "[")):
        return "karpathy"
    key = first.split("\t", 1)[0]
    if ("\t" in first and _TOKEN_KEY.match(key)) or filename.lower().endswith(".token"):
        return "flickr_token"
    if "|" in first:
        return "pipe"
    if "," in first:
        return "csv"
    if "\t" in first or _TOKEN_NO_TAB.match(first):
        return "flickr_token"
    raise DatasetError(f"cannot tell the format of '{filename}' from its first line {_clip(first)!r}; "
                       f"set dataset.format to one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------
# parsing each format into CaptionLine records


def parse_token(lines: Sequence[str], problems: Problems) -> list[CaptionLine]:
    """Parse `IMAGE#N<TAB>caption` lines; a line whose tab is spaces is repaired when unambiguous."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            match = _TOKEN_NO_TAB.match(line.strip())
            if match is None:
                problems.add("malformed_line", {"line": number, "text": _clip(line)})
                continue
            key, caption = match["key"], match["caption"] or ""
            if caption:
                problems.add("repaired_line", {"line": number, "text": _clip(line)})
        key = key.strip()
        match = _TOKEN_KEY.match(key)
        image = (match["image"] if match else key).strip()
        if not image:
            problems.add("malformed_line", {"line": number, "text": _clip(line)})
            continue
        records.append(CaptionLine(image, caption, number))
    return records


def _find_column(header: list[str], names: Sequence[str]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


def _fit_row(row: list[str], header: list[str], caption_column: int,
             delimiter: str) -> tuple[list[str], bool] | None:
    """Return (fields, repaired) with as many fields as the header, or None when that is ambiguous."""
    width = len(header)
    caption_last = caption_column == width - 1
    if len(row) == width:
        return row, False
    if len(row) > width and caption_last:  # an unquoted delimiter inside the caption
        return row[: width - 1] + [delimiter.join(row[width - 1:])], True
    if len(row) == width - 1 and caption_last and width >= 2 and header[width - 2] in NUMBER_COLUMNS:
        match = _GLUED_NUMBER.match(row[-1])  # `image| 4 A dog runs`: number and caption glued
        if match:
            return row[:-1] + [match["number"], match["caption"]], True
    return None


def parse_delimited(lines: Sequence[str], delimiter: str, problems: Problems) -> list[CaptionLine]:
    """Parse a table with a header row (csv: quoted fields; pipe: no quoting, stray spaces)."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter, quoting=quoting,
                        skipinitialspace=True)
    header: list[str] | None = None
    image_column = caption_column = 0
    records = []
    try:
        for row in reader:
            row = [value.strip() for value in row]
            if not any(row):
                continue
            if header is None:
                header = [name.lower().strip('"') for name in row]
                found_image, found_caption = _find_column(header, IMAGE_COLUMNS), _find_column(header, CAPTION_COLUMNS)
                if found_image is None or found_caption is None:
                    raise DatasetError(f"header {row} needs an image column ({', '.join(IMAGE_COLUMNS)}) and a "
                                       f"caption column ({', '.join(CAPTION_COLUMNS)}); add a header such as "
                                       f"'image{delimiter}caption' or set dataset.format")
                image_column, caption_column = found_image, found_caption
                continue
            fitted = _fit_row(row, header, caption_column, delimiter)
            if fitted is None or not fitted[0][image_column]:
                problems.add("malformed_line", {"line": reader.line_num, "text": _clip(delimiter.join(row))})
                continue
            fields, repaired = fitted
            if repaired:
                problems.add("repaired_line", {"line": reader.line_num, "text": _clip(delimiter.join(row))})
            records.append(CaptionLine(fields[image_column], fields[caption_column], reader.line_num))
    except csv.Error as error:
        raise DatasetError(f"line {reader.line_num}: {error}; fix the line or set dataset.format") from error
    return records


def parse_karpathy(text: str, problems: Problems) -> list[CaptionLine]:
    """Parse the Karpathy split JSON; `restval` images join train; path = filepath/filename."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"not valid JSON: {error}; "
                           f"set dataset.format if this is not a Karpathy split file") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError("a Karpathy split file is an object with an 'images' list; set dataset.format")
    records = []
    for number, entry in enumerate(data["images"], start=1):
        fields = entry if isinstance(entry, dict) else {}
        filename, split, sentences = fields.get("filename"), fields.get("split"), fields.get("sentences")
        if not isinstance(filename, str) or not filename or not isinstance(sentences, list) or \
                split not in (*SPLITS, "restval"):
            problems.add("malformed_line", {"line": number, "text": _clip(json.dumps(entry))},
                         count=max(1, len(sentences) if isinstance(sentences, list) else 1))
            continue
        filepath = fields.get("filepath")
        image = posixpath.join(filepath, filename) if isinstance(filepath, str) and filepath else filename
        if split == "restval":
            problems.add("restval_as_train", {"image": image})
            split = "train"
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                if not isinstance(tokens, list):
                    problems.add("malformed_line", {"line": number, "image": image, "text": _clip(str(sentence))})
                    continue
                raw = " ".join(str(token) for token in tokens)
            records.append(CaptionLine(image, raw, number, split))
    return records


def parse_captions(text: TextFile, fmt: str, problems: Problems) -> list[CaptionLine]:
    """Parse a decoded captions file in format `fmt`, counting what was fixed on the way."""
    for number in text.non_utf8_lines:
        problems.add("non_utf8_line", {"line": number, "text": _clip(text.lines[number - 1])})
    if text.crlf_lines:
        problems.add("crlf_line_end", count=text.crlf_lines)
    if text.byte_order_mark:
        problems.add("byte_order_mark")
    if fmt == "flickr_token":
        return parse_token(text.lines, problems)
    if fmt == "csv":
        return parse_delimited(text.lines, ",", problems)
    if fmt == "pipe":
        return parse_delimited(text.lines, "|", problems)
    if fmt == "karpathy":
        return parse_karpathy("\n".join(text.lines), problems)
    raise DatasetError(f"unknown dataset.format '{fmt}'; use auto or one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------
# images and splits


def list_images(folder: Path) -> set[str]:
    """Every file under `folder`, as a '/'-separated path relative to it (one directory walk)."""
    top = str(folder)
    names: set[str] = set()
    for root, _, files in os.walk(top, followlinks=True):
        relative = os.path.relpath(root, top).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        names.update(prefix + name for name in files)
    return names


def unreadable_images(folder: Path, images: Iterable[str]) -> dict[str, str]:
    """Images that PIL cannot open and verify, with the error for each."""
    errors = {}
    for image in images:
        try:
            with Image.open(folder / image) as opened:
                opened.verify()
        except IMAGE_ERRORS as error:
            errors[image] = f"{type(error).__name__}: {error}"
    return errors


def read_split_lists(split_files: dict[str, str]) -> dict[str, str]:
    """Map each image named in the split list files to its split; an image in two lists is an error."""
    split_of: dict[str, str] = {}
    for split, path in split_files.items():
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"dataset.split_files.{split}: '{file}' not found; fix the path in params.yaml "
                                    f"or set dataset.split_files to null for a random split")
        for line in decode_text(file.read_bytes()).lines:
            image = line.strip()
            if not image:
                continue
            if split_of.setdefault(image, split) != split:
                raise DatasetError(f"image '{image}' is in both the {split_of[image]} and the {split} lists of "
                                   f"dataset.split_files; an image belongs to one split")
    return split_of


def split_sizes(num_images: int, ratios: dict[str, float]) -> dict[str, int]:
    """Images per split: largest remainders, and at least one for every non-zero ratio when possible."""
    named = [split for split in SPLITS if ratios.get(split, 0.0) > 0.0]
    exact = {split: num_images * ratios[split] for split in named}
    sizes = {split: int(exact[split]) for split in SPLITS if split in exact}
    by_remainder = sorted(named, key=lambda split: (-(exact[split] - sizes[split]), SPLITS.index(split)))
    for split in by_remainder[: num_images - sum(sizes.values())]:
        sizes[split] += 1
    if num_images >= len(named):
        for split in named:
            if sizes[split] == 0:
                donor = max(named, key=lambda other: sizes[other])
                sizes[donor] -= 1
                sizes[split] += 1
    return {split: sizes.get(split, 0) for split in SPLITS}


def random_split(images: Iterable[str], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Assign each image a split: the sorted images shuffled by numpy default_rng(seed), cut by ratio."""
    ordered = sorted(set(images))
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    split_of, start = {}, 0
    for split, size in split_sizes(len(ordered), ratios).items():
        split_of.update((image, split) for image in shuffled[start:start + size])
        start += size
    return split_of


# ----------------------------------------------------------------------------------------------
# filtering


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
    """Normalise every caption; drop the empty ones and repeated (image, caption) pairs."""
    kept = []
    first_line: dict[tuple[str, str], int] = {}
    for record in records:
        caption = normalise(record.text)
        if not caption:
            problems.add("empty_caption", {"line": record.line, "image": record.image, "text": _clip(record.text)})
            continue
        key = (record.image, caption)
        if key in first_line:
            problems.add("duplicate_caption", {"line": record.line, "image": record.image, "caption": caption,
                                               "first_line": first_line[key]})
            continue
        first_line[key] = record.line
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


# ----------------------------------------------------------------------------------------------
# the report and the threshold


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
        item["examples"] = problems.examples.get(reason, [])
        return item

    return {
        "captions_file": config.captions,
        "images": config.images,
        "format": fmt,
        "format_detected": config.format == "auto",
        "split_source": split_source,
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
        "reported": {reason: entry(reason, "images") for reason in REPORTED},
    }


def check_dropped(report: dict[str, Any]) -> None:
    """Raise DatasetError, saying what to fix, when too much was dropped or nothing is left."""
    if report["lines_read"] == 0:
        raise DatasetError(f"no captions found in {report['captions_file']} (read as {report['format']}); "
                           f"check dataset.captions and dataset.format in params.yaml")
    fraction, limit = report["dropped_fraction"], report["max_dropped_fraction"]
    if report["total"]["captions"] == 0:
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
        advice = DROPPED[reason].format(format=report["format"], images=report["images"])
        details.append(f"  {reason}: {count} captions, e.g. {examples}\n    -> {advice}")
    raise DatasetError(f"{headline}. Top reasons:\n" + "\n".join(details) + "\nFix the data, or raise "
                       "dataset.max_dropped_fraction if this loss is expected. Nothing was written.")


def _nonzero(entries: dict[str, dict[str, Any]], unit: str) -> str:
    """'reason N, reason N' for the reasons that occurred."""
    return ", ".join(f"{reason} {entry[unit]}" for reason, entry in entries.items() if entry[unit])


def summary(report: dict[str, Any]) -> str:
    """One line: format, images/captions per split, what was dropped, fixed and reported, and why."""
    splits = ", ".join(f"{split} {counts['images']} images / {counts['captions']} captions"
                       for split, counts in report["splits"].items())
    line = (f"prepare: {report['format']}: {splits}; dropped {report['dropped_captions']} of "
            f"{report['lines_read']} caption lines ({report['dropped_fraction']:.2%})")
    for label, key, unit in (("dropped", "dropped", "captions"), ("fixed", "fixed", "lines"),
                             ("reported", "reported", "images")):
        reasons = _nonzero(report[key], unit)
        if reasons:
            line += f"; {label}: {reasons}"
    return line


# ----------------------------------------------------------------------------------------------
# the stage


def check_inputs(config: DatasetConfig) -> tuple[Path, Path]:
    """The captions file and image folder, or FileNotFoundError naming the path and the params key."""
    captions, images = Path(config.captions), Path(config.images)
    if not captions.is_file():
        raise FileNotFoundError(f"dataset.captions: captions file '{captions}' not found; "
                                f"fix the path in params.yaml (relative to the project root)")
    if not images.is_dir():
        raise FileNotFoundError(f"dataset.images: image folder '{images}' not found; "
                                f"fix the path in params.yaml (relative to the project root)")
    return captions, images


def prepare(config: DatasetConfig) -> Prepared:
    """Read, check, clean and split the dataset; raise DatasetError when too much is dropped."""
    captions_path, images_dir = check_inputs(config)
    text = decode_text(captions_path.read_bytes())
    fmt = detect_format(captions_path.name, text.lines) if config.format == "auto" else config.format
    problems = Problems()
    records = parse_captions(text, fmt, problems)
    lines_read = len(records) + problems.counts["malformed_line"]

    available = list_images(images_dir)
    records = drop_images(records, {r.image: None for r in records if r.image not in available},
                          "missing_image", problems)
    split_of = read_split_lists(config.split_files) if config.split_files else None
    split_source = "split_files" if split_of is not None else "karpathy" if fmt == "karpathy" else "random"
    if split_source != "random":
        records = resolve_splits(records, split_of, problems)
    if config.check_images:
        records = drop_images(records, unreadable_images(images_dir, sorted({r.image for r in records})),
                              "unreadable_image", problems)
    records = clean_captions(records, problems)
    if split_source == "random":
        split_of = random_split((r.image for r in records), config.split_ratios, config.seed)
        records = [record._replace(split=split_of[record.image]) for record in records]

    histogram = count_captions(records, config.captions_per_image, problems)
    order = {split: index for index, split in enumerate(SPLITS)}
    records.sort(key=lambda r: (order[r.split], r.image))  # stable: captions keep their file order
    rows = [(r.image, r.split, r.text) for r in records]
    report = build_report(config, fmt, split_source, lines_read, rows, histogram, problems)
    check_dropped(report)
    return Prepared(rows, report)


def write_outputs(out_dir: Path, prepared: Prepared) -> None:
    """Write captions.csv and report.json into `out_dir`, replacing it in one rename."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_captions(tmp / CAPTIONS_FILE, prepared.rows)
        write_json(tmp / REPORT_FILE, prepared.report)


def main() -> None:
    config = load_section(DatasetConfig)
    prepared = prepare(config)
    write_outputs(Path(config.out_dir), prepared)
    print(summary(prepared.report))


if __name__ == "__main__":
    main()
