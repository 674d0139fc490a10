"""Team sharing through real DVC remotes: a local directory and S3 (moto's server on 127.0.0.1).

The tiny pipeline runs once, with the real `dvc repro`, in a temporary git copy of the project; its
outputs and run cache are pushed, and fresh `git clone`s of that copy get them back. Checks that
`dvc repro --pull` in a clone runs no stage and restores byte-identical outputs, that a `train.*`
change there reruns only train and evaluate, what `dvc pull <stage>` fetches, and that the run
cache hands one teammate's uncommitted run to another.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.client import BaseClient
from moto.server import ThreadedMotoServer

from tests.conftest import write_params

pytestmark = pytest.mark.slow  # real DVC remotes: pushes, clones and pulls

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "team"
S3_PREFIX = "captioning"
STAGE = r"'([\w-]+)'"
# Dropped from the environment: they could send requests beyond 127.0.0.1, bring in a developer's credentials,
# or point the stages at other params.
OUTSIDE_ENV = ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
               "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
               "https_proxy", "all_proxy", "DVC_STUDIO_TOKEN", "DVC_STUDIO_URL", "DVC_STUDIO_REPO_URL",
               "PIPELINE_PARAMS"]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command, fail with its output if it fails, and return stdout and stderr together."""
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def stages_run(output: str) -> set[str]:
    """Stages that DVC ran (it prints "Running stage 'X'")."""
    return set(re.findall(rf"Running stage {STAGE}", output))


def stages_pulled(output: str) -> set[str]:
    """Stages whose outputs `dvc repro --pull` downloaded instead of running them."""
    return set(re.findall(rf"Pulling data for stage: {STAGE}", output))


def stages_restored(output: str) -> set[str]:
    """Stages that DVC took from the run cache instead of running them."""
    return set(re.findall(rf"Stage {STAGE} is cached - skipping run", output))


def set_params(project: Path, changes: dict[str, dict]) -> None:
    """Merge `changes` into the project's params.yaml, section by section."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def load_stages(project: Path) -> dict[str, dict]:
    """The stages of the project's dvc.yaml, with ${...} filled in from its params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        """The params.yaml value that one ${section.key} names."""
        node = params
        for key in match.group(1).strip().split("."):
            node = node[key]
        return str(node)

    def resolve(node: object) -> object:
        """The node with every ${...} in its strings filled in."""
        if isinstance(node, str):
            return re.sub(r"\$\{([^}]+)\}", value, node)
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if isinstance(node, dict):
            return {resolve(key): resolve(item) for key, item in node.items()}
        return node

    return resolve(yaml.safe_load((project / "dvc.yaml").read_text()))["stages"]


def declared_outs(stage: dict) -> dict[str, dict]:
    """A stage's outs, metrics and plots: path -> options (cache, persist)."""
    outs = {}
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            outs[path] = options or {}
    return outs


def cached_outs(stages: dict[str, dict], names: set[str] | None = None) -> list[str]:
    """Paths of the outputs that DVC stores in its cache (and pushes), of the named stages or all."""
    return sorted(path for name, stage in stages.items() if names is None or name in names
                  for path, options in declared_outs(stage).items() if options.get("cache", True))


def uncached_outs(stages: dict[str, dict]) -> set[str]:
    """Paths of the outputs declared with `cache: false` (never pushed to a remote)."""
    return {path for stage in stages.values() for path, options in declared_outs(stage).items()
            if not options.get("cache", True)}


def upstream(stages: dict[str, dict], name: str) -> set[str]:
    """The stages whose outputs `name` depends on, directly or through others."""
    found: set[str] = set()
    todo = [name]
    while todo:
        deps = stages[todo.pop()].get("deps", [])
        for other, stage in stages.items():
            if other not in found and any(dep == out or dep.startswith(f"{out}/")
                                          for dep in deps for out in declared_outs(stage)):
                found.add(other)
                todo.append(other)
    return found


def snapshot(project: Path, paths: list[str]) -> dict[str, str]:
    """SHA-256 of every file under the given paths (files or folders), keyed by relative path."""
    digests = {}
    for path in paths:
        top = project / path
        assert top.exists(), f"{path} is missing in {project}"
        for file in sorted([top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]):
            digests[file.relative_to(project).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def workspace_files(project: Path) -> set[str]:
    """Every file under the project's data/ folder."""
    data = project / "data"
    return {p.relative_to(project).as_posix() for p in data.rglob("*") if p.is_file()} if data.exists() else set()


def lock_md5(project: Path, path: str) -> str:
    """The md5 that dvc.lock records for the output `path`."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    raise AssertionError(f"{path} is not an output in dvc.lock")


def run_cached_stages(runs: Path, stages: dict[str, dict]) -> set[str]:
    """The stages that have an entry in a run-cache folder (`runs/` in a cache or a remote)."""
    commands = {yaml.safe_load(entry.read_text())["cmd"] for entry in runs.rglob("*") if entry.is_file()}
    return {name for name, stage in stages.items() if stage["cmd"] in commands}


def project_files() -> list[str]:
    """Every file git tracks or would add in the repository, minus the results of a previous run and any
    split list a user put in splits/ (the copy's dataset.split_dir: its README alone, no lists)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return [name for name in listed if name and name != "dvc.lock" and not name.startswith("metrics/")
            and not (name.startswith("splits/") and name != "splits/README.md") and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def dvc_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for dvc and git: this interpreter first on PATH, no user or system config, offline."""
    home = tmp_path_factory.mktemp("home")
    (home / "gitconfig").write_text("")
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
           "GIT_CONFIG_GLOBAL": str(home / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1", "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
           "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"), "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for name in OUTSIDE_ENV:
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, dvc_env: dict[str, str]) -> Path:
    """A git copy of the project with tiny params after a full `dvc repro`, dvc.lock and metrics committed."""
    copy = tmp_path_factory.mktemp("project")
    for name in project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    write_params(copy, tiny=True)  # the tests' defaults, never the working params.yaml
    run(["git", "init", "-q"], copy, dvc_env)
    run(["git", "add", "-A"], copy, dvc_env)
    run(["git", "commit", "-qm", "tiny copy"], copy, dvc_env)
    output = run(["dvc", "repro"], copy, dvc_env)
    assert stages_run(output) == set(load_stages(copy)), output
    run(["git", "add", "-A"], copy, dvc_env)
    run(["git", "commit", "-qm", "pipeline run"], copy, dvc_env)
    return copy


@pytest.fixture(scope="module")
def directory_remote(project: Path, dvc_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local-directory remote, default in the committed .dvc/config, holding a `dvc push --run-cache`."""
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], project, dvc_env)
    run(["dvc", "push", "--run-cache"], project, dvc_env)
    run(["git", "add", ".dvc/config"], project, dvc_env)
    run(["git", "commit", "-qm", "shared remote"], project, dvc_env)
    return remote


def clone(project: Path, folder: Path, env: dict[str, str]) -> Path:
    """A fresh `git clone` of the project: code, params, dvc.lock and git-tracked metrics, no data."""
    run(["git", "clone", "-q", str(project), str(folder)], folder.parent, env)
    assert not (folder / "data").exists()
    return folder


def test_push_stores_outputs_and_run_cache(project: Path, directory_remote: Path) -> None:
    stages = load_stages(project)
    features = lock_md5(project, "data/features/features.h5")
    assert (directory_remote / "files/md5" / features[:2] / features[2:]).is_file()
    # every stage is in the run cache except those with persist outputs, which DVC never run-caches
    persistent = {name for name, stage in stages.items()
                  if any(options.get("persist") for options in declared_outs(stage).values())}
    assert "train" in persistent  # so a training run is shared through dvc.lock only
    assert run_cached_stages(directory_remote / "runs", stages) == set(stages) - persistent


def test_fresh_clone_repro_pull_runs_nothing(project: Path, directory_remote: Path, dvc_env: dict[str, str],
                                             tmp_path: Path) -> None:
    teammate = clone(project, tmp_path / "clone", dvc_env)
    assert run(["dvc", "remote", "default"], teammate, dvc_env).strip() == "shared"  # the committed config
    stages = load_stages(teammate)
    # nothing will run, known before downloading anything
    dry = run(["dvc", "repro", "--dry", "--allow-missing"], teammate, dvc_env)
    assert stages_run(dry) == set() and "Data and pipelines are up to date." in dry
    assert workspace_files(teammate) == set()

    output = run(["dvc", "repro", "--pull"], teammate, dvc_env)
    assert stages_run(output) == set(), output
    # every stage with cached outputs got them from the remote, features included (a stage whose only
    # outputs are git-tracked metrics has nothing to pull)
    with_cached_outs = {name for name in stages if cached_outs(stages, {name})}
    assert "features" in with_cached_outs and stages_pulled(output) == with_cached_outs
    assert "Data and pipelines are up to date." in output
    outs = cached_outs(stages)
    assert {"data/features/features.h5", "data/train/best.pt", "data/vocab/vocab.json",
            "data/prepared/captions.csv"} <= set(outs)
    assert snapshot(teammate, outs) == snapshot(project, outs)
    remote_runs = run_cached_stages(directory_remote / "runs", stages)
    assert run_cached_stages(teammate / ".dvc/cache/runs", stages) == remote_runs  # --pull fetched the run cache
    # every output is pulled or committed to git (metrics/): DVC sees nothing to do, even without --pull
    assert json.loads(run(["dvc", "status", "--json"], teammate, dvc_env)) == {}
    assert stages_run(run(["dvc", "repro"], teammate, dvc_env)) == set()


def test_train_param_change_in_clone_runs_only_train_and_its_descendants(project: Path, directory_remote: Path,
                                                                  dvc_env: dict[str, str], tmp_path: Path) -> None:
    teammate = clone(project, tmp_path / "clone", dvc_env)
    set_params(teammate, {"train": {"lr": 0.002}})
    output = run(["dvc", "repro", "--pull"], teammate, dvc_env)
    assert stages_run(output) == {"train", "scst", "evaluate", "retrieval"}, output
    assert "features" in stages_pulled(output)
    features = ["data/features/features.h5"]
    assert snapshot(teammate, features) == snapshot(project, features)


def test_pull_stage_fetches_its_outputs_and_with_deps_its_inputs(project: Path, directory_remote: Path,
                                                                  dvc_env: dict[str, str], tmp_path: Path) -> None:
    teammate = clone(project, tmp_path / "clone", dvc_env)
    stages = load_stages(teammate)
    run(["dvc", "pull", "features"], teammate, dvc_env)
    assert workspace_files(teammate) == {"data/features/features.h5"}  # the stage's outputs, not its inputs
    assert snapshot(teammate, ["data/features"]) == snapshot(project, ["data/features"])

    run(["dvc", "pull", "--with-deps", "features"], teammate, dvc_env)
    wanted = cached_outs(stages, {"features"} | upstream(stages, "features"))
    assert upstream(stages, "features") == {"shapes", "prepare"}
    assert workspace_files(teammate) == set(snapshot(project, wanted))
    assert snapshot(teammate, wanted) == snapshot(project, wanted)


def test_run_cache_shares_an_uncommitted_run(project: Path, directory_remote: Path, dvc_env: dict[str, str],
                                             tmp_path: Path) -> None:
    change = {"dataset": {"max_dropped_fraction": 0.1}}  # prepare reruns; its captions table stays the same
    first = clone(project, tmp_path / "first", dvc_env)
    set_params(first, change)
    assert stages_run(run(["dvc", "repro", "--pull"], first, dvc_env)) == {"prepare"}
    run(["dvc", "push", "--run-cache"], first, dvc_env)  # no commit: the new dvc.lock stays in `first`

    second = clone(project, tmp_path / "second", dvc_env)
    set_params(second, change)
    output = run(["dvc", "repro", "--pull"], second, dvc_env)
    assert stages_run(output) == set(), output
    assert stages_restored(output) == {"prepare"}
    assert (second / "dvc.lock").read_bytes() == (first / "dvc.lock").read_bytes()
    assert snapshot(second, ["data/prepared"]) == snapshot(first, ["data/prepared"])


class RequestLog(logging.Handler):
    """Keeps the request lines that the S3 server logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Store one request line."""
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def s3_server(dvc_env: dict[str, str]) -> Iterator[tuple[str, RequestLog]]:
    """moto's S3 server on 127.0.0.1 (a free port) with an empty bucket: the endpoint URL and its request log."""
    log = RequestLog()
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in OUTSIDE_ENV:
                patch.delenv(name, raising=False)
            for name, value in dvc_env.items():
                if name.startswith("AWS_") or name.lower() == "no_proxy":
                    patch.setenv(name, value)
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            assert host == "127.0.0.1"
            s3_client(endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint, log
    finally:
        server.stop()
        logger.removeHandler(log)
        logger.setLevel(level)


def s3_client(endpoint: str) -> BaseClient:
    """A boto3 S3 client for the local server."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_s3_remote_shares_outputs_and_run_cache(project: Path, s3_server: tuple[str, RequestLog],
                                                dvc_env: dict[str, str], tmp_path: Path) -> None:
    endpoint, log = s3_server
    url = f"s3://{BUCKET}/{S3_PREFIX}"
    # the publisher keeps this remote in .dvc/config.local, so the clone knows only what it configures itself
    run(["dvc", "remote", "add", "--local", "s3remote", url], project, dvc_env)
    run(["dvc", "remote", "modify", "--local", "s3remote", "endpointurl", endpoint], project, dvc_env)
    run(["dvc", "push", "-r", "s3remote", "--run-cache"], project, dvc_env)
    keys = {item["Key"] for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", [])}
    features = lock_md5(project, "data/features/features.h5")
    features_key = f"{S3_PREFIX}/files/md5/{features[:2]}/{features[2:]}"
    assert features_key in keys
    assert any(key.startswith(f"{S3_PREFIX}/runs/") for key in keys)

    teammate = clone(project, tmp_path / "clone", dvc_env)
    run(["dvc", "remote", "add", "-d", "s3remote", url], teammate, dvc_env)
    run(["dvc", "remote", "modify", "s3remote", "endpointurl", endpoint], teammate, dvc_env)
    log.lines.clear()
    output = run(["dvc", "repro", "--pull"], teammate, dvc_env)
    assert stages_run(output) == set(), output
    assert "features" in stages_pulled(output)
    assert any(f"GET /{BUCKET}/{features_key} " in line for line in log.lines)  # downloaded from the S3 server
    assert any(f"/{BUCKET}/{S3_PREFIX}/runs/" in line for line in log.lines)  # and its run cache
    outs = cached_outs(load_stages(teammate))
    assert snapshot(teammate, outs) == snapshot(project, outs)
