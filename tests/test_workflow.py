"""End to end: the real Snakemake workflow on a tiny synthetic cohort, checked by content.

One run (module-scoped) feeds every assertion: geometry and values of the NIfTI files against the
DICOM they came from, masks on each modality's own grid, features, the model tables and the
report; then a second invocation must find nothing to do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from calcirad.phantom import write_cohort

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
N_SUBJECTS = 9  # three per label: the smallest cohort that supports 3-fold outer CV per task


def _snakemake(run_dir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        *SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(run_dir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *extra,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("e2e")
    cohort = write_cohort(n=N_SUBJECTS, seed=7, out=base / "cohort", size="demo", jobs=2)
    config = {
        "samples": str(cohort / "samples.tsv"),
        "truth": str(cohort / "truth"),
        "model": {
            "tasks": ["tc_vs_sarcoma", "tc_vs_mimics"],
            "feature_sets": ["ct", "mr", "pet", "all"],
            "models": ["logreg_elasticnet"],
            "cv": {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 200},
        },
    }
    config_path = base / "test_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = base / "run"
    run_dir.mkdir()
    first = _snakemake(run_dir, config_path)
    assert first.returncode == 0, first.stderr[-5000:]
    report = _snakemake(run_dir, config_path, "--report", str(run_dir / "results/report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    again = _snakemake(run_dir, config_path, "-n")
    return {
        "cohort": cohort,
        "results": run_dir / "results",
        "config": config_path,
        "run_dir": run_dir,
        "again": again,
        "samples": pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str),
        "truth": pd.read_csv(cohort / "truth" / "labels.tsv", sep="\t", dtype={"subject": str}),
    }


def _dicom_series(study: Path) -> dict[str, list[pydicom.Dataset]]:
    """The phantom's series of one subject by modality, read independently of calcirad."""
    by_modality: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(study.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        key = {"CT": "ct", "PT": "pet", "MR": "mr"}[ds.Modality]
        if key == "mr":
            key = "t1" if float(ds.EchoTime) < 40 else "t2"
        by_modality.setdefault(key, []).append(ds)
    return by_modality


def test_nifti_matches_dicom_geometry_and_values(run):
    subject = run["samples"].subject.iloc[0]
    study = run["cohort"] / run["samples"].dicom.iloc[0]
    series = _dicom_series(study)
    for modality, datasets in series.items():
        image = nib.load(run["results"] / "nifti" / subject / f"{modality}.nii.gz")
        first = datasets[0]
        assert image.shape[:2] in {(first.Columns, first.Rows), (first.Rows, first.Columns)}
        assert image.shape[2] == len(datasets), modality
        # The first slice's corner voxel centre, RAS in the NIfTI, must be one of the DICOM
        # slices' ImagePositionPatient (LPS): flip x and y.
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        positions_ras = positions * np.array([-1, -1, 1])
        corners = (
            image.affine
            @ np.array(
                [
                    [0, 0, 0, 1],
                    [0, image.shape[1] - 1, 0, 1],
                    [image.shape[0] - 1, 0, 0, 1],
                    [image.shape[0] - 1, image.shape[1] - 1, 0, 1],
                ]
            ).T
        )
        nearest = np.min(np.linalg.norm(positions_ras[:, None, :] - corners[:3].T[None], axis=2))
        assert nearest < 0.01, f"{modality}: no slice origin within 0.01 mm of a volume corner"
    ct = nib.load(run["results"] / "nifti" / subject / "ct.nii.gz").get_fdata()
    assert ct.min() >= -1100 and ct.max() > 1000, "CT must be in HU with cortical bone"


def test_pet_is_in_suv_close_to_the_phantom_truth(run):
    for row in run["truth"].itertuples():
        pet = run["results"] / "nifti" / row.subject / "pet.nii.gz"
        if not pet.exists():
            continue
        values = nib.load(pet).get_fdata()
        mask = nib.load(run["results"] / "masks" / row.subject / "pet.nii.gz").get_fdata() > 0
        lesion_max = values[mask].max() if mask.any() else values.max()
        # Point-spread blur and noise move the measured maximum; body-weight SUV of soft tissue
        # is near 1, so Bq/ml left unscaled would be in the thousands.
        assert 0.3 * row.suvmax_true < lesion_max < 2.0 * row.suvmax_true + 1.0, row.subject


def test_masks_live_on_each_modality_grid(run):
    for subject in run["samples"].subject:
        for nifti in sorted((run["results"] / "nifti" / subject).glob("*.nii.gz")):
            mask = run["results"] / "masks" / subject / nifti.name
            if not mask.exists():
                continue
            image, lesion = nib.load(nifti), nib.load(mask)
            assert lesion.shape == image.shape[:3]
            np.testing.assert_allclose(lesion.affine, image.affine, atol=1e-3)
            assert set(np.unique(lesion.get_fdata())) <= {0.0, 1.0}


def test_segmentation_table_has_dice_against_truth(run):
    table = pd.read_csv(run["results"] / "tables" / "segmentation.csv", dtype={"subject": str})
    ct = table[table.modality == "ct"]
    assert len(ct) >= N_SUBJECTS - 1
    assert ct["dice"].between(0, 1).all()
    assert ct["dice"].median() > 0.5
    assert (ct["volume_ml"] > 0).all()


def test_feature_tables(run):
    features = run["results"] / "features"
    ct = pd.read_csv(features / "ct.csv", dtype={"subject": str})
    assert ct.columns[0] == "subject"
    assert ct.shape[0] >= N_SUBJECTS - 1 and ct.shape[1] > 20
    numeric = ct.drop(columns="subject")
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    wide = pd.read_csv(features / "all.csv", dtype={"subject": str})
    prefixes = {c.split("_", 1)[0] for c in wide.columns if c != "subject"}
    assert prefixes == {"ct", "t1", "t2", "pet"}
    assert (features / "provenance.json").exists()


def test_performance_table(run):
    table = pd.read_csv(run["results"] / "tables" / "performance.csv")
    expected = {
        "task",
        "feature_set",
        "model",
        "n_subjects",
        "auc",
        "auc_ci_low",
        "auc_ci_high",
        "balanced_accuracy",
    }
    assert expected <= set(table.columns)
    assert len(table) == 2 * 4
    assert set(table.task) == {"tc_vs_sarcoma", "tc_vs_mimics"}
    assert set(table.feature_set) == {"ct", "mr", "pet", "all"}
    assert table.auc.between(0, 1).all()
    assert (table.auc_ci_low <= table.auc).all() and (table.auc <= table.auc_ci_high).all()
    assert (table.n_subjects[table.task == "tc_vs_mimics"] >= N_SUBJECTS - 1).all()
    md = (run["results"] / "tables" / "performance.md").read_text()
    assert "tc_vs_sarcoma" in md and "|" in md
    assert (run["results"] / "tables" / "performance.tex").read_text().count("\\\\") >= 8


def test_inventory_failures_cohort_and_report(run):
    inventory = pd.read_csv(run["results"] / "tables" / "series_inventory.csv", dtype=str)
    assert set(inventory.subject) == set(run["samples"].subject)
    assert {"ct", "t1", "t2", "pet"} <= set(inventory.modality)
    assert (run["results"] / "tables" / "failures.csv").exists()
    for subject in run["samples"].subject:
        png = run["results"] / "qc" / f"{subject}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run["results"] / "report.html").read_text(errors="replace")
    assert "performance" in html


def test_second_run_has_nothing_to_do(run):
    assert run["again"].returncode == 0
    assert "Nothing to be done" in run["again"].stdout + run["again"].stderr


IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
)


def _identifiers(cohort: Path) -> set[str]:
    """Every identifying header value of the cohort, as written and as a person would write it."""
    values: set[str] = set()
    for path in sorted(cohort.rglob("IM0001.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in IDENTIFYING_TAGS:
            value = str(ds.get(tag, "") or "")
            values.add(value)
            parts = [p for p in value.split("^") if p and p != "Dr"]
            if len(parts) >= 2:  # "Moreau^Claire" also as "Claire Moreau" and "Moreau, Claire"
                values.update({f"{parts[1]} {parts[0]}", f"{parts[0]}, {parts[1]}"})
    return {v for v in values if len(v) >= 4}


def _pattern(value: str) -> re.Pattern:
    """A value as a whole token: a 7-digit MRN inside a longer number (a UID) is no leak."""
    return re.compile(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])")


def test_no_patient_identifier_reaches_results_or_logs(run):
    import gzip

    identifiers = _identifiers(run["cohort"])
    assert len(identifiers) > 3 * N_SUBJECTS  # the phantom does write identifying-looking values
    patterns = [_pattern(v) for v in sorted(identifiers)]
    leaks = []
    for folder in ("results", "logs"):
        for path in sorted((run["run_dir"] / folder).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.suffix == ".gz":
                data += gzip.decompress(data)
            text = data.decode("latin-1")
            leaks += [(str(path), p.pattern) for p in patterns if p.search(text)]
    assert not leaks, leaks[:10]
