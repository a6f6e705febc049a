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
import importlib
import json
from collections.abc import Sequence


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


class _ModalityPaths(argparse.Action):
    """Repeated ``<modality>=<path>`` options collected into one dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        modality, path = values
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), modality: path})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m calcirad.steps",
        description="Run one per-subject step of the calcirad workflow.",
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    # Each option's dest is the keyword argument of the step function it is passed to.
    def step(name: str, function: str, help_text: str):
        sub = steps.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        sub.add_argument("--subject", required=True, help="subject ID (sample sheet)")
        sub.add_argument("--log", help="log file (default: stderr)")
        return sub

    sub = step(
        "ingest",
        "calcirad.steps.ingest:run_ingest",
        "Find, classify and choose a subject's DICOM series.",
    )
    sub.add_argument("--study", dest="study_dir", required=True, help="the subject's DICOM folder")
    sub.add_argument("--rules", type=_json_object, required=True, help="config `ingest` (JSON)")
    sub.add_argument(
        "--pins", type=_json_object, default={}, help="modality -> pinned series (JSON)"
    )
    sub.add_argument("--modalities", nargs="+", required=True, help="modalities to choose")
    sub.add_argument("--out", dest="out_json", required=True, help="inventory JSON to write")

    sub = step(
        "convert",
        "calcirad.steps.convert:run_convert",
        "Convert a subject's chosen series to NIfTI (dcm2niix).",
    )
    sub.add_argument(
        "--inventory", dest="inventory_json", required=True, help="the subject's ingest JSON"
    )
    sub.add_argument("--study", dest="study_dir", required=True, help="the subject's DICOM folder")
    sub.add_argument(
        "--conversion", type=_json_object, required=True, help="config `conversion` (JSON)"
    )
    sub.add_argument("--out", dest="out_dir", required=True, help="folder of NIfTI files to write")

    sub = step(
        "segment",
        "calcirad.steps.segment:run_segment",
        "Lesion masks on CT, carried onto every modality's grid.",
    )
    sub.add_argument("--nifti", dest="nifti_dir", required=True, help="the subject's NIfTI folder")
    sub.add_argument(
        "--segmentation", type=_json_object, required=True, help="config `segmentation` (JSON)"
    )
    sub.add_argument("--truth", help="ground-truth lesion mask (phantoms), for Dice/HD95")
    sub.add_argument("--truth-bone", help="ground-truth normal-bone mask (phantoms)")
    sub.add_argument(
        "--mask",
        dest="user_masks",
        type=_modality_path,
        action=_ModalityPaths,
        default={},
        metavar="MODALITY=PATH",
        help="a user mask (NIfTI, RTSTRUCT or SEG) for one modality; repeatable",
    )
    sub.add_argument("--out", dest="out_dir", required=True, help="folder of masks to write")

    sub = step("qc", "calcirad.steps.segment:run_qc", "The QC figure of a subject's masks.")
    sub.add_argument("--nifti", dest="nifti_dir", required=True, help="the subject's NIfTI folder")
    sub.add_argument("--masks", dest="masks_dir", required=True, help="the subject's mask folder")
    sub.add_argument("--out", dest="out_png", required=True, help="PNG to write")

    sub = step(
        "features",
        "calcirad.steps.features:run_features",
        "pyradiomics features of one subject and modality.",
    )
    sub.add_argument("--modality", required=True)
    sub.add_argument("--nifti", dest="nifti_dir", required=True, help="the subject's NIfTI folder")
    sub.add_argument("--masks", dest="masks_dir", required=True, help="the subject's mask folder")
    sub.add_argument(
        "--params", dest="params_file", required=True, help="pyradiomics parameter file"
    )
    sub.add_argument("--out", dest="out_json", required=True, help="feature JSON to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    del options["step"]
    log_file = options.pop("log")
    # the step's module only now: a job pays for its own step's imports alone
    module, _, name = options.pop("function").partition(":")
    from calcirad.steps.common import job_log

    function = getattr(importlib.import_module(module), name)
    with job_log(log_file):
        function(**options)
    return 0
