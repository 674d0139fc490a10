"""The trivial baselines are chosen and scored by evaluate's scorer; the command prints its two lines and
nothing else (no Java tokenizer output), and says in one line what is wrong with its input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.commands import baselines as command
from pipeline.config import PARAMS_ENV
from pipeline.datasets.table import read_captions, write_captions
from pipeline.evaluation.baselines import best_constant, constant_scores
from tests.conftest import ROOT, write_params


def test_best_constant_picks_the_caption_the_references_share() -> None:
    # a caption equal to an image's reference has tf-idf cosine 1 there for n = 1..3 and nothing for n = 4
    # (three words have no 4-gram): CIDEr-D = 10 x mean over n (3/4) x images matched (2 of 3) = 5
    references = {"a": ["a dog runs"], "b": ["a cat sleeps"], "c": ["a dog runs"]}
    caption, cider = best_constant(references, ["two people walk", "a cat sleeps", "a dog runs"])
    assert caption == "a dog runs"
    assert abs(cider - 10 * 3 / 4 * 2 / 3) < 1e-6


@pytest.mark.slow  # pycocoevalcap's Java tokenizer and METEOR
def test_constant_scores_match_for_a_perfect_constant() -> None:
    references = {"a": ["a dog runs"], "b": ["a dog runs"]}
    scores = constant_scores(references, "a dog runs")
    assert abs(scores["bleu1"] - 1.0) < 1e-6 and abs(scores["rouge_l"] - 1.0) < 1e-6


@pytest.mark.slow  # the command in a subprocess, with Java
def test_the_command_prints_its_two_results_and_nothing_else(tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "baselines.json"
    environment = {key: value for key, value in os.environ.items() if key != PARAMS_ENV}
    result = subprocess.run([sys.executable, "-m", "pipeline.commands.baselines", "--candidates", "3", "--out", str(out)],
                            cwd=tiny_project, env={**environment, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # the Java tokenizer's lines stay out of sight
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("most_frequent (") and lines[1].startswith("best_constant (")
    assert all(" on test: bleu1 " in line and ", cider " in line for line in lines)
    written = json.loads(out.read_text())
    train = Counter(read_captions(tiny_project / "data/prepared/captions.csv", "train")["caption"])
    assert written["most_frequent"]["caption"] == train.most_common(1)[0][0]
    assert written["best_constant"]["caption"] in [caption for caption, _ in train.most_common(3)]
    assert f"({written['most_frequent']['caption']!r}) on test: bleu1 {written['most_frequent']['bleu1']:.3f}" in lines[0]


def test_a_table_without_training_captions_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "captions.csv"
    write_captions(table, [("a.png", "val", "a red circle"), ("b.png", "test", "a blue square")])
    monkeypatch.setenv(PARAMS_ENV, str(write_params(tmp_path, {"dataset": {"table": str(table)}})))
    assert command.main([]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"baselines: {table} has no train captions; check the prepare stage's report (dataset.report) and rerun "
        f"`dvc repro prepare`"]
