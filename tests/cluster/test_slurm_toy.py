"""The SLURM machinery, end to end, on a toy workflow: a real one-node SLURM (tests/cluster/slurm.sh),
`snakemake --profile profiles/slurm-test`, and proof from SLURM's own records that every job ran as
a SLURM job and that the per-subject jobs were grouped into fewer SLURM jobs.

The real workflow is run the same way by a later test; this one checks the cluster, the profiles
and the plugin settings without depending on it.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import (
    REPO,
    daemon_pids,
    group_size,
    load_profile,
    run_guarded,
    slurm_script,
    snakemake_command,
)

TOY = REPO / "tests" / "cluster" / "toy" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
TEST_PROFILE = REPO / "profiles" / "slurm-test" / "config.yaml"
SNAKEMAKE_TIMEOUT = 600  # seconds; the toy takes about a minute

# The toy's jobs: (rule, subject) per subject step, then one aggregate.
SUBJECTS = ["s1", "s2"]
PER_SUBJECT = {
    "convert": "results/nifti/{}.txt",
    "segment": "results/masks/{}.txt",
    "extract_features": "results/features/subjects/{}.txt",
}
AGGREGATE = "results/features/all.csv"

# What profiles/slurm-test may change in profiles/slurm; everything else must be equal.
TEST_ONLY_KEYS = {
    "slurm-status-command",
    "slurm-init-seconds-before-status-checks",
    "seconds-between-status-checks",
}


def test_test_profile_is_the_real_profile_with_overrides() -> None:
    """profiles/slurm-test may only shrink requests and set test-cluster status polling."""
    real, test = load_profile(PROFILE), load_profile(TEST_PROFILE)
    for key, value in real.items():
        if key not in ("default-resources", "set-resources"):
            assert test.get(key) == value, (
                f"profiles/slurm-test differs from profiles/slurm on {key}"
            )
    assert set(test) - set(real) == TEST_ONLY_KEYS
    assert test["slurm-status-command"] == "squeue"

    # Same resource names; the account is dropped (no accounting on the test node).
    assert set(test["default-resources"]) == set(real["default-resources"]) - {"slurm_account"}
    assert set(test["set-resources"]) == set(real["set-resources"])
    for rule, resources in real["set-resources"].items():
        assert set(test["set-resources"][rule]) == set(resources), rule

    # The user-facing profile names every rule of the workflow and both things to set.
    assert {"slurm_partition", "slurm_account"} <= set(real["default-resources"])
    assert set(real["set-resources"]) == {
        "ingest",
        "convert",
        "segment",
        "qc",
        "extract_features",
        "stability_features",
        "features_table",
        "feature_stability",
        "features_all",
        "series_inventory",
        "segmentation_table",
        "failures",
        "cohort_table",
        "fit_model",
        "permutation_null",
        "model_tables",
        "figures",
    }
    for profile in (real, test):
        assert profile["keep-going"] is True and profile["rerun-incomplete"] is True
        assert group_size(profile) >= 1
    # The profile groups exactly the per-subject rules, and only it: a `group:` in a rule would
    # cost every local run's DAG and could disagree with the profile.
    per_subject = per_subject_rules()
    assert {"ingest", "convert", "segment", "qc", "extract_features"} <= per_subject
    groups = dict(entry.split("=", 1) for entry in real["groups"])
    assert groups == dict.fromkeys(per_subject, "subject")
    assert not re.search(r"^\s+group:", _workflow_rules_text(), re.M)

    # Every test request fits the 2-CPU node.
    requests = [test["default-resources"], *test["set-resources"].values()]
    assert all(r["cpus_per_task"] <= 2 and r["mem_mb"] <= 4000 for r in requests)


def _workflow_rules_text() -> str:
    return "".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))


def per_subject_rules() -> set[str]:
    """The workflow's rules with one job per subject: {subject} in their output paths."""
    rules = re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", _workflow_rules_text(), re.M)
    per_subject = set()
    for name, body in rules:
        output = re.search(r"^    output:\n((?:        .*\n)*)", body, re.M)
        if output and "{subject}" in output.group(1):
            per_subject.add(name)
    return per_subject


@pytest.mark.slow
def test_start_is_idempotent(slurm: dict) -> None:
    pids = {p.name: p.read_text() for p in (slurm["dir"] / "pids").glob("*.pid")}
    assert set(pids) == {"munged.pid", "slurmctld.pid", "slurmd.pid"}
    again = slurm_script("start", "--holder", slurm["holder"], timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert {p.name: p.read_text() for p in (slurm["dir"] / "pids").glob("*.pid")} == pids


def _holders(slurm: dict) -> set[str]:
    return {p.name for p in (slurm["dir"] / "holders").iterdir()}


@pytest.mark.slow
def test_other_users_come_and_go_without_stopping_it(slurm: dict) -> None:
    """Another session (a real process) joins and releases; one that exits loses its lease. The
    daemons stay the same processes throughout: nobody but the last user stops the cluster."""
    pids = daemon_pids(slurm["dir"])
    other = subprocess.Popen(["sleep", "300"])
    gone = subprocess.Popen(["sleep", "300"])
    try:
        for holder in (other, gone):
            join = slurm_script("start", "--holder", str(holder.pid), timeout=120)
            assert join.returncode == 0 and "already running" in join.stderr, join.stderr
        assert {slurm["holder"], str(other.pid), str(gone.pid)} <= _holders(slurm)

        gone.kill()
        gone.wait()
        release = slurm_script("release", "--holder", str(other.pid), timeout=120)
        assert release.returncode == 0, release.stderr
        assert "left running" in release.stderr
        assert slurm["holder"] in _holders(slurm)
        assert not {str(other.pid), str(gone.pid)} & _holders(slurm)

        # A by-hand stop does not pull the cluster from under a live session either. (It drops
        # the by-hand lease of a cluster started by hand: taken again below.)
        by_hand = "manual" in _holders(slurm)
        stop = slurm_script("stop", timeout=120)
        assert stop.returncode == 4 and "left running" in stop.stderr, stop.stderr
        assert daemon_pids(slurm["dir"]) == pids
        assert slurm_script("status", timeout=60).returncode == 0
        if by_hand:
            assert slurm_script("start", timeout=120).returncode == 0
    finally:
        for proc in (other, gone):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_toy_workflow_runs_as_grouped_slurm_jobs(slurm: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "snakemake.log"
    command = [
        snakemake_command(),
        "--profile",
        "profiles/slurm-test",
        "--snakefile",
        str(TOY),
        "--directory",
        str(run_dir),
    ]
    run = run_guarded(command, log=log, timeout=SNAKEMAKE_TIMEOUT, cluster=slurm, env=slurm["env"])
    print(f"\ntoy workflow under SLURM: {run.seconds:.1f} s")
    text = log.read_text()
    ctld_log = slurm["ctld_log"].read_text()
    assert run.problem is None, f"{run.problem}\n--- snakemake log (tail) ---\n{text[-3000:]}"
    assert run.returncode == 0, (
        f"snakemake exited {run.returncode} after {run.seconds:.0f} s:\n{text[-6000:]}\n"
        f"--- {slurm['ctld_log']} (tail) ---\n{ctld_log[-3000:]}"
    )

    # Every job wrote the SLURM_JOB_ID it ran under.
    per_subject = {
        (rule, subject): (run_dir / pattern.format(subject)).read_text().strip()
        for rule, pattern in PER_SUBJECT.items()
        for subject in SUBJECTS
    }
    aggregate = (run_dir / AGGREGATE).read_text().strip()
    ids = [*per_subject.values(), aggregate]
    assert all(re.fullmatch(r"\d+", i) for i in ids), ids

    # Grouping: the per-subject jobs share SLURM jobs, group-components subjects at a time.
    expected_groups = math.ceil(len(SUBJECTS) / group_size(load_profile(TEST_PROFILE)))
    group_ids = set(per_subject.values())
    assert len(group_ids) == expected_groups, per_subject
    assert len(set(ids)) < len(ids)
    assert aggregate not in group_ids  # the aggregate is a SLURM job of its own

    # SLURM's own records: Snakemake's submissions, slurmctld's log, the job completion log and
    # squeue (finished jobs stay listed for MinJobAge) all know these jobs, completed with exit 0.
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", text))
    assert submitted == set(ids), (submitted, ids)
    jobcomp = slurm["jobcomp_log"].read_text()
    squeue = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(submitted)],
        capture_output=True,
        text=True,
        env=slurm["env"],
        timeout=30,
    )
    states = dict(line.split("|") for line in squeue.stdout.split())
    for job_id in submitted:
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in ctld_log, job_id
        assert re.search(
            rf"^JobId={job_id} .*JobState=COMPLETED .*WorkDir={re.escape(str(run_dir))} ",
            jobcomp,
            re.MULTILINE,
        ), job_id
        assert states.get(job_id) == "COMPLETED", squeue.stdout + squeue.stderr
