"""Command line of the per-subject steps: ``python -m calcirad.steps <step> --option value ...``.

The workflow runs its per-subject jobs (thousands in a large cohort) as these commands rather than
Snakemake ``script:`` jobs: a ``script:`` costs the DAG build a source-cache lookup per job and
each job an import of Snakemake to unpickle its arguments (issue 10). Each step's module is
imported only when that step runs, so a job pays for its own imports only. Config slices arrive
as JSON; the log file gets the calcirad logger, as under ``script:``.

Run ``python -m calcirad.steps <step> --help`` for a step's options.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text[:80]!r}") from None


def _json_object(text: str) -> dict:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, got {text[:80]!r}")
    return value


def _modality_path(text: str) -> tuple[str, str]:
    modality, sep, path = text.partition("=")
    if not sep or not modality or not path:
        raise argparse.ArgumentTypeError(f"expected <modality>=<path>, got {text!r}")
    return modality, path


def _ingest(args: argparse.Namespace) -> None:
    from calcirad.steps.ingest import run_ingest

    run_ingest(
        subject=args.subject,
        study_dir=args.study,
        rules=args.rules,
        pins=args.pins,
        modalities=args.modalities,
        out_json=args.out,
    )


def _convert(args: argparse.Namespace) -> None:
    from calcirad.steps.convert import run_convert

    run_convert(
        subject=args.subject,
        inventory_json=args.inventory,
        study_dir=args.study,
        out_dir=args.out,
        conversion=args.conversion,
    )


def _segment(args: argparse.Namespace) -> None:
    from calcirad.steps.segment import run_segment

    run_segment(
        subject=args.subject,
        nifti_dir=args.nifti,
        out_dir=args.out,
        segmentation=args.segmentation,
        truth=args.truth,
        truth_bone=args.truth_bone,
        user_masks=dict(args.mask),
    )


def _qc(args: argparse.Namespace) -> None:
    from calcirad.steps.segment import run_qc

    run_qc(subject=args.subject, nifti_dir=args.nifti, masks_dir=args.masks, out_png=args.out)


def _features(args: argparse.Namespace) -> None:
    from calcirad.steps.features import run_features

    run_features(
        subject=args.subject,
        modality=args.modality,
        nifti_dir=args.nifti,
        masks_dir=args.masks,
        params_file=args.params,
        out_json=args.out,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m calcirad.steps",
        description="Run one per-subject step of the calcirad workflow.",
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, run: Callable[[argparse.Namespace], None], help_text: str):
        sub = steps.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--subject", required=True, help="subject ID (sample sheet)")
        sub.add_argument("--log", help="log file (default: stderr)")
        return sub

    sub = step("ingest", _ingest, "Find, classify and choose a subject's DICOM series.")
    sub.add_argument("--study", required=True, help="the subject's DICOM folder")
    sub.add_argument("--rules", type=_json_object, required=True, help="config `ingest` (JSON)")
    sub.add_argument(
        "--pins", type=_json_object, default={}, help="modality -> pinned series (JSON)"
    )
    sub.add_argument("--modalities", nargs="+", required=True, help="modalities to choose")
    sub.add_argument("--out", required=True, help="inventory JSON to write")

    sub = step("convert", _convert, "Convert a subject's chosen series to NIfTI (dcm2niix).")
    sub.add_argument("--inventory", required=True, help="the subject's ingest JSON")
    sub.add_argument("--study", required=True, help="the subject's DICOM folder")
    sub.add_argument(
        "--conversion", type=_json_object, required=True, help="config `conversion` (JSON)"
    )
    sub.add_argument("--out", required=True, help="folder of NIfTI files to write")

    sub = step("segment", _segment, "Lesion masks on CT, carried onto every modality's grid.")
    sub.add_argument("--nifti", required=True, help="the subject's NIfTI folder")
    sub.add_argument(
        "--segmentation", type=_json_object, required=True, help="config `segmentation` (JSON)"
    )
    sub.add_argument("--truth", help="ground-truth lesion mask (phantoms), for Dice/HD95")
    sub.add_argument("--truth-bone", help="ground-truth normal-bone mask (phantoms)")
    sub.add_argument(
        "--mask",
        type=_modality_path,
        action="append",
        default=[],
        metavar="MODALITY=PATH",
        help="a user mask (NIfTI, RTSTRUCT or SEG) for one modality; repeatable",
    )
    sub.add_argument("--out", required=True, help="folder of masks to write")

    sub = step("qc", _qc, "The QC figure of a subject's masks.")
    sub.add_argument("--nifti", required=True, help="the subject's NIfTI folder")
    sub.add_argument("--masks", required=True, help="the subject's mask folder")
    sub.add_argument("--out", required=True, help="PNG to write")

    sub = step("features", _features, "pyradiomics features of one subject and modality.")
    sub.add_argument("--modality", required=True)
    sub.add_argument("--nifti", required=True, help="the subject's NIfTI folder")
    sub.add_argument("--masks", required=True, help="the subject's mask folder")
    sub.add_argument("--params", required=True, help="pyradiomics parameter file")
    sub.add_argument("--out", required=True, help="feature JSON to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from calcirad.steps.common import job_log

    with job_log(args.log):
        args.run(args)
    return 0
