"""Write one simulated series as DICOM Part 10 files (explicit VR little endian) with pydicom.

Geometry: axial slices, ImageOrientationPatient [1,0,0,0,1,0] (IM0001 the most caudal), or coronal
slices [1,0,0,0,0,-1] (head at the top row, IM0001 the most anterior); ImagePositionPatient = LPS
mm of the first transmitted pixel of each slice, slices in increasing position along the normal.
UIDs come from ``generate_uid(entropy_srcs=...)`` so the same seed gives the same files.
A series may be written in a compressed transfer syntax (``transfer_syntax``), and a CT study may
carry a localizer (``write_localizer``), as real exports do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from calcirad.phantom.geometry import slice_geometry, to_slices
from calcirad.phantom.identity import Identity
from calcirad.phantom.modalities import Acquisition

SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
}
F18_HALF_LIFE_S = 6586.2
# PatientPosition for PET, kept where the PET IOD allows it: see _pet_tags
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0009, "CALCIRAD PHANTOM"


@dataclass(frozen=True)
class Study:
    """Everything shared by the series of one subject's study."""

    uid_seed: str  # entropy for UIDs: cohort seed + subject
    study_uid: str
    frame_uid: str
    start: dt.datetime  # study (and CT) start
    identity: Identity
    weight_kg: float
    height_m: float
    site: dict
    injection: dt.datetime
    pet_start: dt.datetime
    dose_bq: float
    half_life_s: float = F18_HALF_LIFE_S


def uid(study_seed: str, *parts: object) -> str:
    """Deterministic UID under pydicom's root from the study seed and ``parts``."""
    return generate_uid(entropy_srcs=[study_seed, *(str(p) for p in parts)])


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.000000")


def _base(study: Study, acq: Acquisition, when: dt.datetime) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS[acq.modality]
    ds.StudyDate, ds.StudyTime = _da(study.start), _tm(study.start)
    ds.SeriesDate, ds.SeriesTime = _da(when), _tm(when)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(when), _tm(when)
    ds.ContentDate, ds.ContentTime = _da(when), _tm(when)
    ds.AccessionNumber = study.identity.accession
    ds.Modality = acq.modality
    vendor = study.site["ct" if acq.modality == "CT" else "mr" if acq.modality == "MR" else "pet"]
    ds.Manufacturer = vendor["manufacturer"]
    ds.ManufacturerModelName = vendor["model"]
    ds.InstitutionName = study.site["institution"]
    ds.StationName = study.site["station"]
    ds.ReferringPhysicianName = study.identity.referring
    ds.StudyDescription = "PELVIS HANCHES"
    ds.BodyPartExamined = "PELVIS"
    ds.PatientName = study.identity.name
    ds.PatientID = study.identity.patient_id
    ds.PatientBirthDate = study.identity.birth_date
    ds.PatientSex = study.identity.sex
    ds.PatientAge = study.identity.age
    ds.PatientWeight = f"{study.weight_kg:.1f}"
    ds.PatientSize = f"{study.height_m:.2f}"
    if acq.modality != "PT":  # PET: see _pet_tags
        ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = uid(study.uid_seed, "series", acq.name)
    ds.StudyID = "1"
    ds.SeriesNumber = acq.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    geometry = slice_geometry(acq.grid, acq.plane)
    ds.ImageOrientationPatient = [int(v) for v in geometry["orientation"]]  # unit axes
    row_mm, column_mm = geometry["pixel_spacing"]
    ds.PixelSpacing = [f"{row_mm:g}", f"{column_mm:g}"]  # between rows, between columns
    ds.SliceThickness = f"{geometry['slice_mm']:g}"
    ds.SpacingBetweenSlices = f"{geometry['slice_mm']:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = geometry["rows"], geometry["columns"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _ct_tags(ds: Dataset, study: Study, acq: Acquisition) -> None:
    vendor = study.site["ct"]
    if acq.tags.get("localizer"):  # a topogram: projection image, not in HU
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = ds.ProtocolName = "Topogram 0.6 T20f"
        ds.KVP = "120"
        ds.XRayTubeCurrent = 35
        ds.ExposureTime = 2800
        ds.ConvolutionKernel = "T20f"
        ds.GantryDetectorTilt = "0"
        ds.WindowCenter, ds.WindowWidth = "1600", "3200"
        ds.RescaleType = "US"
        return
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = ds.ProtocolName = "PELVIS 3.0 " + vendor["kernel"]
    ds.KVP = "120"
    ds.XRayTubeCurrent = 180
    ds.ExposureTime = 500
    ds.ConvolutionKernel = vendor["kernel"]
    ds.GantryDetectorTilt = "0"
    ds.ReconstructionDiameter = f"{acq.grid.shape[2] * acq.grid.spacing[0]:.1f}"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleType = "HU"


def _mr_tags(ds: Dataset, study: Study, acq: Acquisition) -> None:
    field_t = float(study.site["mr"]["field_t"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SeriesDescription = ds.ProtocolName = acq.tags["description"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP", "OSP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = acq.tags["sequence_name"]
    ds.RepetitionTime = f"{acq.tags['tr_ms']:g}"
    ds.EchoTime = f"{acq.tags['te_ms']:g}"
    ds.EchoTrainLength = acq.tags["etl"]
    ds.NumberOfAverages = "1"
    ds.MagneticFieldStrength = f"{field_t:g}"
    ds.ImagingFrequency = f"{42.577478 * field_t:.6f}"
    ds.ImagedNucleus = "1H"
    ds.FlipAngle = "150" if acq.key == "t2" else "90"
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.PixelBandwidth = "200"
    contrast = acq.tags.get("contrast")
    if contrast:  # Contrast/Bolus module: post-gadolinium T1
        ds.ContrastBolusAgent = contrast["agent"]
        ds.ContrastBolusRoute = "IV"
        volume = f"{float(contrast['ml_per_kg']) * study.weight_kg:.1f}"
        ds.ContrastBolusVolume = ds.ContrastBolusTotalDose = volume
        ds.ContrastBolusIngredient = contrast["ingredient"]
        start = dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime[:6], "%Y%m%d%H%M%S")
        ds.ContrastBolusStartTime = _tm(start - dt.timedelta(minutes=float(contrast["delay_min"])))


def _pet_tags(ds: Dataset, study: Study, acq: Acquisition) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDescription = ds.ProtocolName = "PET WB AC"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.AttenuationCorrectionMethod = "CTAC"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.DecayFactor = "1"
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 180000
    ds.NumberOfSlices = acq.grid.shape[0]
    ds.CollimatorType = "NONE"  # 3D acquisition without septa
    ds.PatientOrientationCodeSequence = [_code("102538003", "SCT", "recumbent")]
    ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = [
        _code("40199007", "SCT", "supine")
    ]
    ds.PatientGantryRelationshipCodeSequence = [_code("102540008", "SCT", "headfirst")]
    # The PET IOD's mandatory (Type 2) PatientOrientationCodeSequence forbids PatientPosition
    # at the top level (PS3.3 C.7.3.1; dciodvfy: "Shall not be present when
    # PatientOrientationCodeSequence is present", even for an empty sequence), yet dcm2niix warns
    # "Patient Position (0018,5100) not specified" without it. dcm2niix reads (0018,5100) at any
    # sequence depth, so the value also goes into a private sequence item, which the IOD allows.
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    position = Dataset()
    position.PatientPosition = "HFS"
    block.add_new(0x10, "SQ", [position])
    drug = Dataset()
    drug.Radiopharmaceutical = "Fludeoxyglucose"
    drug.RadiopharmaceuticalStartTime = _tm(study.injection)
    drug.RadiopharmaceuticalStartDateTime = study.injection.strftime("%Y%m%d%H%M%S.000000")
    drug.RadionuclideTotalDose = f"{study.dose_bq:.0f}"
    drug.RadionuclideHalfLife = f"{study.half_life_s:g}"
    drug.RadionuclidePositronFraction = "0.9673"
    drug.RadionuclideCodeSequence = [_code("77004003", "SCT", "^18^Fluorine")]
    drug.RadiopharmaceuticalCodeSequence = [_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
    ds.RadiopharmaceuticalInformationSequence = [drug]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


MODALITY_TAGS = {"CT": _ct_tags, "MR": _mr_tags, "PT": _pet_tags}


def write_series(
    *,
    folder: Path,
    study: Study,
    acq: Acquisition,
    when: dt.datetime,
    stored: np.ndarray,
    slopes: list[float],
    intercept: float,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """Write ``stored`` (nz, ny, nx) as ``folder/<name>_<number>/IM####.dcm`` in ``acq.plane``
    slices and ``transfer_syntax`` (a lossless one: pixels stay identical); return the folder.
    ``slopes`` are per axial slice (PET is always axial)."""
    series_dir = folder / f"{acq.name}_{acq.series_number}"
    series_dir.mkdir(parents=True, exist_ok=True)
    ds = _base(study, acq, when)
    MODALITY_TAGS[acq.modality](ds, study, acq)
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    geometry = slice_geometry(acq.grid, acq.plane)
    slices = to_slices(stored, acq.plane)
    for k, (x, y, z) in enumerate(geometry["positions"]):
        sop = uid(study.uid_seed, acq.name, k)
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{y if acq.plane == 'coronal' else z:.4f}"
        if acq.modality != "MR":  # the MR Image IOD has no rescale (stored = scanner units)
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slopes[k]:.6g}"
        if acq.modality == "PT":
            ds.ImageIndex = k + 1
        if acq.modality == "MR":
            # interleaved 2D multi-slice: each slice excited at its own time within one TR
            # (dcm2niix derives slice timing from these and flags identical times as bogus)
            n = len(slices)
            order = (k // 2) if k % 2 == 0 else (n + 1) // 2 + k // 2
            t = when + dt.timedelta(milliseconds=order * acq.tags["tr_ms"] / n)
            ds.AcquisitionTime = t.strftime("%H%M%S.%f")
        _set_pixels(ds, slices[k], transfer_syntax)
        ds.save_as(series_dir / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return series_dir


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Store one frame, encoded losslessly when ``transfer_syntax`` is a compressed one."""
    pixels = np.ascontiguousarray(pixels)
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        return
    ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
