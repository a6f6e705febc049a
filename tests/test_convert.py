"""dcm2niix conversion with proof: values, geometry and slice count checked against pydicom."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from calcirad.convert import (
    check_geometry,
    convert_series,
    dcm2niix_version,
    read_frames,
    verify_nifti,
)
from calcirad.errors import SubjectInputError
from calcirad.suv import suv_scale_factor
from test_dicom import CLASSIC_T1_TAGS, PATIENT, write_enhanced_mr, write_series

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STS = DATA / "ibsi_sts_sample"
QA = DATA / "dcm_qa_ts"


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"third-party test data not found at {path} (expected ../shared/data)")
    return path


def convert(
    tmp_path: Path, files: list[Path], modality: str = "ct", **kwargs
) -> tuple[dict, Path, Path]:
    out = tmp_path / "out"
    nifti, sidecar = out / f"{modality}.nii.gz", out / f"{modality}.json"
    record = convert_series(
        subject="S1",
        modality=modality,
        files=files,
        out_nifti=nifti,
        out_sidecar=sidecar,
        work_dir=tmp_path / "work",
        **kwargs,
    )
    return record, nifti, sidecar


def assert_no_identifiers(*paths: Path) -> None:
    for path in paths:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("latin-1").lower()
        for value in (*PATIENT.values(), "Doe", "Jane"):
            assert value.lower().replace("^", "") not in text.replace("^", ""), (value, path.name)


def test_dcm2niix_version():
    assert dcm2niix_version().startswith("v1.")


def test_ct_conversion_is_verified_and_deidentified(tmp_path: Path):
    files = write_series(tmp_path / "dicom", n=5, orientation=(1, 0, 0, 0, 0, -1), origin=(5, 7, 9))
    record, nifti, sidecar = convert(tmp_path, files)
    assert record["converter"]["passed"] and record["output"]["passed"]
    assert record["n_dicom_slices"] == record["output"]["n_nifti_slices"] == 5
    assert record["output"]["max_position_error_mm"] < 0.01
    assert record["output"]["max_abs_value_diff"] == 0
    image = nib.load(nifti)
    hu = [pydicom.dcmread(f).pixel_array.astype(float) - 1024 for f in files]
    assert image.get_fdata().min() == pytest.approx(min(h.min() for h in hu))
    meta = json.loads(sidecar.read_text())
    assert meta["calcirad"]["dcm2niix_version"] == dcm2niix_version()
    assert meta["calcirad"]["units"] == "HU"
    assert_no_identifiers(nifti, sidecar)
    assert not list((tmp_path / "work").iterdir())  # the temporary folder is gone


def pet_extra(**overrides) -> dict:
    info = Dataset()
    info.RadionuclideTotalDose = "370000000"
    info.RadionuclideHalfLife = "6000"
    info.RadiopharmaceuticalStartDateTime = "20240101090000"
    extra = {
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"],
        "PatientWeight": "70",
        "SeriesDate": "20240101",
        "SeriesTime": "104000",
        "AcquisitionDate": "20240101",
        "AcquisitionTime": "104000",
        "RadiopharmaceuticalInformationSequence": [info],
    }
    extra.update(overrides)
    return extra


def test_pet_with_per_slice_slopes_becomes_suv(tmp_path: Path):
    slopes = [0.5, 2.0, 7.25, 0.125]
    files = write_series(tmp_path / "dicom", modality="PT", n=4, slopes=slopes, extra=pet_extra())
    record, nifti, _ = convert(tmp_path, files, modality="pet", suv={"method": "bw"})
    factor = 70_000 / 185e6  # 70 kg, 370 MBq decayed by one half-life
    assert record["suv"]["factors"] == [pytest.approx(factor, rel=1e-12)]
    assert record["units"] == "SUVbw"
    image = nib.load(nifti)
    assert image.get_data_dtype() == np.float32
    # Hand check one voxel per slice, located through the affine (nibabel: RAS).
    lps_to_voxel = np.linalg.inv(np.diag([-1, -1, 1, 1]) @ image.affine)
    data = image.get_fdata()
    for path, slope in zip(files, slopes, strict=True):
        ds = pydicom.dcmread(path)
        i, j, k = np.round(lps_to_voxel @ [*map(float, ds.ImagePositionPatient), 1])[:3].astype(int)
        expected = ds.pixel_array[0, 0] * slope * factor
        assert data[i, j, k] == pytest.approx(expected, rel=1e-6)
    assert record["output"]["max_abs_value_diff"] <= record["output"]["value_tolerance"]


def test_pet_with_decay_correction_none_scales_each_slice(tmp_path: Path):
    files = write_series(
        tmp_path / "dicom",
        modality="PT",
        n=3,
        slopes=[1, 1, 1],
        extra=pet_extra(DecayCorrection="NONE", CorrectedImage=["ATTN"]),
    )
    # Slice 3 acquired one half-life later than the others.
    late = pydicom.dcmread(files[2])
    late.AcquisitionTime = "122000"
    late.save_as(files[2])
    record, nifti, _ = convert(tmp_path, files, modality="pet")
    assert sorted(record["suv"]["factors"]) == pytest.approx(
        [70_000 / 185e6] * 2 + [70_000 / 92.5e6]
    )
    assert record["output"]["passed"]


def test_pet_without_weight_fails_and_writes_nothing(tmp_path: Path):
    files = write_series(
        tmp_path / "dicom", modality="PT", slopes=[1] * 4, extra=pet_extra(PatientWeight="")
    )
    with pytest.raises(SubjectInputError, match="PatientWeight") as info:
        convert(tmp_path, files, modality="pet")
    assert "subject S1" in str(info.value)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        ([0, 2, 4, 8, 10], "missing slices"),
        ([0, 2, 4.5, 6.5, 8.5], "non-uniform slice spacing"),
        ([0, 2, 2, 4], "same position"),
    ],
)
def test_bad_slice_spacing_is_refused(tmp_path: Path, positions, message):
    files = write_series(tmp_path / "dicom", positions=positions)
    with pytest.raises(SubjectInputError, match=message) as info:
        convert(tmp_path, files)
    assert "series 1" in str(info.value) and "->" in str(info.value)


def test_gantry_tilt_is_refused(tmp_path: Path):
    files = write_series(tmp_path / "dicom", n=4, extra={"GantryDetectorTilt": "15"})
    for index, path in enumerate(files):  # shear each slice 0.5 mm along y per 2 mm step
        ds = pydicom.dcmread(path)
        x, y, z = map(float, ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * index, z]
        ds.save_as(path)
    with pytest.raises(SubjectInputError, match="gantry tilt"):
        check_geometry(read_frames(files), subject="S1", series="1 CT")


def test_verification_catches_wrong_values_place_and_count(tmp_path: Path):
    files = write_series(tmp_path / "dicom", n=4)
    _, nifti, _ = convert(tmp_path, files)
    frames = read_frames(files)
    good = nib.load(nifti)
    data = good.get_fdata()
    # A JPEG 2000 sign error decodes HU -1024..1975 as 0..2999: the values check catches it.
    unsigned = nib.Nifti1Image(data + 1024, good.affine)
    with pytest.raises(SubjectInputError, match="voxel values differ"):
        verify_nifti(unsigned, frames, subject="S1", series="1 CT")
    # A volume misplaced in world space by 1 mm (as seen after tilt correction).
    shifted = good.affine.copy()
    shifted[2, 3] += 1.0
    with pytest.raises(SubjectInputError, match="geometry differs"):
        verify_nifti(nib.Nifti1Image(data, shifted), frames)
    # LPS/RAS confusion: x and y flipped in the affine.
    with pytest.raises(SubjectInputError, match="geometry differs"):
        verify_nifti(nib.Nifti1Image(data, np.diag([-1, -1, 1, 1]) @ good.affine), frames)
    # One DICOM slice fewer than the NIfTI holds.
    with pytest.raises(SubjectInputError, match="slice count differs"):
        verify_nifti(good, frames[:-1])


def test_enhanced_multiframe_converts_like_classic(tmp_path: Path):
    pytest.importorskip("highdicom")
    files = write_series(
        tmp_path / "classic",
        modality="MR",
        n=5,
        description="T1",
        extra=CLASSIC_T1_TAGS,
    )
    enhanced = write_enhanced_mr(files, tmp_path / "enh" / "mf.dcm")
    classic_record, classic_nifti, _ = convert(tmp_path / "a", files, modality="t1")
    enhanced_record, enhanced_nifti, _ = convert(tmp_path / "b", [enhanced], modality="t1")
    assert enhanced_record["n_dicom_slices"] == classic_record["n_dicom_slices"] == 5
    a, b = nib.load(classic_nifti), nib.load(enhanced_nifti)
    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())


@pytest.mark.shared_data
@pytest.mark.parametrize("number", range(1, 10))
def test_dcm_qa_ts_every_transfer_syntax_gives_the_reference(tmp_path: Path, number: int):
    source = needs(QA / "In" / f"{number}.dcm")
    record, nifti, _ = convert(tmp_path, [source], modality="t2")
    reference = nib.load(needs(QA / "Ref" / f"{number}.nii"))
    image = nib.load(nifti)
    assert image.shape == reference.shape == (64, 64, 35)
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(image.get_fdata(), reference.get_fdata())
    assert record["converter"]["max_abs_value_diff"] == 0
    assert record["converter"]["max_position_error_mm"] < 0.01


@pytest.mark.shared_data
@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
@pytest.mark.parametrize(("modality", "folder"), [("ct", "CT"), ("t1", "MR_T1"), ("pet", "PET")])
def test_ibsi_sts_agrees_with_upstream_nifti(tmp_path: Path, patient, modality, folder):
    files = sorted(needs(STS / "dicom" / patient / folder / "image").glob("*.dcm"))
    record, nifti, sidecar = convert(tmp_path, files, modality=modality)
    upstream = nib.as_closest_canonical(
        nib.load(STS / "nifti" / patient / f"{folder}_image.nii.gz")
    )
    ours = nib.as_closest_canonical(nib.load(nifti))
    assert ours.shape == upstream.shape
    np.testing.assert_allclose(ours.affine, upstream.affine, atol=1e-3)  # mm
    np.testing.assert_allclose(ours.get_fdata(), upstream.get_fdata(), rtol=1e-6, atol=1e-5)
    if modality == "pet":  # already SUV (Units GML): recognised, factor 1, not scaled again
        assert record["suv"]["units"] == "GML" and record["suv"]["factors"] == [1.0]
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert suv_scale_factor(headers) == 1.0
    meta = sidecar.read_text()
    assert patient not in meta  # PatientName/PatientID are the patient code here


def test_pet_suv_method_from_the_config_slice(tmp_path: Path):
    extra = pet_extra(PatientSize="1.75", PatientSex="M")
    files = write_series(tmp_path / "dicom", modality="PT", n=3, slopes=[1, 1, 1], extra=extra)
    record, _, _ = convert(tmp_path, files, modality="pet", suv={"suv": "lbm"})
    james_g = (1.10 * 70 - 128 * (70 / 175) ** 2) * 1000
    assert record["units"] == "SUVlbm"
    assert record["suv"]["factors"] == [pytest.approx(james_g / 185e6, rel=1e-12)]
