"""Convert one chosen DICOM series to NIfTI with dcm2niix, then prove the result against pydicom.

The converter is not trusted blindly. After conversion, and again on the file actually written:

- every DICOM slice (classic file, enhanced frame or Siemens mosaic tile) is located in the NIfTI
  through the NIfTI affine: the voxel centre of its first pixel and of its opposite corner must lie
  within 0.01 mm of the position DICOM gives (ImagePositionPatient + pixel offsets, LPS; the NIfTI
  affine is RAS, so x and y are negated), and its row/column steps must be voxel axes;
- its voxel values must equal pydicom's ``pixel_array * RescaleSlope + RescaleIntercept`` with that
  slice's own slope (PET) within ``max(1e-3, 1e-5 * max|value|)`` (float32 rounding);
- the slice count must equal the number of DICOM slices, each NIfTI slice hit exactly once.

This catches a converter that misplaces a volume in world space (e.g. after tilt correction) or
decodes a JPEG 2000 slice with the wrong sign (0..8191 instead of HU). Geometry the pipeline cannot
use faithfully is refused before conversion with a message: gantry tilt (slices sheared off the
normal), missing slices (a gap over 1.5x the median), non-uniform spacing (gaps differing by more than
max(0.01 mm, 1 %)), duplicate positions, mixed orientation or matrix.

PET is scaled to SUV (float32) with :mod:`calcirad.suv` after the value check; images already in SUV
(Units GML) get factor 1. dcm2niix runs with ``-p n`` for Philips MR only, which keeps the DICOM rescale (the
values pydicom gives) rather than Philips' private "precise" scaling; everything else runs with
``-p y``, under which dcm2niix honours per-slice PET slopes (with ``-p n`` it ignores them: the
verification caught exactly that on the STS PET).

The sidecar is dcm2niix's de-identified BIDS JSON (``-ba y``), scrubbed again of the patient's name,
ID and birth date, plus a ``calcirad`` block (verification record, dcm2niix version, SUV factor).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from . import __version__
from .atomic import atomic_path, write_text
from .dicom import (
    as_text,
    floats,
    functional_item,
    is_enhanced,
    mosaic_slices,
    patient_identifiers,
    pixel_spacing,
    redact,
    slice_normal,
)
from .errors import SubjectInputError
from .suv import rescaled_pixels, suv_scale_factors

STAGE = "convert"
POSITION_TOLERANCE_MM = 0.01
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Removed from the sidecar whatever dcm2niix's anonymisation kept (names, IDs, dates, places).
SIDECAR_DROP = re.compile(
    r"^(Patient\w*|\w*BirthDate|AccessionNumber|Institution\w*|ReferringPhysician\w*|"
    r"StationName|DeviceSerialNumber|StudyID|\w*(Date|DateTime))$"
)


@dataclass
class Frame:
    """One 2D DICOM slice: its values (rows x columns, rescaled) and where it lies (LPS, mm)."""

    position: np.ndarray  # ImagePositionPatient: centre of the first transmitted pixel
    row_dir: np.ndarray  # direction of increasing column index (IOP[:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:])
    spacing: tuple[float, float]  # (row spacing, column spacing) mm
    values: np.ndarray
    file: str
    dataset: Dataset

    @property
    def normal(self) -> np.ndarray:
        return slice_normal((*self.row_dir, *self.col_dir))


@dataclass(frozen=True)
class _Where:
    """Subject and series for messages."""

    subject: str
    series: str

    def fail(self, reason: str, *, hint: str, file: str | None = None) -> SubjectInputError:
        return SubjectInputError(
            reason, subject=self.subject, stage=STAGE, series=self.series, file=file, hint=hint
        )


# --------------------------------------------------------------------------------------------
# dcm2niix
# --------------------------------------------------------------------------------------------


def dcm2niix_binary() -> str:
    """Path of the dcm2niix executable: on PATH, else the one shipped by the dcm2niix package."""
    found = shutil.which("dcm2niix")
    if found:
        return found
    import dcm2niix  # the PyPI wheel carries the binary

    return str(dcm2niix.bin)


@lru_cache(maxsize=1)
def dcm2niix_version() -> str:
    """dcm2niix version string, e.g. ``v1.0.20250506``."""
    result = subprocess.run(
        [dcm2niix_binary(), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"v\d+\.\d+\.\d+\w*", result.stdout + result.stderr)
    return match.group(0) if match else (result.stdout + result.stderr).strip()[:80]


def _philips_private_scaling(path: Path) -> bool:
    """True when dcm2niix's default ``-p y`` would replace the DICOM rescale by Philips' private one.

    ``-p n`` is used only then: it keeps the DICOM rescale but also makes dcm2niix ignore slopes
    that vary between slices, so it must not be used for PET.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    philips = "PHILIPS" in as_text(ds.get("Manufacturer")).upper()
    return philips and as_text(ds.get("Modality")).upper() == "MR" and (0x2005, 0x100E) in ds


def _run_dcm2niix(files: list[Path], work: Path, where: _Where) -> tuple[Path, Path]:
    """Convert exactly these files (symlinked alone into a folder); returns (nifti, json)."""
    source, out = work / "dicom", work / "nifti"
    source.mkdir()
    out.mkdir()
    for index, path in enumerate(files):
        os.symlink(Path(path).resolve(), source / f"{index:05d}.dcm")
    precise = "n" if _philips_private_scaling(files[0]) else "y"
    command = [
        dcm2niix_binary(),
        "-z",
        "y",
        "-b",
        "y",
        "-ba",
        "y",
        "-p",
        precise,
        "-i",
        "n",
        "-w",
        "1",
    ]
    command += ["-f", "image", "-o", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    images = sorted(out.glob("*.nii.gz"))
    if result.returncode != 0 or len(images) != 1:
        log = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise where.fail(
            f"dcm2niix {dcm2niix_version()} gave {len(images)} NIfTI file(s) "
            f"{[p.name for p in images]} (exit {result.returncode}); expected one. Log: {log}",
            hint="the series may mix echoes, orientations or sizes: pin a single series",
        )
    sidecar = images[0].with_name(images[0].name.replace(".nii.gz", ".json"))
    return images[0], sidecar


# --------------------------------------------------------------------------------------------
# pydicom side: frames with positions and rescaled values
# --------------------------------------------------------------------------------------------


def _classic_frames(ds: Dataset, path: str) -> list[Frame]:
    iop = floats(ds.get("ImageOrientationPatient"))
    return [
        Frame(
            position=np.asarray(floats(ds.get("ImagePositionPatient"))),
            row_dir=np.asarray(iop[:3]),
            col_dir=np.asarray(iop[3:6]),
            spacing=tuple(pixel_spacing(ds)),
            values=rescaled_pixels(ds),
            file=path,
            dataset=ds,
        )
    ]


def _enhanced_frames(ds: Dataset, path: str) -> list[Frame]:
    """Frames of an enhanced (or legacy-converted) multi-frame image, each with its own rescale."""
    pixels = ds.pixel_array.astype(np.float64)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    frames = []
    for index in range(pixels.shape[0]):
        position = functional_item(ds, "PlanePositionSequence", index)
        orientation = functional_item(ds, "PlaneOrientationSequence", index)
        transform = functional_item(ds, "PixelValueTransformationSequence", index) or ds
        slope = floats(transform.get("RescaleSlope")) or (1.0,)
        intercept = floats(transform.get("RescaleIntercept")) or (0.0,)
        iop = floats(orientation.get("ImageOrientationPatient"))
        frames.append(
            Frame(
                position=np.asarray(floats(position.get("ImagePositionPatient"))),
                row_dir=np.asarray(iop[:3]),
                col_dir=np.asarray(iop[3:6]),
                spacing=tuple(pixel_spacing(ds, index)),
                values=pixels[index] * slope[0] + intercept[0],
                file=f"{path} frame {index + 1}",
                dataset=ds,
            )
        )
    return frames


def _mosaic_frames(ds: Dataset, path: str, where: _Where) -> list[Frame]:
    """Tiles of a Siemens mosaic; tile positions as nibabel derives them (CSA slice normal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader
    count = mosaic_slices(ds)
    if not count:
        raise where.fail(
            "mosaic without NumberOfImagesInMosaic in the CSA header",
            hint="convert an export that keeps the Siemens CSA header",
            file=path,
        )
    size = math.ceil(math.sqrt(count))
    rows, cols = ds.Rows // size, ds.Columns // size
    iop = floats(ds.ImageOrientationPatient)
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:6])
    spacing = pixel_spacing(ds)
    # The mosaic's IPP is that of the whole slab; move it to the first tile's first pixel.
    first = np.asarray(floats(ds.ImagePositionPatient)) + (
        (ds.Rows - rows) / 2 * spacing[0] * col_dir + (ds.Columns - cols) / 2 * spacing[1] * row_dir
    )
    normal = csareader.get_slice_normal(csareader.get_csa_header(ds, "image"))
    normal = np.asarray(normal if normal is not None else slice_normal(iop), float)
    step = floats(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness"))[0]
    slab = rescaled_pixels(ds)
    frames = []
    for index in range(count):
        block_row, block_col = divmod(index, size)
        frames.append(
            Frame(
                position=first + index * step * normal,
                row_dir=row_dir,
                col_dir=col_dir,
                spacing=tuple(spacing),
                values=slab[
                    block_row * rows : (block_row + 1) * rows,
                    block_col * cols : (block_col + 1) * cols,
                ],
                file=f"{path} tile {index + 1}",
                dataset=ds,
            )
        )
    return frames


def read_frames(files: list[Path], *, subject: str = "", series: str = "") -> list[Frame]:
    """Every 2D slice of the series with pydicom, sorted along the slice normal (LPS, mm)."""
    where = _Where(subject, series)
    frames = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            if "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])]:
                frames += _mosaic_frames(ds, str(path), where)
            elif is_enhanced(ds):
                frames += _enhanced_frames(ds, str(path))
            else:
                frames += _classic_frames(ds, str(path))
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as error:
            raise where.fail(
                f"pydicom cannot read the image: {error}",
                hint="re-copy or re-export the series (a truncated copy looks like this); "
                "a missing decoder plugin would also cause it",
                file=Path(path).name,
            ) from error
    if not frames or any(len(f.position) != 3 or len(f.spacing) != 2 for f in frames):
        raise where.fail(
            "slices lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
            hint="only images with patient geometry can be converted",
        )
    normal = frames[0].normal
    return sorted(frames, key=lambda f: float(np.dot(f.position, normal)))


# --------------------------------------------------------------------------------------------
# Geometry checks before conversion
# --------------------------------------------------------------------------------------------


def check_geometry(frames: list[Frame], *, subject: str = "", series: str = "") -> dict:
    """Refuse what one regular 3D grid cannot hold; returns slice spacing facts for the record."""
    where = _Where(subject, series)
    hint = "pin another series in the sample sheet, or re-export/reconstruct this one"
    first = frames[0]
    for frame in frames:
        same = (
            np.allclose(frame.row_dir, first.row_dir, atol=1e-4)
            and np.allclose(frame.col_dir, first.col_dir, atol=1e-4)
            and frame.values.shape == first.values.shape
            and np.allclose(frame.spacing, first.spacing, atol=1e-4)
        )
        if not same:
            raise where.fail(
                "slices differ in orientation, matrix or pixel spacing",
                hint=hint,
                file=Path(frame.file).name,
            )
    normal = first.normal
    along = np.array([np.dot(f.position, normal) for f in frames])
    gaps = np.diff(along)
    if len(frames) < 2:
        raise where.fail("a single slice is not a volume", hint=hint)
    if np.any(gaps < POSITION_TOLERANCE_MM):
        at = int(np.argmin(gaps))
        raise where.fail(
            f"two slices at the same position ({along[at]:.2f} mm along the normal): "
            f"{Path(frames[at].file).name}, {Path(frames[at + 1].file).name} "
            "(multi-echo, dynamic or duplicated images)",
            hint=hint,
        )
    shift = frames[-1].position - frames[0].position
    off_normal = float(np.linalg.norm(shift - np.dot(shift, normal) * normal))
    if off_normal > POSITION_TOLERANCE_MM:
        angle = math.degrees(math.atan2(off_normal, abs(float(np.dot(shift, normal)))))
        raise where.fail(
            f"gantry tilt: slice positions are sheared {angle:.2f} deg off the slice normal "
            f"({off_normal:.2f} mm over the stack); refused rather than resampled",
            hint="reconstruct the CT without tilt (or with tilt correction at the scanner)",
        )
    median = float(np.median(gaps))
    if gaps.max() > 1.5 * median:
        at = int(np.argmax(gaps))
        missing = round(gaps[at] / median) - 1
        raise where.fail(
            f"missing slices: a {gaps[at]:.2f} mm gap (about {missing} slice(s) at {median:.2f} mm) "
            f"between {Path(frames[at].file).name} and {Path(frames[at + 1].file).name}",
            hint="re-export the complete series",
        )
    if gaps.max() - gaps.min() > max(POSITION_TOLERANCE_MM, 0.01 * median):
        raise where.fail(
            f"non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm",
            hint="reconstruct with constant spacing, or pin another series",
        )
    return {
        "slice_spacing_mm": median,
        "slice_gap_range_mm": [float(gaps.min()), float(gaps.max())],
    }


# --------------------------------------------------------------------------------------------
# Verification of a NIfTI against the frames
# --------------------------------------------------------------------------------------------


def _axis_step(vector: np.ndarray) -> np.ndarray | None:
    """``vector`` rounded to a signed unit axis (voxel index step), or None if it is not one."""
    rounded = np.round(vector)
    if np.abs(vector - rounded).max() > 1e-3 or np.abs(rounded).sum() != 1:
        return None
    return rounded.astype(int)


def _locate(frame: Frame, affine_lps: np.ndarray, inverse: np.ndarray) -> tuple:
    """Voxel index of the frame's first pixel, its row/column index steps, and the mm errors."""
    rows, cols = frame.values.shape
    dr, dc = frame.spacing

    def index(point: np.ndarray) -> np.ndarray:
        return (inverse @ np.append(point, 1.0))[:3]

    origin = index(frame.position)
    col_step = _axis_step(index(frame.position + dc * frame.row_dir) - origin)
    row_step = _axis_step(index(frame.position + dr * frame.col_dir) - origin)
    if col_step is None or row_step is None:
        return None, None, None, math.inf
    start = np.round(origin).astype(int)
    corner = start + (rows - 1) * row_step + (cols - 1) * col_step
    expected_corner = (
        frame.position + (cols - 1) * dc * frame.row_dir + (rows - 1) * dr * frame.col_dir
    )
    error = max(
        float(np.linalg.norm((affine_lps @ np.append(start, 1.0))[:3] - frame.position)),
        float(np.linalg.norm((affine_lps @ np.append(corner, 1.0))[:3] - expected_corner)),
    )
    return start, row_step, col_step, error


def verify_nifti(
    image: nib.Nifti1Image,
    frames: list[Frame],
    *,
    scale: list[float] | None = None,
    subject: str = "",
    series: str = "",
) -> dict:
    """Prove ``image`` holds ``frames`` (times ``scale`` per frame, for SUV); raise on any mismatch.

    Returns the record: slice counts, max position error (mm), max value difference, tolerance.
    """
    where = _Where(subject, series)
    hint = "the converter output cannot be trusted for this series; pin another series or report it"
    data = np.asanyarray(image.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise where.fail(f"NIfTI has shape {data.shape}, expected one 3D volume", hint=hint)
    affine_lps = LPS_FROM_RAS @ image.affine  # NIfTI world is RAS; DICOM positions are LPS
    inverse = np.linalg.inv(affine_lps)
    scale = scale or [1.0] * len(frames)
    seen, worst_position, worst_value, worst_at, tolerance = {}, 0.0, 0.0, None, 1e-3
    for number, (frame, factor) in enumerate(zip(frames, scale, strict=True)):
        start, row_step, col_step, error = _locate(frame, affine_lps, inverse)
        name = Path(frame.file).name
        if start is None or error > POSITION_TOLERANCE_MM:
            raise where.fail(
                f"NIfTI geometry differs from DICOM at slice {number + 1} ({name}): its first/last "
                f"pixel centre is {error:.3f} mm from ImagePositionPatient (tolerance "
                f"{POSITION_TOLERANCE_MM} mm) or its rows/columns are not voxel axes",
                hint=hint,
                file=name,
            )
        slice_axis = 3 - int(np.argmax(np.abs(row_step))) - int(np.argmax(np.abs(col_step)))
        r = np.arange(frame.values.shape[0])[:, None]
        c = np.arange(frame.values.shape[1])[None, :]
        index = [start[a] + r * row_step[a] + c * col_step[a] for a in range(3)]
        if any(ix.min() < 0 or ix.max() >= data.shape[a] for a, ix in enumerate(index)):
            raise where.fail(
                f"slice {number + 1} ({name}) falls outside the NIfTI grid", hint=hint, file=name
            )
        expected = frame.values * factor
        found = data[index[0], index[1], index[2]]
        tolerance = max(tolerance, 1e-5 * float(np.abs(expected).max()))
        diff = float(np.abs(found - expected).max())
        if diff > worst_value:
            worst_value, worst_at = diff, (number, name, found, expected)
        seen.setdefault(int(start[slice_axis]), []).append(name)
        worst_position = max(worst_position, error)
    if worst_value > tolerance:
        number, name, found, expected = worst_at
        raise where.fail(
            f"NIfTI voxel values differ from pydicom pixel_array*RescaleSlope+RescaleIntercept by up "
            f"to {worst_value:g} at slice {number + 1} ({name}): NIfTI {found.min():g}..{found.max():g} "
            f"vs DICOM {expected.min():g}..{expected.max():g} (tolerance {tolerance:g})",
            hint=hint,
            file=name,
        )
    n_slices = data.shape[slice_axis]
    if len(frames) != n_slices or sorted(seen) != list(range(n_slices)):
        doubled = {k: v for k, v in seen.items() if len(v) > 1}
        raise where.fail(
            f"slice count differs: {len(frames)} DICOM slices, {n_slices} NIfTI slices; "
            f"{len(seen)} NIfTI slices matched, doubled: {doubled}",
            hint=hint,
        )
    return {
        "n_dicom_slices": len(frames),
        "n_nifti_slices": int(n_slices),
        "shape": list(data.shape),
        "max_position_error_mm": worst_position,
        "max_abs_value_diff": worst_value,
        "value_tolerance": tolerance,
        "passed": True,
    }


# --------------------------------------------------------------------------------------------
# PET, sidecar and the public entry point
# --------------------------------------------------------------------------------------------


def _suv_image(
    image: nib.Nifti1Image, frames: list[Frame], factors: list[float]
) -> nib.Nifti1Image:
    """float32 SUV image: each NIfTI slice times the factor of the DICOM slice it holds."""
    data = np.asanyarray(image.dataobj, dtype=np.float64)
    affine_lps = LPS_FROM_RAS @ image.affine
    inverse = np.linalg.inv(affine_lps)
    scaled = np.empty_like(data)
    for frame, factor in zip(frames, factors, strict=True):
        start, row_step, col_step, _ = _locate(frame, affine_lps, inverse)
        axis = 3 - int(np.argmax(np.abs(row_step))) - int(np.argmax(np.abs(col_step)))
        where = [slice(None)] * data.ndim
        where[axis] = int(start[axis])
        scaled[tuple(where)] = data[tuple(where)] * factor
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(scaled.astype(np.float32), image.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def suv_method(suv: dict | None) -> str:
    """SUV method from ``{"method": ...}`` or the config slice ``conversion`` (``{"suv": ...}``)."""
    suv = suv or {}
    return str(suv.get("method") or suv.get("suv") or "bw")


def _plain_header_text(nifti: bytes, modality: str) -> bytes:
    """NIfTI-1 bytes with the free-text fields (descrip, aux_file) replaced: nothing of the header."""
    if int.from_bytes(nifti[:4], "little") != 348:
        raise ValueError("not a little-endian NIfTI-1 file")
    descrip = f"calcirad {modality}".encode().ljust(80, b"\0")
    return nifti[:148] + descrip + b"\0" * 24 + nifti[252:]


def _scrub(value: object, identifiers: frozenset[str]) -> object:
    if isinstance(value, dict):
        return {k: _scrub(v, identifiers) for k, v in value.items() if not SIDECAR_DROP.match(k)}
    if isinstance(value, list):
        return [_scrub(v, identifiers) for v in value]
    if isinstance(value, str):
        return redact(value, identifiers)
    return value


def _series_label(ds: Dataset) -> str:
    number = as_text(ds.get("SeriesNumber"))
    return f"{number} {as_text(ds.get('SeriesDescription'))}".strip()


def convert_series(
    *,
    subject: str,
    modality: str,
    files: list[Path],
    out_nifti: Path,
    out_sidecar: Path,
    work_dir: Path,
    suv: dict | None = None,
) -> dict:
    """Convert one series (``files``) to ``out_nifti`` (.nii.gz) and ``out_sidecar`` (.json).

    ``modality`` is the calcirad label (ct, t1, t2, pet, t1c); for ``pet`` the output is SUV
    (float32) with ``suv = {"method": "bw" | "lbm" | "lbm_janma" | "bsa"}`` (default bw; the
    config slice ``conversion``, ``{"suv": "bw"}``, is accepted as well).
    Raises SubjectInputError naming subject, series and file when the input or the conversion fails
    a check; nothing is written then. Returns the verification record (also in the sidecar).
    """
    files = [Path(f) for f in files]
    if not files:
        raise SubjectInputError(
            "no files given", subject=subject, stage=STAGE, hint="check the inventory"
        )
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    label = redact(_series_label(first), frozenset(patient_identifiers(first)))
    frames = read_frames(files, subject=subject, series=label)
    identifiers = frozenset(set().union(*(patient_identifiers(f.dataset) for f in frames)))
    geometry = check_geometry(frames, subject=subject, series=label)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{subject}_{modality}_", dir=work_dir) as tmp:
        nifti_path, json_path = _run_dcm2niix(files, Path(tmp), _Where(subject, label))
        # Held in memory, byte for byte, once the temporary folder is gone.
        raw_nifti = gzip.decompress(nifti_path.read_bytes())
        converted = nib.Nifti1Image.from_bytes(raw_nifti)
        sidecar = json.loads(json_path.read_text()) if json_path.exists() else {}
    record = {"converter": verify_nifti(converted, frames, subject=subject, series=label)}
    final, factors, suv_record = converted, None, None
    if modality == "pet":
        # One dataset per file; an enhanced file holds many frames sharing its factor.
        datasets = list({id(f.dataset): f.dataset for f in frames}.values())
        result = suv_scale_factors(datasets, method=suv_method(suv), subject=subject, series=label)
        by_dataset = {id(ds): factor for ds, factor in zip(datasets, result.factors, strict=True)}
        factors = [by_dataset[id(f.dataset)] for f in frames]
        final = _suv_image(converted, frames, factors)
        suv_record = result.to_dict()
        suv_record["factors"] = sorted(set(factors)) if result.uniform else factors
    with atomic_path(out_nifti) as tmp_nifti:
        if factors is None:
            # dcm2niix's own bytes (stored integers and scl_slope/inter exactly as converted): a
            # nibabel re-save could re-scale integers lossily, which the check below would refuse.
            # mtime=0: the gzip header carries no clock, so a rerun writes identical bytes.
            tmp_nifti.write_bytes(gzip.compress(_plain_header_text(raw_nifti, modality), mtime=0))
        else:
            final.header["descrip"] = f"calcirad {modality}".encode()
            final.header["aux_file"] = b""
            nib.save(final, tmp_nifti)
        record["output"] = verify_nifti(
            nib.load(tmp_nifti), frames, scale=factors, subject=subject, series=label
        )
    record.update(geometry)
    record.update(
        subject=subject,
        modality=modality,
        series_uid=as_text(first.get("SeriesInstanceUID")),
        # Segmentation carries the CT mask only onto series in the CT's frame of reference.
        frame_of_reference_uid=as_text(first.get("FrameOfReferenceUID")),
        series=label,
        n_files=len(files),
        n_dicom_slices=len(frames),
        dcm2niix_version=dcm2niix_version(),
        calcirad_version=__version__,
        units="SUV" + (suv_record["method"] if suv_record else "")
        if modality == "pet"
        else _units(modality),
        suv=suv_record,
    )
    sidecar = _scrub(sidecar, identifiers)
    sidecar["calcirad"] = _scrub(record, identifiers)
    text = json.dumps(sidecar, indent=2, default=_json_default) + "\n"
    write_text(out_sidecar, text)
    return sidecar["calcirad"]


def _units(modality: str) -> str:
    return "HU" if modality == "ct" else "scanner units"


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
