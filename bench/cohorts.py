"""Cached synthetic cohorts for the benchmark.

A cohort is written once by ``calcirad phantom`` into the bench cache (``$CALCIRAD_BENCH_DIR``,
default ``~/.cache/calcirad-bench``), under a folder named by what determines its bytes: grid size,
number of subjects, seed and a hash of the generator's source (``src/calcirad/phantom/`` plus the
two package modules it imports). A changed generator therefore gets a new folder; an unchanged one
is reused by every later run. Writing goes to a temporary folder renamed at the end, so an
interrupted generation is never mistaken for a cohort.

Usage::

    .venv/bin/python bench/cohorts.py --n 12 --size realistic   # prints the cohort folder
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHANTOM_SOURCES = ("src/calcirad/phantom", "src/calcirad/errors.py", "src/calcirad/atomic.py")


def cache_dir() -> Path:
    """The bench cache: ``$CALCIRAD_BENCH_DIR`` or ``~/.cache/calcirad-bench`` (never the repo)."""
    env = os.environ.get("CALCIRAD_BENCH_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "calcirad-bench"


def generator_hash() -> str:
    """sha256 (first 10 hex digits) of the phantom generator's source files (.py and .yaml)."""
    digest = hashlib.sha256()
    for entry in PHANTOM_SOURCES:
        path = REPO / entry
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in (".py", ".yaml"))
            if path.is_dir()
            else [path]
        )
        for file in files:
            digest.update(str(file.relative_to(REPO)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:10]


def cohort_key(*, n: int, size: str, seed: int) -> str:
    return f"{size}-n{n}-seed{seed}-{generator_hash()}"


def ensure_cohort(
    *,
    n: int,
    size: str,
    seed: int,
    jobs: int = 2,
    root: Path | None = None,
    any_generator: bool = False,
) -> tuple[Path, float | None]:
    """The cohort folder (``samples.tsv``, ``dicom/``, ``truth/``), written if absent.

    ``any_generator``: when no cohort of the current generator is cached, reuse the newest one
    written by another version of the generator instead of writing a new one.
    Returns the folder and the generation time in seconds (None when it was cached).
    """
    root = (root or cache_dir()) / "cohorts"
    folder = root / cohort_key(n=n, size=size, seed=seed)
    if (folder / "samples.tsv").is_file():
        return folder, None
    if any_generator:
        others = [
            p
            for p in root.glob(f"{size}-n{n}-seed{seed}-*")
            if not p.name.endswith(".tmp") and (p / "samples.tsv").is_file()
        ]
        if others:
            return max(others, key=lambda p: p.stat().st_mtime), None
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = [str(Path(sys.executable).with_name("calcirad"))]
    command += ["phantom", "--n", str(n), "--seed", str(seed), "--size", size]
    command += ["--jobs", str(jobs), "--out", str(tmp)]
    subprocess.run(command, check=True)
    elapsed = time.perf_counter() - start
    (tmp / "generation_seconds.txt").write_text(f"{elapsed:.1f}\n")
    tmp.rename(folder)
    return folder, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--size", default="realistic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    folder, seconds = ensure_cohort(n=args.n, size=args.size, seed=args.seed, jobs=args.jobs)
    print(folder if seconds is None else f"{folder} (written in {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
