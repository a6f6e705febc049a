"""The same calcirad workflow on one phantom cohort, locally and under the real test SLURM (issue 8).

    .venv/bin/python bench/slurm_vs_local.py --n 12 --seed 7 --out /tmp/slurm12

Writes (or reuses) the cohort `OUT/cohort` (`calcirad phantom --n N --seed S`, all four
modalities), copies the workflow code to `OUT/code` (so edits to the checkout during the runs
cannot give the two runs different code), writes `OUT/config.yaml` (the shipped config/config.yaml,
i.e. the default model grid, with this cohort, no IBSI check, `--stability-subjects` subjects in
the stability step and, with `--models`, other models), then runs the default target twice in fresh folders:

  OUT/local   snakemake --profile profiles/local --cores C
  OUT/slurm   snakemake --profile profiles/slurm-test, on tests/cluster/slurm.sh's one-node SLURM
              (started or joined with a lease, released at the end: a cluster that others use
              stays up; the run is stopped within seconds if the cluster goes away)

and reports for each: Snakemake jobs, SLURM jobs (Snakemake's submissions, checked against
slurmctld's log and the job completion log: the test cluster has no slurmdbd, so no `sacct`), wall
time, the 1-minute load average sampled every 5 s during the run (the whole machine's), and whether
every results/tables/*.csv is byte-identical between the two. Results: OUT/summary.json and
OUT/summary.md (also printed). Needs root for the SLURM (tests/cluster/README.md). Not part of
`make test`.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from slurm_helpers import daemon_pids, run_guarded, slurm_script  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from run import copy_sources  # noqa: E402

BIN = Path(sys.executable).parent
CODE_ENTRIES = ("Snakefile", "workflow", "config", "profiles", "envs", "src")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12, help="subjects (default 12)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    parser.add_argument("--out", type=Path, required=True, help="folder for everything")
    parser.add_argument("--size", default="demo", choices=["demo", "realistic"])
    parser.add_argument("--jobs", type=int, default=2, help="phantom worker processes")
    parser.add_argument("--cores", type=int, default=2, help="--cores of the local run")
    parser.add_argument(
        "--stability-subjects",
        type=int,
        default=3,
        help="subjects in the stability step (config stability.subjects; default 3)",
    )
    parser.add_argument(
        "--models",
        help="comma-separated model.models instead of the shipped grid's (e.g. without svm_rbf, "
        "whose calibration needs 3 subjects per class inside an inner training fold)",
    )
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run")
    return parser.parse_args(argv)


class LoadSampler:
    """The 1-minute load average every `every` seconds, in a thread, while the block runs."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples
        return {"load1_mean": round(sum(s) / len(s), 2), "load1_max": max(s), "samples": len(s)}


def ensure_cohort(args: argparse.Namespace) -> Path:
    cohort = args.out / "cohort"
    if (cohort / "samples.tsv").is_file():
        print(f"[cohort] reusing {cohort}", flush=True)
        return cohort
    shutil.rmtree(cohort, ignore_errors=True)
    command = [str(BIN / "calcirad"), "phantom", "--n", str(args.n), "--seed", str(args.seed)]
    command += ["--out", str(cohort), "--size", args.size, "--jobs", str(args.jobs)]
    print("[cohort]", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return cohort


def copy_code(out: Path) -> tuple[Path, dict]:
    """OUT/code: the workflow and package source; jobs import its src first (PYTHONPATH)."""
    code = out / "code"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    copy_sources(CODE_ENTRIES, code)
    path = [str(code / "src"), os.environ.get("PYTHONPATH", "")]
    return code, {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--", *CODE_ENTRIES).strip()
    return git("rev-parse", "--short", "HEAD").strip() + (" + uncommitted changes" if dirty else "")


def write_config(args: argparse.Namespace, cohort: Path) -> Path:
    """Only what differs from the shipped config/config.yaml (which the Snakefile loads first)."""
    config = {
        "samples": str(cohort / "samples.tsv"),
        "truth": str(cohort / "truth"),
        "ibsi": None,
        "stability": {"subjects": args.stability_subjects},
    }
    if args.models:
        config["model"] = {"models": args.models.split(",")}
    path = args.out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(name: str, extra: list[str], *, args, code, env, config, cluster=None) -> dict:
    run_dir = args.out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    log = args.out / f"{name}.log"
    command = [str(BIN / "snakemake"), "--snakefile", str(code / "Snakefile")]
    command += ["--configfile", str(config), *extra, "--directory", str(run_dir)]
    print(f"[{name}] {' '.join(command)}", flush=True)
    with LoadSampler() as load:
        result = run_guarded(command, log=log, timeout=args.timeout, cluster=cluster, env=env)
    text = log.read_text()
    steps = re.search(r"(\d+) of \1 steps \(100%\) done", text)
    summary = {
        "command": " ".join(command),
        "dir": str(run_dir),
        "returncode": result.returncode,
        "problem": result.problem,
        "wall_s": round(result.seconds, 1),
        "snakemake_jobs": int(steps.group(1)) if steps else None,
        **load.summary(),
    }
    print(f"[{name}] {json.dumps(summary)}", flush=True)
    if result.problem or result.returncode != 0:
        raise SystemExit(f"[{name}] failed ({result.problem or result.returncode}): see {log}")
    return summary


def slurm_records(cluster: dict, summary: dict, log: Path, ctld_from: int) -> dict:
    """SLURM jobs of the run: Snakemake's submissions, and what slurmctld and jobcomp say of them."""
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
    ctld = cluster["ctld_log"].read_bytes()[ctld_from:].decode(errors="replace")
    completed_ok = {j for j in submitted if f"_job_complete: JobId={j} WEXITSTATUS 0" in ctld}
    workdir = re.escape(summary["dir"])
    jobcomp = cluster["jobcomp_log"].read_text()
    lines = re.findall(rf"^JobId=(\d+) .*JobState=(\w+) .*WorkDir={workdir} ", jobcomp, re.M)
    return {
        "slurm_jobs_submitted": len(submitted),
        "slurm_jobs_unique": len(set(submitted)),
        "slurm_jobs_exit0_in_slurmctld_log": len(completed_ok),
        "slurm_jobs_in_jobcomp": len({j for j, _ in lines}),
        "jobcomp_states": sorted({s for _, s in lines}),
        "group_jobs": len(re.findall(r"jobid \d+ \(log: \S*/slurm_logs/group_", log.read_text())),
    }


def compare_tables(local: Path, slurm: Path) -> dict:
    names = sorted(
        {p.name for p in (local / "results/tables").glob("*.csv")}
        | {p.name for p in (slurm / "results/tables").glob("*.csv")}
    )
    same, differ = [], []
    for name in names:
        a, b = local / "results/tables" / name, slurm / "results/tables" / name
        ok = a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
        (same if ok else differ).append(name)
    return {"tables": len(names), "identical": same, "different": differ}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cohort = ensure_cohort(args)
    code, env = copy_code(args.out)
    config = write_config(args, cohort)
    report = {
        "n": args.n,
        "seed": args.seed,
        "size": args.size,
        "stability_subjects": args.stability_subjects,
        "models": args.models or "shipped config",
        "code": git_state(),
        "nproc": os.cpu_count(),
    }
    report["local"] = run(
        "local",
        ["--profile", str(code / "profiles/local"), "--cores", str(args.cores)],
        args=args,
        code=code,
        env=env,
        config=config,
    )

    holder = str(os.getpid())
    start = slurm_script("start", "--holder", holder)
    if start.returncode != 0:
        raise SystemExit(f"slurm.sh start failed ({start.returncode}):\n{start.stderr}")
    try:
        conf = slurm_script("env").stdout.strip().removeprefix("export SLURM_CONF=")
        base = Path(conf).parents[1]
        cluster = {
            "dir": base,
            "ctld_log": base / "log" / "slurmctld.log",
            "jobcomp_log": base / "log" / "jobcomp.log",
            "env": {**env, "SLURM_CONF": conf},
            "pids": daemon_pids(base),
        }
        ctld_from = cluster["ctld_log"].stat().st_size
        report["slurm"] = run(
            "slurm",
            ["--profile", str(code / "profiles/slurm-test")],
            args=args,
            code=code,
            env=cluster["env"],
            config=config,
            cluster=cluster,
        )
        report["slurm"] |= slurm_records(
            cluster, report["slurm"], args.out / "slurm.log", ctld_from
        )
    finally:
        release = slurm_script("release", "--holder", holder)
        print(f"[slurm] {release.stderr.strip().splitlines()[-1:]}", flush=True)

    report["tables"] = compare_tables(args.out / "local", args.out / "slurm")
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    md = render(report)
    (args.out / "summary.md").write_text(md)
    print(md)
    return 0


def render(r: dict) -> str:
    lo, sl, t = r["local"], r["slurm"], r["tables"]
    rows = [
        ("Snakemake jobs", lo["snakemake_jobs"], sl["snakemake_jobs"]),
        ("SLURM jobs", "-", sl["slurm_jobs_submitted"]),
        ("wall time (s)", lo["wall_s"], sl["wall_s"]),
        ("load average (1 min), mean / max", f"{lo['load1_mean']} / {lo['load1_max']}",
         f"{sl['load1_mean']} / {sl['load1_max']}"),
    ]  # fmt: skip
    lines = [
        f"# {r['n']}-subject phantom cohort (seed {r['seed']}, {r['size']}), code {r['code']}, "
        f"{r['nproc']} CPUs, stability on {r['stability_subjects']} subjects, models "
        f"{r['models']}",
        "",
        "| | local | SLURM |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        f"SLURM jobs: {sl['slurm_jobs_unique']} unique IDs, {sl['slurm_jobs_exit0_in_slurmctld_log']} "
        f"completed with exit 0 in slurmctld's log, {sl['slurm_jobs_in_jobcomp']} in jobcomp.log "
        f"(states {', '.join(sl['jobcomp_states'])}); {sl['group_jobs']} of them group jobs.",
        f"results/tables/*.csv: {len(t['identical'])} of {t['tables']} byte-identical"
        + (f"; different: {', '.join(t['different'])}" if t["different"] else ""),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
