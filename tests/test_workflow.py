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
import SimpleITK as sitk
import yaml

from calcirad.phantom import write_cohort

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Four per label: nested 3-fold outer / 2-fold inner CV still has two of each class in every
# inner split after one exclusion per label.
N_SUBJECTS = 12


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


STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsi_sts_sample" / "dicom"
STS_PATIENTS = ("STS_001", "STS_002", "STS_003")
STS_MASKS = {"ct": "CT", "t1": "MR_T1", "pet": "PET"}


def _sheet(cohort: Path, out: Path) -> pd.DataFrame:
    """The phantom cohort's sheet, plus the real sarcoma patients (RTSTRUCT masks) when present.

    The real patients are mixed into the same run on purpose: their features must land in the
    same tables as the phantoms'.
    """
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str)
    sheet["dicom"] = [str(cohort / d) for d in sheet["dicom"]]
    if STS.is_dir():
        rows = [
            {
                "subject": patient.replace("_", ""),
                "label": "sarcoma",
                "site": "sts",
                "dicom": str(STS / patient),
                **{
                    f"mask_{m}": str(STS / patient / f / "mask" / "RS.dcm")
                    for m, f in STS_MASKS.items()
                },
            }
            for patient in STS_PATIENTS
        ]
        sheet = pd.concat([sheet, pd.DataFrame(rows)], ignore_index=True)
    sheet.to_csv(out, sep="\t", index=False)
    return sheet


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("e2e")
    cohort = write_cohort(n=N_SUBJECTS, seed=7, out=base / "cohort", size="demo", jobs=2)
    sheet = _sheet(cohort, base / "samples.tsv")
    # PET's parameter file is a copy, so the rerun-scope test can edit it.
    radiomics = {
        m: str(REPO / "config" / "radiomics" / f"{f}.yaml")
        for m, f in (("ct", "ct"), ("t1", "mr"), ("t2", "mr"))
    }
    radiomics["pet"] = str(base / "pet.yaml")
    (base / "pet.yaml").write_bytes((REPO / "config" / "radiomics" / "pet.yaml").read_bytes())
    config = {
        "samples": str(base / "samples.tsv"),
        "truth": str(cohort / "truth"),
        "radiomics": radiomics,
        "model": {
            "tasks": ["tc_vs_sarcoma", "tc_vs_mimics"],
            "feature_sets": ["ct", "mr", "pet", "all"],
            "models": ["logreg_elasticnet"],
            "cv": {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 200},
            "n_permutations": 3,
        },
        # Kept small for time: 4 subjects (one of them a real patient when present), CT and PET,
        # five perturbations.
        "stability": {
            "subjects": 4,
            "modalities": ["ct", "pet"],
            "perturbations": ["identity", "erode:1", "dilate:1", "shift:1,0,0", "shift:0,-1,0"],
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
        "base": base,
        "cohort": cohort,
        "results": run_dir / "results",
        "config": config,
        "config_path": config_path,
        "run_dir": run_dir,
        "again": again,
        "sheet": sheet,
        "samples": pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str),
        "truth": pd.read_csv(cohort / "truth" / "labels.tsv", sep="\t", dtype={"subject": str}),
    }


def _chosen_series(run, subject: str) -> dict[str, list[pydicom.Dataset]]:
    """The DICOM of each series the run chose for ``subject``, read independently of calcirad."""
    inventory = pd.read_csv(run["results"] / "tables" / "series_inventory.csv", dtype=str)
    chosen = inventory[(inventory.subject == subject) & (inventory.chosen == "True")]
    study = Path(run["sheet"].set_index("subject").loc[subject, "dicom"])
    return {
        row.modality: [pydicom.dcmread(p) for p in sorted((study / row.folder).glob("*.dcm"))]
        for row in chosen.itertuples()
    }


def test_series_are_classified_as_the_phantom_wrote_them(run):
    inventory = pd.read_csv(run["results"] / "tables" / "series_inventory.csv", dtype=str)
    chosen = inventory[inventory.chosen == "True"]
    phantom = chosen[chosen.subject.isin(run["samples"].subject)]
    expected = {"ct": "CT_2", "t1": "MR_T1_3", "t2": "MR_T2_4", "pet": "PET_5"}
    assert dict(zip(phantom.modality, phantom.folder, strict=False)) == expected
    assert len(phantom) == 4 * N_SUBJECTS


def test_nifti_matches_dicom_geometry_and_values(run):
    subject = run["samples"].subject.iloc[0]
    series = _chosen_series(run, subject)
    assert set(series) == {"ct", "t1", "t2", "pet"}
    for modality, datasets in series.items():
        image = nib.load(run["results"] / "nifti" / subject / f"{modality}.nii.gz")
        first = datasets[0]
        assert image.shape[:2] in {(first.Columns, first.Rows), (first.Rows, first.Columns)}
        assert image.shape[2] == len(datasets), modality
        # The first slice's corner voxel centre, RAS in the NIfTI, must be one of the DICOM
        # slices' ImagePositionPatient (LPS): flip x and y.
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        positions_ras = positions * np.array([-1, -1, 1])
        corners = image.affine @ np.array(
            [[0, 0, 0, 1], [0, image.shape[1] - 1, 0, 1], [image.shape[0] - 1, 0, 0, 1],
             [image.shape[0] - 1, image.shape[1] - 1, 0, 1]]
        ).T  # fmt: skip
        nearest = np.min(np.linalg.norm(positions_ras[:, None, :] - corners[:3].T[None], axis=2))
        assert nearest < 0.01, f"{modality}: no slice origin within 0.01 mm of a volume corner"
    ct = nib.load(run["results"] / "nifti" / subject / "ct.nii.gz").get_fdata()
    assert ct.min() >= -1100 and ct.max() > 1000, "CT must be in HU with cortical bone"


def test_pet_is_in_suv_close_to_the_phantom_truth(run):
    """PET conversion alone: the truth lesion (not the pipeline's mask) on the converted PET."""
    for row in run["truth"].itertuples():
        pet_path = run["results"] / "nifti" / row.subject / "pet.nii.gz"
        pet = sitk.ReadImage(str(pet_path))
        truth = sitk.ReadImage(str(run["cohort"] / "truth" / row.subject / "lesion.nii.gz"))
        on_pet = sitk.Resample(truth > 0, pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        inside = sitk.GetArrayFromImage(on_pet) > 0
        values = sitk.GetArrayFromImage(pet)
        lesion_max = values[inside].max() if inside.any() else values.max()
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


def test_every_subject_is_segmented_or_listed_as_a_failure(run):
    """Plumbing, not accuracy (bench/segmentation_eval.py measures that): every phantom subject
    has a CT mask with Dice and HD95 against its truth, or a row in failures.csv saying why."""
    table = pd.read_csv(run["results"] / "tables" / "segmentation.csv", dtype={"subject": str})
    ct = table[(table.modality == "ct") & table.subject.isin(run["samples"].subject)]
    failures = pd.read_csv(run["results"] / "tables" / "failures.csv", dtype={"subject": str})
    failed = failures[failures.stage == "segment"]
    assert set(ct.subject) | set(failed.subject) == set(run["samples"].subject)
    assert not set(ct.subject) & set(failed.subject)
    assert failed.reason.str.contains("threshold|mask|CT").all()
    assert len(ct) >= N_SUBJECTS // 2
    assert ct["dice"].between(0, 1).all() and (ct["hd95_mm"] >= 0).all()
    assert ct["dice"].median() > 0.5
    assert (ct["volume_ml"] > 0).all()
    # the phantom's normal bone inside each CT mask, in ml (the issue-5 target of at most 5 ml in
    # every mask is measured by bench/segmentation_eval.py and not yet met by every subject)
    assert (ct["bone_ml"] >= 0).all() and ct["bone_ml"].median() <= 1.0, ct[["subject", "bone_ml"]]


def test_feature_tables(run):
    features = run["results"] / "features"
    ct = pd.read_csv(features / "ct.csv", dtype={"subject": str})
    assert ct.columns[0] == "subject"
    assert ct.shape[0] >= N_SUBJECTS // 2 and ct.shape[1] > 20
    numeric = ct.drop(columns="subject")
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    wide = pd.read_csv(features / "all.csv", dtype={"subject": str})
    prefixes = {c.split("_", 1)[0] for c in wide.columns if c != "subject"}
    assert prefixes == {"ct", "t1", "t2", "pet"}
    assert (features / "provenance.json").exists()


def test_feature_stability_table(run):
    table = pd.read_csv(run["results"] / "tables" / "feature_stability.csv")
    assert list(table.columns) == [
        "modality", "feature", "icc", "icc_ci_low", "icc_ci_high", "n_subjects",
        "n_perturbations",
    ]  # fmt: skip
    assert set(table.modality) == {"ct", "pet"}
    assert (table.n_perturbations == 5).all() and table.n_subjects.between(2, 4).all()
    assert not table.duplicated(["modality", "feature"]).any()
    assert table.icc.notna().mean() > 0.8
    assert table.icc.dropna().between(-1, 1).all()
    # Volume differs between lesions far more than a one-voxel contour change alters it.
    icc = table.set_index(["modality", "feature"])["icc"]
    for modality in ("ct", "pet"):
        for feature in (
            "original_shape_VoxelVolume",
            "original_shape_MeshVolume",
            "conv_volume_ml",
        ):
            assert icc[modality, feature] > 0.9, (modality, feature, icc[modality, feature])


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
    # A row whose classes became too small for nested CV after exclusions is reported as not
    # estimable (no AUC, a warning) instead of failing the run; every task keeps estimable rows.
    estimable = table[table.auc.notna()]
    assert (table.loc[table.auc.isna(), "n_warnings"] >= 1).all()
    assert set(estimable.task) == {"tc_vs_sarcoma", "tc_vs_mimics"}
    assert estimable.auc.between(0, 1).all()
    assert (estimable.auc_ci_low <= estimable.auc).all()
    assert (estimable.auc <= estimable.auc_ci_high).all()
    assert (table.n_subjects[table.task == "tc_vs_mimics"] >= N_SUBJECTS // 2).all()
    assert (table.n_subjects <= len(run["sheet"])).all()
    md = (run["results"] / "tables" / "performance.md").read_text()
    assert "tc_vs_sarcoma" in md and "|" in md
    assert (run["results"] / "tables" / "performance.tex").read_text().count("\\\\") >= 8


def test_permutation_null_of_each_tasks_best_row(run):
    """The leakage guard ran on each task's best row: 3 permuted refits, AUCs in [0, 1], and the
    p-value on that row of the performance table."""
    tables = run["results"] / "tables"
    null = pd.read_csv(tables / "permutation_null.csv")
    performance = pd.read_csv(tables / "performance.csv")
    assert list(null.task) == ["tc_vs_sarcoma", "tc_vs_mimics"]
    assert (null.n_permutations == 3).all()
    for row in null.itertuples():
        task_rows = performance[performance.task == row.task]
        assert row.auc == pytest.approx(task_rows.auc.max())
        best = task_rows[
            (task_rows.feature_set == row.feature_set) & (task_rows.model == row.model)
        ]
        assert best.permutation_p.iloc[0] == pytest.approx(row.permutation_p)
        assert task_rows.permutation_p.notna().sum() == 1
        assert 0 <= row.null_auc_mean <= row.null_auc_max <= 1
        assert 1 / 4 <= row.permutation_p <= 1  # (1 + #null >= observed) / (1 + 3)
        png = run["results"] / "figures" / f"permutation_{row.task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inventory_failures_cohort_and_report(run):
    inventory = pd.read_csv(run["results"] / "tables" / "series_inventory.csv", dtype=str)
    assert set(inventory.subject) == set(run["sheet"].subject)
    assert {"ct", "t1", "t2", "pet"} <= set(inventory.modality)
    assert (run["results"] / "tables" / "failures.csv").exists()
    for subject in run["sheet"].subject:
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


def _pattern(values: set[str]) -> re.Pattern:
    """All values as whole tokens in one pattern (one pass per file): a 7-digit MRN inside a
    longer number (a UID) is no leak."""
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])")


def test_no_patient_identifier_reaches_results_or_logs(run):
    import gzip

    identifiers = _identifiers(run["cohort"])
    assert len(identifiers) > 3 * N_SUBJECTS  # the phantom does write identifying-looking values
    pattern = _pattern(identifiers)
    assert pattern.search(f"x {sorted(identifiers)[0]} y")  # the scan can find a leak
    leaks = []
    for folder in ("results", "logs"):
        for path in sorted((run["run_dir"] / folder).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.suffix == ".gz":
                data += gzip.decompress(data)
            leaks += [(str(path), m) for m in set(pattern.findall(data.decode("latin-1")))]
    assert not leaks, leaks[:10]


def test_real_sarcoma_patients_land_in_the_same_tables(run):
    """The three real STS patients: RTSTRUCT masks, PET already in SUV, no T2 series."""
    if not STS.is_dir():
        pytest.skip(f"real patients not found at {STS}")
    features = run["results"] / "features"
    real = [p.replace("_", "") for p in STS_PATIENTS]
    for modality in ("ct", "t1", "pet"):
        table = pd.read_csv(features / f"{modality}.csv", dtype={"subject": str})
        assert set(real) <= set(table.subject), modality
        assert set(run["samples"].subject) & set(table.subject), modality
    pet = pd.read_csv(features / "pet.csv", dtype={"subject": str}).set_index("subject")
    # Units GML: SUV as stored. Scaled again as if Bq/ml it would be about a thousandth of this.
    assert pet.loc[real, "conv_suv_max"].between(1.0, 60.0).all(), pet.loc[real, "conv_suv_max"]
    t2 = pd.read_csv(features / "t2.csv", dtype={"subject": str})
    assert not set(real) & set(t2.subject)
    segmentation = pd.read_csv(run["results"] / "tables" / "segmentation.csv", dtype=str)
    sources = segmentation[segmentation.subject.isin(real)]
    assert set(sources.source) == {"user"}
    assert set(sources.modality) == {"ct", "t1", "pet"}


def _planned(run, config: dict) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` plans against the completed run, for ``config``."""
    path = run["base"] / "changed_config.yaml"
    path.write_text(yaml.safe_dump(config))
    dry = _snakemake(run["run_dir"], path, "-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned: dict[str, int] = {}
    in_table = False
    for line in (dry.stdout + dry.stderr).splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(fields) == 2 and fields[1].isdigit():
            if fields[0] == "total":
                break
            planned[fields[0]] = int(fields[1])
    return planned


UPSTREAM = ("ingest", "convert", "segment", "qc")


def test_pet_parameter_change_reruns_only_pet_extraction_and_downstream(run):
    pet_file = Path(run["config"]["radiomics"]["pet"])
    original, stat = pet_file.read_text(), pet_file.stat()
    assert "binWidth: 0.25" in original
    try:
        pet_file.write_text(original.replace("binWidth: 0.25", "binWidth: 0.3"))
        planned = _planned(run, run["config"])
    finally:
        pet_file.write_text(original)
        os.utime(pet_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # PET jobs only: one per subject of the sheet (a subject without PET, or excluded upstream,
    # still has its PET job, which records why there are no features).
    assert planned["extract_features"] == len(run["sheet"])
    assert planned["features_table"] == 1
    assert planned["fit_model"] == 8 and planned["model_tables"] == 1
    assert not set(UPSTREAM) & set(planned), planned


MODELLING_AND_REPORTING = {
    "fit_model", "permutation_null", "model_tables", "figures", "cohort_table", "all",
}  # fmt: skip


def test_model_setting_change_reruns_only_modelling_and_reporting(run):
    config = yaml.safe_load(yaml.safe_dump(run["config"]))
    config["model"]["cv"]["bootstrap"] = 300
    planned = _planned(run, config)
    assert planned["fit_model"] == 8
    assert set(planned) <= MODELLING_AND_REPORTING, planned


def test_permutation_count_change_refits_no_row(run):
    config = yaml.safe_load(yaml.safe_dump(run["config"]))
    config["model"]["n_permutations"] = 5
    planned = _planned(run, config)
    assert planned["permutation_null"] == 2  # one per task: its best row, refitted
    assert "fit_model" not in planned
    assert set(planned) <= MODELLING_AND_REPORTING, planned


def test_stability_settings_rerun_only_stability_and_min_icc_only_models(run):
    config = yaml.safe_load(yaml.safe_dump(run["config"]))
    config["stability"]["perturbations"].append("shift:0,0,1")
    planned = _planned(run, config)
    assert planned["stability_features"] == 4 * 2  # subjects x modalities perturbed
    # No extraction, segmentation or model job; the result tables are rewritten only because
    # their provenance records a hash of the whole config.
    only = {"stability_features", "feature_stability", "model_tables", "cohort_table", "all"}
    assert set(planned) <= only, planned
    config = yaml.safe_load(yaml.safe_dump(run["config"]))
    config["model"]["min_icc"] = 0.75
    planned = _planned(run, config)
    assert planned["fit_model"] == 8
    assert set(planned) <= MODELLING_AND_REPORTING, planned


def test_segmentation_threshold_change_reruns_segmentation_not_conversion(run):
    config = yaml.safe_load(yaml.safe_dump(run["config"]))
    config["segmentation"] = {"threshold_hu": 170}
    planned = _planned(run, config)
    n_subjects = len(run["sheet"])
    assert planned["segment"] == n_subjects and planned["qc"] == n_subjects
    assert planned["extract_features"] == 4 * n_subjects  # every modality, absent ones too
    assert "ingest" not in planned and "convert" not in planned


def test_adding_a_subject_runs_only_its_chain_and_the_aggregates(run, tmp_path):
    extra = write_cohort(n=1, seed=99, out=tmp_path / "extra", size="demo", jobs=1)
    sheet = run["sheet"].copy()
    new = pd.read_csv(extra / "samples.tsv", sep="\t", dtype=str).assign(subject="NEW01")
    new["dicom"] = [str(extra / d) for d in new["dicom"]]
    path = run["base"] / "samples_plus_one.tsv"
    pd.concat([sheet, new], ignore_index=True).to_csv(path, sep="\t", index=False)
    config = {**run["config"], "samples": str(path)}
    planned = _planned(run, config)
    for rule in UPSTREAM:
        assert planned[rule] == 1, (rule, planned)
    assert planned["extract_features"] == 4
