"""Interruption: a real Snakemake run killed mid-way and started again ends byte-identical to an
uninterrupted run, and nothing half-written is taken as complete (issue 9).

One uninterrupted reference run of a small cohort; then one run per kill mode, each killed at a
deterministic point (counted output files, with a job still running), restarted with the same
command, and compared file by file with the reference.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from calcirad.phantom import write_cohort

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _command(run_dir: Path, config: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "snakemake"),
        *("--snakefile", str(REPO / "Snakefile"), "--directory", str(run_dir)),
        *("--configfile", str(config), "--cores", "2", "--profile", str(REPO / "profiles/local")),
        *extra,
    ]


ENV = {**os.environ, "PYTHONHASHSEED": "0"}


def run(run_dir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(run_dir, config, *extra), capture_output=True, text=True, env=ENV, timeout=900
    )


def start(run_dir: Path, config: Path) -> subprocess.Popen:
    """A run in its own session, so its whole process group can be killed without pytest."""
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    return subprocess.Popen(
        _command(run_dir, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,
    )


def running_jobs(process: subprocess.Popen, step: str = "") -> list[psutil.Process]:
    """The job processes (``python -m calcirad.steps <step>``) Snakemake is running now,
    optionally of one step."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    jobs = []
    for child in children:
        try:
            args = child.cmdline()
        except psutil.Error:
            continue
        is_python = child.name().startswith("python")
        is_step = args[1:3] == ["-m", "calcirad.steps"] and (not step or args[3:4] == [step])
        if is_python and is_step:
            jobs.append(child)
    return jobs


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def incomplete_markers(run_dir: Path) -> set[str]:
    """Outputs Snakemake marked incomplete (.snakemake/incomplete/<base64 of the path>)."""
    folder = run_dir / ".snakemake" / "incomplete"
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return {base64.b64decode(name).decode() for name in names}


def results_tree(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted((run_dir / "results").rglob("*"))
        if p.is_file() and p.name != ".snakemake_timestamp"
    }


def assert_same_as_reference(reference: Path, run_dir: Path) -> None:
    expected, found = results_tree(reference), results_tree(run_dir)
    assert sorted(found) == sorted(expected)
    differ = [name for name in expected if found[name] != expected[name]]
    assert not differ, differ
    assert not [name for name in found if ".tmp" in name]  # no temporary leftovers


def n_features(run_dir: Path) -> int:
    return len(list((run_dir / "results/features/subjects").glob("*/*.json")))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("interrupt")
    cohort = write_cohort(n=4, seed=5, out=base / "cohort", size="demo", jobs=2)
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str)
    # The phantom truth as the user's CT mask: fast, and no subject fails segmentation.
    sheet["mask_ct"] = [f"truth/{s}/lesion.nii.gz" for s in sheet.subject]
    sheet.to_csv(cohort / "samples.tsv", sep="\t", index=False)
    config = {
        "samples": str(cohort / "samples.tsv"),
        "truth": None,
        "ibsi": None,
        "modalities": ["ct"],
        "radiomics": {"ct": str(REPO / "config/radiomics/ct.yaml")},
        "model": {
            "tasks": ["tc_vs_sarcoma"],
            "feature_sets": ["ct"],
            "models": ["logreg_elasticnet"],
            "cv": {"outer_folds": 2, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 100},
            "n_permutations": 2,
        },
    }
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    if "stability" in schema.get("properties", {}):
        config["stability"] = {"subjects": 0}
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    reference = base / "reference"
    reference.mkdir()
    done = run(reference, config_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert n_features(reference) == 4
    return {"base": base, "config": config_path, "reference": reference}


def test_sigterm_to_snakemake_then_the_same_command_finishes_identically(setup):
    run_dir = setup["base"] / "sigterm"
    run_dir.mkdir()
    process = start(run_dir, setup["config"])
    # Kill as soon as one subject is segmented, while other jobs run.
    wait_until(
        lambda: (
            list((run_dir / "results/masks").glob("*/segmentation.json")) and running_jobs(process)
        ),
        process,
        "a segmented subject with jobs still running",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) != 0
    killed_at = time.time()
    assert not (run_dir / "results/tables/failures.csv").exists()  # it did stop mid-run
    marked = incomplete_markers(run_dir)
    again = run(run_dir, setup["config"])
    assert again.returncode == 0, again.stderr[-4000:]
    for output in marked:  # whatever Snakemake marked incomplete was made again
        assert (run_dir / output).stat().st_mtime > killed_at, output
    assert not incomplete_markers(run_dir)
    assert_same_as_reference(setup["reference"], run_dir)


def test_sigkill_of_a_job_and_of_the_process_group_then_rerun_finishes_identically(setup):
    run_dir = setup["base"] / "sigkill"
    run_dir.mkdir()
    process = start(run_dir, setup["config"])
    # 1. SIGKILL one job's Python process: Snakemake records the job as failed and, keeping
    #    going, runs the other subjects.
    wait_until(lambda: running_jobs(process, "segment"), process, "a segment job")
    victim = running_jobs(process, "segment")[0]
    victim.send_signal(signal.SIGKILL)
    # 2. SIGKILL Snakemake and every job (its process group) once a subject has features and
    #    a job is still running, so some output is marked incomplete.
    wait_until(
        lambda: n_features(run_dir) >= 1 and running_jobs(process),
        process,
        "a feature record with a job still running",
    )
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = time.time()
    time.sleep(0.5)
    # No orphaned job: jobs run in the run folder, with paths relative to it.
    here = os.path.realpath(run_dir)
    alive = [p.info for p in psutil.process_iter(["cmdline", "cwd"])]
    orphans = [
        " ".join(info["cmdline"] or [])
        for info in alive
        if (info["cwd"] and os.path.realpath(info["cwd"]) == here)
        or here in " ".join(info["cmdline"] or [])
    ]
    assert not orphans
    marked = incomplete_markers(run_dir)
    assert marked, "a job was running at the kill: its output must be marked incomplete"
    assert not (run_dir / "results/tables/failures.csv").exists()
    # A SIGKILLed Snakemake cannot remove its lock: the same command refuses to start and says
    # how to go on (Snakemake cannot tell a dead run's lock from a live one's).
    refused = run(run_dir, setup["config"])
    if refused.returncode != 0:
        assert "--unlock" in refused.stdout + refused.stderr
        assert run(run_dir, setup["config"], "--unlock").returncode == 0
        again = run(run_dir, setup["config"])
    else:
        again = refused
    assert again.returncode == 0, again.stderr[-4000:]
    for output in marked:
        assert (run_dir / output).stat().st_mtime > killed_at, output
    assert not incomplete_markers(run_dir)
    assert_same_as_reference(setup["reference"], run_dir)
