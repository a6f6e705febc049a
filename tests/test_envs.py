"""The conda route (`--sdm conda`, envs/*.yaml) pins the versions the tests ran with.

No conda here (and no conda channel reachable), so the environments cannot be built in CI; this
at least keeps each pinned package at the version of constraints.txt, which the venv route
installs and the whole suite exercises.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"matplotlib-base": "matplotlib"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}


def _normal(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.lower())
    return CONDA_NAMES.get(name, name)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normal(name)] = version.strip()
    return pins


def _pins(env_file: Path) -> list[tuple[str, str]]:
    """(package, version) of every `name=version` (conda) or `name==version` (pip) line."""
    pins = []
    for entry in yaml.safe_load(env_file.read_text())["dependencies"]:
        for item in entry["pip"] if isinstance(entry, dict) else [entry]:
            match = re.match(r"^([A-Za-z0-9_.\-]+)\s*={1,2}\s*([0-9][^\s#]*)", item)
            if match and _normal(match.group(1)) not in NOT_PACKAGES:
                pins.append((_normal(match.group(1)), match.group(2)))
    return pins


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.stem)
def test_conda_env_pins_match_constraints(env_file):
    constraints = _constraints()
    pins = _pins(env_file)
    assert pins, f"{env_file.name} pins nothing"
    wrong = [
        f"{name} {version} (constraints.txt: {constraints.get(name, 'absent')})"
        for name, version in pins
        if constraints.get(name) != version
    ]
    assert not wrong, f"{env_file.name}: {wrong}"
    pip = [
        e["pip"]
        for e in yaml.safe_load(env_file.read_text())["dependencies"]
        if isinstance(e, dict)
    ]
    assert pip and ".." in pip[0], f"{env_file.name} does not install calcirad itself (pip: ..)"
