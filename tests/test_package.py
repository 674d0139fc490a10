"""The package as a new user gets it: built into a wheel from the working tree (offline, with the
installed hatchling), installed into a folder of its own, and used from a folder outside the repository:
the entry points caption a photo, index a folder, search it and serve the page; the README's Python API
example runs as written. The dependencies come from the environment running the tests."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_app import call, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(ROOT)], check=True, cwd=out)
    return next(out.glob("attend_and_tell-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the wheel is installed into (its commands in bin/)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True)
    return target


@pytest.fixture(scope="module")
def elsewhere(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the repository with best.pt, photo.jpg and holiday/ (three photos and a broken one)."""
    folder = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(trained_project / "data/train/best.pt", folder / "best.pt")
    images = sorted((trained_project / "data/shapes/images").glob("*.png"))
    Image.open(images[0]).convert("RGB").save(folder / "photo.jpg", quality=95)
    (folder / "holiday").mkdir()
    for image in images[1:3]:
        shutil.copy(image, folder / "holiday" / image.name)
    shutil.copy(images[3], folder / "holiday/beach.png")
    (folder / "holiday/broken.jpg").write_bytes(b"not a photo")
    assert not (folder / "params.yaml").exists() and ROOT not in folder.parents
    return folder


def run(installed: Path, folder: Path, *command: str) -> subprocess.CompletedProcess:
    """A command of the installed package, run in `folder` with only the install folder added to the path."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("PIPELINE_PARAMS", None)
    if command[0] == "-":  # a script file
        argv = [sys.executable, *command[1:]]
    elif command[0].startswith("-"):  # python -c / -m
        argv = [sys.executable, *command]
    else:  # an entry point
        argv = [str(installed / "bin" / command[0]), *command[1:]]
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_the_package_its_page_and_params_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"pipeline", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert {"pipeline/params.yaml", "pipeline/web/static/index.html", "pipeline/web/static/app.js",
            "pipeline/web/static/style.css",
            "pipeline/api.py", "pipeline/commands/app.py"} <= set(names)
    info = next(name for name in names if name.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "Requires-Python: >=3.11" in metadata and "License-Expression: MIT" in metadata
    assert "Requires-Dist: torch==2.14.1" in metadata
    assert any(name.endswith("licenses/LICENSE") for name in names)
    assert zipfile.ZipFile(wheel).read("pipeline/params.yaml") == (ROOT / "params.yaml").read_bytes()
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for line in ("caption = pipeline.commands.caption:main", "caption-search = pipeline.commands.search:main",
                 "caption-web = pipeline.commands.app:main", "caption-baselines = pipeline.commands.baselines:main"):
        assert line in scripts


def test_entry_points_caption_index_and_search_from_outside(installed: Path, elsewhere: Path) -> None:
    where = run(installed, elsewhere, "-c", "import pipeline.defaults as d; print(d.__file__, d.package_params())")
    assert where.stdout.split() == [str(installed / "pipeline/defaults.py"), str(installed / "pipeline/params.yaml")]
    captioned = run(installed, elsewhere, "caption", "photo.jpg", "--checkpoint", "best.pt", "--attention", "a.png")
    assert captioned.returncode == 0, captioned.stderr
    photo, text = captioned.stdout.strip().split("\t")
    assert photo == "photo.jpg" and text.split() and (elsewhere / "a.png").is_file()
    same = run(installed, elsewhere, "-m", "pipeline.commands.caption", "photo.jpg", "--checkpoint", "best.pt")
    assert same.stdout == captioned.stdout
    unsaid = run(installed, elsewhere, "caption", "photo.jpg")  # no project here: the checkpoint is required
    assert unsaid.returncode == 2 and "--checkpoint" in unsaid.stderr

    indexed = run(installed, elsewhere, "caption-search", "index", "holiday", "--checkpoint", "best.pt")
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stdout.strip().endswith("index: 3 photos indexed (3 encoded, 3 captioned, 0 removed, "
                                           "1 unreadable skipped, 0 other files ignored)")
    found = run(installed, elsewhere, "caption-search", "a red circle", "--index", "holiday/.caption-index",
                "--checkpoint", "best.pt", "--top", "3")
    assert found.returncode == 0, found.stderr
    ranked = [line.split("\t") for line in found.stdout.splitlines()]
    assert [line[0] for line in ranked] == ["1", "2", "3"]
    assert all(Path(line[2]).parent == (elsewhere / "holiday").resolve() for line in ranked)
    nothing = run(installed, elsewhere, "caption-search", "zebra", "--index", "holiday/.caption-index",
                  "--checkpoint", "best.pt")
    assert nothing.stdout.startswith("# the model knows none of the words zebra")


def test_the_readme_example_runs_as_written(installed: Path, elsewhere: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    docstring = (ROOT / "pipeline/api.py").read_text(encoding="utf-8")
    assert "\n".join(("    " + line if line else "") for line in example.splitlines()) in docstring  # the same text
    (elsewhere / "example.py").write_text(example, encoding="utf-8")
    shutil.rmtree(elsewhere / "holiday/.caption-index", ignore_errors=True)
    result = run(installed, elsewhere, "-", "example.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("photo.jpg ") and lines[1].startswith("holiday/beach.png ")
    assert len(lines) == 2 + 3 and all(re.match(r"-?\d+\.\d\d \S+holiday/\S+\.png ", line) for line in lines[2:])


def test_the_page_serves_its_files_and_searches_the_index(installed: Path, elsewhere: Path) -> None:
    if not (elsewhere / "holiday/.caption-index/captions.json").is_file():
        run(installed, elsewhere, "caption-search", "index", "holiday", "--checkpoint", "best.pt")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    server = subprocess.Popen([str(installed / "bin/caption-web"), "--checkpoint", "best.pt", "--port", str(port),
                               "--index", "holiday/.caption-index", "--device", "cpu"], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                status, _, body = call(url, "/api/status", token=None)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the page did not start"
                time.sleep(0.2)
        assert status == 200 and b'"photos":3' in body
        assert call(url, "/static/app.js", token=None)[0] == 200 and b"caption" in call(url, "/", token=None)[2]
        status, _, body = call(url, "/api/search?q=a+red+circle", token=None)
        assert status == 200 and body.count(b'"url"') == 3
    finally:
        server.terminate()
        server.communicate(timeout=30)
