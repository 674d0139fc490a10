"""Caption file formats: decoding, detection and the token parser's repairs (the whole formats end to end
are in test_prepare.py)."""
from __future__ import annotations

import pytest

from pipeline.datasets.formats import CaptionLine, decode_text, detect_format, parse_captions, parse_token
from pipeline.datasets.report import DatasetError, Problems


def test_token_lines_without_a_tab_are_repaired_or_reported():
    problems = Problems()
    records = parse_token(["a.jpg#0 A dog runs .", "b.jpg#1\t", "", "#2\tno image", "no key here"], problems)
    assert records == [CaptionLine("a.jpg", "A dog runs .", 1), CaptionLine("b.jpg", "", 2)]
    assert problems.examples["repaired_line"] == [{"line": 1, "text": "a.jpg#0 A dog runs ."}]
    assert [e["line"] for e in problems.examples["malformed_line"]] == [4, 5]
    assert problems.dropped() == 2


def test_detect_format():
    assert detect_format("Flickr8k.token.txt", ["", "1000268201_693b08cb0e.jpg#0\tA child ."]) == "flickr_token"
    assert detect_format("results_20130124.token", ["1000092795.jpg#0\tTwo guys , one ."]) == "flickr_token"
    assert detect_format("captions.txt", ["image,caption", "a.jpg,A dog ."]) == "csv"
    assert detect_format("results.csv", ["image_name| comment_number| comment"]) == "pipe"
    assert detect_format("dataset_coco.json", ['{"images": []}']) == "karpathy"
    assert detect_format("Flickr8k.token.txt", ["1000268201_693b08cb0e.jpg#0 A child , a dog ."]) == "flickr_token"
    with pytest.raises(DatasetError, match="dataset.format"):
        detect_format("notes.txt", ["just some words"])


def test_decode_text_fixes_bom_crlf_and_non_utf8_lines():
    text = decode_text(b"\xef\xbb\xbfa.jpg#0\tA caf\xe9\r\nb.jpg#0\tfine\r\n")
    assert text.byte_order_mark and text.crlf_lines == 2 and text.non_utf8_lines == [1]
    assert text.lines[1] == "b.jpg#0\tfine" and text.lines[0].startswith("a.jpg#0\tA caf")


def test_lone_carriage_returns_end_lines_and_are_counted():
    text = decode_text(b"a.jpg#0\tA dog .\rb.jpg#0\tA cat .\r\nc.jpg#0\tA bird .\r")  # classic Mac OS, mixed
    assert text.lines == ["a.jpg#0\tA dog .", "b.jpg#0\tA cat .", "c.jpg#0\tA bird ."]
    assert (text.crlf_lines, text.cr_lines) == (1, 2)
    problems = Problems()
    records = parse_captions(text, "flickr_token", problems)
    assert [(record.image, record.line) for record in records] == [("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)]
    assert (problems.counts["crlf_line_end"], problems.counts["cr_line_end"]) == (1, 2)
