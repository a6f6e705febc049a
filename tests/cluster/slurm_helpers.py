"""Helpers of the cluster tests: the project's SLURM script, profiles, the snakemake command, and a
runner that stops Snakemake as soon as the test SLURM under it goes away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "cluster" / "slurm.sh"
DAEMONS = ("munged", "slurmctld", "slurmd")


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


# ---- the cluster's daemons ---------------------------------------------------------------------


def daemon_pids(base: Path) -> dict[str, int]:
    """The PIDs slurm.sh recorded for munged, slurmctld and slurmd (those that have a file)."""
    pids = {}
    for name in DAEMONS:
        path = base / "pids" / f"{name}.pid"
        if path.is_file() and path.read_text().strip().isdigit():
            pids[name] = int(path.read_text())
    return pids


def _daemon_runs(name: str, pid: int, base: Path) -> bool:
    """Same test as slurm.sh's `alive`: the PID runs `name` with a path of this cluster's folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return f"{name} " in cmdline and f"{base}/" in cmdline


def cluster_problem(cluster: dict) -> str | None:
    """Why the cluster this session started or joined is gone (None while all its daemons run).

    The daemons must be the very processes seen at the start: a restarted cluster (slurmctld -c)
    has forgotten the jobs of a running Snakemake just as surely as a stopped one."""
    for name, pid in cluster["pids"].items():
        if not _daemon_runs(name, pid, cluster["dir"]):
            now = daemon_pids(cluster["dir"]).get(name)
            how = f"restarted as PID {now}" if now and now != pid else "no longer running"
            return (
                f"{name} of the test SLURM (PID {pid}) is {how}: someone stopped or restarted "
                f"the cluster under this session (`slurm.sh stop --force`, or an older slurm.sh "
                f"of another clone), or it crashed; see {cluster['ctld_log']}"
            )
    return None


def _controller_answers(cluster: dict) -> bool:
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, env=cluster["env"], timeout=15
        )
    except subprocess.TimeoutExpired:
        return False
    return ping.returncode == 0 and " is UP" in ping.stdout


# ---- a guarded Snakemake run -------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    seconds: float
    problem: str | None  # why the run was stopped early (the cluster went away, or the timeout)


def run_guarded(
    command: list[str],
    *,
    log: Path,
    timeout: float,
    cluster: dict | None = None,
    env: dict | None = None,
    poll: float = 2.0,
    ping_every: float = 10.0,
    ping_failures: int = 3,
) -> Run:
    """Run `command` (in REPO, output to `log`) with a timeout, and with a cluster: stop it early
    if the cluster's daemons exit or change (checked every `poll` s) or slurmctld misses
    `ping_failures` `scontrol ping`s in a row (one every `ping_every` s).

    Without this, a Snakemake whose slurmctld vanished waits for the whole timeout: the SLURM
    plugin then cannot read MinJobAge, falls back to `sacct` (no slurmdbd here) and polls forever.
    The command runs in its own process group, which is killed (TERM, then KILL after 10 s)."""
    t0 = time.monotonic()
    problem = None
    next_ping, missed = t0 + ping_every, 0
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - t0 > timeout:
                    problem = f"timed out after {timeout:.0f} s"
                    break
                if cluster is None:
                    continue
                problem = cluster_problem(cluster)
                if problem:
                    break
                if now >= next_ping:
                    next_ping = now + ping_every
                    missed = 0 if _controller_answers(cluster) else missed + 1
                    if missed >= ping_failures:
                        problem = (
                            f"slurmctld (PID {cluster['pids'].get('slurmctld')}) runs but did "
                            f"not answer `scontrol ping` {missed} times in a row; see "
                            f"{cluster['ctld_log']}"
                        )
                        break
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    seconds = time.monotonic() - t0
    if problem:
        problem = f"{problem}; Snakemake was stopped after {seconds:.0f} s (log: {log})"
    return Run(proc.returncode, seconds, problem)


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the process group, KILL what is left of it after 10 s (children that outlived it too)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
