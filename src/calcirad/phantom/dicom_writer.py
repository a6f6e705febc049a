"""Write one simulated series as DICOM Part 10 files (explicit VR little endian) with pydicom.

Geometry: axial slices, ImageOrientationPatient [1,0,0,0,1,0], ImagePositionPatient = LPS mm of
the first voxel of each slice, slices ordered by increasing z (IM0001 is the most caudal).
UIDs come from ``generate_uid(entropy_srcs=...)`` so the same seed gives the same files.
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

from calcirad.phantom.identity import Identity
from calcirad.phantom.modalities import Acquisition

SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
}
F18_HALF_LIFE_S = 6586.2


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
    if acq.modality != "PT":
        # PET carries the NM/PET Patient Orientation module instead: the standard forbids
        # PatientPosition beside PatientOrientationCodeSequence (dciodvfy error); dcm2niix then
        # warns "Patient Position (0018,5100) not specified", harmless for axial images
        ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = uid(study.uid_seed, "series", acq.name)
    ds.StudyID = "1"
    ds.SeriesNumber = acq.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    sx, sy, sz = acq.grid.spacing
    ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]  # row spacing (y), column spacing (x)
    ds.SliceThickness = f"{sz:g}"
    ds.SpacingBetweenSlices = f"{sz:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = acq.grid.shape[1], acq.grid.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _ct_tags(ds: Dataset, study: Study, acq: Acquisition) -> None:
    vendor = study.site["ct"]
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
) -> Path:
    """Write ``stored`` (nz, ny, nx) as ``folder/<name>_<number>/IM####.dcm``; return the folder."""
    series_dir = folder / f"{acq.name}_{acq.series_number}"
    series_dir.mkdir(parents=True, exist_ok=True)
    ds = _base(study, acq, when)
    MODALITY_TAGS[acq.modality](ds, study, acq)
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    x0, y0, z0 = acq.grid.origin
    dz = acq.grid.spacing[2]
    for k in range(stored.shape[0]):
        sop = uid(study.uid_seed, acq.name, k)
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        z = z0 + k * dz
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        if acq.modality != "MR":  # the MR Image IOD has no rescale (stored = scanner units)
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slopes[k]:.6g}"
        if acq.modality == "PT":
            ds.ImageIndex = k + 1
        if acq.modality == "MR":
            # interleaved 2D multi-slice: each slice excited at its own time within one TR
            # (dcm2niix derives slice timing from these and flags identical times as bogus)
            order = (k // 2) if k % 2 == 0 else (stored.shape[0] + 1) // 2 + k // 2
            t = when + dt.timedelta(milliseconds=order * acq.tags["tr_ms"] / stored.shape[0])
            ds.AcquisitionTime = t.strftime("%H%M%S.%f")
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(series_dir / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return series_dir
