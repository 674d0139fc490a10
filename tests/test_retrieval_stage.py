"""The retrieval stage on the tiny trained project: metrics written, better than chance."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.stages import retrieval


def test_stage_writes_recall_and_median_rank(trained_project: Path, monkeypatch: pytest.MonkeyPatch,
                                             one_thread: None, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    retrieval.main()
    metrics = json.loads((trained_project / "metrics/retrieval.json").read_text())
    assert metrics["images"] == 6 and metrics["queries"] == 30
    # scores and the counts that define them, nothing else (dvc exp show makes a column of each key)
    assert set(metrics) == {"images", "queries", "distinct_queries", "candidates", "first_stage", "reranked",
                            "candidate_recall"}
    assert set(metrics["first_stage"]) == set(metrics["reranked"]) == {"r1", "r5", "r10", "median_rank", "mean_rank"}
    assert metrics["candidates"] == 6  # fewer images than retrieval.candidates: every image is re-ranked
    assert metrics["candidate_recall"] == 100.0
    for stage in ("first_stage", "reranked"):
        scores = metrics[stage]
        assert 0 <= scores["r1"] <= scores["r5"] <= scores["r10"] <= 100
        assert 1 <= scores["median_rank"] <= 6
    # 6 images: R@10 is 100 whatever the ranking; chance is R@1 = 100 / 6 and a mean rank of 3.5
    assert metrics["reranked"]["r10"] == 100.0
    assert metrics["reranked"]["r1"] > 100 / 6 and metrics["reranked"]["mean_rank"] < 3.5
    out = capsys.readouterr().out
    assert "30 queries" in out and "ms/query" in out  # the times are printed, not written as metrics
