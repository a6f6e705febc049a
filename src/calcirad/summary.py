"""`calcirad summary`: print the main results table of a finished run and where the report is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="the run's results folder"
    )


def run(args: argparse.Namespace) -> int:
    results: Path = args.results
    table = results / "tables" / "performance.md"
    if not table.exists():
        print(f"calcirad: no {table}: has the workflow finished?", file=sys.stderr)
        return 1
    print(table.read_text(encoding="utf-8"))
    null = results / "tables" / "permutation_null.md"
    if null.exists():
        print(null.read_text(encoding="utf-8"))
    failures = results / "tables" / "failures.csv"
    if failures.exists():
        n_failures = max(0, len(failures.read_text(encoding="utf-8").splitlines()) - 1)
        print(f"Failures recorded: {n_failures} (see {failures})")
    report = results / "report.html"
    print(f"HTML report: {report.resolve()}" if report.exists() else "HTML report: not built")
    return 0
