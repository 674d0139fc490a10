"""The project's one base error: the user's input or environment is wrong, and the message says how.

    PipelineError                 what every command and stage prints as one line and exits with 2
      ConfigError                 a params.yaml key (or a command-line option) is missing or invalid
      InputError                  an input file is missing a part, cut off, damaged or of another kind
      OutputError                 an output cannot be written (full disk, not enough free space)
      MissingToolError            the machine lacks what a step needs (Java, a GPU, downloadable weights)

Modules raise these (or a subclass that callers catch by name, such as `ImageReadError`, whose files
are skipped and reported rather than fatal). `pipeline.cli.run` turns any of them into
`<command>: <message>` on stderr and exit status `EXIT_CODE`; every other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

EXIT_CODE = 2  # an expected error: the input or the environment is wrong (argparse's usage errors exit 2 too)


class PipelineError(Exception):
    """The user's input or environment is wrong; the message names the file, key or value and what to do."""


class ConfigError(PipelineError):
    """A params.yaml key or a command-line option is missing, unknown, or of the wrong type or value."""


class InputError(PipelineError):
    """An input file is corrupt, cut off, empty or of another kind than expected: the message names it."""


class OutputError(PipelineError):
    """An output cannot be written (full disk, not enough free space)."""


class MissingToolError(PipelineError):
    """The machine lacks something a step needs: a Java runtime, a GPU, a weights file to download."""
