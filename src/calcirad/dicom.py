"""DICOM series discovery and classification, from headers only (``stop_before_pixels``).

A study folder may have any nesting and any file names (with or without ``.dcm``). Every DICOM file is
read once (header only), files are grouped by SeriesInstanceUID, and each series is classified as
``ct``, ``t1``, ``t2``, ``pet`` (``t1c`` when post-contrast T1 keywords are configured) or ``ignored``,
with the reason. Geometry is reported in DICOM patient coordinates (LPS, mm).

Classification, in this order (the first rule that applies decides):

1. Modality other than CT, MR, PT, or a non-image SOP class (secondary capture, RT, SEG, SR, ...)
   -> ignored.
2. ImageType holding LOCALIZER, MIP, MPR, PROJECTION IMAGE, ... -> ignored.
3. SeriesDescription/ProtocolName matching an ``ignore_keywords`` entry (scout, dose report, NAC...)
   -> ignored.
4. No volume geometry (fewer than 2 slice positions, several images per position) -> ignored.
5. PT without attenuation correction (CorrectedImage lacks ATTN) -> ignored; otherwise pet.
6. CT -> ct. MR -> t1c/t1/t2 by keywords; when none or both match, by timing (``mr_timing``);
   otherwise ignored.

Keywords match case-insensitively where they start a word (``t1`` matches "T1_TSE" and "t1w" but not
"st1" or "t10"); runs of spaces, ``_`` and ``-`` count as one space.

Choice among several candidates of one modality (reported in every candidate's inventory row):
a series pinned in the sample sheet wins; then primary series before fallbacks (a fallback is a
DERIVED image, or a CT attenuation map of a PET/CT, via ``fallback_keywords``: kept only when no
diagnostic series exists); then series matching the modality's ``keywords``; then the ``prefer`` rule:
``most_slices`` (most slices, then finest voxel volume, then latest series number), ``finest_spacing``
(smallest voxel volume, then most slices, then latest) or ``latest`` (highest series number, then
most slices).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .atomic import write_text
from .errors import SubjectInputError

STAGE = "ingest"
UNREADABLE = "unreadable"  # inventory label of a DICOM file whose header cannot be read
LABELS = ("ct", "t1", "t2", "pet", "t1c")

DEFAULT_CLASSIFICATION: dict = {
    "prefer": "most_slices",
    "ignore_keywords": [
        "localizer",
        "localiser",
        "scout",
        "topogram",
        "survey",
        "surview",
        "scanogram",
        "3 plane",
        "3-plane",
        "tri-plane",
        "dose report",
        "dose info",
        "patient protocol",
        "screen save",
        "screenshot",
        "secondary capture",
        "mip",
        "mpr",
        "nac",
        "noac",
        "no ac",
        "non ac",
        "uncorrected",
        "calibration",
        "phoenixzipreport",
    ],
    "keywords": {
        "ct": ["diagnostic", "standard", "std", "soft tissue", "bone"],
        "t1": ["t1", "t1w", "t1-weighted", "spgr", "flash", "vibe", "mprage"],
        "t2": ["t2", "t2w", "t2-weighted", "stir", "tirm", "fse t2", "tse t2"],
        "pet": ["ac", "pet ac", "wb", "whole body", "suv", "fdg"],
        "t1c": [
            "t1c",
            "t1+c",
            "t1 +c",
            "t1ce",
            "+c",
            "+gd",
            "gad",
            "gado",
            "post contrast",
            "postcontrast",
            "post gd",
            "post-gd",
            "contrast",
        ],
    },
    "mr_timing": {
        "t1": {"max_tr_ms": 1000.0, "max_te_ms": 30.0},
        "t2": {"min_tr_ms": 2000.0, "min_te_ms": 60.0},
    },
    # Candidates matching these are used only when no other candidate of that modality exists.
    "fallback_keywords": {
        "ct": [
            "ctac",
            "ct ac",
            "ac ct",
            "ct for ac",
            "ct atten",
            "attenuation",
            "low dose",
            "ldct",
        ],
    },
}
PREFER_RULES = ("most_slices", "finest_spacing", "latest")
PREFER_ALIASES = {"largest": "most_slices"}

IMAGE_MODALITIES = {"CT": "ct", "MR": "mr", "PT": "pet"}
IGNORED_IMAGE_TYPES = (
    "LOCALIZER",
    "SCOUT",
    "MIP",
    "MPR",
    "PROJECTION IMAGE",
    "REFORMATTED",
    "SCREEN SAVE",
    "CSAPARALLEL",
    "CSA REPORT",
    "DOSE INFO",
)
# SOP classes (and their sub-classes) that are never an image volume even when Modality is CT/MR/PT.
NON_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.481": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation/registration",
    "1.2.840.10008.5.1.4.1.1.88": "structured report",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
}
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
POSITION_DECIMALS = 2  # slice positions equal within 0.01 mm are one position
INVENTORY_COLUMNS = (
    "subject",
    "series_uid",
    "series_number",
    "folder",
    "modality",
    "reason",
    "chosen",
    "n_files",
    "rows",
    "columns",
    "n_slices",
    "spacing_mm",
    "orientation",
    "transfer_syntax",
    "description",
)


# --------------------------------------------------------------------------------------------
# Series record
# --------------------------------------------------------------------------------------------


@dataclass
class SeriesInfo:
    """One series as found on disk: header facts only, no patient identifiers.

    ``spacing_mm`` is (column spacing x, row spacing y, slice spacing z) in mm, z being the median
    distance between consecutive slice positions; ``orientation`` is ImageOrientationPatient (LPS).
    ``files`` are absolute paths sorted along the slice normal (then InstanceNumber).
    """

    series_uid: str
    modality_tag: str = ""
    sop_class_uid: str = ""
    series_number: int | None = None
    description: str = ""
    protocol: str = ""
    image_type: tuple[str, ...] = ()
    files: list[str] = field(default_factory=list)
    n_files: int = 0
    rows: int | None = None
    columns: int | None = None
    n_slices: int = 0
    n_frames: int = 0
    spacing_mm: tuple[float, ...] = ()
    orientation: tuple[float, ...] = ()
    transfer_syntax: str = ""
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    frame_of_reference_uid: str = ""
    folder: str = ""
    multiframe: bool = False
    mosaic: bool = False
    contrast_agent: bool = False
    corrected_image: tuple[str, ...] = ()
    units: str = ""
    images_per_position: int = 1
    geometry_issues: list[str] = field(default_factory=list)
    # Patient identifiers seen in this series' headers: kept in memory only so that outputs can be
    # scrubbed of them; never serialised (see to_dict).
    identifiers: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False)

    @property
    def label(self) -> str:
        """Series number and description, for messages (``"3 T1 TSE AX"``)."""
        number = "" if self.series_number is None else f"{self.series_number} "
        return f"{number}{self.description or self.protocol or self.series_uid}".strip()

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm)) if len(self.spacing_mm) == 3 else math.inf

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("identifiers")
        for key in ("image_type", "spacing_mm", "orientation", "corrected_image"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SeriesInfo:
        known = {f.name for f in fields(cls)} - {"identifiers"}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("image_type", "spacing_mm", "orientation", "corrected_image"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Header helpers (shared with calcirad.convert)
# --------------------------------------------------------------------------------------------


def floats(value: object) -> tuple[float, ...]:
    """A multi-valued DS as a tuple of floats (empty when absent)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str | bytes | int | float) or not hasattr(value, "__iter__"):
        return (float(value),)
    return tuple(float(v) for v in value)


def as_text(value: object) -> str:
    return "" if value is None else str(value).strip()


def functional_item(ds: Dataset, keyword: str, frame: int | None = None) -> Dataset | None:
    """First item of ``keyword`` in an enhanced image's per-frame (else shared) functional groups."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        sources.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        sources.append(ds.SharedFunctionalGroupsSequence[0])
    for group in sources:
        seq = group.get(keyword)
        if seq:
            return seq[0]
    return None


def is_enhanced(ds: Dataset) -> bool:
    """True for enhanced/legacy-converted multi-frame images (geometry in functional groups)."""
    return "PerFrameFunctionalGroupsSequence" in ds


def frame_geometry(ds: Dataset) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """(ImagePositionPatient, ImageOrientationPatient) per frame, LPS mm (one entry for classic)."""
    if not is_enhanced(ds):
        return [(floats(ds.get("ImagePositionPatient")), floats(ds.get("ImageOrientationPatient")))]
    out = []
    for frame in range(len(ds.PerFrameFunctionalGroupsSequence)):
        position = functional_item(ds, "PlanePositionSequence", frame)
        orientation = functional_item(ds, "PlaneOrientationSequence", frame)
        out.append(
            (
                floats(position.get("ImagePositionPatient")) if position else (),
                floats(orientation.get("ImageOrientationPatient")) if orientation else (),
            )
        )
    return out


def pixel_spacing(ds: Dataset, frame: int | None = None) -> tuple[float, ...]:
    """PixelSpacing (row spacing, column spacing) in mm, classic or enhanced."""
    if is_enhanced(ds):
        item = functional_item(ds, "PixelMeasuresSequence", frame if frame is not None else 0)
        return floats(item.get("PixelSpacing")) if item else ()
    return floats(ds.get("PixelSpacing"))


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit slice normal (row direction x column direction) of an ImageOrientationPatient, LPS."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _mr_timing(ds: Dataset) -> tuple[float | None, float | None, float | None]:
    """(TR, TE, TI) in ms, classic or enhanced MR."""
    tr, te, ti = ds.get("RepetitionTime"), ds.get("EchoTime"), ds.get("InversionTime")
    if is_enhanced(ds):
        timing = functional_item(ds, "MRTimingAndRelatedParametersSequence", 0)
        echo = functional_item(ds, "MREchoSequence", 0)
        modifier = functional_item(ds, "MRModifierSequence", 0)
        # Legacy-converted enhanced images keep classic attributes in an "unassigned" group.
        legacy = functional_item(ds, "UnassignedSharedConvertedAttributesSequence", 0) or Dataset()
        tr = timing.get("RepetitionTime") if timing else legacy.get("RepetitionTime", tr)
        te = echo.get("EffectiveEchoTime") if echo else legacy.get("EchoTime", te)
        ti = (modifier.get("InversionTimes") if modifier else None) or legacy.get(
            "InversionTime", ti
        )
    pick = [floats(v) for v in (tr, te, ti)]
    return tuple(v[0] if v else None for v in pick)


def patient_identifiers(ds: Dataset) -> set[str]:
    """Patient name (whole and parts of 3+ characters), ID and birth date as found in the header."""
    out = set()
    name = as_text(ds.get("PatientName"))
    if name:
        out.add(name)
        out.update(p for p in re.split(r"[\^= ,]+", name) if len(p) >= 3)
    for keyword in ("PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = as_text(ds.get(keyword))
        if len(value) >= 3:
            out.add(value)
    return out


def redact(text: str, identifiers: frozenset[str] | set[str]) -> str:
    """``text`` with every patient identifier replaced by ``[redacted]`` (case-insensitive)."""
    for ident in sorted(identifiers, key=len, reverse=True):
        text = re.sub(re.escape(ident), "[redacted]", text, flags=re.IGNORECASE)
    return text


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass
class _FileHeader:
    """What discovery keeps of one file (no pixels, no identifiers besides the scrub list)."""

    path: str
    ds: Dataset


def _looks_like_dicom(path: Path) -> bool:
    """Cheap content test: 'DICM' at byte 128, or a preamble-less file starting with group 0002/0008."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def _iter_files(study_dir: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(study_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(root) / name


class UnreadableDicomError(Exception):
    """A file that carries the DICOM marker but whose header cannot be read or grouped."""


def _has_dicom_marker(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_header(path: Path) -> Dataset | None:
    """Header of a DICOM image file, or None for anything else (reports, DICOMDIR, non-DICOM).

    Raises UnreadableDicomError for a file with the DICOM marker (``DICM`` at byte 128) whose
    header cannot be parsed or lacks SeriesInstanceUID (a truncated or corrupt copy): such a file
    is most likely a lost slice, which must not vanish silently.
    """
    if not _looks_like_dicom(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        if _has_dicom_marker(path):
            raise UnreadableDicomError(f"{type(error).__name__}: {error}") from error
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and as_text(meta.get("MediaStorageSOPClassUID")) == DICOMDIR_SOP:
        return None
    if "SeriesInstanceUID" not in ds:
        if _has_dicom_marker(path):
            raise UnreadableDicomError("the header ends before SeriesInstanceUID")
        return None
    return ds


def _position_along_normal(header: _FileHeader) -> tuple[float, int, str]:
    geometry = frame_geometry(header.ds)
    position, orientation = geometry[0]
    along = float(np.dot(position, slice_normal(orientation))) if position and orientation else 0.0
    number = header.ds.get("InstanceNumber")
    return along, int(number) if number not in (None, "") else 0, header.path


def _transfer_syntax(headers: list[_FileHeader]) -> str:
    names = set()
    for header in headers:
        meta = getattr(header.ds, "file_meta", None)
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        names.add(uid.keyword or str(uid) if uid else "unknown")
    return ";".join(sorted(names))


def _header_slice_spacing(ds: Dataset) -> float:
    """SpacingBetweenSlices, else SliceThickness (mm), for series with one slice position (mosaic)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        values = floats(ds.get(keyword))
        if values:
            return values[0]
    return 0.0


def mosaic_slices(ds: Dataset) -> int:
    """Number of slices in a Siemens mosaic (CSA NumberOfImagesInMosaic), 0 when unknown."""
    with warnings.catch_warnings():  # nibabel warns that its DICOM readers are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader  # only mosaics need the CSA parser

    try:
        return int(csareader.get_n_mosaic(csareader.get_csa_header(ds, "image")) or 0)
    except (KeyError, csareader.CSAReadError, TypeError, ValueError):
        return 0


def _geometry_summary(headers: list[_FileHeader]) -> dict:
    """Slice count, spacing, orientation and issues (tilt, gaps, mixed geometry) of one series."""
    frames = [g for h in headers for g in frame_geometry(h.ds)]
    orientations = {tuple(round(v, 4) for v in o) for _, o in frames if o}
    positions = [np.asarray(p) for p, _ in frames if p]
    summary = {"n_frames": len(frames), "issues": [], "n_slices": 0, "orientation": ()}
    if not orientations or len(positions) != len(frames):
        summary["issues"].append("no ImagePositionPatient/ImageOrientationPatient")
        return summary
    if len(orientations) > 1:
        summary["issues"].append(f"{len(orientations)} different orientations in one series")
    orientation = frame_geometry(headers[0].ds)[0][1]
    normal = slice_normal(orientation)
    along = np.array([np.dot(p, normal) for p in positions])
    unique = np.unique(np.round(along, POSITION_DECIMALS))
    summary.update(orientation=tuple(orientation), n_slices=int(len(unique)))
    summary["images_per_position"] = int(math.ceil(len(frames) / max(len(unique), 1)))
    gaps = np.diff(unique)
    row_col = pixel_spacing(headers[0].ds)
    z = float(np.median(gaps)) if len(gaps) else _header_slice_spacing(headers[0].ds)
    summary["spacing"] = (row_col[1], row_col[0], z) if len(row_col) == 2 else ()
    if len(gaps) and gaps.max() - gaps.min() > max(0.01, 0.01 * z):
        summary["issues"].append(
            f"non-uniform slice spacing ({gaps.min():.3f}-{gaps.max():.3f} mm)"
        )
    if len(positions) > 1:
        ordered = sorted(positions, key=lambda p: float(np.dot(p, normal)))
        shift = ordered[-1] - ordered[0]
        off_normal = np.linalg.norm(shift - np.dot(shift, normal) * normal)
        if off_normal > 0.01:
            angle = math.degrees(math.atan2(off_normal, abs(np.dot(shift, normal))))
            summary["issues"].append(
                f"slices sheared off the normal by {angle:.2f} deg (gantry tilt)"
            )
    return summary


def _series_from_headers(headers: list[_FileHeader], study_dir: Path) -> SeriesInfo:
    headers = sorted(headers, key=_position_along_normal)
    first = headers[0].ds
    geometry = _geometry_summary(headers)
    tr, te, ti = _mr_timing(first)
    folders = {str(Path(h.path).parent) for h in headers}
    folder = os.path.relpath(os.path.commonpath(sorted(folders)), study_dir)
    image_type = tuple(v.upper() for v in floats_or_text(first.get("ImageType")))
    identifiers = set().union(*(patient_identifiers(h.ds) for h in headers))
    return SeriesInfo(
        series_uid=as_text(first.SeriesInstanceUID),
        modality_tag=as_text(first.get("Modality")).upper(),
        sop_class_uid=as_text(first.get("SOPClassUID")),
        series_number=int(first.SeriesNumber)
        if first.get("SeriesNumber") not in (None, "")
        else None,
        description=as_text(first.get("SeriesDescription")),
        protocol=as_text(first.get("ProtocolName")),
        image_type=image_type,
        # Absolute but not resolved: a symlinked file stays inside the study folder's tree.
        files=[os.path.abspath(h.path) for h in headers],
        n_files=len(headers),
        rows=first.get("Rows"),
        columns=first.get("Columns"),
        n_slices=mosaic_slices(first) if "MOSAIC" in image_type else geometry["n_slices"],
        n_frames=geometry["n_frames"],
        spacing_mm=tuple(round(v, 6) for v in geometry.get("spacing", ())),
        orientation=tuple(round(v, 6) for v in geometry["orientation"]),
        transfer_syntax=_transfer_syntax(headers),
        repetition_time_ms=tr,
        echo_time_ms=te,
        inversion_time_ms=ti,
        frame_of_reference_uid=as_text(first.get("FrameOfReferenceUID")),
        folder="." if folder == "." else folder.replace(os.sep, "/"),
        multiframe=is_enhanced(first) or int(first.get("NumberOfFrames") or 1) > 1,
        mosaic="MOSAIC" in image_type,
        contrast_agent=bool(as_text(first.get("ContrastBolusAgent"))),
        corrected_image=tuple(v.upper() for v in floats_or_text(first.get("CorrectedImage"))),
        units=as_text(first.get("Units")).upper(),
        images_per_position=geometry.get("images_per_position", 1),
        geometry_issues=geometry["issues"],
        identifiers=frozenset(identifiers),
    )


def floats_or_text(value: object) -> tuple[str, ...]:
    """A CS value, single or multiple, as a tuple of stripped strings."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split("\\"))
    return tuple(str(v).strip() for v in value)


def discover_series(
    study_dir: Path, *, unreadable: list[tuple[str, str]] | None = None
) -> list[SeriesInfo]:
    """Every series under ``study_dir`` (any nesting and file names), ordered by series number.

    Non-DICOM files and DICOMDIR are skipped; files without SeriesInstanceUID cannot be grouped and
    are skipped too. Files with the DICOM marker whose header cannot be read are appended to
    ``unreadable`` as (absolute path, reason) when a list is given.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise SubjectInputError(
            f"study folder {study_dir} does not exist or is not a folder",
            stage=STAGE,
            hint="check the dicom column of the sample sheet",
        )
    groups: dict[str, list[_FileHeader]] = defaultdict(list)
    for path in _iter_files(study_dir):
        try:
            ds = _read_header(path)
        except UnreadableDicomError as error:
            if unreadable is not None:
                unreadable.append((os.path.abspath(path), str(error)))
            continue
        if ds is not None:
            groups[as_text(ds.SeriesInstanceUID)].append(_FileHeader(str(path), ds))
    series = [_series_from_headers(headers, study_dir) for headers in groups.values()]
    return sorted(
        series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid)
    )


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def merged_rules(rules: dict | None) -> dict:
    """``rules`` over DEFAULT_CLASSIFICATION, key by key (a partial config slice is enough)."""
    merged = copy.deepcopy(DEFAULT_CLASSIFICATION)
    for key, value in (rules or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        elif value is not None:
            merged[key] = copy.deepcopy(value)
    prefer = PREFER_ALIASES.get(merged["prefer"], merged["prefer"])
    if prefer not in PREFER_RULES:
        raise ValueError(f"ingest.prefer {merged['prefer']!r}: expected one of {PREFER_RULES}")
    merged["prefer"] = prefer
    return merged


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.lower()).strip()


def matching_keyword(text: str, keywords: list[str]) -> str | None:
    """First keyword found at a word start in ``text`` and not followed by a digit, else None."""
    norm = _normalise(text)
    for keyword in keywords:
        pattern = r"(?<![a-z0-9])" + re.escape(_normalise(keyword)) + r"(?![0-9])"
        if re.search(pattern, norm):
            return keyword
    return None


@dataclass(frozen=True)
class Decision:
    """Classification of one series: label, reason, and whether it is only a fallback candidate."""

    label: str
    reason: str
    fallback: bool = False
    preferred_keyword: bool = False


def _described(series: SeriesInfo) -> str:
    return " | ".join(t for t in (series.description, series.protocol) if t)


def _non_volume_reason(series: SeriesInfo, rules: dict) -> str | None:
    """Why a series is not an image volume the pipeline can use, or None."""
    if series.modality_tag not in IMAGE_MODALITIES:
        return f"Modality {series.modality_tag or 'missing'} is not CT, MR or PT"
    for prefix, what in NON_VOLUME_SOP_CLASSES.items():
        if series.sop_class_uid == prefix or series.sop_class_uid.startswith(prefix + "."):
            return f"SOP class {series.sop_class_uid} is a {what}, not an image volume"
    hit = next((t for t in IGNORED_IMAGE_TYPES if t in series.image_type), None)
    if hit:
        return f"ImageType contains {hit}"
    keyword = matching_keyword(_described(series), rules["ignore_keywords"])
    if keyword:
        return f"description {_described(series)!r} matches ignore keyword {keyword!r}"
    if not series.rows or not series.orientation:
        return "no image geometry (Rows/ImageOrientationPatient missing)"
    if series.images_per_position > 1 and not series.mosaic:
        return (
            f"{series.n_frames} images at {series.n_slices} positions (multi-echo, dynamic or "
            "diffusion series): not one 3D volume"
        )
    if series.n_slices < 2 and not series.mosaic:
        return "a single slice, not a volume"
    return None


def _classify_mr(series: SeriesInfo, rules: dict) -> tuple[str, str]:
    text = _described(series)
    keywords = rules["keywords"]
    hits = {lab: matching_keyword(text, keywords.get(lab, [])) for lab in ("t1", "t2")}
    contrast = matching_keyword(text, keywords.get("t1c", [])) if keywords.get("t1c") else None
    if hits["t1"] and not hits["t2"]:
        if contrast or (series.contrast_agent and keywords.get("t1c")):
            why = f"keyword {contrast!r}" if contrast else "ContrastBolusAgent set"
            return "t1c", f"MR T1 keyword {hits['t1']!r} and post-contrast ({why})"
        return "t1", f"MR description {text!r} matches T1 keyword {hits['t1']!r}"
    if hits["t2"] and not hits["t1"]:
        return "t2", f"MR description {text!r} matches T2 keyword {hits['t2']!r}"
    return _classify_mr_timing(series, rules, ambiguous=all(hits.values()))


def _classify_mr_timing(series: SeriesInfo, rules: dict, *, ambiguous: bool) -> tuple[str, str]:
    """Fallback on TR/TE: short TR and TE -> T1, long TR and TE -> T2."""
    tr, te = series.repetition_time_ms, series.echo_time_ms
    why = "both T1 and T2 keywords" if ambiguous else "no T1/T2 keyword"
    if tr is None or te is None:
        return "ignored", f"MR with {why} and no RepetitionTime/EchoTime"
    t1, t2 = rules["mr_timing"]["t1"], rules["mr_timing"]["t2"]
    timing = f"TR {tr:g} ms, TE {te:g} ms"
    if tr <= t1["max_tr_ms"] and te <= t1["max_te_ms"]:
        return (
            "t1",
            f"MR with {why}; {timing} within T1 timing (TR<={t1['max_tr_ms']:g}, TE<={t1['max_te_ms']:g})",
        )
    if tr >= t2["min_tr_ms"] and te >= t2["min_te_ms"]:
        return (
            "t2",
            f"MR with {why}; {timing} within T2 timing (TR>={t2['min_tr_ms']:g}, TE>={t2['min_te_ms']:g})",
        )
    return "ignored", f"MR with {why}; {timing} matches neither T1 nor T2 timing (PD/GRE/other)"


def _decide(series: SeriesInfo, rules: dict) -> Decision:
    ignored = _non_volume_reason(series, rules)
    if ignored:
        return Decision("ignored", ignored)
    kind = IMAGE_MODALITIES[series.modality_tag]
    if kind == "pet":
        if series.corrected_image and "ATTN" not in series.corrected_image:
            return Decision(
                "ignored", "PET without attenuation correction (CorrectedImage lacks ATTN)"
            )
        label, reason = "pet", "Modality PT, attenuation corrected"
    elif kind == "ct":
        label, reason = "ct", "Modality CT"
    else:
        label, reason = _classify_mr(series, rules)
        if label == "ignored":
            return Decision(label, reason)
    notes, fallback = [], False
    fallback_kw = matching_keyword(
        _described(series), rules.get("fallback_keywords", {}).get(label, [])
    )
    if fallback_kw:
        fallback = True
        notes.append(
            f"fallback: keyword {fallback_kw!r} (e.g. CT attenuation map), used only when no other {label} exists"
        )
    if series.image_type[:1] == ("DERIVED",):
        fallback = True
        notes.append(f"fallback: DERIVED image, used only when no ORIGINAL {label} exists")
    if series.geometry_issues:
        notes.append("geometry: " + "; ".join(series.geometry_issues))
    preferred = bool(matching_keyword(_described(series), rules["keywords"].get(label, [])))
    return Decision(label, "; ".join([reason, *notes]), fallback, preferred)


def classify_series(series: SeriesInfo, *, rules: dict) -> tuple[str, str]:
    """(label, reason): label in ct, t1, t2, pet, t1c (only with t1c keywords) or ignored."""
    decision = _decide(series, merged_rules(rules))
    return decision.label, decision.reason


# --------------------------------------------------------------------------------------------
# Choice and inventory
# --------------------------------------------------------------------------------------------


def _preference_key(series: SeriesInfo, decision: Decision, prefer: str) -> tuple:
    """Sort key, smallest first = best."""
    number = series.series_number if series.series_number is not None else -1
    by_rule = {
        "most_slices": (-series.n_slices, series.voxel_volume_mm3, -number),
        "finest_spacing": (series.voxel_volume_mm3, -series.n_slices, -number),
        "latest": (-number, -series.n_slices, series.voxel_volume_mm3),
    }[prefer]
    return (decision.fallback, not decision.preferred_keyword, *by_rule, series.series_uid)


def _describe_choice(winner: SeriesInfo, decision: Decision, n: int, prefer: str) -> str:
    basis = "fallback candidate (no primary series)" if decision.fallback else "primary candidate"
    return (
        f"chosen among {n} candidate(s) by rule {prefer}: {basis}, "
        f"{winner.n_slices} slices, spacing {_fmt(winner.spacing_mm)} mm, series {winner.series_number}"
    )


def _fmt(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:g}" for v in values)


def _is_blank(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or str(value).strip() == ""
    )


def _resolve_pin(
    *,
    label: str,
    pin: str,
    series: list[SeriesInfo],
    decisions: dict,
    study_dir: Path,
    subject: str,
) -> SeriesInfo:
    """The series a sample-sheet pin (SeriesInstanceUID or folder) designates."""
    by_uid = [s for s in series if s.series_uid == pin]
    if by_uid:
        return by_uid[0]
    pin_path = Path(pin)
    rel = os.path.relpath(pin_path, study_dir) if pin_path.is_absolute() else pin
    rel = os.path.normpath(rel).replace(os.sep, "/")
    inside = [
        s
        for s in series
        if s.folder == rel or s.folder.startswith(rel.rstrip("/") + "/") or rel == "."
    ]
    usable = [s for s in inside if decisions[s.series_uid].label == label] or [
        s for s in inside if s.rows and s.orientation
    ]
    if len(usable) == 1:
        return usable[0]
    found = ", ".join(f"{s.label} ({s.folder})" for s in usable) or "none"
    raise SubjectInputError(
        f"pinned {label} series {pin!r} matches {len(usable)} image series: {found}",
        subject=subject,
        stage=STAGE,
        hint=f"pin series_{label} by SeriesInstanceUID, or by a folder holding exactly one series",
    )


def _clean_pins(pins: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for key, value in (pins or {}).items():
        label = key.removeprefix("series_")
        if label in LABELS and not _is_blank(value):
            out[label] = str(value).strip()
    return out


@dataclass
class Inventory:
    """Every series of one subject, its classification, and the series chosen per modality."""

    subject: str
    rows: list[dict]
    chosen: dict[str, SeriesInfo]
    rules: dict = field(default_factory=dict)
    # (absolute path, reason) of files with the DICOM marker whose header cannot be read
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self, path: Path) -> None:
        """Write atomically (UTF-8 JSON; file paths are those of the study folder)."""
        payload = {
            "subject": self.subject,
            "rules": self.rules,
            "rows": self.rows,
            "chosen": {label: s.to_dict() for label, s in self.chosen.items()},
        }
        write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> Inventory:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            subject=payload["subject"],
            rows=payload["rows"],
            chosen={k: SeriesInfo.from_dict(v) for k, v in payload["chosen"].items()},
            rules=payload.get("rules", {}),
        )


def _row(*, subject: str, series: SeriesInfo, label: str, reason: str, chosen: bool) -> dict:
    ids = series.identifiers
    return {
        "subject": subject,
        "series_uid": series.series_uid,
        "series_number": series.series_number,
        "folder": redact(series.folder, ids),
        "modality": label,
        "reason": redact(reason, ids),
        "chosen": chosen,
        "n_files": series.n_files,
        "rows": series.rows,
        "columns": series.columns,
        "n_slices": series.n_slices,
        "spacing_mm": _fmt(series.spacing_mm),
        "orientation": " ".join(f"{v:g}" for v in series.orientation),
        "transfer_syntax": series.transfer_syntax,
        "description": redact(series.description, ids),
    }


def build_inventory(
    *, subject: str, study_dir: Path, rules: dict, pins: dict[str, str] | None = None
) -> Inventory:
    """Discover, classify and choose one series per modality for ``subject``.

    ``pins`` maps a modality (``ct`` or ``series_ct`` as in the sample sheet) to a SeriesInstanceUID
    or a folder relative to ``study_dir``; a pinned series is chosen whatever the classifier said.
    Rows follow INVENTORY_COLUMNS; text is scrubbed of the patient's name, ID and birth date.
    """
    rules = merged_rules(rules)
    study_dir = Path(study_dir)
    unreadable: list[tuple[str, str]] = []
    try:
        series = discover_series(study_dir, unreadable=unreadable)
    except SubjectInputError as error:  # discovery does not know the subject: add it
        raise SubjectInputError(
            error.reason, subject=subject, stage=STAGE, hint=error.hint
        ) from None
    if not series:
        raise SubjectInputError(
            f"no DICOM series found under {study_dir}",
            subject=subject,
            stage=STAGE,
            hint="check the dicom column of the sample sheet",
        )
    decisions = {s.series_uid: _decide(s, rules) for s in series}
    pinned = {
        label: _resolve_pin(
            label=label,
            pin=pin,
            series=series,
            decisions=decisions,
            study_dir=study_dir,
            subject=subject,
        )
        for label, pin in _clean_pins(pins).items()
    }
    for label, chosen_series in pinned.items():
        old = decisions[chosen_series.series_uid]
        decisions[chosen_series.series_uid] = Decision(
            label, f"pinned by the sample sheet as {label} (classifier: {old.label}: {old.reason})"
        )
    chosen, notes = _choose(series, decisions, pinned, rules["prefer"])
    rows = []
    for s in series:
        decision = decisions[s.series_uid]
        reason = "; ".join(filter(None, [decision.reason, notes.get(s.series_uid)]))
        is_chosen = chosen.get(decision.label) is s
        rows.append(
            _row(subject=subject, series=s, label=decision.label, reason=reason, chosen=is_chosen)
        )
    identifiers = frozenset().union(*(s.identifiers for s in series))
    for path, why in unreadable:
        relative = Path(os.path.relpath(path, study_dir))
        rows.append(
            {
                **dict.fromkeys(INVENTORY_COLUMNS),
                "subject": subject,
                "folder": redact(relative.parent.as_posix(), identifiers),
                "modality": UNREADABLE,
                "reason": redact(
                    f"file {relative.name}: DICOM header unreadable ({why})", identifiers
                ),
                "chosen": False,
                "n_files": 1,
            }
        )
    return Inventory(subject=subject, rows=rows, chosen=chosen, rules=rules, unreadable=unreadable)


def _choose(series, decisions, pinned, prefer) -> tuple[dict[str, SeriesInfo], dict[str, str]]:
    """Best candidate per label and a note for every candidate saying why it was or was not chosen."""
    candidates: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        if decisions[s.series_uid].label != "ignored":
            candidates[decisions[s.series_uid].label].append(s)
    chosen, notes = {}, {}
    for label, group in candidates.items():
        if label in pinned:
            winner = pinned[label]
            notes[winner.series_uid] = (
                f"chosen: pinned in the sample sheet ({len(group)} candidate(s))"
            )
        else:
            group = sorted(group, key=lambda s: _preference_key(s, decisions[s.series_uid], prefer))
            winner = group[0]
            notes[winner.series_uid] = _describe_choice(
                winner, decisions[winner.series_uid], len(group), prefer
            )
        chosen[label] = winner
        for other in group:
            if other is not winner:
                notes[other.series_uid] = (
                    f"not chosen: series {winner.series_number} ({winner.description!r}) preferred"
                )
    return chosen, notes


def write_inventory_csv(inventories: list[Inventory], path: Path) -> None:
    """All subjects' rows in one CSV with INVENTORY_COLUMNS, written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INVENTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for inventory in inventories:
        writer.writerows(inventory.rows)
    write_text(path, buffer.getvalue())
