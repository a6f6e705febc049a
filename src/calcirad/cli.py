"""The ``calcirad`` command line: one subcommand per task, registered in ``COMMANDS``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from calcirad import summary
from calcirad.errors import CalciradError


def _phantom_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=36, help="number of subjects (default 36)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", choices=["demo", "realistic"], default="demo")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument(
        "--subtypes",
        default=None,
        help="comma-separated subtypes to use instead of the priors' mix (e.g. tc_uremic_active,esos)",
    )
    parser.add_argument("--priors", default=None, help="a priors YAML replacing the packaged one")
    parser.add_argument(
        "--messy",
        action="store_true",
        help="write PACS-like exports (mixed folders, localizers, compressed syntaxes, missing "
        "slices) at the fractions of the priors' `messy` block",
    )


def _phantom_run(args: argparse.Namespace) -> int:
    from calcirad.phantom import write_cohort  # heavy imports only for this command

    subtypes = [s.strip() for s in args.subtypes.split(",") if s.strip()] if args.subtypes else None
    start = time.perf_counter()
    out = write_cohort(
        n=args.n,
        seed=args.seed,
        out=args.out,
        size=args.size,
        jobs=args.jobs,
        subtypes=subtypes,
        priors_path=args.priors,
        messy=True if args.messy else None,
    )
    print(f"wrote {args.n} subjects to {out} in {time.perf_counter() - start:.1f} s")
    return 0


Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {
    "phantom": (_phantom_arguments, _phantom_run, "write a synthetic multi-modal DICOM cohort"),
    "summary": (
        summary.add_arguments,
        summary.run,
        "print the main results table of a finished run and the report's path",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calcirad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CalciradError as error:
        print(f"calcirad {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
