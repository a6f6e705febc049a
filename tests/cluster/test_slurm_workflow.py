"""The real calcirad workflow on the real test SLURM, against a local run of the same cohort.

`snakemake --profile profiles/slurm-test` (profiles/slurm with requests shrunk to the 2-CPU test
node) must run every job as a SLURM job, per-subject jobs grouped, and give the same tables as
`--cores 2` locally. The cohort is small (9 subjects, 3 per label, CT + PET: the fewest that
nested 3-fold outer / 2-fold inner CV accepts) because every SLURM job and every group member
costs about 10 s of scheduler and Snakemake start-up on this node.
"""

from __future__ import annotations

import re

import pytest
import yaml
from slurm_helpers import REPO, run_guarded, snakemake_command

from calcirad.phantom import write_cohort

pytestmark = pytest.mark.slow

TIMEOUT = 1500  # seconds per run (the SLURM run takes about 6-8 min here); a run whose cluster
# goes away is stopped within seconds instead (slurm_helpers.run_guarded)
COMPARED = [
    "results/tables/performance.csv",
    "results/tables/segmentation.csv",
    "results/tables/series_inventory.csv",
    "results/features/ct.csv",
    "results/features/pet.csv",
    "results/features/all.csv",
]


@pytest.fixture(scope="module")
def runs(slurm: dict, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("slurm_workflow")
    cohort = write_cohort(n=9, seed=11, out=base / "cohort", size="demo", jobs=2)
    config = {
        "samples": str(cohort / "samples.tsv"),
        "truth": str(cohort / "truth"),
        "ibsi": None,
        "modalities": ["ct", "pet"],
        "model": {
            "tasks": ["tc_vs_mimics"],
            "feature_sets": ["ct", "pet"],
            "models": ["logreg_elasticnet"],
            "cv": {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 200},
            "n_permutations": 3,
        },
    }
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    common = ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(config_path)]
    out = {"base": base}
    for name, extra, cluster in (
        ("local", ["--profile", "profiles/local", "--cores", "2"], None),
        ("slurm", ["--profile", "profiles/slurm-test"], slurm),
    ):
        run_dir = base / name
        run_dir.mkdir()
        log = base / f"{name}.log"
        run = run_guarded(
            [snakemake_command(), *common, *extra, "--directory", str(run_dir)],
            log=log,
            timeout=TIMEOUT,
            cluster=cluster,
            env=cluster["env"] if cluster else None,
        )
        print(f"\n{name} run: {run.seconds:.1f} s")
        tail = log.read_text()[-6000:]
        assert run.problem is None, f"{name} run: {run.problem}\n{tail}"
        assert run.returncode == 0, f"{name} run exited {run.returncode}:\n{tail}"
        out[name] = {"dir": run_dir, "log": log.read_text(), "seconds": run.seconds}
    return out


def test_every_job_ran_as_a_grouped_slurm_job(runs, slurm):
    log = runs["slurm"]["log"]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    snakemake_jobs = int(re.search(r"(\d+) of \1 steps \(100%\) done", log).group(1))
    print(
        f"\n{snakemake_jobs} Snakemake jobs as {len(submitted)} SLURM jobs; "
        f"SLURM {runs['slurm']['seconds']:.0f} s vs local {runs['local']['seconds']:.0f} s"
    )
    assert submitted, log[-3000:]
    assert len(set(submitted)) == len(submitted)
    # Grouping: 9 subjects x 6 per-subject jobs went into ceil(9 / 5) = 2 SLURM jobs, so the
    # SLURM jobs are far fewer than the Snakemake jobs (`all` is the only local one).
    assert len(submitted) < snakemake_jobs - 20, (len(submitted), snakemake_jobs)
    ctld = slurm["ctld_log"].read_text()
    for job_id in submitted:
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in ctld, job_id
    jobcomp = slurm["jobcomp_log"].read_text()
    workdir = re.escape(str(runs["slurm"]["dir"]))
    finished = re.findall(rf"^JobId=(\d+) .*JobState=COMPLETED .*WorkDir={workdir} ", jobcomp, re.M)
    assert set(submitted) <= set(finished)


@pytest.mark.parametrize("path", COMPARED)
def test_slurm_tables_equal_the_local_tables(runs, path):
    local = (runs["local"]["dir"] / path).read_bytes()
    remote = (runs["slurm"]["dir"] / path).read_bytes()
    assert local == remote, path
    assert len(local.splitlines()) > 1
