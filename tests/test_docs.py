"""The docs describe the code as it is: every package and stage of pipeline/ is in docs/architecture.md."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")


def test_every_package_under_pipeline_is_in_the_architecture_page() -> None:
    packages = sorted(init.parent.relative_to(ROOT / "pipeline").as_posix()
                      for init in (ROOT / "pipeline").rglob("__init__.py") if init.parent != ROOT / "pipeline")
    assert packages and "model/architectures" in packages
    missing = [package for package in packages if f"{package.rsplit('/', 1)[-1]}/" not in ARCHITECTURE]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_every_stage_is_in_the_architecture_page_and_the_count_is_right() -> None:
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    missing = [stage for stage in stages if f"{stage}.py" not in ARCHITECTURE]
    assert not missing, f"docs/architecture.md does not mention the stage modules {missing}"
    numbers = {7: "seven", 8: "eight", 9: "nine", 10: "ten", 11: "eleven"}
    assert f"{numbers[len(stages)]} stages" in ARCHITECTURE


def test_no_text_file_holds_an_unresolved_merge() -> None:
    kinds = {".md", ".py", ".yaml", ".toml", ".txt", ".sh", ".html", ".js", ".css"}
    files = [path for path in ROOT.rglob("*") if path.suffix in kinds and path.is_file()
             and not {".venv", ".git", ".dvc", "data", "node_modules"} & set(path.relative_to(ROOT).parts)]
    assert any(path.name == "README.md" for path in files)
    marked = [f"{path.relative_to(ROOT)}:{number}" for path in files
              for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
              if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="]
    assert not marked, f"merge conflict markers left at {marked}"
