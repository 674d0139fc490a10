"""Caption file formats: decode the text, detect the format, parse it into caption records.

- `flickr_token`: `IMAGE#N<TAB>caption` (Flickr8k `Flickr8k.token.txt`, Flickr30k
  `results_20130124.token`, the built-in shapes demo);
- `csv`: a header naming an image and a caption column (`image,caption`, `image_name,comment`, ...),
  quoted fields allowed;
- `pipe`: Flickr30k's `results.csv`, `image_name| comment_number| comment`;
- `karpathy`: the Karpathy split JSON (`dataset_flickr8k.json`, `dataset_flickr30k.json`,
  `dataset_coco.json`), which carries its own splits (restval counts as train).

Parsers only read; what they fix or drop is counted in a `Problems` (pipeline.datasets.report).
A line that is not UTF-8 is read as Windows-1252 (the byte E9 in `caf<E9>` -> `café`, normalised to `cafe`)
and counted as `non_utf8_line`; a caption id (`IMAGE#N`, or image and number column) used by two
lines with different captions is kept and counted as `duplicate_id`.
"""
from __future__ import annotations

import codecs
import csv
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.config import SPLITS
from pipeline.datasets.report import DatasetError, Problems, clip

FORMATS = ("flickr_token", "csv", "pipe", "karpathy")

IMAGE_COLUMNS = ("image", "image_name", "image_file", "image_path", "filename", "file_name", "img")

CAPTION_COLUMNS = ("caption", "comment", "sentence", "text", "description", "raw")

NUMBER_COLUMNS = ("comment_number", "caption_number", "sentence_number", "number")

_TOKEN_KEY = re.compile(r"^(?P<image>.*)#\d+$")

_TOKEN_NO_TAB = re.compile(r"^(?P<key>\S+#\d+)(?:\s+(?P<caption>.*))?$")

_GLUED_NUMBER = re.compile(r"^(?P<number>\d+)\s+(?P<caption>\S.*)$")

_LINE_END = "\r\n|\r|\n"  # as editors and Python's text mode read them: a lone CR ends a line too


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
    cr_lines: int = 0  # lines ended by a lone CR (classic Mac OS)


def decode_text(data: bytes) -> TextFile:
    """Decode bytes as UTF-8 (BOM removed); a line that is not UTF-8 is read as Windows-1252 (see decode_legacy)."""
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetError("the text starts with a UTF-16 byte order mark; save the file as UTF-8")
    start = data[:4096]
    if start.count(0) * 4 > len(start):  # UTF-16 text: every other byte of ASCII characters is 0
        raise DatasetError("the file is not UTF-8 text (a quarter of its first bytes are 0: UTF-16 without a byte "
                           "order mark, or a binary file); save it as UTF-8")
    non_utf8: list[int] = []
    try:
        lines = re.split(_LINE_END, data.decode("utf-8"))
    except UnicodeDecodeError:
        lines = []
        for number, raw in enumerate(re.split(_LINE_END.encode(), data), start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(decode_legacy(raw))
                non_utf8.append(number)
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    crlf = data.count(b"\r\n")
    return TextFile(lines, non_utf8, crlf, bom, data.count(b"\r") - crlf)

def decode_legacy(raw: bytes) -> str:
    """A line that is not UTF-8, read as Windows-1252 (Latin-1 plus curly quotes and dashes), the usual
    encoding of such files; a line with a byte Windows-1252 leaves undefined is read as Latin-1."""
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # defines every byte

def note_id(seen: dict[tuple[str, str], tuple[int, str]], key: tuple[str, str], line: int, text: str,
            problems: Problems) -> None:
    """Count `duplicate_id` when caption id `key` was already used by a line with another caption."""
    text = " ".join(text.split())
    first = seen.setdefault(key, (line, text))
    if first[1] != text:
        problems.add("duplicate_id", {"line": line, "id": "#".join(key), "first_line": first[0]})

def detect_format(filename: str, lines: Sequence[str]) -> str:
    """Guess the captions format from the file name and its first non-blank line."""
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise DatasetError("the file is empty (no line holds text); point dataset.captions at the captions file")
    if filename.lower().endswith(".json") or first.startswith(("{", "[")):
        return "karpathy"
    key = first.split("\t", 1)[0]
    if ("\t" in first and _TOKEN_KEY.match(key)) or filename.lower().endswith(".token") or _TOKEN_NO_TAB.match(first):
        return "flickr_token"  # `IMAGE#N` first, even with spaces for the tab and a comma in the caption
    if "|" in first:
        return "pipe"
    if "," in first:
        return "csv"
    if "\t" in first:
        return "flickr_token"
    raise DatasetError(f"cannot tell the format from its first line {clip(first)!r}; "
                       f"set dataset.format to one of {', '.join(FORMATS)}")

def parse_token(lines: Sequence[str], problems: Problems) -> list[CaptionLine]:
    """Parse `IMAGE#N<TAB>caption` lines; a line whose tab is spaces is repaired when unambiguous."""
    records = []
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            match = _TOKEN_NO_TAB.match(line.strip())
            if match is None:
                problems.add("malformed_line", {"line": number, "text": clip(line)})
                continue
            key, caption = match["key"], match["caption"] or ""
            if caption:
                problems.add("repaired_line", {"line": number, "text": clip(line)})
        key = key.strip()
        match = _TOKEN_KEY.match(key)
        image = (match["image"] if match else key).strip()
        if not image:
            problems.add("malformed_line", {"line": number, "text": clip(line)})
            continue
        if match:
            note_id(seen, (image, key.rpartition("#")[2]), number, caption, problems)
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
    """Parse a table with a header row (csv: quoted fields; pipe: no quoting, stray spaces).

    A caption is one line: a row that spans several (a quote left open) is dropped as malformed, one
    count per line it swallowed.
    """
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter, quoting=quoting,
                        skipinitialspace=True)
    header: list[str] | None = None
    image_column = caption_column = 0
    number_column: int | None = None
    records = []
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    last_line = 0  # the line the previous row ended on
    try:
        for row in reader:
            first_line, last_line = last_line + 1, reader.line_num
            if last_line > first_line and header is not None:  # a quote left open swallowed the lines after it
                problems.add("malformed_line", {"line": first_line, "text": clip(lines[first_line - 1])},
                             count=sum(1 for line in lines[first_line - 1:last_line] if line.strip()))
                continue
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
                number_column = _find_column(header, NUMBER_COLUMNS)
                continue
            fitted = _fit_row(row, header, caption_column, delimiter)
            if fitted is None or not fitted[0][image_column]:
                problems.add("malformed_line", {"line": reader.line_num, "text": clip(delimiter.join(row))})
                continue
            fields, repaired = fitted
            if repaired:
                problems.add("repaired_line", {"line": reader.line_num, "text": clip(delimiter.join(row))})
            if number_column is not None and fields[number_column]:
                note_id(seen, (fields[image_column], fields[number_column]), reader.line_num, fields[caption_column],
                        problems)
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
            problems.add("malformed_line", {"line": number, "text": clip(json.dumps(entry))},
                         count=max(1, len(sentences) if isinstance(sentences, list) else 1))
            continue
        filepath = fields.get("filepath")
        image = posixpath.join(filepath, filename) if isinstance(filepath, str) and filepath else filename
        if not sentences:
            problems.add("image_without_captions", {"line": number, "image": image})
            continue
        if split == "restval":
            problems.add("restval_as_train", {"image": image})
            split = "train"
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                if not isinstance(tokens, list):
                    problems.add("malformed_line", {"line": number, "image": image, "text": clip(str(sentence))})
                    continue
                raw = " ".join(str(token) for token in tokens)
            records.append(CaptionLine(image, raw, number, split))
    return records

def parse_captions(text: TextFile, fmt: str, problems: Problems) -> list[CaptionLine]:
    """Parse a decoded captions file in format `fmt`, counting what was fixed on the way."""
    for number in text.non_utf8_lines:
        problems.add("non_utf8_line", {"line": number, "text": clip(text.lines[number - 1])})
    if text.crlf_lines:
        problems.add("crlf_line_end", count=text.crlf_lines)
    if text.cr_lines:
        problems.add("cr_line_end", count=text.cr_lines)
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
