"""Series discovery, classification and inventory on small pydicom-written studies and real data.

``write_series`` is also used by test_convert.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from calcirad.dicom import (
    DEFAULT_CLASSIFICATION,
    INVENTORY_COLUMNS,
    Inventory,
    SeriesInfo,
    build_inventory,
    classify_series,
    discover_series,
    matching_keyword,
    write_inventory_csv,
)
from calcirad.errors import SubjectInputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID48151623", "PatientBirthDate": "19700101"}
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
}


# Classic T1 MR slices with what an enhanced MR converter needs beside the image (shared with
# test_convert.py).
CLASSIC_T1_TAGS = {
    "RepetitionTime": "500",
    "EchoTime": "10",
    "Manufacturer": "x",
    "StudyDate": "20240101",
    "StudyTime": "1200",
    "AccessionNumber": "1",
    "ReferringPhysicianName": "",
    "StudyID": "1",
    "PatientSex": "F",
    "ScanningSequence": "SE",
    "SequenceVariant": "NONE",
    "ScanOptions": "",
    "MRAcquisitionType": "2D",
}


def write_series(
    folder: Path,
    *,
    modality: str = "CT",
    n: int = 4,
    description: str = "",
    series_number: int = 1,
    shape: tuple[int, int] = (6, 5),
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.0),
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    suffix: str = ".dcm",
    names: list[str] | None = None,
    positions: list[float] | None = None,
    slopes: list[float] | None = None,
    intercept: float | None = None,
    extra: dict | None = None,
    series_uid: str | None = None,
    sop_class: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a small classic single-frame series; returns the file paths (shuffled names allowed).

    Pixels are random ints; CT gets slope 1 / intercept -1024 (HU); ``slopes`` gives one
    RescaleSlope per slice (PET). ``positions`` are offsets along the slice normal (mm).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    positions = positions if positions is not None else [i * spacing[2] for i in range(n)]
    paths = []
    for index, offset in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class or SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = names[index] if names else f"IM{index:04d}{suffix}"
        path = folder / name
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = "1.2.3.4"
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = index + 1
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        position = np.array(origin) + offset * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing = [
            f"{spacing[1]:g}",
            f"{spacing[0]:g}",
        ]  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        signed = modality == "CT"
        ds.PixelRepresentation = int(signed)
        dtype = np.int16 if signed else np.uint16
        ds.PixelData = rng.integers(0, 3000, size=shape).astype(dtype).tobytes()
        if modality == "CT":
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024" if intercept is None else intercept
        if slopes is not None:
            ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[index]:.6g}", "0"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_by_description(series: list[SeriesInfo]) -> dict[str, SeriesInfo]:
    return {s.description: s for s in series}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A mixed study: nested folders, files without .dcm, one folder holding two series."""
    root = tmp_path / "study"
    write_series(root / "a" / "b" / "ct", description="CT Abdomen std", series_number=2, n=5)
    write_series(root / "a" / "scout", description="Topogram 0.6 T20f", series_number=1, n=2)
    mixed = root / "mr"
    write_series(
        mixed,
        modality="MR",
        description="AX T1 TSE",
        series_number=4,
        suffix="",
        names=None,
        extra={"RepetitionTime": "500", "EchoTime": "12"},
    )
    write_series(
        mixed,
        modality="MR",
        description="ax stir",
        series_number=5,
        suffix=".IMA",
        names=[f"stir_{i}" for i in range(4)],
        extra={"RepetitionTime": "4000", "EchoTime": "70"},
    )
    write_series(
        mixed,
        modality="MR",
        description="sequence 7",
        series_number=7,
        names=[f"x7_{i}.bin" for i in range(4)],
        extra={"RepetitionTime": "450", "EchoTime": "10"},
    )
    (root / "README.txt").write_text("not dicom")
    (root / "mr" / ".DS_Store").write_bytes(b"\0" * 300)
    return root


def test_discovery_groups_by_series_across_names_and_nesting(study: Path):
    series = series_by_description(discover_series(study))
    assert set(series) == {
        "CT Abdomen std",
        "Topogram 0.6 T20f",
        "AX T1 TSE",
        "ax stir",
        "sequence 7",
    }
    ct = series["CT Abdomen std"]
    assert ct.n_files == 5 and ct.n_slices == 5 and ct.folder == "a/b/ct"
    assert ct.spacing_mm == (0.8, 0.7, 2.0)
    assert ct.orientation == (1, 0, 0, 0, 1, 0)
    assert ct.transfer_syntax == "ExplicitVRLittleEndian"
    assert series["ax stir"].folder == "mr" and series["ax stir"].n_files == 4
    # Files are sorted along the slice normal.
    z = [
        float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in ct.files
    ]
    assert z == sorted(z)


def test_classification_reasons(study: Path):
    series = series_by_description(discover_series(study))
    rules = DEFAULT_CLASSIFICATION
    assert classify_series(series["CT Abdomen std"], rules=rules)[0] == "ct"
    label, reason = classify_series(series["Topogram 0.6 T20f"], rules=rules)
    assert label == "ignored" and "topogram" in reason
    assert classify_series(series["AX T1 TSE"], rules=rules)[0] == "t1"
    assert classify_series(series["ax stir"], rules=rules)[0] == "t2"
    label, reason = classify_series(series["sequence 7"], rules=rules)
    assert label == "t1" and "TR 450 ms" in reason  # the timing fallback


def test_mr_timing_fallback_and_configurable_rules(tmp_path: Path):
    write_series(
        tmp_path / "a",
        modality="MR",
        description="seq",
        extra={"RepetitionTime": "3000", "EchoTime": "90"},
    )
    write_series(
        tmp_path / "b",
        modality="MR",
        description="pd",
        series_number=2,
        extra={"RepetitionTime": "3000", "EchoTime": "20"},
    )
    series = series_by_description(discover_series(tmp_path))
    assert classify_series(series["seq"], rules={})[0] == "t2"
    label, reason = classify_series(series["pd"], rules={})
    assert label == "ignored" and "neither T1 nor T2" in reason
    # A site's own keyword and timing thresholds.
    assert classify_series(series["pd"], rules={"keywords": {"t2": ["pd"]}})[0] == "t2"
    relaxed = {"mr_timing": {"t2": {"min_tr_ms": 2000, "min_te_ms": 15}}}
    assert classify_series(series["pd"], rules=relaxed)[0] == "t2"


def test_keyword_matching_is_word_start_and_case_insensitive():
    assert matching_keyword("AX_T1W_TSE", ["t1"]) == "t1"
    assert matching_keyword("first1", ["t1"]) is None
    assert matching_keyword("T10 map", ["t1"]) is None
    assert matching_keyword("Dose_Report", ["dose report"]) == "dose report"


def test_ignored_kinds(tmp_path: Path):
    write_series(tmp_path / "sc", modality="CT", sop_class=SOP_CLASS["SC"], description="saved")
    write_series(tmp_path / "loc", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="x")
    write_series(tmp_path / "one", n=1, description="one slice")
    write_series(
        tmp_path / "nac", modality="PT", description="PET NAC", extra={"CorrectedImage": ["DECY"]}
    )
    write_series(
        tmp_path / "dyn",
        modality="PT",
        description="dynamic",
        positions=[0, 0, 2, 2],
        extra={"CorrectedImage": ["ATTN", "DECY"]},
    )
    reasons = {s.folder: classify_series(s, rules={}) for s in discover_series(tmp_path)}
    assert all(label == "ignored" for label, _ in reasons.values())
    assert "secondary capture" in reasons["sc"][1]
    assert "LOCALIZER" in reasons["loc"][1]
    assert "single slice" in reasons["one"][1]
    assert "nac" in reasons["nac"][1]
    assert "4 images at 2 positions" in reasons["dyn"][1]


def test_choice_rule_and_ctac_fallback(tmp_path: Path):
    write_series(tmp_path / "ctac", description="CTAC 3.75mm", series_number=2, n=8)
    write_series(tmp_path / "thin", description="CT 1mm", series_number=3, n=6)
    write_series(tmp_path / "thick", description="CT 5mm", series_number=4, n=3)
    write_series(
        tmp_path / "pet",
        modality="PT",
        description="PET AC",
        series_number=5,
        extra={"CorrectedImage": ["ATTN", "DECY"]},
    )
    inventory = build_inventory(subject="S1", study_dir=tmp_path, rules={"prefer": "most_slices"})
    rows = {row["folder"]: row for row in inventory.rows}
    assert inventory.chosen["ct"].folder == "thin"  # CTAC has more slices but is only a fallback
    assert rows["thin"]["chosen"] and "most_slices" in rows["thin"]["reason"]
    assert not rows["ctac"]["chosen"] and "fallback" in rows["ctac"]["reason"]
    assert "not chosen" in rows["thick"]["reason"]
    assert inventory.chosen["pet"].folder == "pet"
    latest = build_inventory(subject="S1", study_dir=tmp_path, rules={"prefer": "latest"})
    assert latest.chosen["ct"].folder == "thick"
    # Without a diagnostic CT the attenuation map is used.
    only_ctac = tmp_path / "only"
    write_series(only_ctac, description="CTAC 3.75mm", n=4)
    assert build_inventory(subject="S1", study_dir=only_ctac, rules={}).chosen["ct"].folder == "."


def test_pins_by_uid_and_folder(tmp_path: Path):
    write_series(tmp_path / "big", description="CT big", n=6)
    write_series(tmp_path / "small", description="CT small", n=3)
    auto = build_inventory(subject="S1", study_dir=tmp_path, rules={})
    assert auto.chosen["ct"].folder == "big"
    small_uid = next(s.series_uid for s in discover_series(tmp_path) if s.folder == "small")
    by_uid = build_inventory(
        subject="S1", study_dir=tmp_path, rules={}, pins={"series_ct": small_uid}
    )
    assert by_uid.chosen["ct"].folder == "small"
    by_folder = build_inventory(
        subject="S1", study_dir=tmp_path, rules={}, pins={"ct": "small", "t1": None}
    )
    assert by_folder.chosen["ct"].folder == "small"
    assert "pinned" in next(r for r in by_folder.rows if r["chosen"])["reason"]
    with pytest.raises(SubjectInputError, match="matches 2 image series"):
        build_inventory(subject="S1", study_dir=tmp_path, rules={}, pins={"ct": "."})
    with pytest.raises(SubjectInputError, match="subject S1"):
        build_inventory(subject="S1", study_dir=tmp_path, rules={}, pins={"ct": "nowhere"})


def test_inventory_rows_json_roundtrip_and_no_identifiers(study: Path, tmp_path: Path):
    # A folder named after the patient must not leak either.
    write_series(study / "Doe_Jane_PID48151623", description="CT Doe", series_number=9, n=3)
    inventory = build_inventory(subject="S7", study_dir=study, rules={})
    assert all(tuple(row) == INVENTORY_COLUMNS for row in inventory.rows)
    assert len(inventory.rows) == 6
    path = tmp_path / "out" / "S7.json"
    inventory.to_json(path)
    again = Inventory.from_json(path)
    assert again.rows == inventory.rows
    assert again.chosen["t1"] == inventory.chosen["t1"]
    table = tmp_path / "out" / "series_inventory.csv"
    write_inventory_csv([inventory], table)
    text = table.read_text() + path.read_text()
    for value in ("Doe", "Jane", "PID48151623", "19700101"):
        assert value.lower() not in text.lower().replace("[redacted]", "")
    with table.open() as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_empty_or_missing_study_is_a_subject_error(tmp_path: Path):
    with pytest.raises(SubjectInputError, match="no DICOM series"):
        build_inventory(subject="S1", study_dir=tmp_path, rules={})
    with pytest.raises(SubjectInputError, match="subject S1"):
        build_inventory(subject="S1", study_dir=tmp_path / "absent", rules={})


def test_enhanced_multiframe_discovery(tmp_path: Path):
    highdicom = pytest.importorskip("highdicom")
    files = write_series(
        tmp_path / "classic",
        modality="MR",
        description="T1 classic",
        n=5,
        extra=CLASSIC_T1_TAGS,
    )
    enhanced = write_enhanced_mr(files, tmp_path / "enh" / "mf.dcm")
    series = {s.folder: s for s in discover_series(tmp_path)}
    assert enhanced.exists()
    mf = series["enh"]
    assert mf.multiframe and mf.n_files == 1 and mf.n_slices == 5
    assert mf.spacing_mm == series["classic"].spacing_mm
    assert mf.repetition_time_ms == 500
    assert classify_series(mf, rules={})[0] == "t1"
    del highdicom


def write_enhanced_mr(files: list[Path], out: Path) -> Path:
    """Legacy-converted enhanced MR (one multi-frame file) from a classic series, via highdicom."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    datasets = [pydicom.dcmread(f) for f in files]
    image = LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out)
    return out


@pytest.mark.shared_data
def test_ibsi_sts_inventory():
    study = DATA / "ibsi_sts_sample" / "dicom" / "STS_001"
    if not study.exists():
        pytest.skip(f"third-party test data not found at {study} (expected ../shared/data)")
    inventory = build_inventory(subject="P1", study_dir=study, rules={})
    assert {k: v.folder for k, v in inventory.chosen.items()} == {
        "ct": "CT/image",
        "t1": "MR_T1/image",
        "pet": "PET/image",
    }
    assert all(inventory.chosen[m].n_slices == 59 for m in ("ct", "t1", "pet"))
    masks = [r for r in inventory.rows if r["folder"].endswith("mask")]
    assert len(masks) == 3 and {r["modality"] for r in masks} == {"ignored"}
    assert not any(
        "STS_001" in str(v) for r in inventory.rows for k, v in r.items() if k != "subject"
    )


def test_a_slice_with_an_unreadable_header_is_reported_not_dropped(tmp_path: Path):
    """A copy cut inside the header used to vanish from discovery (an edge slice then went
    missing without a word); it is now an inventory row naming the file, and ingestion refuses
    the series it lies beside."""
    from calcirad.steps.ingest import run_ingest

    files = write_series(tmp_path / "study" / "ct", n=5, description="CT std")
    files[-1].write_bytes(files[-1].read_bytes()[:300])  # the last slice: no gap would show it
    inventory = build_inventory(subject="S1", study_dir=tmp_path / "study", rules={})
    assert [s.n_files for s in inventory.chosen.values()] == [4]
    rows = [r for r in inventory.rows if r["modality"] == "unreadable"]
    assert len(rows) == 1 and rows[0]["folder"] == "ct" and files[-1].name in rows[0]["reason"]
    assert inventory.unreadable[0][0] == str(files[-1])
    record = run_ingest(
        subject="S1",
        study_dir=tmp_path / "study",
        rules={},
        pins={},
        modalities=["ct"],
        out_json=tmp_path / "S1.json",
    )
    assert record["status"] == "failed" and not record["chosen"]
    reason = record["failures"][0]["reason"]
    assert "subject S1" in reason and "series 1 CT std" in reason
    assert f"file {files[-1].name}" in reason and "re-export" in reason
    # A non-DICOM file beside the series (no DICM marker) is still just skipped.
    (tmp_path / "study" / "ct" / "notes.bin").write_bytes(b"\x08\x00" + b"x" * 400)
    assert len(discover_series(tmp_path / "study")) == 1
