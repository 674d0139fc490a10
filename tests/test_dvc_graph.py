"""dvc.yaml keeps its promises: each stage's deps are exactly the pipeline modules it imports
(DVC does not follow imports), and each declared param reaches the stage's config."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path:
    """The source file of a `pipeline...` module name (a package's __init__.py)."""
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    """The `pipeline` modules a source file imports, anywhere in it (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if module_file(f"{node.module}.{alias.name}").is_file())
    return found


def closure(start: str) -> set[Path]:
    """Every source file a module needs when run: itself, what it imports (transitively), their packages."""
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            package = ".".join(parts[:depth])
            if package not in seen and module_file(package).is_file():
                seen.add(package)
                todo.extend(imported_modules(module_file(package)))
    return {module_file(name).relative_to(ROOT) for name in seen}


def stage_graph() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_its_own_module() -> None:
    for name, stage in stage_graph().items():
        assert stage["cmd"] == f"python -m pipeline.stages.{name}", name


def test_stage_deps_are_exactly_the_modules_it_imports() -> None:
    for name, stage in stage_graph().items():
        declared = {Path(dep) for dep in stage["deps"] if str(dep).startswith("pipeline/")}
        needed = closure(f"pipeline.stages.{name}")
        assert declared == needed, (f"stage {name}: missing {sorted(map(str, needed - declared))}, "
                                    f"not imported {sorted(map(str, declared - needed))}")


def test_closure_follows_imports_transitively() -> None:
    # the train stage reaches the model's decoder only through other modules
    assert Path("pipeline/model/decoder.py") in closure("pipeline.stages.train")
    assert Path("pipeline/__init__.py") in closure("pipeline.stages.vocab")
    assert Path("pipeline/model/decoder.py") not in closure("pipeline.stages.vocab")


# The files and folders each stage reads, by the params key that names them: each is a dep (DVC tracks a
# param's string, a dep's contents), so that editing one in place reruns the stage.
READS = {
    "prepare": ["dataset.captions", "dataset.images", "dataset.split_dir"],
    "features": ["dataset.table", "dataset.images"],
}


def test_every_path_a_stage_reads_is_a_dep() -> None:
    for name, keys in READS.items():
        deps = {str(dep) for dep in stage_graph()[name]["deps"]}
        missing = [key for key in keys if f"${{{key}}}" not in deps]
        assert not missing, f"stage {name}: {missing} not among its deps"


def test_features_declares_what_says_the_images_are_the_demo() -> None:
    # the cache records whether dataset.images lies in shapes.out_dir: both are params of the stage
    assert {"dataset.images", "shapes.out_dir"} <= set(stage_graph()["features"]["params"])
