"""SUV scale factors: one hand-computed case per QIBA branch, then real vendor headers.

Hand-computed cases use round numbers: 70 kg, 370 MBq, a 6000 s half-life and a 6000 s uptake, so the
decayed dose is exactly 185 MBq and SUVbw factor = 70 000 g / 185e6 Bq.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from calcirad.errors import SubjectInputError
from calcirad.suv import (
    GE_SCAN_DATETIME,
    private_value,
    suv_pixels,
    suv_scale_factor,
    suv_scale_factors,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HALF_DOSE = 70_000.0 / 185e6  # 70 kg after one half-life of a 370 MBq dose
FULL_DOSE = 70_000.0 / 370e6


def pet(**overrides) -> Dataset:
    """A PET header: injected 09:00:00, scanned 10:40:00 (6000 s), one 6000 s half-life."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY", "SCAT"]
    ds.PatientWeight = "70"
    ds.PatientSize = "1.75"
    ds.PatientSex = "M"
    ds.SeriesDate = ds.AcquisitionDate = "20240101"
    ds.SeriesTime = ds.AcquisitionTime = "104000"
    info = Dataset()
    info.RadionuclideTotalDose = "370000000"
    info.RadionuclideHalfLife = "6000"
    info.RadiopharmaceuticalStartDateTime = "20240101090000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    for key, value in overrides.items():
        if key.startswith("Radio"):
            if value is None:
                delattr(info, key)
            else:
                setattr(info, key, value)
        elif value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


# ---- hand-computed branches ------------------------------------------------------------------


def test_bqml_start_with_start_datetime():
    result = suv_scale_factors(pet())
    assert result.factors[0] == pytest.approx(HALF_DOSE, rel=1e-12)
    assert result.decay_time_s == pytest.approx(6000)
    assert suv_scale_factor([pet(), pet()]) == pytest.approx(HALF_DOSE, rel=1e-12)


def test_start_time_only_uses_series_date():
    ds = pet(RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="090000")
    assert suv_scale_factor(ds) == pytest.approx(HALF_DOSE, rel=1e-12)


def test_injection_before_midnight_with_start_time_only():
    ds = pet(
        RadiopharmaceuticalStartDateTime=None,
        RadiopharmaceuticalStartTime="235000",
        SeriesDate="20240102",
        AcquisitionDate="20240102",
        SeriesTime="013000",  # 23:50 -> 01:30 next day = 6000 s
        AcquisitionTime="013000",
    )
    result = suv_scale_factors(ds)
    assert result.factors[0] == pytest.approx(HALF_DOSE, rel=1e-12)
    assert any("midnight" in note for note in result.notes)


def test_decay_correction_admin_does_not_decay_the_dose():
    assert suv_scale_factor(pet(DecayCorrection="ADMIN")) == pytest.approx(FULL_DOSE, rel=1e-12)


def test_decay_correction_none_decays_to_each_frame():
    # Frame 1 starts one half-life after injection, frame 2 two half-lives after.
    first = pet(DecayCorrection="NONE", CorrectedImage=["ATTN"], ActualFrameDuration=0)
    second = pet(
        DecayCorrection="NONE",
        CorrectedImage=["ATTN"],
        ActualFrameDuration=0,
        AcquisitionTime="122000",
    )
    result = suv_scale_factors([first, second])
    assert result.factors == pytest.approx([HALF_DOSE, 70_000.0 / 92.5e6], rel=1e-12)
    with pytest.raises(SubjectInputError, match="different SUV factors"):
        suv_scale_factor([first, second])


def test_decay_correction_none_averages_over_the_frame():
    # Over a frame of one half-life the mean of 2^(-t/T) is (1 - 1/2) / ln 2.
    ds = pet(DecayCorrection="NONE", CorrectedImage=["ATTN"], ActualFrameDuration=6_000_000)
    expected = 70_000.0 / (185e6 * 0.5 / math.log(2))
    assert suv_scale_factor(ds) == pytest.approx(expected, rel=1e-12)


def test_series_time_after_acquisition_uses_earliest_acquisition():
    # Re-processed series: SeriesTime 15:00 is the reconstruction time, not the scan time.
    early = pet(SeriesTime="150000")
    late = pet(SeriesTime="150000", AcquisitionTime="110000")
    result = suv_scale_factors([late, early])
    assert result.factors[0] == pytest.approx(HALF_DOSE, rel=1e-12)
    assert "earliest AcquisitionDate/Time" in result.reference_time_rule


def test_ge_private_scan_time_when_series_time_is_late():
    ds = pet(SeriesTime="150000", AcquisitionTime="110000")
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20240101104000")
    assert private_value(ds, GE_SCAN_DATETIME) == "20240101104000"
    result = suv_scale_factors(ds)
    assert result.factors[0] == pytest.approx(HALF_DOSE, rel=1e-12)
    assert "GE private" in result.reference_time_rule


def test_dose_in_mbq_is_recognised_and_reported():
    result = suv_scale_factors(pet(RadionuclideTotalDose="370"))
    assert result.factors[0] == pytest.approx(HALF_DOSE, rel=1e-12)
    assert result.dose_bq == pytest.approx(370e6)
    assert "MBq" in result.notes[0]


def test_other_tracer_uses_header_half_life():
    # Ga-68 (half-life 4057.8 s) scanned exactly one half-life after injection (09:00 -> 10:07:37.8).
    ds = pet(RadionuclideHalfLife="4057.8", SeriesTime="100737.8", AcquisitionTime="100737.8")
    assert suv_scale_factor(ds) == pytest.approx(HALF_DOSE, rel=1e-12)


def philips_cnts(**private) -> Dataset:
    ds = pet(Units="CNTS")
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    for offset, value in private.items():
        block.add_new(int(offset[1:], 16), "DS", value)
    return ds


def test_philips_cnts_suv_scale_factor():
    assert suv_scale_factor(philips_cnts(x00="0.000551")) == pytest.approx(0.000551)


def test_philips_cnts_activity_concentration_factor():
    # (7053,1009) turns counts into Bq/ml; then the ordinary Bq/ml factor applies.
    assert suv_scale_factor(philips_cnts(x09="2.0")) == pytest.approx(2.0 * HALF_DOSE, rel=1e-12)


def test_gml_is_not_scaled_again():
    assert suv_scale_factor(pet(Units="GML")) == 1.0


def test_lean_body_mass_and_bsa():
    # Male, 70 kg, 175 cm.
    james = 1.10 * 70 - 128 * (70 / 175) ** 2  # 56.52 kg
    janma = 9270 * 70 / (6680 + 216 * 70 / 1.75**2)
    bsa_cm2 = 0.007184 * 70**0.425 * 175**0.725 * 1e4
    assert suv_scale_factor(pet(), method="lbm") == pytest.approx(james * 1000 / 185e6, rel=1e-12)
    assert suv_scale_factor(pet(), method="lbm_janma") == pytest.approx(
        janma * 1000 / 185e6, rel=1e-12
    )
    assert suv_scale_factor(pet(), method="bsa") == pytest.approx(bsa_cm2 / 185e6, rel=1e-12)
    # Female James: 1.07 W - 148 (W/H)^2.
    female = 1.07 * 70 - 148 * (70 / 175) ** 2
    assert suv_scale_factor(pet(PatientSex="F"), method="lbm") == pytest.approx(
        female * 1000 / 185e6, rel=1e-12
    )
    # An image already in SUVbw only needs the lbm/bw ratio.
    assert suv_scale_factor(pet(Units="GML"), method="lbm") == pytest.approx(james / 70)


def test_per_slice_rescale_slope():
    slices = []
    for slope in ("0.5", "2.0"):
        ds = pet(RescaleSlope=slope, RescaleIntercept="0")
        ds.Rows = ds.Columns = 2
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.full((2, 2), 1000, np.uint16).tobytes()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        slices.append(ds)
    factor = suv_scale_factor(slices)
    assert suv_pixels(slices[0], factor)[0, 0] == pytest.approx(500 * HALF_DOSE)
    assert suv_pixels(slices[1], factor)[0, 0] == pytest.approx(2000 * HALF_DOSE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"PatientWeight": None}, "PatientWeight"),
        ({"PatientWeight": "0"}, "PatientWeight"),
        ({"PatientWeight": "70000"}, "implausible"),
        ({"RadionuclideTotalDose": "0"}, "RadionuclideTotalDose"),
        ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({"RadionuclideTotalDose": "50000"}, "implausible"),
        ({"RadionuclideHalfLife": None}, "RadionuclideHalfLife"),
        ({"RadiopharmaceuticalStartDateTime": "20240101110000"}, "injection after acquisition"),
        ({"RadiopharmaceuticalStartDateTime": "20231225090000"}, "half-lives"),
        ({"RadiopharmaceuticalStartDateTime": None}, "no injection time"),
        ({"Units": "CNTS"}, "CNTS"),
        ({"Units": "PROPCNTS"}, "PROPCNTS"),
        ({"DecayCorrection": None}, "DecayCorrection"),
        ({"CorrectedImage": ["DECY"]}, "attenuation"),
    ],
)
def test_missing_or_implausible_inputs_fail_clearly(overrides, message):
    with pytest.raises(SubjectInputError, match=message) as info:
        suv_scale_factor(pet(**overrides), subject="S01", series="3 PET AC")
    assert "subject S01" in str(info.value) and "series 3 PET AC" in str(info.value)


def test_lbm_needs_sex_and_height():
    with pytest.raises(SubjectInputError, match="PatientSex"):
        suv_scale_factor(pet(PatientSex="O"), method="lbm")
    with pytest.raises(SubjectInputError, match="PatientSize"):
        suv_scale_factor(pet(PatientSize=None), method="bsa")


def test_images_of_different_series_are_refused():
    with pytest.raises(SubjectInputError, match="PatientWeight differs"):
        suv_scale_factors([pet(), pet(PatientWeight="71")])


# ---- real headers ----------------------------------------------------------------------------

VECTORS = {
    "SIEMENS": 0.00042748316187197236,
    "GE_MEDICAL_AND_BQML": 0.0005367387681819742,
    "PHILIPS_BQML": 0.0007463747013889488,
    "PHILIPS_CNTS_AND_BQML_SUV": 0.000551,
    "PHILIPS_CNTS_AND_SUV": 0.000728,
    "BQML_AC_DT_lessThan_S_DT_SIEMENS": 0.0004069156854009332,
    "CPS_AND_BQML_AC_DT_-_S_DT": 0.00026503312764157046,
    "RADIOPHARM_DATETIME_UNDEFINED": 0.0003721089202818729,
}
PHILIPS_KEYS = {"SUVScaleFactor": 0x00, "ActivityConcentrationScaleFactor": 0x09}


def dataset_from_vector(values: dict) -> Dataset:
    """One calculate-suv JSON instance as a pydicom Dataset (sequence and private tags in place)."""
    ds, info = Dataset(), Dataset()
    for key, value in values.items():
        if key == "PhilipsPETPrivateGroup":
            if value:
                block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
                for name, number in value.items():
                    block.add_new(PHILIPS_KEYS[name], "DS", str(number).strip())
        elif key == "GEPrivatePostInjectionDateTime":
            ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", value)
        else:
            target = info if key.startswith("Radio") else ds
            setattr(target, key, value.strip() if isinstance(value, str) else value)
    ds.RadiopharmaceuticalInformationSequence = [info]
    return ds


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"third-party test data not found at {path} (expected ../shared/data)")
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize(("case", "expected"), VECTORS.items(), ids=list(VECTORS))
def test_calculate_suv_vectors(case, expected):
    path = needs(DATA / "calculate_suv_vectors" / f"{case}-instances.json")
    instances = json.loads(path.read_text())
    result = suv_scale_factors([dataset_from_vector(v) for v in instances])
    assert len(result.factors) == len(instances)
    for factor in result.factors:
        assert factor == pytest.approx(expected, abs=1e-6, rel=1e-9)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "factor", "suv_max"), [("1.dcm", 5.942485e-4, 7.194), ("2.dcm", 4.735489e-4, 6.156)]
)
def test_tcia_acrin_flt(name, factor, suv_max):
    ds = pydicom.dcmread(needs(DATA / "tcia_pet_acrin_flt" / name))
    found = suv_scale_factor(ds)
    assert found == pytest.approx(factor, rel=1e-6)
    assert suv_pixels(ds, found).max() == pytest.approx(suv_max, abs=5e-4)


@pytest.mark.shared_data
def test_ibsi_sts_pet_is_already_suv():
    folder = needs(DATA / "ibsi_sts_sample" / "dicom" / "STS_001" / "PET" / "image")
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    result = suv_scale_factors(datasets)
    assert result.units == "GML" and set(result.factors) == {1.0}
