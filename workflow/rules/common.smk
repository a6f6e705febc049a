# Shared by all rule files (config and sample-sheet validation (before any job starts), subject
# lists, input functions, and the per-stage code versions that make code changes rerun their stage).

import json
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from calcirad.errors import ConfigError
from calcirad.sheet import CLINICAL_COLUMNS, check_sheet, read_sheet
from calcirad.plan import FIGURES, config_hash, select_subjects
from calcirad.steps.common import code_version

validate(config, "../schemas/config.schema.yaml")


def workflow_path(path):
    """A config path as given (relative to the run directory), else found in the workflow folder.

    Lets a user's run directory rely on the shipped pyradiomics parameter files.
    """
    given = Path(path)
    if given.is_absolute() or given.exists():
        return str(given)
    shipped = Path(workflow.basedir) / given
    return str(shipped) if shipped.exists() else str(given)


config["radiomics"] = {m: workflow_path(p) for m, p in config["radiomics"].items()}

_sheet = read_sheet(config["samples"])
# check_sheet first: its messages name the sheet, the row (1-based), the subject and the column;
# the schema then checks what is left (types, optional columns).
samples = check_sheet(
    _sheet, sheet_path=config["samples"], data_root=config["data_root"]
)
validate(_sheet, "../schemas/samples.schema.yaml")

SUBJECTS = list(samples["subject"])
# The sheet's rows as plain dicts: the input functions run once per job (thousands in a large
# cohort), and a dict lookup costs a fraction of a DataFrame row lookup.
ROWS = samples.to_dict(orient="index")
MODALITIES = list(config["modalities"])
TASKS = list(config["model"]["tasks"])
FEATURE_SETS = list(config["model"]["feature_sets"])
MODELS = list(config["model"]["models"])
MODEL_TABLES = ["performance", "model_comparison", "top_features", "permutation_null"]
TABLE_FORMATS = ["csv", "md", "tex"]
FIGURE_FORMATS = ["png", "svg"]


missing_radiomics = [m for m in MODALITIES if m not in config["radiomics"]]
if missing_radiomics:
    raise ConfigError(
        f"config key `radiomics` has no parameter file for {', '.join(missing_radiomics)}"
    )


# Code versions: a change to a stage's package code reruns that stage (and, through its
# outputs, what depends on it); a change elsewhere in the package does not. The per-subject
# steps' command line (calcirad.steps.cli, which Snakemake does not see) counts for each of them.
CODE = {
    "ingest": code_version(
        "calcirad.dicom", "calcirad.steps.ingest", "calcirad.steps.cli"
    ),
    "convert": code_version(
        "calcirad.convert",
        "calcirad.suv",
        "calcirad.steps.convert",
        "calcirad.steps.cli",
    ),
    "segment": code_version(
        "calcirad.segment", "calcirad.steps.segment", "calcirad.steps.cli"
    ),
    "qc": code_version("calcirad.qc", "calcirad.steps.segment", "calcirad.steps.cli"),
    "features": code_version(
        "calcirad.features", "calcirad.steps.features", "calcirad.steps.cli"
    ),
    "stability": code_version(
        "calcirad.stability", "calcirad.features", "calcirad.steps.stability"
    ),
    "model": code_version("calcirad.model", "calcirad.steps.model"),
    "tables": code_version(
        "calcirad.tables", "calcirad.figures", "calcirad.steps.report"
    ),
}


# The per-subject jobs (thousands in a large cohort) are shell commands, `python -m calcirad.steps
# <step>`, not `script:` jobs: a `script:` costs the DAG build a source-cache lookup per job and
# each job an import of Snakemake (issue 10). Their python is the one running Snakemake (whose venv
# need not be activated), or under --sdm conda the job's own environment's (envs/*.yaml install
# calcirad). Set here, for the jobs (each job on a cluster parses this file again): it is not
# something a user provides.
_deployment = workflow.deployment_settings
_in_conda = (
    bool(_deployment) and DeploymentMethod.CONDA in _deployment.deployment_method
)
os.environ.update(CALCIRAD_PYTHON="python" if _in_conda else sys.executable)


def as_json(value):
    """A config slice as a command-line argument: deterministic JSON (key order fixed)."""
    return json.dumps(value, sort_keys=True)


# Feature stability under mask perturbation: which subjects and modalities are perturbed
# (a deterministic subsample by default: see calcirad.stability.select_subjects).
STABILITY_SUBJECTS = select_subjects(SUBJECTS, config["stability"]["subjects"])
STABILITY_MODALITIES = [
    m for m in MODALITIES if m in (config["stability"]["modalities"] or MODALITIES)
]
STABILITY_TARGETS = (
    ["results/tables/feature_stability.csv"]
    if STABILITY_SUBJECTS and STABILITY_MODALITIES
    else []
)
if config["model"]["min_icc"] is not None and not STABILITY_TARGETS:
    raise ConfigError(
        "model.min_icc needs the feature stability table, but stability.subjects or "
        "stability.modalities selects nothing"
    )


def stability_table_input(wildcards):
    """The stability table, for the model jobs only when model.min_icc filters on it."""
    return STABILITY_TARGETS if config["model"]["min_icc"] is not None else []


# The IBSI check runs only where its data is (rule ibsi_compliance is defined regardless).
IBSI_DIR = Path(config["ibsi"] or "ibsi-not-configured")
IBSI_VARIANTS = ["", "_3d_merged", "_2_5d", "_2_5d_merged", "_2d", "_2d_merged"]
IBSI_TARGETS = (
    ["results/tables/ibsi_compliance.csv"]
    if (IBSI_DIR / "ibsi_1_digital_phantom").is_dir()
    else []
)


def study_dir(wildcards):
    return ROWS[wildcards.subject]["dicom"]


def series_pins(wildcards):
    """Series pinned in the sheet (series_<modality> columns): SeriesInstanceUID or folder."""
    row = ROWS[wildcards.subject]
    return {
        column.removeprefix("series_"): value
        for column, value in row.items()
        if column.startswith("series_") and value
    }


def truth_masks(wildcards):
    """Ground truth of a subject (the phantoms), when the config names a truth folder that has
    it: named inputs truth (the lesion mask) and, when present, truth_bone (normal bone).
    """
    if not config["truth"]:
        return {}
    folder = Path(config["truth"]) / wildcards.subject
    lesion, bone = folder / "lesion.nii.gz", folder / "bone.nii.gz"
    if not lesion.exists():
        return {}
    return {"truth": str(lesion)} | ({"truth_bone": str(bone)} if bone.exists() else {})


def user_masks(wildcards):
    """Masks given in the sheet (mask_<modality> columns), as named inputs mask_<modality>."""
    row = ROWS[wildcards.subject]
    return {
        column: value
        for column, value in row.items()
        if column.startswith("mask_") and value
    }


def optional_input_options(wildcards, input):
    """The command-line options of a segment job's optional inputs: --truth, --truth-bone and
    --mask <modality>=<path> per user mask."""
    options = []
    for name, path in input.items():
        if name.startswith("mask_"):
            options += ["--mask", f"{name.removeprefix('mask_')}={path}"]
        elif name.startswith("truth"):
            options += [f"--{name.replace('_', '-')}", path]
    return shlex.join(options)


def radiomics_params(wildcards):
    return config["radiomics"][wildcards.modality]


def sheet_column(column):
    return {s: ROWS[s][column] for s in SUBJECTS}


def clinical_covariates():
    present = [c for c in CLINICAL_COLUMNS if c in samples.columns]
    return {s: {c: ROWS[s][c] for c in present} for s in SUBJECTS} if present else {}


def table_provenance():
    return {"config_sha256": config_hash(config), "seed": config["model"]["seed"]}
