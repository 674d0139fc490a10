"""The wheel's copy of params.yaml (pipeline/params.yaml: the commands' defaults outside a project).

A wheel carries the repository's one params.yaml inside the package; an editable install reads the
repository's file in place (pipeline/defaults.py), so it gets no copy that could go stale.
"""
from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            build_data["force_include"]["params.yaml"] = "pipeline/params.yaml"
