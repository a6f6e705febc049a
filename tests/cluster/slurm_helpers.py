"""Helpers of the cluster tests: the project's SLURM script, profiles, the snakemake command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "cluster" / "slurm.sh"


def snakemake_command() -> str:
    venv = REPO / ".venv" / "bin" / "snakemake"
    return str(venv if venv.exists() else Path(sys.executable).with_name("snakemake"))


def slurm_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def load_profile(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def group_size(profile: dict) -> int:
    """N of the profile's `group-components: subject=N` (subjects per SLURM group job)."""
    (entry,) = [g for g in profile["group-components"] if g.startswith("subject=")]
    return int(entry.split("=", 1)[1])
