"""Running a stage from the command line: a damaged input file is one line, like the other expected errors."""
from __future__ import annotations

import pytest

from pipeline.cli import DEBUG_ENV, run
from pipeline.errors import InputError


def test_a_damaged_input_file_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def damaged() -> None:
        raise InputError("data/train/best.pt cannot be loaded: it is cut off, empty or not a checkpoint (EOFError)")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        run(damaged, "evaluate")
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("evaluate: data/train/best.pt cannot be loaded: it is cut off, empty or not a "
                                       "checkpoint (EOFError)\n")
