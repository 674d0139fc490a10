"""The defaults of the commands and of the Python API: the project's params.yaml, or the package's copy.

    defaults = command_defaults()   # in a project: its params.yaml; elsewhere: the package's copy
    defaults.checkpoint             # scst.checkpoint (the final model) in a project, None elsewhere
    defaults.decoding               # evaluate.beam_size, length_penalty, no_repeat_ngram, allow_unk
    defaults.ranking                # retrieval.* as RankingOptions

Inside a DVC project (./params.yaml, or the file $PIPELINE_PARAMS names) the commands take their
defaults from its params. Outside one they come from the params.yaml the package carries: the
repository's own file, copied into the wheel as `pipeline/params.yaml` (pyproject.toml), or read in
place by an editable install or a clone. There is one file of values; this module only reads it.
The API (`pipeline.api`) always uses the package's copy, so a program behaves the same in any folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import EvaluateConfig, RetrievalConfig, ScstConfig, load_section, params_path
from pipeline.errors import ConfigError
from pipeline.retrieval.ranking import RankingOptions

PACKAGE = Path(__file__).resolve().parent
PACKAGED_PARAMS = PACKAGE / "params.yaml"  # in an installed wheel
REPOSITORY = PACKAGE.parent  # a clone, or an editable install of one


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How captions are decoded (params.yaml `evaluate`): beam size, length penalty, n-gram blocking, <unk>."""

    beam_size: int
    length_penalty: float
    no_repeat_ngram: int
    allow_unk: bool

    @classmethod
    def from_config(cls, config: EvaluateConfig) -> Decoding:
        return cls(config.beam_size, config.length_penalty, config.no_repeat_ngram, config.allow_unk)


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the commands use when an option is not given, and the params file it came from."""

    params: Path
    checkpoint: Path | None  # scst.checkpoint (the final model) inside a project; None outside (required)
    decoding: Decoding
    ranking: RankingOptions


def package_params() -> Path:
    """The params.yaml the package carries (the wheel's copy, or the repository's file for a clone)."""
    if PACKAGED_PARAMS.is_file():
        return PACKAGED_PARAMS
    if (REPOSITORY / "pyproject.toml").is_file() and (REPOSITORY / "params.yaml").is_file():
        return REPOSITORY / "params.yaml"
    raise ConfigError(f"{PACKAGED_PARAMS} is missing: the package is installed without its params.yaml; "
                      "reinstall it (`pip install .` from a clone)")


def read_defaults(path: Path, checkpoint: bool) -> Defaults:
    """The defaults in params file `path`; `checkpoint`: take the final model (scst.checkpoint) as the default."""
    model = Path(load_section(ScstConfig, path).checkpoint) if checkpoint else None
    return Defaults(path, model, Decoding.from_config(load_section(EvaluateConfig, path)),
                    RankingOptions.from_config(load_section(RetrievalConfig, path)))


def package_defaults() -> Defaults:
    """The package's own defaults (no checkpoint): what the Python API uses."""
    return read_defaults(package_params(), checkpoint=False)


def in_project() -> bool:
    """Whether the commands run in a project: ./params.yaml or $PIPELINE_PARAMS is a file."""
    return params_path().is_file()


def command_defaults() -> Defaults:
    """The project's defaults when run in one (its checkpoint included), else the package's."""
    return read_defaults(params_path(), checkpoint=True) if in_project() else package_defaults()
