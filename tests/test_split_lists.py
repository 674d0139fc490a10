"""Split lists are dependencies of prepare, checked with the real DVC in a temporary copy of the project.

`dataset.split_dir` is a folder, always a dep in dvc.yaml: holding no lists (the repository's
`splits/`), prepare splits at random; holding train.txt, val.txt and test.txt, it uses them, and editing
one in place makes `dvc status` report prepare changed and `dvc repro` rerun it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.datasets.table import read_captions
from tests.conftest import copy_project, write_params
from tests.conftest import run_in as run

UP_TO_DATE = "Data and pipelines are up to date."


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


def images_by_split(project: Path) -> dict[str, list[str]]:
    table = read_captions(project / "data/prepared/captions.csv")
    return {split: sorted(set(table[table["split"] == split]["image"])) for split in ("train", "val", "test")}


def write_lists(folder: Path, splits: dict[str, list[str]]) -> None:
    folder.mkdir(exist_ok=True)
    for split, images in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{image}\n" for image in images), encoding="utf-8")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project copy after `dvc repro prepare` with the default dataset.split_dir (no lists)."""
    copy = copy_project(tmp_path_factory.mktemp("project"))
    assert stages_run(run(["dvc", "repro", "prepare"], copy)) == {"shapes", "prepare"}
    return copy


@pytest.mark.slow  # real DVC in a copy of the project
def test_a_folder_without_lists_splits_at_random_and_stays_up_to_date(project: Path) -> None:
    report = json.loads((project / "data/prepared/report.json").read_text())
    assert report["split_source"] == "random" and report["split_dir"] == "splits"
    assert UP_TO_DATE in run(["dvc", "status", "prepare"], project)
    assert stages_run(run(["dvc", "repro", "prepare"], project)) == set()


@pytest.mark.slow  # real DVC in a copy of the project
def test_editing_a_split_list_in_place_makes_prepare_changed(project: Path) -> None:
    # the random split written out as lists: prepare reruns (a new dep and param) and keeps the same split
    before = images_by_split(project)
    write_lists(project / "lists", before)
    write_params(project, {"dataset": {"split_dir": "lists"}}, tiny=True)
    assert stages_run(run(["dvc", "repro", "prepare"], project)) == {"prepare"}
    assert json.loads((project / "data/prepared/report.json").read_text())["split_source"] == "split_lists"
    assert images_by_split(project) == before
    assert UP_TO_DATE in run(["dvc", "status", "prepare"], project)

    # two images move from the train list to the test list, the files edited in place
    moved = before["train"][:2]
    after = {"train": before["train"][2:], "val": before["val"], "test": sorted(before["test"] + moved)}
    write_lists(project / "lists", after)
    status = run(["dvc", "status", "prepare"], project)
    assert UP_TO_DATE not in status
    assert re.search(r"prepare:\s+changed deps:\s+modified:\s+lists", status), status
    assert stages_run(run(["dvc", "repro", "prepare"], project)) == {"prepare"}
    assert images_by_split(project) == after
    assert UP_TO_DATE in run(["dvc", "status", "prepare"], project)


def test_the_stage_identity_sees_a_split_list_edited_in_place(tmp_path: Path) -> None:
    """pipeline/identity.py hashes the deps dvc.yaml declares, the split-list folder among them."""
    from pipeline.identity import stage_identity

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"a")
    (tmp_path / "captions.txt").write_text("a.png#0\ta caption\n", encoding="utf-8")
    write_lists(tmp_path / "lists", {"train": ["a.png", "b.png"], "val": ["c.png"]})
    params = write_params(tmp_path, {"dataset": {"captions": str(tmp_path / "captions.txt"),
                                                 "images": str(tmp_path / "images"),
                                                 "split_dir": str(tmp_path / "lists")}})
    before = stage_identity("prepare", params_file=params)
    write_lists(tmp_path / "lists", {"train": ["a.png"], "val": ["c.png"], "test": ["b.png"]})
    assert stage_identity("prepare", params_file=params) != before
