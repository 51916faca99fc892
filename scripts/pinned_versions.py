"""The versions this project pins, read from pyproject.toml's `[project] dependencies` (what CI installs).

Shared by the scripts that prepare and check the lent GPU machine; standard library only (Python 3.11+ for
tomllib), so it runs there before any carried wheel is installed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pinned_versions(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Lower-case distribution name -> version, for every `name==version` dependency (extras included)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*(;.*)?$", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins
