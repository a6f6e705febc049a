"""The real one-node SLURM of tests/cluster/slurm.sh, shared by the cluster tests (started once)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_helpers import slurm_script


@pytest.fixture(scope="session")
def slurm() -> dict:
    """A running test SLURM: started here (and stopped at the end) unless one already runs."""
    started = False
    if slurm_script("status", timeout=60).returncode != 0:
        t0 = time.monotonic()
        start = slurm_script("start")
        seconds = time.monotonic() - t0
        if start.returncode == 3:
            pytest.skip(f"SLURM cannot be installed on this machine:\n{start.stderr[-2000:]}")
        assert start.returncode == 0, f"slurm.sh start failed:\n{start.stdout}\n{start.stderr}"
        started = True
        print(f"\nslurm.sh start: {seconds:.1f} s (including any package install)")
    conf = slurm_script("env", timeout=30).stdout.strip().removeprefix("export SLURM_CONF=")
    base = Path(conf).parents[1]
    yield {
        "conf": conf,
        "dir": base,
        "ctld_log": base / "log" / "slurmctld.log",
        "jobcomp_log": base / "log" / "jobcomp.log",
        "env": {**os.environ, "SLURM_CONF": conf},
    }
    if started:
        stop = slurm_script("stop", timeout=120)
        assert stop.returncode == 0, f"slurm.sh stop failed:\n{stop.stderr}"
