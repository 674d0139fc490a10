"""The prepare stage: every input format end to end, the messy cases, the random split and the outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import PARAMS_ENV, SPLITS, DatasetConfig
from pipeline.datasets.report import DatasetError, summary
from pipeline.datasets.table import read_captions
from pipeline.stages import prepare as prep
from tests.conftest import write_params

# Flickr8k-style image names
A = "1000268201_693b08cb0e.jpg"
B = "1001773457_577c3a7d70.jpg"
C = "1002674143_1b742ab4b8.jpg"
D = "1003163366_44323f5815.jpg"  # garbage bytes: unreadable
E = "1007129816_e794419615.jpg"  # in no split list
F = "1009434119_febe49276a.jpg"
GONE = "2258277193_586949ec62.jpg.1"  # named by the captions, not on disk


def write_image(path: Path, garbage: bool = False) -> None:
    """A tiny real image in the format its suffix names, or garbage bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if garbage:
        path.write_bytes(b"this is not an image\x00\x01")
    else:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def make_config(tmp_path: Path, captions: Path, **overrides) -> DatasetConfig:
    """A dataset config for files under `tmp_path`; dataset.split_dir an empty folder (no lists) unless overridden."""
    (tmp_path / "no_lists").mkdir(exist_ok=True)
    values = {"captions": str(captions), "images": str(tmp_path / "images"), "format": "auto",
              "split_dir": str(tmp_path / "no_lists"),
              "split_ratios": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0, "captions_per_image": 5,
              "max_dropped_fraction": 1.0, "check_images": True, "table": str(tmp_path / "prepared" / "captions.csv"),
              "report": str(tmp_path / "prepared" / "report.json")}
    values.update(overrides)
    return DatasetConfig(**values)


def by_split(rows: list[tuple[str, str, str]]) -> dict[str, set[str]]:
    images: dict[str, set[str]] = {split: set() for split in SPLITS}
    for image, split, _ in rows:
        images[split].add(image)
    return images


def assert_split_by_image(rows: list[tuple[str, str, str]]) -> None:
    splits_of: dict[str, set[str]] = {}
    for image, split, _ in rows:
        splits_of.setdefault(image, set()).add(split)
    assert all(len(splits) == 1 for splits in splits_of.values())


# ----------------------------------------------------------------------------------------------
# flickr_token: Flickr8k with its split lists and every kind of mess


def messy_token_dataset(tmp_path: Path) -> tuple[Path, dict[str, int], dict[str, str]]:
    """A Flickr8k-style token file with BOM, CRLF, junk lines; returns (file, line numbers, split files)."""
    lines: list[bytes] = []
    where: dict[str, int] = {}

    def add(text: str | bytes, name: str | None = None) -> None:
        lines.append(text if isinstance(text, bytes) else text.encode("utf-8"))
        if name:
            where[name] = len(lines)

    for n, caption in enumerate(["A child in a pink dress .", "A girl going into a wooden building .",
                                 "A little girl climbing into a wooden playhouse .",
                                 "A little girl climbing the stairs to her playhouse .",
                                 "A little girl in a pink dress going into a wooden cabin ."]):
        add(f"{A}#{n}\t{caption}")
    add(f"{A}#4\tA little girl in a pink dress going into a wooden cabin .", "duplicate")
    add("")
    add(f"  {B}#0\t   Black dog &amp; spotted dog are fighting   ")
    add(f"{B}#1\t . ", "empty")
    add(f"{B}#2\tA black dog and a tri-colored dog playing with each other on the road .")
    add(f"{B}#3\tTwo dogs of different breeds looking at each other on the road .")
    add(f"{B}#4\tA dog sits outside a caf\xe9 .".encode("latin-1"), "non_utf8")
    for n in range(6):
        add(f"{C}#{n}\tA man in an orange hat starring at something number {n} .")
    for n in range(3):
        add(f"{D}#{n}\tA damaged picture {n} .")
    add(f"{GONE}#0\tA missing picture .", "missing")
    add(f"{GONE}#1\tAnother missing picture .")
    add("this line has no tab and no caption number", "malformed")
    for n in range(5):
        add(f"{E}#{n}\tA picture in no split {n} .")
    for n in range(5):
        add(f"{F}#{n}\tA test picture {n} .")
    token = tmp_path / "Flickr8k.token.txt"
    token.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")

    for image in (A, B, C, E, F):
        write_image(tmp_path / "images" / image)
    write_image(tmp_path / "images" / D, garbage=True)
    lists = {"train": [A, C], "val": [B], "test": [D, F]}
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for split, images in lists.items():
        (split_dir / f"{split}.txt").write_text("\n".join(images) + "\n", encoding="utf-8")
    return token, where, str(split_dir)


def test_flickr8k_token_with_split_lists_drops_and_reports_every_problem(tmp_path):
    token, where, split_dir = messy_token_dataset(tmp_path)
    prepared = prep.prepare(make_config(tmp_path, token, split_dir=split_dir))

    expected_rows = (
        [(A, "train", c) for c in ["a child in a pink dress", "a girl going into a wooden building",
                                   "a little girl climbing into a wooden playhouse",
                                   "a little girl climbing the stairs to her playhouse",
                                   "a little girl in a pink dress going into a wooden cabin"]]
        + [(C, "train", f"a man in an orange hat starring at something number {n}") for n in range(6)]
        + [(B, "val", c) for c in ["black dog spotted dog are fighting",
                                   "a black dog and a tri colored dog playing with each other on the road",
                                   "two dogs of different breeds looking at each other on the road",
                                   "a dog sits outside a cafe"]]
        + [(F, "test", f"a test picture {n}") for n in range(5)]
    )
    assert prepared.rows == expected_rows

    report = prepared.report
    assert report["format"] == "flickr_token" and report["format_detected"]
    assert report["split_source"] == "split_lists"
    dropped = report["dropped"]
    assert dropped["duplicate_caption"]["captions"] == 1
    assert dropped["duplicate_caption"]["examples"][0]["line"] == where["duplicate"]
    assert dropped["empty_caption"]["captions"] == 1
    assert dropped["empty_caption"]["examples"][0]["line"] == where["empty"]
    assert (dropped["missing_image"]["captions"], dropped["missing_image"]["images"]) == (2, 1)
    assert dropped["missing_image"]["examples"][0] == {"image": GONE, "lines": [where["missing"], where["missing"] + 1]}
    assert (dropped["unreadable_image"]["captions"], dropped["unreadable_image"]["images"]) == (3, 1)
    assert dropped["unreadable_image"]["examples"][0]["image"] == D
    assert (dropped["image_not_in_any_split"]["captions"], dropped["image_not_in_any_split"]["images"]) == (5, 1)
    assert dropped["image_not_in_any_split"]["examples"][0]["image"] == E
    assert dropped["malformed_line"]["captions"] == 1
    assert dropped["malformed_line"]["examples"][0]["line"] == where["malformed"]

    fixed = report["fixed"]
    assert fixed["non_utf8_line"]["lines"] == 1
    assert fixed["non_utf8_line"]["examples"][0]["line"] == where["non_utf8"]
    assert fixed["byte_order_mark"]["lines"] == 1
    assert fixed["crlf_line_end"]["lines"] == 34  # every line of the file
    wrong = report["reported"]["wrong_caption_count"]
    assert wrong["images"] == 2
    assert wrong["examples"] == [{"image": B, "captions": 4}, {"image": C, "captions": 6}]
    assert report["captions_per_image"]["histogram"] == {"4": 1, "5": 2, "6": 1}

    assert report["lines_read"] == 33  # 34 lines less the blank one
    assert report["dropped_captions"] == 13
    assert report["dropped_fraction"] == pytest.approx(13 / 33)
    assert report["splits"] == {"train": {"images": 2, "captions": 11}, "val": {"images": 1, "captions": 4},
                                "test": {"images": 1, "captions": 5}}
    assert report["total"] == {"images": 4, "captions": 20}

    line = summary(report)
    assert "dropped 13 of 33 caption lines (39.39%)" in line
    assert ("dropped: malformed_line 1, missing_image 2, image_not_in_any_split 5, unreadable_image 3, "
            "empty_caption 1, duplicate_caption 1") in line
    assert "fixed: non_utf8_line 1" in line and "crlf_line_end 34" in line
    assert "reported: wrong_caption_count 2" in line


def test_check_images_false_keeps_undecodable_files(tmp_path):
    token, _, split_dir = messy_token_dataset(tmp_path)
    prepared = prep.prepare(make_config(tmp_path, token, split_dir=split_dir, check_images=False))
    assert [r for r in prepared.rows if r[0] == D] == [(D, "test", f"a damaged picture {n}") for n in range(3)]
    assert prepared.report["dropped"]["unreadable_image"]["captions"] == 0


# ----------------------------------------------------------------------------------------------
# flickr_token without split lists: the seeded random split


def demo_dataset(tmp_path: Path, num_images: int) -> Path:
    """The shapes demo's layout: img_NNNNN.png#N<TAB>caption, five captions per image."""
    lines = [f"img_{i:05d}.png#{n}\ta shape number {i} caption {n}" for i in range(num_images) for n in range(5)]
    for i in range(num_images):
        write_image(tmp_path / "images" / f"img_{i:05d}.png")
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_seeded_random_split_is_by_image_deterministic_and_follows_the_ratios(tmp_path):
    captions = demo_dataset(tmp_path, 20)
    first = prep.prepare(make_config(tmp_path, captions, seed=3))
    again = prep.prepare(make_config(tmp_path, captions, seed=3))
    other = prep.prepare(make_config(tmp_path, captions, seed=4))

    assert first.rows == again.rows
    assert by_split(first.rows) != by_split(other.rows)
    assert_split_by_image(first.rows)
    assert first.report["split_source"] == "random"
    assert {s: v["images"] for s, v in first.report["splits"].items()} == {"train": 16, "val": 2, "test": 2}
    assert {s: v["captions"] for s, v in first.report["splits"].items()} == {"train": 80, "val": 10, "test": 10}

    images = sorted(f"img_{i:05d}.png" for i in range(20))
    order = [images[i] for i in np.random.default_rng(3).permutation(20)]
    assert by_split(first.rows) == {"train": set(order[:16]), "val": set(order[16:18]), "test": set(order[18:])}
    # rows: by split, then image, then caption order
    first_train = min(order[:16])
    assert [r[0] for r in first.rows[:5]] == [first_train] * 5
    assert [r[2] for r in first.rows[:5]] == [f"a shape number {int(first_train[4:9])} caption {n}" for n in range(5)]


# ----------------------------------------------------------------------------------------------
# csv and pipe

ONE_EACH = {"train": 0.5, "val": 0.5, "test": 0.0}  # two images: the first (sorted) trains, the second validates


def test_csv_with_quotes_commas_and_an_unquoted_comma(tmp_path):
    for image in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "images" / image)
    path = tmp_path / "captions.csv"
    path.write_text('"image_name","comment"\n'
                    'a.jpg,"A dog, brown and white, runs ."\n'
                    'a.jpg,"He said ""hello"" &quot;twice&quot;"\n'
                    'b.jpg,A cat sits, then sleeps .\n'
                    ' b.jpg ,  Two birds\n'
                    ',caption without an image\n', encoding="utf-8")
    prepared = prep.prepare(make_config(tmp_path, path, captions_per_image=2, split_ratios=ONE_EACH))
    assert prepared.rows == [("a.jpg", "train", "a dog brown and white runs"),
                             ("a.jpg", "train", "he said hello twice"),
                             ("b.jpg", "val", "a cat sits then sleeps"),
                             ("b.jpg", "val", "two birds")]
    report = prepared.report
    assert report["format"] == "csv"
    assert report["fixed"]["repaired_line"]["examples"] == [{"line": 4, "text": "b.jpg,A cat sits,then sleeps ."}]
    assert report["dropped"]["malformed_line"]["examples"][0]["line"] == 6
    assert report["reported"]["wrong_caption_count"]["images"] == 0


def test_csv_quote_left_open_drops_the_lines_it_swallows_and_names_the_first(tmp_path):
    for image in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "images" / image)
    path = tmp_path / "captions.csv"
    path.write_text('image,caption\n'
                    'a.jpg,A dog .\n'
                    'a.jpg,"A dog runs\n'  # the quote is never closed: the csv module reads on to the next quote
                    '\n'
                    'b.jpg,A cat .\n'
                    'b.jpg,A "big" cat .\n'
                    'b.jpg,A bird .\n', encoding="utf-8")
    prepared = prep.prepare(make_config(tmp_path, path, captions_per_image=None, split_ratios=ONE_EACH))
    assert prepared.rows == [("a.jpg", "train", "a dog"), ("b.jpg", "val", "a bird")]
    report = prepared.report
    assert report["dropped"]["malformed_line"] == {"captions": 3, "examples": [{"line": 3, "text": 'a.jpg,"A dog runs'}]}
    assert report["lines_read"] == 5


def test_csv_without_image_and_caption_columns_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "captions.csv"
    path.write_text("file,words\na.jpg,a dog\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="image column"):
        prep.prepare(make_config(tmp_path, path))


def test_flickr30k_pipe_file_with_a_glued_row_and_a_malformed_row(tmp_path):
    for image in ("1000092795.jpg", "2199200615.jpg"):
        write_image(tmp_path / "images" / image)
    path = tmp_path / "results.csv"
    path.write_text("image_name| comment_number| comment\n"
                    "1000092795.jpg| 0| Two young guys with shaggy hair look at their hands .\n"
                    "1000092795.jpg| 1| Two young , White males are outside near many bushes .\n"
                    "1000092795.jpg | 2 |  A \"quoted\" word | and a pipe\n"
                    "2199200615.jpg| 3| A dog runs .\n"
                    "2199200615.jpg| 4 A dog runs across the grass .\n"
                    "2199200615.jpg\n", encoding="utf-8")
    prepared = prep.prepare(make_config(tmp_path, path, captions_per_image=3, split_ratios=ONE_EACH))
    assert prepared.rows == [
        ("1000092795.jpg", "train", "two young guys with shaggy hair look at their hands"),
        ("1000092795.jpg", "train", "two young white males are outside near many bushes"),
        ("1000092795.jpg", "train", "a quoted word and a pipe"),
        ("2199200615.jpg", "val", "a dog runs"),
        ("2199200615.jpg", "val", "a dog runs across the grass"),
    ]
    report = prepared.report
    assert report["format"] == "pipe"
    assert [e["line"] for e in report["fixed"]["repaired_line"]["examples"]] == [4, 6]
    assert report["dropped"]["malformed_line"] == {"captions": 1, "examples": [{"line": 7, "text": "2199200615.jpg"}]}
    assert report["reported"]["wrong_caption_count"]["examples"] == [{"image": "2199200615.jpg", "captions": 2}]


# ----------------------------------------------------------------------------------------------
# karpathy


def sentences(*raws: str) -> list[dict]:
    return [{"raw": raw, "tokens": raw.lower().strip(" .").split()} for raw in raws]


def test_karpathy_flickr_keeps_its_splits_and_moves_restval_to_train(tmp_path):
    entries = [
        {"filename": "t.jpg", "split": "train", "sentences": sentences("A dog .", "A brown dog .")},
        {"filename": "r.jpg", "split": "restval", "sentences": sentences("A cat .")},
        {"filename": "v.jpg", "split": "val", "sentences": sentences("A bird .")},
        {"filename": "s.jpg", "split": "test", "sentences": sentences("A fish .", "")},
        {"split": "train", "sentences": sentences("no file name")},
        {"filename": "v.jpg", "split": "test", "sentences": sentences("A bird flies .")},
        {"filename": "e.jpg", "split": "train", "sentences": []},
    ]
    for image in ("t.jpg", "r.jpg", "v.jpg", "s.jpg"):
        write_image(tmp_path / "images" / image)
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr8k"}), encoding="utf-8")
    prepared = prep.prepare(make_config(tmp_path, path, captions_per_image=None))
    assert prepared.rows == [("r.jpg", "train", "a cat"), ("t.jpg", "train", "a dog"),
                             ("t.jpg", "train", "a brown dog"), ("v.jpg", "val", "a bird"),
                             ("s.jpg", "test", "a fish")]
    report = prepared.report
    assert report["format"] == "karpathy" and report["split_source"] == "karpathy"
    assert report["reported"]["restval_as_train"] == {"images": 1, "examples": [{"image": "r.jpg"}]}
    assert report["dropped"]["empty_caption"]["examples"][0] == {"line": 4, "image": "s.jpg", "text": ""}
    assert report["dropped"]["malformed_line"]["captions"] == 1
    assert report["dropped"]["malformed_line"]["examples"][0]["line"] == 5
    assert report["dropped"]["split_conflict"]["examples"] == [{"line": 6, "image": "v.jpg", "splits": ["val", "test"]}]
    assert report["lines_read"] == 8
    assert report["reported"]["image_without_captions"] == {"images": 1, "examples": [{"line": 7, "image": "e.jpg"}]}


def test_karpathy_coco_uses_filepath_and_tokens_when_raw_is_missing(tmp_path):
    val = "COCO_val2014_000000391895.jpg"
    train = "COCO_train2014_000000057870.jpg"
    kept_val = "COCO_val2014_000000522418.jpg"
    write_image(tmp_path / "images" / "val2014" / val)
    write_image(tmp_path / "images" / "train2014" / train)
    write_image(tmp_path / "images" / "val2014" / kept_val)
    entries = [
        {"filepath": "val2014", "filename": val, "split": "restval", "imgid": 0,
         "sentences": sentences("A man with a red helmet on a small moped on a dirt road. ")},
        {"filepath": "train2014", "filename": train, "split": "test", "imgid": 1,
         "sentences": [{"tokens": ["a", "restaurant", "has", "modern", "wooden", "tables"]}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "val",
         "sentences": sentences("Not on disk.")},
        {"filepath": "val2014", "filename": kept_val, "split": "val", "sentences": sentences("A woman cuts a cake.")},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries}), encoding="utf-8")
    prepared = prep.prepare(make_config(tmp_path, path, captions_per_image=None))
    assert prepared.rows == [(f"val2014/{val}", "train", "a man with a red helmet on a small moped on a dirt road"),
                             (f"val2014/{kept_val}", "val", "a woman cuts a cake"),
                             (f"train2014/{train}", "test", "a restaurant has modern wooden tables")]
    assert prepared.report["dropped"]["missing_image"]["examples"] == [
        {"image": "val2014/COCO_val2014_000000000042.jpg", "lines": [3]}]


# ----------------------------------------------------------------------------------------------
# the failures


def test_too_many_dropped_raises_names_reasons_and_writes_nothing(tmp_path):
    captions = demo_dataset(tmp_path, 4)
    (tmp_path / "images" / "img_00003.png").unlink()  # 5 of 20 captions lose their image
    config = make_config(tmp_path, captions, max_dropped_fraction=0.2)
    with pytest.raises(DatasetError) as raised:
        prep.prepare(config)
    message = str(raised.value)
    assert "5 of 20" in message and "missing_image" in message and "img_00003.png" in message
    assert "dataset.max_dropped_fraction" in message
    assert "\n" not in message  # the command line prints it as one line
    assert not Path(config.table).exists() and not Path(config.report).exists()

    prepared = prep.prepare(make_config(tmp_path, captions, max_dropped_fraction=0.25))
    assert prepared.report["dropped_fraction"] == 0.25


def test_all_dropped_raises_even_with_a_threshold_of_one(tmp_path):
    captions = demo_dataset(tmp_path, 2)
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    # no threshold can help when no image is there: the message says the images are needed, not to raise it
    with pytest.raises(DatasetError, match="none of the 2 images named by .* the pipeline needs the images") as raised:
        prep.prepare(make_config(tmp_path, captions, max_dropped_fraction=1.0))
    assert "max_dropped_fraction" not in str(raised.value)


def test_an_empty_val_split_from_split_lists_fails_and_names_the_list(tmp_path):
    for image in (A, B):
        write_image(tmp_path / "images" / image)
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text(f"{A}#0\tA dog .\n{B}#0\tA cat .\n", encoding="utf-8")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text(f"{A}\n{B}\n", encoding="utf-8")
    (tmp_path / "lists" / "val.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError) as raised:
        prep.prepare(make_config(tmp_path, token, captions_per_image=1, split_dir=str(tmp_path / "lists")))
    message = str(raised.value)
    assert "\n" not in message
    assert "left the val split without captions" in message and "train 2, val 0, test 0" in message
    assert f"val.txt of dataset.split_dir ({tmp_path / 'lists'})" in message


def test_a_karpathy_file_without_val_images_fails(tmp_path):
    write_image(tmp_path / "images" / "t.jpg")
    write_image(tmp_path / "images" / "s.jpg")
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": [{"filename": "t.jpg", "split": "train", "sentences": sentences("A dog .")},
                                           {"filename": "s.jpg", "split": "test", "sentences": sentences("A cat .")},
                                           {"filename": "gone.jpg", "split": "val", "sentences": sentences("A bird .")}]}),
                    encoding="utf-8")
    with pytest.raises(DatasetError, match="left the val split without captions .*from karpathy: train 1, val 0, test 1"):
        prep.prepare(make_config(tmp_path, path, captions_per_image=None))


def test_too_few_images_for_a_random_split_fail(tmp_path):
    captions = demo_dataset(tmp_path, 1)
    with pytest.raises(DatasetError, match="left the val split without captions.*1 images are too few"):
        prep.prepare(make_config(tmp_path, captions))


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("captions.txt", b"", "the file is empty"),
    ("captions.txt", b"\r\n\n  \n", "the file is empty"),
    ("captions.txt", "a.jpg#0\tA dog .\n".encode("utf-16-le"), "UTF-16 without a byte order mark"),
    ("captions.txt", "a.jpg#0\tA dog .\n".encode("utf-16"), "UTF-16 byte order mark"),
    ("captions.txt", b"a.jpg;A dog .\n", "cannot tell the format"),
    ("dataset_coco.json", b'{"images": [', "not valid JSON"),
    ("captions.csv", b"file,words\na.jpg,A dog .\n", "needs an image column"),
], ids=["empty", "blank_lines", "utf16_no_bom", "utf16", "unknown_format", "cut_json", "csv_header"])
def test_an_unreadable_captions_file_is_one_line_naming_it(tmp_path, name, data, expected):
    write_image(tmp_path / "images" / "a.jpg")
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DatasetError) as raised:
        prep.prepare(make_config(tmp_path, path))
    message = str(raised.value)
    assert message.startswith(f"dataset.captions '{path}': ") and expected in message and "\n" not in message


def test_a_split_list_in_utf16_is_named(tmp_path):
    captions = demo_dataset(tmp_path, 3)
    (tmp_path / "lists").mkdir()
    lists = {split: tmp_path / "lists" / f"{split}.txt" for split in SPLITS}
    for split, path in lists.items():
        path.write_text(f"img_0000{SPLITS.index(split)}.png\n", encoding="utf-8")
    lists["val"].write_text("img_00001.png\n", encoding="utf-16")
    with pytest.raises(DatasetError, match=rf"^dataset\.split_dir list '{lists['val']}': .*UTF-16"):
        prep.prepare(make_config(tmp_path, captions, split_dir=str(tmp_path / "lists")))


def test_missing_inputs_name_the_path_and_the_key(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset\.captions.*no_such_file\.txt"):
        prep.prepare(make_config(tmp_path, tmp_path / "no_such_file.txt"))
    with pytest.raises(FileNotFoundError, match=r"dataset\.captions.*'.*images' is a folder, not a file"):
        prep.prepare(make_config(tmp_path, tmp_path / "images"))
    captions = tmp_path / "captions.txt"
    captions.write_text("a.png#0\ta dog\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"dataset\.images.*no_such_folder"):
        prep.prepare(make_config(tmp_path, captions, images=str(tmp_path / "no_such_folder")))


# ----------------------------------------------------------------------------------------------
# main(), end to end


def demo_params(tmp_path: Path) -> Path:
    """The default params with the dataset section pointing at the files demo_dataset writes (no split lists)."""
    (tmp_path / "no_lists").mkdir(exist_ok=True)
    return write_params(tmp_path, {"dataset": {"captions": "captions.txt", "images": "images", "split_dir": "no_lists",
                                               "split_ratios": {"train": 0.6, "val": 0.2, "test": 0.2}}})


def test_main_writes_the_table_and_the_report(tmp_path, monkeypatch, capsys):
    demo_dataset(tmp_path, 10)
    monkeypatch.setenv(PARAMS_ENV, str(demo_params(tmp_path)))
    monkeypatch.chdir(tmp_path)
    prep.main()

    table = read_captions(tmp_path / "data/prepared/captions.csv")
    assert list(table.columns) == ["image", "split", "caption"]
    assert len(table) == 50
    assert table.groupby("image")["split"].nunique().max() == 1
    assert table.groupby("split")["image"].nunique().to_dict() == {"train": 6, "val": 2, "test": 2}
    assert list(table["split"].drop_duplicates()) == ["train", "val", "test"]
    report = json.loads((tmp_path / "data/prepared/report.json").read_text(encoding="utf-8"))
    assert report["total"] == {"images": 10, "captions": 50}
    assert report["dropped_captions"] == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared"]  # no temporaries left
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    assert "flickr_token" in out and "train 6 images / 30 captions" in out and "dropped 0 of 50" in out


def test_main_failing_leaves_the_previous_outputs_untouched(tmp_path, monkeypatch):
    captions = demo_dataset(tmp_path, 10)
    monkeypatch.setenv(PARAMS_ENV, str(demo_params(tmp_path)))
    monkeypatch.chdir(tmp_path)
    prep.main()
    before = (tmp_path / "data/prepared/captions.csv").read_bytes()

    with captions.open("a", encoding="utf-8") as file:
        file.writelines(f"gone_{i}.png#0\ta shape\n" for i in range(5))
    with pytest.raises(DatasetError, match="5 of 55"):
        prep.main()
    assert (tmp_path / "data/prepared/captions.csv").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared"]
