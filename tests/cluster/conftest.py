"""The real one-node SLURM of tests/cluster/slurm.sh, shared by the cluster tests (started once).

One cluster per machine (its config must be /etc/slurm/slurm.conf for the plugin's job steps), so
concurrent test sessions share it: each session takes a lease with its own PID (`slurm.sh start
--holder`) and gives it back at the end (`slurm.sh release`); only the last user's release stops
it, and a cluster started by hand (`slurm.sh start`) stays up. If the cluster goes away anyway,
`slurm_helpers.run_guarded` stops the session's Snakemake within seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_helpers import daemon_pids, slurm_script


@pytest.fixture(scope="session")
def slurm() -> dict:
    """A running test SLURM, started or joined here, released at the end of the session."""
    holder = str(os.getpid())
    t0 = time.monotonic()
    start = slurm_script("start", "--holder", holder)
    seconds = time.monotonic() - t0
    if start.returncode == 3:
        pytest.skip(f"SLURM cannot be installed on this machine:\n{start.stderr[-2000:]}")
    assert start.returncode == 0, f"slurm.sh start failed:\n{start.stdout}\n{start.stderr}"
    joined = "already running" in start.stderr
    print(f"\nslurm.sh start: {'joined' if joined else 'started'} in {seconds:.1f} s")
    conf = slurm_script("env", timeout=30).stdout.strip().removeprefix("export SLURM_CONF=")
    base = Path(conf).parents[1]
    cluster = {
        "conf": conf,
        "dir": base,
        "ctld_log": base / "log" / "slurmctld.log",
        "jobcomp_log": base / "log" / "jobcomp.log",
        "env": {**os.environ, "SLURM_CONF": conf},
        "holder": holder,
        "pids": daemon_pids(base),  # these processes must run for the whole session
    }
    assert set(cluster["pids"]) == {"munged", "slurmctld", "slurmd"}, start.stderr
    try:
        yield cluster
    finally:
        release = slurm_script("release", "--holder", holder, timeout=120)
        print(f"\nslurm.sh release: {release.stderr.strip().splitlines()[-1:]}")
        assert release.returncode == 0, f"slurm.sh release failed:\n{release.stderr}"
