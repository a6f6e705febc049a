"""Bad input, built for real: one Snakemake run over a phantom cohort broken in the ways real
cohorts are (issue 9), plus sheet and config errors that must stop the run before any job.

The run's contract, checked per case: the broken subject gets a row in results/tables/failures.csv
(subject, stage, modality, reason) whose reason names the subject, the series and the file and
says what to do; it is left out downstream and counted in the cohort table; every other subject
completes. Every case is broken with pydicom/nibabel after the phantom wrote a clean cohort, so
the test does not depend on how the phantom writes its files.
"""

from __future__ import annotations

import json
import os
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
from pydicom.uid import generate_uid

from calcirad.phantom import write_cohort
from calcirad.steps.model import run_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Folder name with non-ASCII letters, spaces and a dash: must go through like any other.
ODD_FOLDER = "Patiënt 02 – çà"


def snakemake(run_dir: Path, config: Path, *extra: str, timeout: int = 1200):
    command = [
        *(sys.executable, "-m", "snakemake"),
        *("--snakefile", str(REPO / "Snakefile"), "--directory", str(run_dir)),
        *("--configfile", str(config), "--cores", "2", "--profile", str(REPO / "profiles/local")),
        *extra,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def small_config(*, samples: Path, modalities: list[str], **model) -> dict:
    """A config for a fast run: listed modalities only, one task, one model, no IBSI check."""
    radiomics = {"ct": "ct", "t1": "mr", "t2": "mr", "pet": "pet"}
    config = {
        "samples": str(samples),
        "truth": None,
        "ibsi": None,
        "modalities": modalities,
        "radiomics": {m: str(REPO / f"config/radiomics/{radiomics[m]}.yaml") for m in modalities},
        "model": {
            "tasks": model.get("tasks", ["tc_vs_mimics"]),
            "feature_sets": model.get("feature_sets", ["ct"]),
            "models": ["logreg_elasticnet"],
            "cv": {"outer_folds": model.get("outer_folds", 2), "outer_repeats": 1,
                   "inner_folds": 2, "bootstrap": 100},
            "n_permutations": 0,
        },
    }  # fmt: skip
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    if "stability" in schema.get("properties", {}):  # feature stability: not what is tested here
        config["stability"] = {"subjects": 0}
    return config


def series_files(study: Path, modality: str) -> list[Path]:
    """The DICOM files of one series of the study, found by the Modality tag (and T1 by name)."""
    found = []
    for path in sorted(study.rglob("*")):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        tag = ds.get("Modality")  # None for a file an earlier breaker cut short
        description = str(ds.get("SeriesDescription", "")).upper()
        if modality == "ct" and tag == "CT":
            found.append(path)
        elif modality == "pet" and tag == "PT":
            found.append(path)
        elif modality == "t1" and tag == "MR" and "T1" in description:
            if not any(k in description for k in ("POST", "GD", "+C", "T1C")):
                found.append(path)
    folders = {p.parent for p in found}
    assert len(folders) == 1, (modality, folders)
    return sorted(
        found,
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )


# ------------------------------------------------------------------------------------ breakers


def truncate_pixels(study: Path) -> str:
    """A CT slice cut in half (an interrupted copy): header fine, pixel data short."""
    files = series_files(study, "ct")
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim.name


def truncate_header(study: Path) -> str:
    """A PET slice cut inside its header: it cannot even be grouped into its series."""
    files = series_files(study, "pet")
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:300])
    return victim.name


def remove_slice(study: Path) -> tuple[str, str]:
    """A PET series missing one slice in the middle: returns the two neighbours' file names."""
    files = series_files(study, "pet")
    middle = len(files) // 2
    files[middle].unlink()
    return files[middle - 1].name, files[middle + 1].name


def interleave_series(study: Path) -> str:
    """A second CT series (every other slice, another SeriesInstanceUID) in the CT's folder,
    its files named to sort among the first series' files."""
    files = series_files(study, "ct")
    series_uid = generate_uid()
    for path in files[::2]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = 12
        # No classification keyword (the rule "bone"/"standard" would outrank slice count).
        ds.SeriesDescription = "PELVIS 6.0 RECON"
        ds.save_as(path.with_name(f"{path.stem}b{path.suffix}"))  # IM0001.dcm, IM0001b.dcm, ...
    return series_uid


def drop_weight(study: Path) -> None:
    for path in series_files(study, "pet"):
        ds = pydicom.dcmread(path)
        del ds.PatientWeight
        ds.save_as(path)


def foreign_frame(study: Path) -> None:
    """T1 in its own frame of reference (another session), positions unchanged."""
    frame = generate_uid()
    for path in series_files(study, "t1"):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame
        ds.save_as(path)


def off_grid_mask(truth: Path, out: Path) -> Path:
    """The subject's true lesion mask moved 2 m away: its grid overlaps no series of the study."""
    image = nib.load(truth)
    affine = image.affine.copy()
    affine[:3, 3] += 2000.0
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), out)
    return out


# ------------------------------------------------------------------------------------ the run


# Roles, from the largest lesion to the smallest: the cases that exclude a whole subject get the
# smallest lesions (too small for texture features on some grids anyway); several cases on
# different modalities share a subject to keep the run short.
ROLES = (
    "good",
    "interleaved_odd_folder",  # two CT series in one folder, non-ASCII folder name with spaces
    "header_and_frame",  # a PET file cut in its header; T1 in another frame of reference
    "missing_slice",  # PET
    "no_weight",  # PET
    "truncated_ct",
    "off_grid_mask",
)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad_input")
    cohort = write_cohort(n=len(ROLES), seed=21, out=base / "cohort", size="demo", jobs=2)
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str)
    truth = pd.read_csv(cohort / "truth/labels.tsv", sep="\t", dtype={"subject": str})
    by_volume = truth.sort_values("lesion_volume_ml", ascending=False)
    roles = dict(zip(ROLES, by_volume.subject, strict=True))
    assert (by_volume.lesion_volume_ml.iloc[:5] > 5).all(), by_volume  # features need a lesion
    study = {s: cohort / d for s, d in zip(sheet.subject, sheet.dicom, strict=True)}
    facts: dict = {
        f"series_{m}": f"series {pydicom.dcmread(series_files(study[roles['good']], m)[0]).SeriesNumber} "
        for m in ("ct", "t1", "pet")
    }
    facts["truncated_ct"] = truncate_pixels(study[roles["truncated_ct"]])
    facts["truncated_header"] = truncate_header(study[roles["header_and_frame"]])
    foreign_frame(study[roles["header_and_frame"]])
    facts["missing_slice"] = remove_slice(study[roles["missing_slice"]])
    facts["interleaved"] = interleave_series(study[roles["interleaved_odd_folder"]])
    drop_weight(study[roles["no_weight"]])
    odd = study[roles["interleaved_odd_folder"]].with_name(ODD_FOLDER)
    study[roles["interleaved_odd_folder"]].rename(odd)
    sheet.loc[sheet.subject == roles["interleaved_odd_folder"], "dicom"] = f"dicom/{ODD_FOLDER}"
    # Every subject brings its CT mask (the phantom truth): no automatic segmentation, which is
    # slow and tested elsewhere; one mask lies on a grid far from every series.
    sheet["mask_ct"] = [f"truth/{s}/lesion.nii.gz" for s in sheet.subject]
    off = off_grid_mask(
        cohort / "truth" / roles["off_grid_mask"] / "lesion.nii.gz", cohort / "off_grid.nii.gz"
    )
    sheet.loc[sheet.subject == roles["off_grid_mask"], "mask_ct"] = off.name
    sheet.to_csv(cohort / "samples.tsv", sep="\t", index=False)
    # Four outer folds for classes of at most three: the small-class guard must act.
    config = small_config(
        samples=cohort / "samples.tsv",
        modalities=["ct", "t1", "pet"],
        tasks=["tc_vs_sarcoma"],
        outer_folds=4,
    )
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    run_dir = base / "run"
    run_dir.mkdir()
    result = snakemake(run_dir, config_path)
    results = run_dir / "results"
    failures = pd.read_csv(results / "tables/failures.csv", dtype=str, keep_default_na=False)
    return {
        "run": result,
        "results": results,
        "roles": roles,
        "facts": facts,
        "sheet": sheet,
        "failures": failures,
        "cohort": cohort,
    }


def failure_of(broken: dict, role: str) -> pd.DataFrame:
    return broken["failures"][broken["failures"].subject == broken["roles"][role]]


def features_of(broken: dict, modality: str) -> set[str]:
    table = pd.read_csv(broken["results"] / f"features/{modality}.csv", dtype={"subject": str})
    return set(table.subject)


def test_the_run_finishes_despite_every_broken_subject(broken):
    """Failures are data: the run exits 0 and writes every final table."""
    assert broken["run"].returncode == 0, broken["run"].stderr[-5000:]
    for table in ("failures", "cohort", "performance", "series_inventory", "segmentation"):
        assert (broken["results"] / f"tables/{table}.csv").stat().st_size > 0


def test_good_subjects_complete_with_every_modality(broken):
    good = [broken["roles"][r] for r in ("good", "interleaved_odd_folder")]
    assert not set(good) & set(broken["failures"].subject)
    for modality in ("ct", "t1", "pet"):
        assert set(good) <= features_of(broken, modality), modality
        for subject in good:
            assert (broken["results"] / f"masks/{subject}/{modality}.nii.gz").exists()


def test_truncated_pixel_data_names_the_file_and_excludes_the_subject(broken):
    rows = failure_of(broken, "truncated_ct")
    convert = rows[rows.stage == "convert"]
    assert list(convert.modality) == ["ct"]
    reason = convert.reason.iloc[0]
    subject = broken["roles"]["truncated_ct"]
    assert f"subject {subject}" in reason and broken["facts"]["series_ct"] in reason
    assert f"file {broken['facts']['truncated_ct']}" in reason
    assert "pixel data" in reason and "re-copy or re-export" in reason
    # Without its CT there is no lesion mask: no features on any modality, counted once per stage.
    assert set(rows.stage) == {"convert", "segment"}
    for modality in ("ct", "t1", "pet"):
        assert subject not in features_of(broken, modality)


def test_unreadable_header_is_reported_not_skipped(broken):
    """A file cut inside its header used to vanish from discovery: the PET would have lost a
    slice without a word. Now the series is refused, naming the file."""
    rows = failure_of(broken, "header_and_frame")
    rows = rows[rows.stage == "ingest"]
    assert list(rows.modality) == ["pet"]
    reason = rows.reason.iloc[0]
    assert f"subject {broken['roles']['header_and_frame']}" in reason
    assert f"file {broken['facts']['truncated_header']}" in reason
    assert (
        broken["facts"]["series_pet"] in reason
        and "unreadable header" in reason
        and "re-export" in reason
    )
    inventory = pd.read_csv(broken["results"] / "tables/series_inventory.csv", dtype=str)
    mine = inventory[inventory.subject == broken["roles"]["header_and_frame"]]
    assert (mine.modality == "unreadable").sum() == 1
    assert not (
        broken["results"] / f"nifti/{broken['roles']['header_and_frame']}/pet.nii.gz"
    ).exists()
    assert broken["roles"]["header_and_frame"] in features_of(broken, "ct")
    assert broken["roles"]["header_and_frame"] not in features_of(broken, "pet")


def test_missing_slice_names_the_gap_and_keeps_the_other_modalities(broken):
    rows = failure_of(broken, "missing_slice")
    assert list(zip(rows.stage, rows.modality, strict=True)) == [("convert", "pet")]
    before, after = broken["facts"]["missing_slice"]
    reason = rows.reason.iloc[0]
    assert "missing slices" in reason and before in reason and after in reason
    assert f"subject {broken['roles']['missing_slice']}" in reason
    assert broken["facts"]["series_pet"] in reason
    assert "re-export the complete series" in reason
    subject = broken["roles"]["missing_slice"]
    assert subject in features_of(broken, "ct") and subject not in features_of(broken, "pet")


def test_two_series_in_one_folder_are_told_apart(broken):
    inventory = pd.read_csv(broken["results"] / "tables/series_inventory.csv", dtype=str)
    ct = inventory[
        (inventory.subject == broken["roles"]["interleaved_odd_folder"])
        & (inventory.modality == "ct")
    ]
    assert len(ct) == 2 and ct.folder.nunique() == 1
    chosen = ct[ct.chosen == "True"]
    assert len(chosen) == 1 and chosen.series_uid.iloc[0] != broken["facts"]["interleaved"]
    assert "not chosen" in ct[ct.chosen == "False"].reason.iloc[0]


def test_pet_without_weight_fails_that_series_only(broken):
    rows = failure_of(broken, "no_weight")
    assert list(zip(rows.stage, rows.modality, strict=True)) == [("convert", "pet")]
    reason = rows.reason.iloc[0]
    assert "PatientWeight" in reason and broken["facts"]["series_pet"] in reason
    assert " -> " in reason
    subject = broken["roles"]["no_weight"]
    assert subject in features_of(broken, "ct") and subject in features_of(broken, "t1")
    assert not (broken["results"] / f"nifti/{subject}/pet.nii.gz").exists()


def test_mr_in_another_frame_of_reference_is_registered_to_the_ct(broken):
    """The T1 of another session (its own FrameOfReferenceUID; here the patient did not move) is
    registered to the CT by mutual information, not carried by coordinates that mean nothing; the
    transform is kept beside the masks and is the identity over the lesion within half a T1 slice
    (mutual information between a 1-3 mm CT and 4-6 mm MR slices; a known shift between
    comparable grids is recovered within 1 mm in test_segment)."""
    subject = broken["roles"]["header_and_frame"]
    rows = failure_of(broken, "header_and_frame")
    assert "t1" not in set(rows[rows.stage == "segment"].modality)
    masks = broken["results"] / f"masks/{subject}"
    record = json.loads((masks / "segmentation.json").read_text())
    assert record["modalities"]["t1"]["registered"] == "t1_to_ct.tfm"
    transform = sitk.ReadTransform(str(masks / "t1_to_ct.tfm"))
    ct_mask = sitk.ReadImage(str(masks / "ct.nii.gz"))
    lesion = np.argwhere(sitk.GetArrayFromImage(ct_mask) > 0)
    t1_mask = sitk.ReadImage(str(masks / "t1.nii.gz"))
    half_slice = max(t1_mask.GetSpacing()) / 2
    for index in lesion[:: max(len(lesion) // 50, 1)]:
        point = ct_mask.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
        moved = np.subtract(transform.TransformPoint(point), point)
        assert np.linalg.norm(moved) <= half_slice, moved
    assert sitk.GetArrayViewFromImage(t1_mask).any()
    assert (masks / "muscle_t1.nii.gz").exists()
    assert subject in features_of(broken, "ct") and subject in features_of(broken, "t1")


def test_mask_on_no_series_grid_is_a_segmentation_failure(broken):
    rows = failure_of(broken, "off_grid_mask")
    assert list(rows.stage) == ["segment"]
    reason = rows.reason.iloc[0]
    assert "no voxel inside the reference image" in reason and "off_grid.nii.gz" in reason
    assert f"subject {broken['roles']['off_grid_mask']}" in reason and " -> " in reason
    for modality in ("ct", "t1", "pet"):
        assert broken["roles"]["off_grid_mask"] not in features_of(broken, modality)


def test_exclusions_are_counted_in_the_cohort_table(broken):
    cohort = pd.read_csv(broken["results"] / "tables/cohort.csv", dtype=str).set_index(
        "characteristic"
    )
    excluded = {i: row["all"] for i, row in cohort.iterrows() if i.startswith("Excluded")}
    # Each failure stage counts its subjects once: convert (truncated CT, missing slice, no
    # weight), segment (no CT, off-grid mask), ingest (unreadable header).
    failures = broken["failures"]
    assert set(failures.stage) >= {"ingest", "convert", "segment"}
    for stage, subjects in failures.groupby("stage").subject:
        label = next(k for k in excluded if f" {stage}" in k)
        assert int(excluded[label].split()[0]) == subjects.nunique(), (stage, excluded)
    # "available" means features were extracted: failed or excluded series do not count.
    for modality in ("ct", "t1", "pet"):
        available = cohort.loc[f"{modality.upper()} available, n (%)", "all"]
        assert int(available.split()[0]) == len(features_of(broken, modality)), modality


def test_a_class_smaller_than_the_outer_folds_is_reported(broken):
    """Four outer folds asked for, at most two subjects per class left: the row is reported
    with the reason (folds reduced, or not estimable), the run does not fail."""
    labels = broken["sheet"].set_index("subject").label
    kept = labels[labels.index.isin(features_of(broken, "ct"))]
    smallest = kept[kept.isin(["tc", "sarcoma"])].value_counts().min()
    assert smallest < 4
    path = broken["results"] / "models/tc_vs_sarcoma/ct/logreg_elasticnet.json"
    model = yaml.safe_load(path.read_text())
    warnings = " ".join(model["warnings"])
    assert (
        f"smallest class has {smallest} subjects < 4 folds" in warnings
        or "stratified CV needs at least 2 per class" in warnings
    ), warnings
    performance = pd.read_csv(broken["results"] / "tables/performance.csv")
    assert len(performance) == 1 and performance.n_warnings.iloc[0] >= 1
    if model.get("status") == "not_estimable":
        assert performance.auc.isna().all()
    else:
        assert 0 <= performance.auc.iloc[0] <= 1


def test_no_temporary_or_partial_file_is_left(broken):
    leftovers = [p for p in broken["results"].rglob("*") if ".tmp" in p.name]
    assert not leftovers


def _model(features: pd.DataFrame, labels: dict, out: Path) -> dict:
    features.to_csv(out.with_suffix(".csv"), index=False)
    settings = yaml.safe_load((REPO / "config/config.yaml").read_text())["model"]
    settings.pop("min_icc", None)
    settings["cv"].update(outer_folds=2, outer_repeats=1, inner_folds=2, bootstrap=100)
    return run_model(
        features_csv=out.with_suffix(".csv"),
        labels=labels,
        sites=dict.fromkeys(labels, "A"),
        clinical={},
        task="tc_vs_sarcoma",
        feature_set="ct",
        model="logreg_elasticnet",
        settings=settings,
        out_json=out.with_suffix(".json"),
    )


def test_all_nan_and_empty_feature_columns_change_nothing(broken, tmp_path):
    """The run's real CT features (each subject four times, 2% noise, so nested CV has enough
    subjects) with and without a column of NaN and a column of blanks: same model, same AUC."""
    table = pd.read_csv(broken["results"] / "features/all.csv", dtype={"subject": str})
    table = table[["subject", *[c for c in table.columns if c.startswith("ct_")]]].dropna()
    labels_of = broken["sheet"].set_index("subject").label
    table = table[labels_of.reindex(table.subject).isin(["tc", "sarcoma"]).to_numpy()]
    rng = np.random.default_rng(0)
    copies = []
    for k in range(4):
        copy = table.copy()
        copy["subject"] = copy.subject + f"x{k}"
        numbers = copy.columns[1:]
        copy[numbers] = copy[numbers] * (1 + 0.02 * rng.standard_normal(copy[numbers].shape))
        copies.append(copy)
    clean = pd.concat(copies, ignore_index=True).copy()  # one block: no fragmentation warning
    labels = {s: labels_of[s.rsplit("x", 1)[0]] for s in clean.subject}
    junk = clean.assign(ct_zz_all_nan=np.nan, ct_zz_blank="")
    reference = _model(clean, labels, tmp_path / "clean")
    result = _model(junk, labels, tmp_path / "junk")
    assert reference["auc"] is not None, reference.get("warnings")
    assert result["n_subjects"] == reference["n_subjects"] == len(clean)
    assert result["auc"] == pytest.approx(reference["auc"])
    assert not {"ct_zz_all_nan", "ct_zz_blank"} & {f["feature"] for f in result["top_features"]}


# ------------------------------------------------------------------------ sheet and config errors


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Study folders for a sheet: two inside the data root, one outside."""
    base = tmp_path_factory.mktemp("sheet_errors")
    for subject in ("S01", "S02", "S03"):
        (base / "data" / subject).mkdir(parents=True)
    (base / "elsewhere" / "S04").mkdir(parents=True)
    return base


def _stopped_before_any_job(base: Path, name: str, config: dict) -> str:
    """Run (for real, not dry) and return the output; nothing may have been started."""
    run_dir = base / name
    run_dir.mkdir()
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(run_dir, path, timeout=300)
    assert result.returncode != 0
    assert not (run_dir / "results").exists() and not (run_dir / "logs").exists()
    return result.stdout + result.stderr


def test_sheet_errors_stop_the_run_before_any_job_naming_row_subject_and_column(small_cohort):
    """Every problem of the sheet in one message, before Snakemake starts anything."""
    sheet = small_cohort / "samples.tsv"
    rows = [
        "S01\ttc\tA\tdata/S01",  # fine
        "S02\tmimic\tA\tdata/nowhere",  # missing folder
        "S01\tsarcoma\tA\tdata/S03",  # duplicate ID
        "S03\ttumour\tA\tdata/S03",  # unknown label
        "S04\tmimic\tA\telsewhere/S04",  # outside data_root
        "S 05\ttc\tA\tdata/S02",  # an ID that cannot name files
    ]
    sheet.write_text("subject\tlabel\tsite\tdicom\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = small_config(samples=sheet, modalities=["ct"])
    config["data_root"] = str(small_cohort / "data")
    output = _stopped_before_any_job(small_cohort, "sheet_run", config)
    expected = [
        f"sample sheet {sheet}",
        "row 2 (subject S02): DICOM folder 'data/nowhere' does not exist (column `dicom`)",
        "subject 'S01' appears on rows 1, 3: IDs must be unique",
        "row 4 (subject S03): label 'tumour' is not one of tc, sarcoma, mimic",
        "row 5 (subject S04): DICOM folder 'elsewhere/S04' is outside data_root",
        "row 6 (subject S 05): subject ID 'S 05' must start with a letter or digit",
    ]
    missing = [line for line in expected if line not in output]
    assert not missing, (missing, output[-3000:])


def test_config_typo_stops_the_run_naming_the_key(small_cohort):
    sheet = small_cohort / "ok.tsv"
    sheet.write_text("subject\tlabel\tsite\tdicom\nS01\ttc\tA\tdata/S01\n", encoding="utf-8")
    config = small_config(samples=sheet, modalities=["ct"])
    config["segmentaton"] = {"threshold_hu": 200}
    output = _stopped_before_any_job(small_cohort, "typo_run", config)
    assert "segmentaton" in output and "Additional properties are not allowed" in output


def test_odd_folder_name_leaves_no_trace_in_results(broken):
    """The folder name is the researcher's, not an output name: results use the subject ID."""
    hits = []
    for path in broken["results"].rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".md", ".tex"}:
            if ODD_FOLDER in path.read_text(encoding="utf-8", errors="replace"):
                hits.append(path)
    assert not hits, hits[:5]
