"""Tests of the synthetic cohort generator (calcirad.phantom) and the ``calcirad phantom`` command."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from calcirad.cli import main
from calcirad.phantom import load_priors, plan_cohort, write_cohort

DCM2NIIX = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(n=3, seed=11, out=tmp_path_factory.mktemp("cohort"))


def _series(cohort: Path, subject: str, prefix: str) -> list[pydicom.Dataset]:
    folder = next((cohort / "dicom" / subject).glob(f"{prefix}_*"))
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path):
    a = write_cohort(n=2, seed=3, out=tmp_path / "a")
    b = write_cohort(n=2, seed=3, out=tmp_path / "b", jobs=2)
    c = write_cohort(n=2, seed=4, out=tmp_path / "c")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_and_tables(cohort):
    samples = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype={"subject": str})
    assert list(samples.columns) == [
        "subject", "label", "site", "dicom", "age", "sex", "eskd", "phosphate_mg_dl",
    ]  # fmt: skip
    assert list(samples.subject) == ["S001", "S002", "S003"]
    assert sorted(samples.label) == ["mimic", "sarcoma", "tc"]
    truth = pd.read_csv(cohort / "truth" / "labels.tsv", sep="\t")
    for column in ("subtype", "n_lesions", "lesion_volume_ml", "suvmax_true"):
        assert column in truth.columns
    truth = truth.set_index("subject")
    for row in samples.itertuples():
        study = cohort / row.dicom
        expected = ["CT_2", "MR_T1_3", "MR_T2_4", "PET_5"]
        if truth.loc[row.subject, "t1c"]:
            expected.insert(1, "MR_T1C_6")
        assert sorted(p.name for p in study.iterdir()) == expected
        assert (cohort / "truth" / row.subject / "lesion.nii.gz").exists()
        assert (cohort / "truth" / row.subject / "bone.nii.gz").exists()


@pytest.mark.parametrize("n", [3, 7, 36])
def test_labels_balanced_and_sites_spread(n):
    plans = plan_cohort(n=n, seed=1, priors=load_priors())
    counts = pd.Series([p.label for p in plans]).value_counts()
    assert counts.max() - counts.min() <= 1
    assert [p.subject for p in plans] == [f"S{i:03d}" for i in range(1, n + 1)]
    if n >= 36:
        assert pd.crosstab([p.label for p in plans], [p.site for p in plans]).min().min() >= 3


def test_study_shares_uids_and_identity_is_fake(cohort):
    for subject in ("S001", "S002", "S003"):
        series = [_series(cohort, subject, m)[0] for m in ("CT", "MR_T1", "MR_T2", "PET")]
        assert len({ds.StudyInstanceUID for ds in series}) == 1
        assert len({ds.FrameOfReferenceUID for ds in series}) == 1
        assert len({ds.SeriesInstanceUID for ds in series}) == 4
        ds = series[0]
        assert ds.PatientID.isdigit() and len(ds.PatientID) == 7
        for tag in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName"):
            assert subject not in str(ds.data_element(tag).value)
        assert "^" in str(ds.PatientName) and ds.PatientBirthDate and ds.PatientSex in ("M", "F")


def test_ct_and_mr_tags(cohort):
    ct = _series(cohort, "S001", "CT")
    assert ct[0].SOPClassUID == pydicom.uid.CTImageStorage
    assert ct[0].file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(ct[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] and float(ct[0].KVP) == 120
    assert ct[0].PixelRepresentation == 1 and float(ct[0].RescaleIntercept) == -1024
    z = [float(ds.ImagePositionPatient[2]) for ds in ct]
    assert np.allclose(np.diff(z), float(ct[0].SliceThickness))
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ct]
    )
    assert hu.min() >= -1024 and hu.max() > 1000  # air and cortex present
    assert ct[0].Rows <= 192 and len(ct) <= 64
    for prefix, tr, te in (("MR_T1", (400, 700), (8, 15)), ("MR_T2", (3000, 6000), (80, 110))):
        mr = _series(cohort, "S001", prefix)
        assert mr[0].SOPClassUID == pydicom.uid.MRImageStorage
        assert tr[0] <= float(mr[0].RepetitionTime) <= tr[1]
        assert te[0] <= float(mr[0].EchoTime) <= te[1]
        assert mr[0].PixelRepresentation == 0 and mr[0].Rows <= 160 and len(mr) <= 40
        assert float(mr[0].MagneticFieldStrength) in (1.5, 3.0)
        assert mr[0].PixelSpacing != ct[0].PixelSpacing or len(mr) != len(ct)


def _suv_volume(pet: list[pydicom.Dataset]) -> np.ndarray:
    """SUVbw from the tags, the way a downstream reader computes it."""
    first = pet[0]
    drug = first.RadiopharmaceuticalInformationSequence[0]
    injection = dt.datetime.strptime(drug.RadiopharmaceuticalStartDateTime[:14], "%Y%m%d%H%M%S")
    start = dt.datetime.strptime(first.SeriesDate + first.SeriesTime[:6], "%Y%m%d%H%M%S")
    decayed = float(drug.RadionuclideTotalDose) * 2 ** (
        -(start - injection).total_seconds() / float(drug.RadionuclideHalfLife)
    )
    bqml = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in pet]
    )
    return bqml * float(first.PatientWeight) * 1000.0 / decayed


def _pet_lesion_mask(cohort: Path, subject: str, pet: list[pydicom.Dataset]) -> np.ndarray:
    """Truth label map (CT grid) sampled at the PET voxel centres (nearest), LPS mm."""
    truth = nib.load(cohort / "truth" / subject / "lesion.nii.gz")
    labels = np.asarray(truth.dataobj)
    ras_to_ijk = np.linalg.inv(truth.affine)
    sx, sy = (float(v) for v in pet[0].PixelSpacing[::-1])
    x0, y0, _ = (float(v) for v in pet[0].ImagePositionPatient)
    mask = np.zeros((len(pet), pet[0].Rows, pet[0].Columns), bool)
    jj, ii = np.indices(mask.shape[1:])
    for k, ds in enumerate(pet):
        z = float(ds.ImagePositionPatient[2])
        lps = np.stack([x0 + ii * sx, y0 + jj * sy, np.full(ii.shape, z)])
        ras = np.stack([-lps[0], -lps[1], lps[2], np.ones(ii.shape)]).reshape(4, -1)
        ijk = np.rint(ras_to_ijk @ ras)[:3].astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(labels.shape)[:, None]), axis=0)
        flat = np.zeros(ii.size, bool)
        flat[ok] = labels[ijk[0, ok], ijk[1, ok], ijk[2, ok]] > 0
        mask[k] = flat.reshape(ii.shape)
    return mask


def test_pet_tags_and_suv(cohort):
    truth = pd.read_csv(cohort / "truth" / "labels.tsv", sep="\t", index_col="subject")
    for subject in ("S001", "S002", "S003"):
        pet = _series(cohort, subject, "PET")
        ds = pet[0]
        assert ds.SOPClassUID == pydicom.uid.PositronEmissionTomographyImageStorage
        assert ds.Units == "BQML" and ds.DecayCorrection == "START"
        assert {"DECY", "ATTN"} <= set(ds.CorrectedImage)
        drug = ds.RadiopharmaceuticalInformationSequence[0]
        assert drug.Radiopharmaceutical == "Fludeoxyglucose"
        assert float(drug.RadionuclideHalfLife) == pytest.approx(6586.2)
        assert 250e6 <= float(drug.RadionuclideTotalDose) <= 400e6
        assert float(ds.PixelSpacing[0]) == pytest.approx(4.0)
        assert len({float(d.RescaleSlope) for d in pet}) > 1  # per-slice scaling
        suv = _suv_volume(pet)
        lesion = _pet_lesion_mask(cohort, subject, pet)
        from scipy import ndimage

        near = ndimage.binary_dilation(lesion, iterations=1)
        expected = truth.loc[subject, "suvmax_true"]
        # counting noise pushes the observed maximum up a little; a wrong dose/decay/weight
        # factor would be off by far more
        assert suv[near].max() == pytest.approx(expected, rel=0.35)
        assert 0.2 < np.median(suv[suv > 0.3]) < 3.0  # background tissue SUV


def _dcm2niix_warnings(folder: Path, out: Path) -> list[str]:
    """Every line of dcm2niix's output that mentions a warning (none is allowed, PET included)."""
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [DCM2NIIX, "-z", "y", "-b", "y", "-ba", "y", "-f", "out", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in (run.stdout + run.stderr).splitlines() if "warning" in line.lower()]


def test_pet_patient_position_only_where_the_pet_iod_allows_it(cohort, tmp_path):
    """PatientPosition is forbidden at the top level of a PET image (its mandatory
    PatientOrientationCodeSequence is present); a private sequence item carries it, and dcm2niix
    (which reads (0018,5100) at any depth) then knows the position: no warning, HFS in the JSON."""
    pet = _series(cohort, "S001", "PET")
    assert "PatientPosition" not in pet[0]
    assert pet[0].PatientOrientationCodeSequence[0].CodeMeaning == "recumbent"
    block = pet[0].private_block(0x0009, "CALCIRAD PHANTOM")
    assert block[0x10].value[0].PatientPosition == "HFS"
    folder = next((cohort / "dicom" / "S001").glob("PET_*"))
    assert _dcm2niix_warnings(folder, tmp_path) == []
    assert json.loads((tmp_path / "out.json").read_text())["PatientPosition"] == "HFS"


@pytest.mark.skipif(not Path(DCM2NIIX).exists(), reason="dcm2niix not installed")
def test_dcm2niix_geometry_matches_truth(cohort, tmp_path):
    for prefix in ("CT", "MR_T1", "MR_T2", "PET"):
        folder = next((cohort / "dicom" / "S002").glob(f"{prefix}_*"))
        warnings = _dcm2niix_warnings(folder, tmp_path / prefix)
        assert not warnings, warnings
    ct = nib.as_closest_canonical(nib.load(tmp_path / "CT" / "out.nii.gz"))
    for name in ("lesion", "bone"):
        truth = nib.as_closest_canonical(nib.load(cohort / "truth" / "S002" / f"{name}.nii.gz"))
        assert truth.shape == ct.shape[:3]
        assert np.abs(truth.affine - ct.affine).max() < 0.01


def _ct_hu(cohort: Path, subject: str) -> np.ndarray:
    return np.stack(
        [
            d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
            for d in _series(cohort, subject, "CT")
        ]
    )


def _truth_zyx(cohort: Path, subject: str, name: str = "lesion") -> np.ndarray:
    """Truth map as (z, y, x) like the DICOM stack (SimpleITK wrote it unflipped: i=x, j=y, k=z)."""
    return np.asarray(nib.load(cohort / "truth" / subject / f"{name}.nii.gz").dataobj).transpose(
        2, 1, 0
    )


def test_entity_densities(tmp_path):
    out = write_cohort(n=2, seed=5, out=tmp_path, subtypes=["gout_tophus", "tc_inactive"])
    truth = pd.read_csv(out / "truth" / "labels.tsv", sep="\t", index_col="subject")
    for subject, row in truth.iterrows():
        hu, lesion = _ct_hu(out, subject), _truth_zyx(out, subject) > 0
        bone = _truth_zyx(out, subject, "bone") > 0
        assert lesion.any() and not (lesion & bone).any()
        assert hu[bone].mean() > 200
        if row.subtype == "gout_tophus":  # ~160 HU tophi, blurred towards the surroundings
            assert 60 < np.median(hu[lesion]) < 300
        else:  # dense inactive TC lobules
            assert np.percentile(hu[lesion], 90) > 400


def test_sediment_lies_posterior_with_flat_level(tmp_path):
    priors = load_priors()
    active = priors["entities"]["tc_uremic_active"]
    active.update(p_lesion_ffl=1.0, frac_lobules_ffl=1.0, p_calc_lobule=0.0, sediment_fill=0.5)
    path = tmp_path / "priors.yaml"
    path.write_text(yaml.safe_dump(priors))
    out = write_cohort(
        n=1, seed=2, out=tmp_path / "c", subtypes=["tc_uremic_active"], priors_path=path
    )
    lesions = json.loads((out / "truth" / "S001" / "lesions.json").read_text())["lesions"]
    # lobules are listed in painting order: among equally large ones, the last one is whole
    painted = [lob for les in lesions for lob in les["lobules"]]
    lobule = max(reversed(painted), key=lambda lob: lob["r_mm"])
    assert lobule["kind"] == "ffl"
    ct = _series(out, "S001", "CT")
    hu = _ct_hu(out, "S001")
    x0, y0, _ = (float(v) for v in ct[0].ImagePositionPatient)
    sy, sx = (float(v) for v in ct[0].PixelSpacing)
    z = np.array([float(d.ImagePositionPatient[2]) for d in ct])
    cx, cy, cz = lobule["centre_mm"]
    k = int(np.argmin(np.abs(z - cz)))
    y = y0 + sy * np.arange(hu.shape[1])
    x = x0 + sx * np.arange(hu.shape[2])
    inner = 0.6 * lobule["r_mm"]
    near_x = np.abs(x - cx) < inner
    level = lobule["level_y_mm"]
    posterior = (y > level + 3) & (y < cy + inner)
    anterior = (y < level - 3) & (y > cy - inner)
    assert posterior.any() and anterior.any()
    post = hu[k][np.ix_(posterior, near_x)].mean()
    ant = hu[k][np.ix_(anterior, near_x)].mean()
    assert post > ant + 100  # dense calcium sediment on the dependent (posterior, +y) side
    rows = hu[k][np.ix_(posterior, near_x)].mean(axis=0)
    assert rows.std() < 0.35 * rows.mean()  # flat, horizontal level: same density across x


def test_cli_phantom(tmp_path):
    code = main(
        ["phantom", "--n", "1", "--seed", "9", "--out", str(tmp_path), "--subtypes", "esos"]
    )
    assert code == 0
    samples = pd.read_csv(tmp_path / "samples.tsv", sep="\t")
    assert list(samples.label) == ["sarcoma"] and samples.dicom[0] == "dicom/S001"
    assert main(["phantom", "--n", "1", "--out", str(tmp_path), "--subtypes", "nope"]) == 2


# ------------------------------------------------------------------ post-contrast T1, sites ---
@pytest.fixture(scope="module")
def contrast_cohort(tmp_path_factory) -> Path:
    """One TC (ESKD: no gadolinium) and two sarcomas with gadolinium always given."""
    base = tmp_path_factory.mktemp("contrast")
    priors = load_priors()
    priors["contrast"]["p_if_renal_function_ok"] = 1.0
    path = base / "priors.yaml"
    path.write_text(yaml.safe_dump(priors))
    subtypes = ["tc_uremic_active", "esos", "synovial_sarcoma_calcified"]
    return write_cohort(n=4, seed=21, out=base / "cohort", subtypes=subtypes, priors_path=path)


def _mr_lesion(cohort: Path, subject: str, mr: list[pydicom.Dataset]) -> np.ndarray:
    """Truth lesion (CT grid) resampled nearest onto the MR grid, (z, y, x)."""
    import SimpleITK as sitk

    truth = sitk.ReadImage(str(cohort / "truth" / subject / "lesion.nii.gz"))
    ref = sitk.Image(mr[0].Columns, mr[0].Rows, len(mr), sitk.sitkUInt8)
    ref.SetOrigin([float(v) for v in mr[0].ImagePositionPatient])
    dz = float(mr[1].ImagePositionPatient[2]) - float(mr[0].ImagePositionPatient[2])
    ref.SetSpacing([*(float(v) for v in mr[0].PixelSpacing[::-1]), dz])
    out = sitk.Resample(truth, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out) > 0


def test_t1c_only_without_eskd_enhancing_and_classified_by_the_pipeline(contrast_cohort):
    from calcirad.dicom import build_inventory

    truth = pd.read_csv(contrast_cohort / "truth" / "labels.tsv", sep="\t", index_col="subject")
    assert set(truth.subtype) == {"tc_uremic_active", "esos", "synovial_sarcoma_calcified"}
    for subject, row in truth.iterrows():
        study = contrast_cohort / "dicom" / subject
        has_t1c = (study / "MR_T1C_6").is_dir()
        assert has_t1c == (not row.eskd) == bool(row.t1c), subject
        inventory = build_inventory(subject=subject, study_dir=study, rules={})
        assert {"ct", "t1", "t2", "pet"} <= set(inventory.chosen)
        assert inventory.chosen["t1"].series_number == 3  # the plain T1, never the post-Gd one
        if not has_t1c:
            assert "t1c" not in inventory.chosen
            continue
        assert inventory.chosen["t1c"].series_number == 6
        t1, t1c = (
            _series(contrast_cohort, subject, "MR_T1"),
            _series(contrast_cohort, subject, "MR_T1C"),
        )
        assert t1c[0].ContrastBolusAgent and t1c[0].ContrastBolusRoute == "IV"
        assert t1c[0].SeriesTime > t1[0].SeriesTime
        assert [d.ImagePositionPatient for d in t1c] == [d.ImagePositionPatient for d in t1]
        lesion = _mr_lesion(contrast_cohort, subject, t1)
        pre = np.stack([d.pixel_array for d in t1]).astype(float)
        post = np.stack([d.pixel_array for d in t1c]).astype(float)
        assert np.median(post[lesion]) > 1.3 * np.median(pre[lesion])  # enhancing solid sarcoma


def test_every_series_converts_with_dcm2niix_without_warnings(contrast_cohort, tmp_path):
    if not Path(DCM2NIIX).exists():
        pytest.skip("dcm2niix not installed")
    for study in sorted((contrast_cohort / "dicom").iterdir()):
        for folder in sorted(study.iterdir()):
            warnings = _dcm2niix_warnings(folder, tmp_path / study.name / folder.name)
            assert not warnings, (folder, warnings)


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(
    DCIODVFY is None,
    reason="dciodvfy not installed (Debian/Ubuntu: apt-get install -y dicom3tools)",
)
def test_dciodvfy_finds_no_errors_in_any_modality(contrast_cohort):
    """One file per series (a middle slice) of each subject; warnings are allowed."""
    checked = set()
    for study in sorted((contrast_cohort / "dicom").iterdir()):
        for folder in sorted(study.iterdir()):
            files = sorted(folder.glob("*.dcm"))
            run = subprocess.run(
                [DCIODVFY, str(files[len(files) // 2])], capture_output=True, text=True
            )
            errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
            assert not errors, (folder, errors)
            checked.add(folder.name.rsplit("_", 1)[0])
    assert checked == {"CT", "MR_T1", "MR_T2", "MR_T1C", "PET"}


def test_sites_differ_in_noise_resolution_and_field_strength():
    from calcirad.phantom.modalities import grid_spec

    priors = load_priors()
    sites = sorted(priors["sites"])
    assert len(sites) >= 3
    assert len({str(priors["sites"][s]["ct"]["noise_hu"]) for s in sites}) == len(sites)
    assert {float(priors["sites"][s]["mr"]["field_t"]) for s in sites} == {1.5, 3.0}
    for size in ("demo", "realistic"):
        for modality in ("ct", "mr"):
            specs = {str(grid_spec(priors, size, s, modality)) for s in sites}
            assert len(specs) > 1, (size, modality)
            for s in sites:  # the matrices (and so the demo's size limits) never change
                spec = grid_spec(priors, size, s, modality)
                assert spec["matrix"] == priors["sizes"][size][modality]["matrix"]


def test_confounders_are_on_by_default_and_can_be_switched_off(tmp_path):
    on = load_priors()
    assert all(c["enabled"] for c in on["confounders"].values())
    raw = yaml.safe_load(
        (Path(load_priors.__code__.co_filename).parent / "priors.yaml").read_text()
    )
    for confounder in raw["confounders"].values():
        confounder["enabled"] = False
    path = tmp_path / "priors.yaml"
    path.write_text(yaml.safe_dump(raw))
    off = load_priors(path)
    entities = ("tc_uremic_active", "tc_familial")
    for name in entities:  # FDG-avid active TC, inherited by the familial form
        assert on["entities"][name]["suvmax"]["range"][1] > off["entities"][name]["suvmax"][1]
    assert on["entities"]["synovial_sarcoma_calcified"]["p_ffl"][0] > 0
    assert off["entities"]["synovial_sarcoma_calcified"]["p_ffl"] == 0
    assert on["entities"]["myositis_ossificans_early"]["suvmax"]["range"][1] >= 9.4
    assert on["entities"]["esos"]["p_small"] > 0 and "p_small" not in off["entities"]["esos"]
    # the inactive form keeps its own low uptake: a child's value beats an inherited confounder
    assert on["entities"]["tc_inactive"]["suvmax"] == [1.0, 4.0]


def test_synovial_sarcoma_fluid_level_is_dependent(tmp_path):
    priors = load_priors()
    ss_levels = priors["confounders"]["ss_fluid_levels"]["entities"]
    ss_levels["synovial_sarcoma_calcified"]["p_ffl"] = 1.0
    path = tmp_path / "priors.yaml"
    path.write_text(yaml.safe_dump(priors))
    out = write_cohort(
        n=1, seed=4, out=tmp_path / "c", subtypes=["synovial_sarcoma_calcified"], priors_path=path
    )
    lesion = json.loads((out / "truth" / "S001" / "lesions.json").read_text())["lesions"][0]
    (level,) = [lob for lob in lesion["lobules"] if lob["kind"] == "ffl"]
    assert (
        level["centre_mm"][1] - level["r_mm"]
        < level["level_y_mm"]
        < level["centre_mm"][1] + level["r_mm"]
    )
    assert lesion["components"]["sediment"]["ct"] >= 45  # dependent blood, denser than serum
    assert lesion["components"]["sediment"]["t2"] < lesion["components"]["necrosis"]["t2"]


# ------------------------------------------------------------------ a coronal MR site ---------
def _dicom_on_grid(series: list[pydicom.Dataset], grid) -> np.ndarray:
    """Pixels of ``series`` placed on the generator's (z, y, x) ``grid`` by their own header
    geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing); NaN where none."""
    out = np.full(grid.shape, np.nan)
    for ds in series:
        rows, cols = np.indices((ds.Rows, ds.Columns))
        row_dir = np.asarray(ds.ImageOrientationPatient[:3], float)
        col_dir = np.asarray(ds.ImageOrientationPatient[3:], float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        world = (
            np.asarray(ds.ImagePositionPatient, float)[:, None, None]
            + row_dir[:, None, None] * cols * dc
            + col_dir[:, None, None] * rows * dr
        )
        index = [
            np.rint((world[d] - grid.origin[d]) / grid.spacing[d]).astype(int) for d in range(3)
        ]
        out[index[2], index[1], index[0]] = ds.pixel_array
    return out


def test_coronal_t2_site_geometry_conversion_and_carried_truth(cohort, tmp_path):
    """siteC acquires T2 coronal: its DICOM geometry puts the image where the generator drew
    it, dcm2niix converts it without warnings and calcirad verifies it, and the CT truth carried
    by physical coordinates onto the NIfTI grid covers the lesion drawn on the MR grid."""
    import SimpleITK as sitk

    from calcirad.convert import convert_series
    from calcirad.phantom.cohort import build_scene, render_truth
    from calcirad.phantom.render import render
    from calcirad.segment.carry import carry_mask

    priors = load_priors()
    plans = [p for p in plan_cohort(n=3, seed=11, priors=priors) if p.site == "siteC"]
    assert priors["sites"]["siteC"]["mr"]["t2_plane"] == "coronal" and plans
    plan = plans[0]
    scene = build_scene(plan, seed=11, size="demo", priors=priors)
    acq = next(a for a in scene.acqs if a.name == "MR_T2")
    t1_acq = next(a for a in scene.acqs if a.name == "MR_T1")
    assert acq.plane == "coronal" and t1_acq.plane == "axial"
    t2 = _series(cohort, plan.subject, "MR_T2")
    assert [float(v) for v in t2[0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert "COR" in t2[0].SeriesDescription and len(t2) == acq.grid.shape[1]
    assert np.all(np.diff([float(d.ImagePositionPatient[1]) for d in t2]) > 0)

    # the header geometry places the pixels where the scene was drawn (a row flip would not)
    ideal, _, _ = render(
        grid=acq.grid, body=scene.body, tissues=scene.tissues, lesions=scene.lesions, key="t2"
    )
    placed = _dicom_on_grid(t2, acq.grid)
    assert not np.isnan(placed).any()
    right = np.corrcoef(placed.ravel(), ideal.ravel())[0, 1]
    flipped = np.corrcoef(placed.ravel(), ideal[::-1].ravel())[0, 1]
    assert right > 0.8 and right > flipped + 0.2, (right, flipped)

    folder = next((cohort / "dicom" / plan.subject).glob("MR_T2_*"))
    assert _dcm2niix_warnings(folder, tmp_path / "raw") == []
    record = convert_series(
        subject=plan.subject,
        modality="t2",
        files=sorted(folder.glob("*.dcm")),
        out_nifti=tmp_path / "t2.nii.gz",
        out_sidecar=tmp_path / "t2.json",
        work_dir=tmp_path / "work",
    )
    assert record["n_dicom_slices"] == len(t2)
    reference = sitk.ReadImage(str(tmp_path / "t2.nii.gz"))
    ct_truth = sitk.Cast(
        sitk.ReadImage(str(cohort / "truth" / plan.subject / "lesion.nii.gz")) > 0, sitk.sitkUInt8
    )
    carried = sitk.GetArrayFromImage(carry_mask(ct_truth, reference)) > 0
    mr_truth = sitk.GetImageFromArray((render_truth(scene, acq.grid) > 0).astype(np.uint8))
    mr_truth.SetOrigin(acq.grid.origin)
    mr_truth.SetSpacing(acq.grid.spacing)
    drawn = sitk.Resample(mr_truth, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    drawn = sitk.GetArrayFromImage(drawn) > 0
    assert drawn.sum() == sitk.GetArrayFromImage(mr_truth).sum() > 0  # same voxel centres
    both = (carried & drawn).sum()
    assert both / drawn.sum() > 0.85  # the carried CT truth covers the MR lesion
    assert 2 * both / (carried.sum() + drawn.sum()) > 0.8


# ------------------------------------------------------------------ messy PACS exports --------
ALL_MESSY = dict.fromkeys(("mixed_folder", "scout", "compressed", "missing_slice"), 1.0)
ALL_SYNTAXES = ("RLELossless", "JPEG2000Lossless", "JPEGLSLossless")
LABEL_OF_FOLDER = {"CT": "ct", "MR_T1": "t1", "MR_T2": "t2", "PET": "pet", "MR_T1C": "t1c"}


def test_messy_exports_are_off_by_default_and_validated():
    from calcirad.errors import ConfigError
    from calcirad.phantom.cohort import plan_export, resolve_messy

    priors = load_priors()
    assert resolve_messy(priors, None) is None and resolve_messy(priors, False) is None
    on = resolve_messy(priors, True)
    assert 0 < on["scout"] < 1 and set(on["syntaxes"]) >= {"RLELossless", "JPEG2000Lossless"}
    only = resolve_messy(priors, {"scout": 1.0})
    assert only["scout"] == 1.0 and only["compressed"] == only["missing_slice"] == 0.0
    plans = [plan_export(only, seed=3, index=i) for i in range(1, 6)]
    assert all(p.scout and not p.mixed_folder and p.syntax is None for p in plans)
    assert plans == [plan_export(only, seed=3, index=i) for i in range(1, 6)]  # deterministic
    with pytest.raises(ConfigError, match="unknown messy"):
        resolve_messy(priors, {"scouts": 1.0})
    with pytest.raises(ConfigError, match="not a compressed"):
        resolve_messy(priors, {"compressed": 1.0, "syntaxes": ["ExplicitVRLittleEndian"]})
    from calcirad.cli import build_parser

    assert build_parser().parse_args(["phantom", "--out", "x", "--messy"]).messy is True


@pytest.fixture(scope="module")
def messy_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same two subjects exported tidy and with every messy case."""
    base = tmp_path_factory.mktemp("messy")
    clean = write_cohort(n=2, seed=8, out=base / "clean")
    return clean, write_cohort(n=2, seed=8, out=base / "messy", messy=ALL_MESSY)


def _ingest_and_convert(cohort: Path, work: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The pipeline's ingest and convert steps on every subject; (inventory table, statuses)."""
    from calcirad.steps.convert import run_convert
    from calcirad.steps.ingest import run_ingest, write_series_inventory

    samples = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype={"subject": str})
    statuses, inventories = {}, []
    for subject in samples.subject:
        study = cohort / "dicom" / subject
        inventory = work / "ingest" / f"{subject}.json"
        run_ingest(
            subject=subject,
            study_dir=study,
            rules={},
            pins={},
            modalities=["ct", "t1", "t2", "pet", "t1c"],
            out_json=inventory,
        )
        inventories.append(inventory)
        statuses[subject] = run_convert(
            subject=subject,
            inventory_json=inventory,
            study_dir=study,
            out_dir=work / "nifti" / subject,
            conversion={"suv": "bw"},
        )
    table = write_series_inventory(inventories=inventories, out_csv=work / "series_inventory.csv")
    return table, statuses


def test_messy_export_layout(messy_pair):
    clean, messy = messy_pair
    truth = pd.read_csv(messy / "truth" / "labels.tsv", sep="\t", index_col="subject")
    assert set(pd.read_csv(clean / "truth" / "labels.tsv", sep="\t").export) == {"clean"}
    for subject, row in truth.iterrows():
        cases = dict(c.partition("=")[::2] for c in row.export.split(";"))
        assert set(cases) == set(ALL_MESSY) and cases["compressed"] in ALL_SYNTAXES
        study = messy / "dicom" / subject
        assert [p.name for p in study.iterdir()] == ["EXPORT"]
        files = sorted((study / "EXPORT").iterdir())
        assert all(f.suffix == "" for f in files)
        tidy = list((clean / "dicom" / subject).rglob("*.dcm"))
        assert len(files) == len(tidy) + 1 - 1  # a localizer more, a slice less
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert (
            len({h.SeriesInstanceUID for h in headers})
            == len(list((clean / "dicom" / subject).iterdir())) + 1
        )
        assert {str(h.file_meta.TransferSyntaxUID.name) for h in headers} == {
            getattr(pydicom.uid, cases["compressed"]).name
        }
        scouts = [h for h in headers if "LOCALIZER" in h.ImageType]
        assert len(scouts) == 1 and scouts[0].Modality == "CT"


def test_messy_export_through_ingestion_and_conversion(messy_pair, tmp_path):
    """Ingestion picks the right series out of one mixed folder, lists the localizer as ignored
    with its reason, converts compressed series to the very voxels of the tidy export, and
    refuses the series with a missing slice with a message naming subject, series and files."""
    clean, messy = messy_pair
    tidy_table, tidy_status = _ingest_and_convert(clean, tmp_path / "clean")
    table, status = _ingest_and_convert(messy, tmp_path / "messy")
    truth = pd.read_csv(messy / "truth" / "labels.tsv", sep="\t", index_col="subject")
    for subject, row in truth.iterrows():
        cases = dict(c.partition("=")[::2] for c in row.export.split(";"))
        rows = table[table.subject == subject]
        ignored = rows[rows.modality == "ignored"]
        assert len(ignored) == 1 and "LOCALIZER" in ignored.reason.iloc[0]
        assert ignored.series_number.iloc[0] == 1
        used = rows[rows.modality != "ignored"].set_index("modality")
        tidy = tidy_table[tidy_table.subject == subject].set_index("modality")
        assert sorted(used.index) == sorted(tidy.index)
        assert (used.series_number == tidy.series_number[used.index]).all()
        assert set(rows.transfer_syntax) == {cases["compressed"]}
        assert set(rows.folder) == {"EXPORT"}
        broken_folder, _, dropped = cases["missing_slice"].partition("/")
        broken = LABEL_OF_FOLDER[broken_folder.rsplit("_", 1)[0]]
        assert used.n_files[broken] == tidy.n_files[broken] - 1
        assert "non-uniform slice spacing" in used.reason[broken]
        modalities = status[subject]["modalities"]
        assert modalities[broken]["status"] == "failed"
        reason = modalities[broken]["reason"]
        assert f"subject {subject}" in reason and "missing slices" in reason
        assert "about 1 slice(s)" in reason and "IMG" in reason
        for modality in tidy.index:
            if modality == broken:
                continue
            assert modalities[modality]["status"] == "ok", (subject, modality)
            a = nib.load(tmp_path / "messy" / "nifti" / subject / f"{modality}.nii.gz")
            b = nib.load(tmp_path / "clean" / "nifti" / subject / f"{modality}.nii.gz")
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), modality
            assert np.allclose(a.affine, b.affine, atol=1e-4)
        assert tidy_status[subject]["status"] == "ok"


def _convert_ct_and_pet(root: Path, work: Path) -> dict[str, np.ndarray]:
    """calcirad's verified conversion of subject S001's CT and PET; voxel arrays by modality."""
    from calcirad.convert import convert_series

    arrays = {}
    for prefix, modality in (("CT", "ct"), ("PET", "pet")):
        folder = next((root / "dicom" / "S001").glob(f"{prefix}_*"))
        convert_series(
            subject="S001",
            modality=modality,
            files=sorted(folder.glob("*.dcm")),
            out_nifti=work / f"{modality}.nii.gz",
            out_sidecar=work / f"{modality}.json",
            work_dir=work / "tmp",
        )
        arrays[modality] = np.asarray(nib.load(work / f"{modality}.nii.gz").dataobj)
    return arrays


@pytest.fixture(scope="module")
def tidy_one(tmp_path_factory) -> dict[str, np.ndarray]:
    """CT and PET voxels of a one-subject tidy export, converted by calcirad."""
    base = tmp_path_factory.mktemp("tidy_one")
    return _convert_ct_and_pet(write_cohort(n=1, seed=8, out=base / "c"), base)


@pytest.mark.parametrize("syntax", ALL_SYNTAXES)
def test_each_compressed_syntax_converts_to_the_same_voxels(syntax, tidy_one, tmp_path):
    """CT (signed int16) and PET (per-slice slopes) written in ``syntax`` give the tidy voxels."""
    out = write_cohort(
        n=1, seed=8, out=tmp_path / "c", messy={"compressed": 1.0, "syntaxes": [syntax]}
    )
    assert pd.read_csv(out / "truth" / "labels.tsv", sep="\t").export[0] == f"compressed={syntax}"
    first = next((out / "dicom" / "S001").glob("CT_*/IM0001.dcm"))
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    arrays = _convert_ct_and_pet(out, tmp_path)
    for modality, tidy in tidy_one.items():
        assert np.array_equal(arrays[modality], tidy), (syntax, modality)


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed")
def test_dciodvfy_accepts_localizer_compressed_and_coronal_series(messy_pair, cohort):
    _, messy = messy_pair
    firsts: dict[str, Path] = {}
    for f in sorted((messy / "dicom").rglob("IMG*")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        firsts.setdefault(f"{ds.SeriesInstanceUID}", f)
    coronal = [
        next(folder.glob("*.dcm"))
        for folder in (cohort / "dicom").glob("*/MR_T2_*")
        if "COR" in pydicom.dcmread(next(folder.glob("*.dcm"))).SeriesDescription
    ]
    assert coronal
    for path in [*firsts.values(), *coronal]:
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
        assert not errors, (path, errors)
