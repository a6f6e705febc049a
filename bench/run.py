"""calcirad benchmark: how fast a cohort becomes tables, against what a researcher would use instead.

Measures, on cached synthetic cohorts (see ``bench/cohorts.py``), with real Snakemake runs:

- end-to-end wall time of the workflow at each ``--cores`` (fresh run directory each time), CPU time
  and the largest process's peak RSS;
- wall time and peak memory of every job, per stage, from the files Snakemake's ``benchmark:``
  directives write (``benchmarks/<rule>/...tsv``);
- the extraction stage alone (``--forcerun extract_features``) against pyradiomics' own batch
  command line (``pyradiomics cases.csv --jobs N``) on the same NIfTI images, masks and parameter
  files, at the same parallelism;
- conversion + extraction against a plain serial script (``bench/serial_baseline.py``:
  SimpleITK ImageSeriesReader + pyradiomics in a loop);
- the rerun after a change to the PET parameter file only, as a fraction of the full run;
- ``snakemake -n`` on a 1,000-subject sample sheet whose rows point to the cached studies again;
  profiled with cProfile when it takes longer than the 10 s target.

Every measurement records the 1-minute load average before and after it (``os.getloadavg()``):
numbers taken on a busy machine say so. Writes ``bench/results.md`` and ``bench/results.csv``.

Usage (see bench/README.md)::

    .venv/bin/python bench/run.py                          # 12, 24 and 48 subjects, realistic size
    .venv/bin/python bench/run.py --cohorts 12 --resume    # continue an interrupted run
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cohorts import REPO, cache_dir, ensure_cohort  # noqa: E402

BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
MODALITIES = ("ct", "t1", "t2", "pet")
# pyradiomics parameter file of each modality in the shipped config (t1 and t2 share mr.yaml)
PARAM_FILES = {"ct": "ct.yaml", "t1": "mr.yaml", "t2": "mr.yaml", "pet": "pet.yaml"}
DAG_TARGET_S = 10.0
DAG_REPEATS = 5  # dry runs of the large sheet; the median is reported
# The workflow is run from a snapshot of the repository taken when the benchmark starts (see
# take_snapshot): edits made while it runs (hours) must not rerun stages or mix code versions.
WORKFLOW = {"root": REPO, "env": dict(os.environ)}
SNAPSHOT_ENTRIES = ("Snakefile", "workflow", "config", "profiles", "envs", "src")
TARGETS = {
    "extraction_ratio": 1.0,
    "orchestration_ratio": 1.3,
    "growth_exponent": 1.1,
    "peak_job_mib": 2048.0,
    "pet_rerun_fraction": 0.35,
}

# Benchmark file folder (or top-level file stem) -> stage of the table.
STAGES = {
    "ingest": "ingest",
    "series_inventory": "ingest",
    "convert": "conversion",
    "segment": "segmentation",
    "segmentation_table": "segmentation",
    "qc": "qc",
    "features": "extraction",  # split per modality below
    "features_table": "feature tables",
    "features_all": "feature tables",
    "model": "modelling",
    "model_tables": "report",
    "figures": "report",
    "cohort_table": "report",
    "failures": "report",
    "stability": "stability",
    "feature_stability": "stability",
}


# ------------------------------------------------------------------------------- measuring


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def measure(command: list[str], *, log: Path, cwd: Path | None = None) -> dict:
    """Run ``command`` in a fresh child that reports wall, CPU and peak RSS of its own children."""
    log.parent.mkdir(parents=True, exist_ok=True)
    wrapper = [sys.executable, __file__, "--_measure", str(log), "--", *command]
    before = loadavg()
    out = subprocess.run(
        wrapper, cwd=cwd, check=True, capture_output=True, text=True, env=WORKFLOW["env"]
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result.update(load_before=before, load_after=loadavg())
    return result


def _measure_child(log: str, command: list[str]) -> int:
    import resource

    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        rc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "rc": rc,
                "wall_s": round(wall, 3),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            }
        )
    )
    return 0


def tree_hash(*entries: str) -> str:
    """sha256 (10 hex digits) of the files under the given repository paths."""
    digest = hashlib.sha256()
    for entry in entries:
        path = REPO / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(REPO)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:10]


def copy_sources(entries: tuple[str, ...], dest: Path) -> None:
    """Copy the repository's ``entries`` (files or folders, no bytecode) into ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in entries:
        source = REPO / entry
        if source.is_dir():
            shutil.copytree(source, dest / entry, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, dest / entry)


def take_snapshot(code: str, root: Path) -> Path:
    """Copy the workflow and package source (``SNAPSHOT_ENTRIES``) to ``root/<code>`` once; the
    runs use its Snakefile, and its ``src`` comes first on PYTHONPATH (before the editable
    install's path), so every job imports the snapshot's calcirad."""
    folder = root / code
    if not (folder / "Snakefile").is_file():
        tmp = folder.with_name(code + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        copy_sources(SNAPSHOT_ENTRIES, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    WORKFLOW["root"] = folder
    path = [str(folder / "src"), os.environ.get("PYTHONPATH", "")]
    WORKFLOW["env"] = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    return folder


def git_describe() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()

    dirty = (
        " (+ uncommitted changes)" if git("status", "--porcelain", "--", "src", "workflow") else ""
    )
    return git("rev-parse", "--short", "HEAD") + dirty


# ------------------------------------------------------------------------------- workflow runs


def snakemake(run_dir: Path, cores: int, *extra: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(WORKFLOW["root"] / "Snakefile"),
        "--profile",
        str(WORKFLOW["root"] / "profiles/local"),
        "--configfile",
        str(run_dir / "config.yaml"),
        "--directory",
        str(run_dir),
        "--cores",
        str(cores),
        *extra,
    ]


def prepare_run_dir(run_dir: Path, cohort: Path) -> None:
    """A fresh run directory with its own copy of the config: changing its PET parameter file
    never touches the repository's."""
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "config/radiomics").mkdir(parents=True)
    for name in sorted(set(PARAM_FILES.values())):
        source = WORKFLOW["root"] / "config/radiomics" / name
        shutil.copy2(source, run_dir / "config/radiomics" / name)
    radiomics = "\n".join(f"  {m}: config/radiomics/{f}" for m, f in PARAM_FILES.items())
    (run_dir / "config.yaml").write_text(
        f"samples: {cohort / 'samples.tsv'}\n"
        f"truth: {cohort / 'truth'}\n"
        "ibsi: null  # a fixed cost that does not depend on the cohort\n"
        f"radiomics:\n{radiomics}\n",
        encoding="utf-8",
    )


def read_benchmarks(run_dir: Path) -> list[dict]:
    """One row per job: rule folder, stage, seconds, peak RSS (MiB), CPU seconds."""
    rows = []
    for path in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        relative = path.relative_to(run_dir / "benchmarks")
        key = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        stage = STAGES.get(key, key)
        if key == "features":
            stage = f"extraction {path.stem.rsplit('_', 1)[-1]}"
        with path.open(encoding="utf-8") as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        rows.append(
            {
                "rule": key,
                "stage": stage,
                "s": float(record["s"]),
                "max_rss_mib": _number(record.get("max_rss")),
                "cpu_s": _number(record.get("cpu_time")),
            }
        )
    return rows


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def stage_table(jobs: list[dict], n_subjects: int) -> list[dict]:
    order = ["ingest", "conversion", "segmentation", "qc"]
    order += [f"extraction {m}" for m in MODALITIES] + ["feature tables", "modelling", "report"]
    stages = sorted({j["stage"] for j in jobs}, key=lambda s: (order + [s]).index(s))
    table = []
    for stage in stages:
        mine = [j for j in jobs if j["stage"] == stage]
        seconds = [j["s"] for j in mine]
        rss = [j["max_rss_mib"] for j in mine if not math.isnan(j["max_rss_mib"])]
        table.append(
            {
                "stage": stage,
                "jobs": len(mine),
                "sum_s": round(sum(seconds), 2),
                "mean_s": round(sum(seconds) / len(mine), 2),
                "max_s": round(max(seconds), 2),
                "per_subject_s": round(sum(seconds) / n_subjects, 2),
                "peak_rss_mib": round(max(rss), 1) if rss else math.nan,
                "cpu_s": round(sum(j["cpu_s"] for j in mine if not math.isnan(j["cpu_s"])), 2),
            }
        )
    return table


def feature_statuses(run_dir: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for path in sorted((run_dir / "results/features/subjects").glob("*/*.json")):
        status = json.loads(path.read_text(encoding="utf-8"))["status"]
        counts.setdefault(path.stem, {}).setdefault(status, 0)
        counts[path.stem][status] += 1
    return counts


def dry_run_jobs(run_dir: Path, cores: int) -> dict[str, int]:
    """Jobs a dry run plans, by rule (from the job-stats table of ``snakemake -n``)."""
    out = subprocess.run(
        snakemake(run_dir, cores, "-n", "--quiet", "rules"),
        env=WORKFLOW["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def change_pet_parameters(run_dir: Path) -> str:
    """Change only the run directory's PET parameter file: a finer SUV bin width."""
    path = run_dir / "config/radiomics/pet.yaml"
    text = path.read_text(encoding="utf-8")
    if "binWidth: 0.25" in text:
        path.write_text(text.replace("binWidth: 0.25", "binWidth: 0.2", 1), encoding="utf-8")
        return "binWidth 0.25 -> 0.2"
    path.write_text(text + "# changed by the benchmark\n", encoding="utf-8")
    return "comment appended"


# ------------------------------------------------------------------------------- baselines


def pyradiomics_cli(run_dir: Path, cores: int, scratch: Path) -> dict:
    """pyradiomics' batch command line, one call per parameter file, on calcirad's images/masks."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    by_params: dict[str, list[tuple[str, str]]] = {}
    for modality in MODALITIES:
        for image in sorted((run_dir / "results/nifti").glob(f"*/{modality}.nii.gz")):
            mask = run_dir / "results/masks" / image.parent.name / f"{modality}.nii.gz"
            if mask.exists():
                by_params.setdefault(PARAM_FILES[modality], []).append((str(image), str(mask)))
    result = {"wall_s": 0.0, "cpu_s": 0.0, "maxrss_mib": 0.0, "cases": 0, "failed": 0}
    result["load_before"] = loadavg()
    for params, cases in sorted(by_params.items()):
        cases_csv = scratch / f"cases_{Path(params).stem}.csv"
        with cases_csv.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Image", "Mask"])
            writer.writerows(cases)
        out_csv = scratch / f"features_{Path(params).stem}.csv"
        command = [str(BIN / "pyradiomics"), str(cases_csv), "--jobs", str(cores)]
        command += ["-p", str(run_dir / "config/radiomics" / params)]
        command += ["-o", str(out_csv), "-f", "csv", "--logging-level", "ERROR"]
        one = measure(command, log=scratch / f"{Path(params).stem}.log")
        result["wall_s"] += one["wall_s"]
        result["cpu_s"] += one["cpu_s"]
        result["maxrss_mib"] = max(result["maxrss_mib"], one["maxrss_mib"])
        result["cases"] += len(cases)
        result[f"wall_s_{Path(params).stem}"] = one["wall_s"]
        with out_csv.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        ok = sum(1 for r in rows if r.get("original_shape_VoxelVolume"))
        result["failed"] += len(cases) - ok
    result["load_after"] = loadavg()
    return result


def serial_baseline(run_dir: Path, cohort: Path, scratch: Path) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    params = [f"{m}={run_dir / 'config/radiomics' / f}" for m, f in PARAM_FILES.items()]
    command = [sys.executable, str(REPO / "bench/serial_baseline.py")]
    command += ["--sheet", str(cohort / "samples.tsv"), "--run", str(run_dir)]
    command += ["--params", *params, "--out", str(scratch / "nifti")]
    log = scratch / "serial.log"
    result = measure(command, log=log)
    result.update(json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1]))
    return result


# ------------------------------------------------------------------------------- DAG timing


def dag_sheet(cohort: Path, n: int, out: Path) -> Path:
    """A sheet of ``n`` subjects whose rows point to the cohort's studies again, in turn."""
    with (cohort / "samples.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / f"samples_{n}.tsv"
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["subject"] = f"B{i + 1:05d}"
            row["dicom"] = str((cohort / row["dicom"]).resolve())
            writer.writerow(row)
    return sheet


def dag_timing(cohort: Path, n: int, work: Path, *, profile: bool) -> dict:
    run_dir = work / f"dag_{n}"
    prepare_run_dir(run_dir, cohort)
    sheet = dag_sheet(cohort, n, run_dir)
    config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    config = config.replace(f"samples: {cohort / 'samples.tsv'}", f"samples: {sheet}")
    (run_dir / "config.yaml").write_text(config, encoding="utf-8")
    command = snakemake(run_dir, 2, "-n", "--quiet")
    # The median of DAG_REPEATS runs: on a shared VM one dry run's time varies by +-15 %.
    runs = [measure(command, log=run_dir / "dry_run.log") for _ in range(DAG_REPEATS)]
    result = {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "wall_runs": [r["wall_s"] for r in runs],
        "cpu_runs": [r["cpu_s"] for r in runs],
        "load_before": runs[0]["load_before"],
        "load_after": runs[-1]["load_after"],
    }
    result["jobs"] = sum(dry_run_jobs(run_dir, 2).values())
    if profile and result["wall_s"] > DAG_TARGET_S:
        result["profile"] = profile_dag(command, run_dir)
        tree = run_dir / "dry_run.pyinstrument.txt"
        # the call tree, for a human (pyinstrument: the `bench` extra; skipped without it)
        pyinstrument = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(tree)]
        if subprocess.run([*pyinstrument[:3], "--version"], capture_output=True).returncode == 0:
            subprocess.run([*pyinstrument, *command], check=True, capture_output=True)
            result["profile_tree"] = str(tree)
    return result


def profile_dag(command: list[str], run_dir: Path) -> dict:
    """Where a dry run's CPU time goes (cProfile timed by process CPU time, so other load on the
    machine does not distort the shares; the profiler itself inflates them: read as shares)."""
    import pstats

    out = run_dir / "dry_run.cprof"
    runner = (
        "import cProfile, runpy, sys, time\n"
        "sys.argv = sys.argv[1:]\n"
        "profile = cProfile.Profile(time.process_time)\n"
        "profile.enable()\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "profile.disable()\n"
        f"profile.dump_stats({str(out)!r})\n"
    )
    subprocess.run(
        [sys.executable, "-c", runner, *command], check=True, capture_output=True, cwd=run_dir
    )
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]

    def cumulative(file_part: str, function: str) -> float:
        # the largest match: a module may define a nested function of the same name
        return max(
            (
                value[3]
                for (file, _, name), value in stats.items()
                if file_part in file and name == function
            ),
            default=0.0,
        )

    total = max(value[3] for value in stats.values())
    parts = {
        "total": total,
        "workflow parse (Snakefile + rules)": cumulative("/Snakefile", "<module>"),
        "common.smk (imports, validation, sheet)": cumulative("common.smk", "<module>"),
        "snakemake.utils.validate (schemas)": cumulative("snakemake/utils.py", "validate"),
        "calcirad.sheet.check_sheet": cumulative("calcirad/sheet.py", "check_sheet"),
        "DAG building and postprocessing (snakemake Workflow.execute)": cumulative(
            "snakemake/workflow.py", "execute"
        ),
        "per-job script source caching (snakemake)": cumulative("snakemake/dag.py", "process_job"),
        "job creation (input functions, wildcards)": cumulative("snakemake/jobs.py", "__init__"),
        "functions of common.smk (input functions, sheet lookups)": sum(
            value[3]
            for (file, _, name), value in stats.items()
            if file.endswith("common.smk") and name != "<module>" and not name.startswith("<")
        ),
        "what must run (snakemake DAG.update_needrun)": cumulative(
            "snakemake/dag.py", "update_needrun"
        ),
        "ready jobs, groups, checks (snakemake DAG.postprocess)": cumulative(
            "snakemake/dag.py", "postprocess"
        ),
    }
    return {k: round(v, 2) for k, v in parts.items()}


# ------------------------------------------------------------------------------- the benchmark


class State:
    """Measurements, saved after each one, so ``--resume`` continues an interrupted benchmark."""

    def __init__(self, path: Path, *, resume: bool, meta: dict) -> None:
        self.path = path
        self.code = meta["workflow_code"]
        self.data = {"meta": meta, "measurements": {}}
        if resume and path.exists():
            self.data = json.loads(path.read_text(encoding="utf-8"))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def get(self, key: str, compute):
        if key not in self.data["measurements"]:
            print(f"[bench] {key} ... (load {loadavg()})", flush=True)
            value = compute()
            value["measured_at"] = dt.datetime.now().isoformat(timespec="seconds")
            value["workflow_code"] = self.code
            self.data["measurements"][key] = value
            self.save()
            print(f"[bench] {key}: {_brief(value)}", flush=True)
        return self.data["measurements"][key]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def _brief(value: dict) -> str:
    keys = ("wall_s", "cpu_s", "maxrss_mib", "load_before", "load_after", "rc")
    return ", ".join(f"{k}={value[k]}" for k in keys if k in value)


def bench_cohort(n: int, args: argparse.Namespace, state: State, work: Path) -> dict:
    cohort, generated = ensure_cohort(
        n=n, size=args.size, seed=args.seed, jobs=max(args.cores), any_generator=args.any_generator
    )
    gen_file = cohort / "generation_seconds.txt"
    gen_s = float(gen_file.read_text()) if gen_file.exists() else math.nan
    out: dict = {"n": n, "cohort": str(cohort), "generation_s": gen_s, "cached": generated is None}
    key = f"{cohort.name}"
    runs: dict[int, Path] = {}
    for cores in args.cores:
        run_dir = work / key / f"cores{cores}"
        runs[cores] = run_dir

        def full_run(run_dir: Path = run_dir, cores: int = cores) -> dict:
            prepare_run_dir(run_dir, cohort)
            result = measure(snakemake(run_dir, cores), log=run_dir / "bench_full.log")
            result["jobs"] = read_benchmarks(run_dir)
            result["features"] = feature_statuses(run_dir)
            return result

        out[f"full_c{cores}"] = state.get(f"{key}/full_c{cores}", full_run)
    top = max(args.cores)
    if n in (args.full_run_only or ()):
        return out

    def noop(run_dir: Path = runs[top], cores: int = top) -> dict:
        # planned jobs: none, unless the workflow's code changed since the full run
        planned = dry_run_jobs(run_dir, cores)
        result = measure(snakemake(run_dir, cores), log=run_dir / "bench_noop.log")
        result["planned"] = planned
        return result

    out["noop"] = state.get(f"{key}/noop_c{top}", noop)

    def pet_rerun(run_dir: Path = runs[top], cores: int = top) -> dict:
        change = change_pet_parameters(run_dir)
        planned = dry_run_jobs(run_dir, cores)
        result = measure(snakemake(run_dir, cores), log=run_dir / "bench_pet.log")
        result.update(change=change, planned=planned)
        return result

    out["pet_rerun"] = state.get(f"{key}/pet_rerun_c{top}", pet_rerun)
    with_baselines = not args.skip_baselines and (
        args.baseline_cohorts is None or n in args.baseline_cohorts
    )
    for cores in args.extraction_cores:
        if not (with_baselines or cores in runs):
            continue
        # in that core count's full run, else in the run at the most cores (its masks)
        run_dir = runs.get(cores, runs[top])

        def extraction(run_dir: Path = run_dir, cores: int = cores) -> dict:
            targets = sorted(
                str(p.relative_to(run_dir))
                for p in (run_dir / "results/features/subjects").glob("*/*.json")
            )
            # targets before --forcerun, which would take them as more rule names. Only mtime
            # triggers: measured again with later code (--current-code --remeasure), the
            # extraction jobs must run on the full run's masks, not rerun the stages whose code
            # version changed.
            command = snakemake(
                run_dir,
                cores,
                *targets,
                "--forcerun",
                "extract_features",
                "--rerun-triggers",
                "mtime",
            )
            result = measure(command, log=run_dir / "bench_extraction.log")
            result["jobs"] = len(targets)
            return result

        out[f"extraction_c{cores}"] = state.get(f"{key}/extraction_c{cores}", extraction)
        if with_baselines:
            out[f"cli_c{cores}"] = state.get(
                f"{key}/pyradiomics_cli_c{cores}",
                lambda run_dir=run_dir, cores=cores: pyradiomics_cli(
                    run_dir, cores, work / key / f"cli_c{cores}"
                ),
            )
    if with_baselines:
        low = min(args.cores)
        out["serial"] = state.get(
            f"{key}/serial",
            lambda: serial_baseline(runs[low], cohort, work / key / "serial"),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_measure":
        return _measure_child(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument("--size", default="realistic", choices=["demo", "realistic"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dag-subjects", type=int, nargs="*", default=[1000])
    parser.add_argument("--no-dag-profile", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--baseline-cohorts",
        type=int,
        nargs="+",
        help="measure the baselines on these cohort sizes only (default: every cohort)",
    )
    parser.add_argument(
        "--full-run-only",
        type=int,
        nargs="+",
        help="cohort sizes measured by their full runs only (growth): no nothing-to-do and PET"
        " reruns, no extraction comparison, no baselines",
    )
    parser.add_argument(
        "--extraction-cores",
        type=int,
        nargs="+",
        help="core counts of the extraction-vs-CLI comparison (default: --cores); one without a"
        " full run of its own is measured in the run at the most cores",
    )
    parser.add_argument("--resume", action="store_true", help="keep measurements already taken")
    parser.add_argument(
        "--remeasure",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: take these measurements again (keys of the state file, e.g."
        " dag_1000_<cohort>)",
    )
    parser.add_argument(
        "--current-code",
        action="store_true",
        help="with --resume: take new measurements with the working tree's code, not with the"
        " code the benchmark started with (each measurement records its code)",
    )
    parser.add_argument(
        "--any-generator",
        action="store_true",
        help="reuse a cached cohort written by another version of the phantom generator",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args(argv)
    args.cores = sorted(set(args.cores))
    args.extraction_cores = sorted(set(args.extraction_cores or args.cores))

    cache = cache_dir()
    work = cache / "runs"
    code = tree_hash(*SNAPSHOT_ENTRIES)
    meta = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_describe(),
        "workflow_code": code,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "size": args.size,
        "seed": args.seed,
        "cores": args.cores,
        "cohorts": args.cohorts,
        "load_at_start": list(os.getloadavg()),
    }
    # Not keyed by the code hash: other work may change the code while a long benchmark runs.
    # Each measurement records the code it ran; the results list every version seen.
    # Measurement keys name their cohort and cores, so runs with other --cores add to one file.
    name = f"{args.size}-seed{args.seed}.json"
    state = State(cache / "state" / name, resume=args.resume, meta=meta)
    for key in args.remeasure:
        if state.data["measurements"].pop(key, None) is None:
            parser.error(f"--remeasure {key}: no such measurement in {state.path}")
    # A resumed benchmark goes on with the code it started with, when that snapshot still exists.
    started_with = state.data["meta"]["workflow_code"]
    if not args.current_code and (cache / "snapshots" / started_with / "Snakefile").is_file():
        code = started_with
    state.code = code
    if code != started_with:  # the results name the commit of each code version
        commits = state.data["meta"]["commit"].split(", ")
        if meta["commit"] not in commits:
            state.data["meta"]["commit"] = ", ".join([*commits, meta["commit"]])
            state.save()
    snapshot = take_snapshot(code, cache / "snapshots")
    print(f"[bench] workflow code {code}, run from the snapshot {snapshot}", flush=True)
    print(f"[bench] cache {cache}; state {state.path}", flush=True)
    results = []
    for n in sorted(args.cohorts):
        results.append(bench_cohort(n, args, state, work))
        write_results(results, {}, state.data["meta"], args, final=False)
    dags = {}
    first = Path(results[0]["cohort"])
    for n in args.dag_subjects:
        dags[n] = state.get(
            f"dag_{n}_{first.name}",
            lambda n=n: dag_timing(first, n, work, profile=not args.no_dag_profile),
        )
    write_results(results, dags, state.data["meta"], args, final=True)
    return 0


# ------------------------------------------------------------------------------- reporting


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _f(value: float, digits: int = 2) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def growth_exponent(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(wall) on log(n): 1.0 is linear growth."""
    if len(points) < 2:
        return math.nan
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(w) for _, w in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def write_results(
    results: list[dict], dags: dict, meta: dict, args: argparse.Namespace, *, final: bool
) -> None:
    rows: list[dict] = []  # CSV, long format

    def add(section, n, cores, name, value, unit, load=None):
        rows.append(
            {
                "section": section,
                "n_subjects": n,
                "cores": cores,
                "name": name,
                "value": round(value, 4) if isinstance(value, float) else value,
                "unit": unit,
                "load1": load,
            }
        )

    codes = sorted(
        {
            v["workflow_code"]
            for r in results
            for v in r.values()
            if isinstance(v, dict) and "workflow_code" in v
        }
        | {d["workflow_code"] for d in dags.values() if "workflow_code" in d}
    )
    md = [
        "# calcirad benchmark results",
        "",
        f"Written by `bench/run.py` ({dt.datetime.now().isoformat(timespec='seconds')}); commit "
        f"{meta['commit']}, workflow code (hash of Snakefile, workflow/, src/calcirad, config/radiomics) "
        f"{', '.join(codes) or meta['workflow_code']}; {meta['cpus']} CPUs on "
        f"{meta['host']}, Python {meta['python']}; cohort size `{meta['size']}`, seed "
        f"{meta['seed']}. See bench/README.md for what each number means.",
        "",
        "**Load average** (1 min) is given beside every measurement: above the number of CPUs, "
        "other processes shared the machine and times are inflated.",
        "",
    ]
    top = max(args.cores)
    low = min(args.cores)

    # end-to-end
    md += ["## End to end (fresh run directory, `snakemake --cores N`)", ""]
    md += [
        "| subjects | cores | wall s | s / subject | CPU s | sum of job s | wall / (sum of job s"
        " / cores) | largest job RSS MiB | load before -> after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    orchestration = {}
    for r in results:
        for cores in args.cores:
            full = r[f"full_c{cores}"]
            job_sum = sum(j["s"] for j in full["jobs"])
            ratio = _ratio(full["wall_s"], job_sum / cores)
            orchestration[(r["n"], cores)] = ratio
            peak = max((j["max_rss_mib"] for j in full["jobs"]), default=math.nan)
            md.append(
                f"| {r['n']} | {cores} | {_f(full['wall_s'], 1)} | {_f(full['wall_s'] / r['n'])} "
                f"| {_f(full['cpu_s'], 1)} | {_f(job_sum, 1)} | {_f(ratio)} | {_f(peak, 0)} "
                f"| {full['load_before']} -> {full['load_after']} |"
            )
            load = full["load_after"]
            add("end_to_end", r["n"], cores, "wall", full["wall_s"], "s", load)
            add("end_to_end", r["n"], cores, "wall_per_subject", full["wall_s"] / r["n"], "s", load)
            add("end_to_end", r["n"], cores, "cpu", full["cpu_s"], "s", load)
            add("end_to_end", r["n"], cores, "sum_of_job_seconds", job_sum, "s", load)
            add("end_to_end", r["n"], cores, "orchestration_ratio", ratio, "ratio", load)
            add("end_to_end", r["n"], cores, "rc", full["rc"], "", load)
    md += [""]
    for r in results:
        if "noop" not in r:  # --full-run-only
            continue
        noop = r["noop"]
        planned = noop.get("planned") or {}
        md.append(
            f"Nothing-to-do rerun, {r['n']} subjects: {_f(noop['wall_s'])} s "
            f"(load {noop['load_before']})"
            + (
                f"; NOT nothing to do: {sum(planned.values())} jobs planned (the workflow code "
                "changed during the benchmark?)."
                if planned
                else "."
            )
        )
        add("end_to_end", r["n"], top, "noop_rerun", noop["wall_s"], "s", noop["load_before"])
        statuses = r[f"full_c{top}"]["features"]
        md.append(
            "Feature records: "
            + "; ".join(
                f"{m} " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.get(m, {}).items()))
                for m in MODALITIES
                if m in statuses
            )
            + "."
        )
    md.append("")

    # stages
    md += ["## Stages (from Snakemake's benchmark files)", ""]
    peak_overall = 0.0
    for r in results:
        for cores in args.cores:
            full = r[f"full_c{cores}"]
            md += [
                f"**{r['n']} subjects, --cores {cores}** (load {full['load_before']} -> "
                f"{full['load_after']})",
                "",
                "| stage | jobs | sum s | mean s / job | max s | s / subject | sum CPU s | peak RSS MiB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for s in stage_table(full["jobs"], r["n"]):
                md.append(
                    f"| {s['stage']} | {s['jobs']} | {_f(s['sum_s'])} | {_f(s['mean_s'])} "
                    f"| {_f(s['max_s'])} | {_f(s['per_subject_s'])} | {_f(s['cpu_s'])} "
                    f"| {_f(s['peak_rss_mib'], 0)} |"
                )
                for metric in (
                    "sum_s",
                    "mean_s",
                    "max_s",
                    "per_subject_s",
                    "cpu_s",
                    "peak_rss_mib",
                ):
                    add(
                        f"stage:{s['stage']}",
                        r["n"],
                        cores,
                        metric,
                        s[metric],
                        "MiB" if "rss" in metric else "s",
                        full["load_after"],
                    )
                if not math.isnan(s["peak_rss_mib"]):
                    peak_overall = max(peak_overall, s["peak_rss_mib"])
            md.append("")

    # growth
    md += ["## Growth with cohort size", ""]
    md += [
        "| cores | "
        + " | ".join(f"{r['n']} subjects: wall s (s / subject)" for r in results)
        + " | exponent (log wall / log n) | exponent of CPU s |"
    ]
    md += ["|---:|" + "---:|" * (len(results) + 2)]
    exponents = {}
    for cores in args.cores:
        points = [(r["n"], r[f"full_c{cores}"]["wall_s"]) for r in results]
        exponents[cores] = growth_exponent(points)
        # CPU time hardly depends on what else ran on the machine; wall time does.
        cpu = growth_exponent([(r["n"], r[f"full_c{cores}"]["cpu_s"]) for r in results])
        cells = [f"{_f(w, 1)} ({_f(w / n)})" for n, w in points]
        md.append(f"| {cores} | " + " | ".join(cells) + f" | {_f(exponents[cores])} | {_f(cpu)} |")
        add("growth", None, cores, "exponent", exponents[cores], "log-log slope")
        add("growth", None, cores, "exponent_cpu", cpu, "log-log slope")
    md.append("")

    # baselines
    md += ["## Baselines (same images, masks and parameter files)", ""]
    md += [
        "| subjects | cores | calcirad extraction s | pyradiomics CLI s | ratio | CPU s calcirad; "
        "CLI | CPU ratio | CLI cases (failed) | load (calcirad; CLI) |",
        "|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    tracked = math.nan
    for r in results:
        for cores in args.extraction_cores:
            ext, cli = r.get(f"extraction_c{cores}"), r.get(f"cli_c{cores}")
            if not (ext and cli):
                continue
            ratio = _ratio(ext["wall_s"], cli["wall_s"])
            if cores == top:  # the largest cohort with a CLI measurement at the most cores
                tracked = ratio
            md.append(
                f"| {r['n']} | {cores} | {_f(ext['wall_s'], 1)} | {_f(cli['wall_s'], 1)} "
                f"| {_f(ratio)} | {_f(ext['cpu_s'], 1)}; {_f(cli['cpu_s'], 1)} "
                f"| {_f(_ratio(ext['cpu_s'], cli['cpu_s']))} "
                f"| {cli['cases']} ({cli['failed']}) | {ext['load_before']}; "
                f"{cli['load_before']} |"
            )
            add(
                "baseline",
                r["n"],
                cores,
                "calcirad_extraction",
                ext["wall_s"],
                "s",
                ext["load_before"],
            )
            add(
                "baseline", r["n"], cores, "pyradiomics_cli", cli["wall_s"], "s", cli["load_before"]
            )
            add("baseline", r["n"], cores, "extraction_ratio", ratio, "ratio", cli["load_before"])
            cpu_ratio = _ratio(ext["cpu_s"], cli["cpu_s"])
            add("baseline", r["n"], cores, "extraction_cpu_ratio", cpu_ratio, "ratio")
    md.append("")
    md += [
        "| subjects | calcirad conversion + extraction (sum of job s, --cores "
        f"{low}) | serial script s (conversion + extraction) | ratio | CPU s calcirad; script "
        "| CPU ratio | load |",
        "|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        serial = r.get("serial")
        if not serial:
            continue
        jobs = r[f"full_c{low}"]["jobs"]
        mine = sum(j["s"] for j in jobs if j["rule"] in ("convert", "features"))
        theirs = serial["seconds"]["conversion"] + serial["seconds"]["extraction"]
        ratio = _ratio(mine, theirs)
        mine_cpu = sum(j["cpu_s"] for j in jobs if j["rule"] in ("convert", "features"))
        cpu_ratio = _ratio(mine_cpu, serial["cpu_s"])
        md.append(
            f"| {r['n']} | {_f(mine, 1)} | {_f(theirs, 1)} ({_f(serial['seconds']['conversion'], 1)}"
            f" + {_f(serial['seconds']['extraction'], 1)}) | {_f(ratio)} | {_f(mine_cpu, 1)}; "
            f"{_f(serial['cpu_s'], 1)} | {_f(cpu_ratio)} | {serial['load_before']} |"
        )
        add("baseline", r["n"], low, "serial_cpu_ratio", cpu_ratio, "ratio")
        add("baseline", r["n"], low, "calcirad_conversion_extraction", mine, "s")
        add(
            "baseline",
            r["n"],
            1,
            "serial_conversion",
            serial["seconds"]["conversion"],
            "s",
            serial["load_before"],
        )
        add(
            "baseline",
            r["n"],
            1,
            "serial_extraction",
            serial["seconds"]["extraction"],
            "s",
            serial["load_before"],
        )
        add("baseline", r["n"], low, "serial_ratio", ratio, "ratio", serial["load_before"])
    md.append("")
    line = f"extraction ratio (calcirad / pyradiomics CLI): {_f(tracked)}"
    md += [line, ""]

    # PET rerun
    md += ["## Rerun after a change to the PET parameter file only", ""]
    md += [
        "| subjects | cores | change | jobs planned | rerun wall s | full run wall s | fraction "
        "| load |",
        "|---:|---:|---|---|---:|---:|---:|---|",
    ]
    fractions = []
    for r in results:
        if "pet_rerun" not in r:  # --full-run-only
            continue
        pet, full = r["pet_rerun"], r[f"full_c{top}"]
        fraction = _ratio(pet["wall_s"], full["wall_s"])
        fractions.append(fraction)
        planned = ", ".join(f"{k} {v}" for k, v in sorted(pet["planned"].items()))
        md.append(
            f"| {r['n']} | {top} | {pet['change']} | {planned} | {_f(pet['wall_s'], 1)} | "
            f"{_f(full['wall_s'], 1)} | {_f(fraction)} | {pet['load_before']} |"
        )
        add("pet_rerun", r["n"], top, "wall", pet["wall_s"], "s", pet["load_before"])
        add("pet_rerun", r["n"], top, "fraction_of_full", fraction, "ratio", pet["load_before"])
    md.append("")

    # DAG
    if dags:
        md += ["## `snakemake -n` on a large sample sheet", ""]
        md += [
            "| subjects | jobs | runs | wall s (median) | wall s of each run | CPU s (median) |"
            " load before -> after | workflow code |",
            "|---:|---:|---:|---:|---|---:|---|---|",
        ]
        for n, d in sorted(dags.items()):
            each = ", ".join(_f(w, 1) for w in d.get("wall_runs", [d["wall_s"]]))
            md.append(
                f"| {n} | {d['jobs']} | {len(d.get('wall_runs', [1]))} | {_f(d['wall_s'], 1)} |"
                f" {each} | {_f(d['cpu_s'], 1)} | {d['load_before']} -> {d['load_after']} |"
                f" {d.get('workflow_code', '')} |"
            )
            add("dag", n, None, "dry_run_wall", d["wall_s"], "s", d["load_before"])
            add("dag", n, None, "dry_run_cpu", d["cpu_s"], "s", d["load_before"])
            if "profile" in d:
                total = d["profile"]["total"]
                md += [
                    "",
                    f"Profile of the {n}-subject dry run (cProfile timed by CPU; the profiler"
                    " inflates the seconds, read them as shares):",
                    "",
                ]
                if "profile_tree" in d:
                    md += [f"Call tree (pyinstrument): `{d['profile_tree']}`.", ""]
                md += ["| part | CPU s (profiled) | share |", "|---|---:|---:|"]
                for part, seconds in d["profile"].items():
                    md.append(f"| {part} | {_f(seconds)} | {_f(100 * seconds / total, 0)} % |")
                    add("dag_profile", n, None, part, seconds, "cpu s (profiled)")
        md.append("")

    # targets
    dag_1000 = dags.get(1000, {}).get("wall_s", math.nan)
    checks = [
        (
            "extraction ratio <= 1.0 (calcirad / pyradiomics CLI, same cores)",
            tracked,
            tracked <= TARGETS["extraction_ratio"],
        ),
        (
            f"end-to-end <= 1.3 x sum of job s / cores at {top} cores (largest cohort)",
            orchestration.get((results[-1]["n"], top), math.nan),
            orchestration.get((results[-1]["n"], top), math.inf) <= TARGETS["orchestration_ratio"],
        ),
        (
            f"near-linear growth (exponent <= 1.1, --cores {top})",
            exponents.get(top, math.nan),
            exponents.get(top, math.inf) <= TARGETS["growth_exponent"],
        ),
        ("peak memory per job < 2 GiB (MiB)", peak_overall, peak_overall < TARGETS["peak_job_mib"]),
        (
            "PET-only rerun < 35 % of the full run (largest cohort)",
            fractions[-1] if fractions else math.nan,
            bool(fractions) and fractions[-1] < TARGETS["pet_rerun_fraction"],
        ),
        ("`snakemake -n`, 1,000 subjects < 10 s", dag_1000, dag_1000 < DAG_TARGET_S),
    ]
    md += ["## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    for label, value, met in checks:
        md.append(f"| {label} | {_f(value)} | {'yes' if met else 'NO'} |")
        add("target", None, None, label, value, "yes" if met else "no")
    md.append("")
    if any(not r.get("cached") for r in results) or results:
        md += ["## Cohorts", ""]
        for r in results:
            md.append(
                f"- {r['n']} subjects: `{r['cohort']}` (generated in {_f(r['generation_s'], 0)} s"
                f"{', cached' if r['cached'] else ''})"
            )
        md.append("")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(md), encoding="utf-8")
    with (args.out / "results.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if final:
        print(line, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
