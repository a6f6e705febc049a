"""User-supplied lesion masks: NIfTI/NRRD/MHA label images, DICOM SEG and DICOM RTSTRUCT.

Every reader returns a binary uint8 mask on the grid of a ``reference`` image (the series the mask
will be used with), matched by physical LPS coordinates:

- label images are carried by nearest neighbour when their grid differs from the reference;
- DICOM SEG frames are stacked on the SEG's own plane geometry (positions along the plane normal
  -> slice index), then carried onto the reference; FRACTIONAL segments are cut at 50 %;
- RTSTRUCT contours (CLOSED_PLANAR polygons in LPS mm) are rasterised slice by slice: a voxel is
  inside when its centre is inside the polygon; several contours on one slice combine even-odd, so a
  contour inside another is a hole (the DICOM convention most planning systems follow). Contours
  must be parallel to the reference slices; if they do not lie on its slice planes they are
  rasterised on their own planes and carried onto the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib.path import Path as Polygon

from calcirad.errors import SubjectInputError
from calcirad.segment.carry import carry_mask, same_grid

STAGE = "segment"
LABEL_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_ON_PLANE = 0.1  # fraction of a slice: a contour closer than this to a slice plane lies on it


def read_mask_file(
    path: Path, reference: sitk.Image, *, roi: str | int | None = None
) -> sitk.Image:
    """Read a user mask and return it as a binary uint8 mask on the grid of ``reference``.

    ``roi`` chooses what is read: for a label image, the label value (default: every non-zero
    voxel); for a SEG, the segment number or label; for an RTSTRUCT, the ROI name or number. For
    SEG and RTSTRUCT the default is the only segment/ROI; several without ``roi`` is an error
    naming them. Raises ``SubjectInputError`` for unreadable files or an empty result.
    """
    path = Path(path)
    if path.name.lower().endswith(LABEL_IMAGE_SUFFIXES):
        mask = _read_label_image(path, reference, label=roi)
    else:
        dataset = _read_dicom(path)
        if dataset.Modality == "SEG":
            mask = _read_seg(dataset, reference, segment=roi, path=path)
        elif dataset.Modality == "RTSTRUCT":
            mask = _read_rtstruct(dataset, reference, roi=roi, path=path)
        else:
            raise SubjectInputError(
                f"DICOM modality {dataset.Modality!r} is not a mask (expected SEG or RTSTRUCT)",
                stage=STAGE,
                file=str(path),
            )
    if not sitk.GetArrayViewFromImage(mask).any():
        raise SubjectInputError(
            "mask file holds no voxel inside the reference image",
            stage=STAGE,
            file=str(path),
            hint="check that the mask belongs to this subject and series",
        )
    return mask


def _read_dicom(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as error:
        raise SubjectInputError(
            f"cannot read mask file: {error}",
            stage=STAGE,
            file=str(path),
            hint=f"masks must be {', '.join(LABEL_IMAGE_SUFFIXES)}, DICOM SEG or RTSTRUCT",
        ) from error


# --------------------------------------------------------------------------- label images


def _read_label_image(path: Path, reference: sitk.Image, *, label: str | int | None) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise SubjectInputError(
            f"cannot read mask: {error}", stage=STAGE, file=str(path)
        ) from error
    binary = (image != 0) if label is None else (image == int(label))
    binary = sitk.Cast(binary, sitk.sitkUInt8)
    if same_grid(binary, reference, tolerance=1e-3):
        binary.CopyInformation(reference)  # NIfTI stores geometry in float32
        return binary
    return carry_mask(binary, reference, method="nearest")


# --------------------------------------------------------------------------- DICOM SEG


def _read_seg(
    dataset: pydicom.Dataset, reference: sitk.Image, *, segment: str | int | None, path: Path
) -> sitk.Image:
    number = _choose(
        {int(s.SegmentNumber): str(s.SegmentLabel) for s in dataset.SegmentSequence},
        segment,
        kind="segment",
        path=path,
    )
    frames = np.asarray(dataset.pixel_array)
    frames = frames.reshape((-1, *frames.shape[-2:]))
    if getattr(dataset, "SegmentationType", "BINARY") == "FRACTIONAL":
        frames = frames >= 0.5 * float(dataset.MaximumFractionalValue)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    chosen = [
        (n, f)
        for n, f in enumerate(dataset.PerFrameFunctionalGroupsSequence)
        if int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
    ]
    if not chosen:
        raise SubjectInputError(f"segment {number} has no frame", stage=STAGE, file=str(path))
    orientation = _frame_attr(chosen[0][1], shared, "PlaneOrientationSequence")
    measures = _frame_attr(chosen[0][1], shared, "PixelMeasuresSequence")
    positions = np.array(
        [
            [float(v) for v in _frame_attr(f, shared, "PlanePositionSequence").ImagePositionPatient]
            for _, f in chosen
        ]
    )
    pixels = [frames[n] > 0 for n, _ in chosen]
    spacing_between = getattr(measures, "SpacingBetweenSlices", None) or getattr(
        measures, "SliceThickness", None
    )
    seg_grid = _stack_planes(
        pixels,
        positions=positions,
        orientation=[float(v) for v in orientation.ImageOrientationPatient],
        pixel_spacing=[float(v) for v in measures.PixelSpacing],
        slice_spacing=float(spacing_between) if spacing_between else None,
    )
    return carry_mask(seg_grid, reference, method="nearest")


def _frame_attr(frame: pydicom.Dataset, shared: pydicom.Dataset, name: str) -> pydicom.Dataset:
    """A functional group item from the frame, else from the shared groups."""
    source = frame if name in frame else shared
    return getattr(source, name)[0]


def _stack_planes(
    planes: Sequence[np.ndarray],
    *,
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing: float | None,
) -> sitk.Image:
    """Binary 3D image from 2D planes (rows x columns) at ``positions`` (LPS mm, first pixel).

    DICOM: ImageOrientationPatient = row direction (along a row, i.e. columns increase), then
    column direction; PixelSpacing = (between rows, between columns).
    """
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    along = positions @ normal
    first = int(np.argmin(along))
    if slice_spacing is None:
        gaps = np.diff(np.unique(np.round(along, 3)))
        slice_spacing = float(gaps.min()) if gaps.size else 1.0
    index = np.rint((along - along[first]) / slice_spacing).astype(int)
    volume = np.zeros((int(index.max()) + 1, *planes[0].shape), np.uint8)
    for k, plane in zip(index, planes, strict=True):
        volume[k] |= plane.astype(np.uint8)
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(tuple(positions[first]))
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel()))
    return image


# --------------------------------------------------------------------------- DICOM RTSTRUCT


def _read_rtstruct(
    dataset: pydicom.Dataset, reference: sitk.Image, *, roi: str | int | None, path: Path
) -> sitk.Image:
    names = {int(r.ROINumber): str(r.ROIName) for r in dataset.StructureSetROISequence}
    number = _choose(names, roi, kind="ROI", path=path)
    contours = [
        np.asarray(c.ContourData, float).reshape(-1, 3)
        for item in dataset.ROIContourSequence
        if int(item.ReferencedROINumber) == number
        for c in getattr(item, "ContourSequence", [])
        if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) == "CLOSED_PLANAR"
    ]
    if not contours:
        raise SubjectInputError(
            f"ROI {names[number]!r} has no closed planar contour", stage=STAGE, file=str(path)
        )
    grid = _contour_grid(contours, reference)
    mask = rasterise_contours(contours, grid)
    return mask if grid is reference else carry_mask(mask, reference, method="nearest")


def _contour_grid(contours: list[np.ndarray], reference: sitk.Image) -> sitk.Image:
    """The reference grid if every contour lies on one of its slice planes; else a grid with the
    reference's in-plane geometry and slices on the contour planes."""
    slice_positions = [_continuous_index(c, reference)[:, 2].mean() for c in contours]
    offsets = np.abs(np.array(slice_positions) - np.rint(slice_positions))
    if np.all(offsets < _ON_PLANE):
        return reference
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    along = np.unique(np.round([c.mean(axis=0) @ direction[:, 2] for c in contours], 3))
    spacing = float(np.min(np.diff(along))) if along.size > 1 else reference.GetSpacing()[2]
    start = reference.TransformPhysicalPointToContinuousIndex(
        tuple(contours[int(np.argmin(slice_positions))][0])
    )
    origin = reference.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, start[2]))
    grid = sitk.Image(
        [*reference.GetSize()[:2], int(round((along[-1] - along[0]) / spacing)) + 1],
        sitk.sitkUInt8,
    )
    grid.SetSpacing((*reference.GetSpacing()[:2], spacing))
    grid.SetOrigin(origin)
    grid.SetDirection(reference.GetDirection())
    return grid


def _continuous_index(points: np.ndarray, image: sitk.Image) -> np.ndarray:
    """LPS points (n, 3) -> continuous (i, j, k) indices of ``image`` (vectorised)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    relative = points - np.array(image.GetOrigin())
    return (relative @ direction) / np.array(image.GetSpacing())


def rasterise_contours(contours: Sequence[np.ndarray], grid: sitk.Image) -> sitk.Image:
    """Binary uint8 mask on ``grid`` of planar polygons (each (n, 3) LPS mm) on its slices.

    A voxel is inside when its centre is inside the polygon; polygons on the same slice combine
    even-odd (nested contours are holes).
    """
    size = grid.GetSize()
    volume = np.zeros(size[::-1], bool)
    for contour in contours:
        index = _continuous_index(contour, grid)
        k = int(np.rint(index[:, 2].mean()))
        if not 0 <= k < size[2]:
            continue
        # Test only the voxel centres inside the polygon's bounding box (fast on large slices).
        low = np.clip(np.floor(index[:, :2].min(axis=0)).astype(int), 0, size[:2])
        high = np.clip(np.ceil(index[:, :2].max(axis=0)).astype(int) + 1, 0, size[:2])
        if np.any(high <= low):
            continue
        columns, rows = np.meshgrid(np.arange(low[0], high[0]), np.arange(low[1], high[1]))
        centres = np.column_stack([columns.ravel(), rows.ravel()]).astype(float)
        inside = Polygon(index[:, :2]).contains_points(centres).reshape(columns.shape)
        volume[k, low[1] : high[1], low[0] : high[0]] ^= inside
    image = sitk.GetImageFromArray(volume.astype(np.uint8))
    image.CopyInformation(grid)
    return image


# --------------------------------------------------------------------------- shared


def _choose(available: dict[int, str], wanted: str | int | None, *, kind: str, path: Path) -> int:
    """Number of the segment/ROI matching ``wanted`` (number, or name case-insensitively)."""
    listing = ", ".join(f"{n}: {name}" for n, name in sorted(available.items()))
    if wanted is None:
        if len(available) == 1:
            return next(iter(available))
        raise SubjectInputError(
            f"mask file holds several {kind}s ({listing})",
            stage=STAGE,
            file=str(path),
            hint=f"name the {kind} to use in the sample sheet",
        )
    for number, name in available.items():
        if str(wanted) == str(number) or str(wanted).lower() == name.lower():
            return number
    raise SubjectInputError(
        f"{kind} {wanted!r} not in mask file ({listing})", stage=STAGE, file=str(path)
    )
