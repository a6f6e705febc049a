"""Choosing which segmented lesions enter the analysis."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from calcirad.errors import ConfigError, SubjectInputError
from calcirad.segment._grid import to_image

SELECTION_POLICIES = ("all", "largest", "per_side")


def select_lesions(
    labels: sitk.Image, *, policy: str = "all", midline_x_mm: float | None = None
) -> sitk.Image:
    """Binary uint8 mask (0/1) of the lesions kept by ``policy``, on the grid of ``labels``.

    - ``all``: every non-zero label;
    - ``largest``: the label with the most voxels (ties: lowest label);
    - ``per_side``: the largest label on each side of the midline. A lesion's side is that of its
      centroid; patient left is +x in LPS. ``midline_x_mm`` defaults to the centre of the image's
      physical x extent (scanners centre the patient in the field of view).

    Raises ``SubjectInputError`` if ``labels`` holds no lesion.
    """
    if policy not in SELECTION_POLICIES:
        raise ConfigError(f"unknown lesion policy {policy!r}; choose one of {SELECTION_POLICIES}")
    array = sitk.GetArrayFromImage(labels)
    present = np.unique(array[array > 0])
    if present.size == 0:
        raise SubjectInputError("label map holds no lesion to select", stage="segment")
    if policy == "all":
        keep = present
    elif policy == "largest":
        keep = _largest(array, present)
    else:
        keep = _largest_per_side(array, present, labels=labels, midline_x_mm=midline_x_mm)
    return to_image(np.isin(array, keep).astype(np.uint8), labels)


def _largest(array: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    counts = ndimage.sum_labels(np.ones(array.shape), array, index=candidates)
    return candidates[[int(np.argmax(counts))]]  # argmax returns the first of equal maxima


def _largest_per_side(
    array: np.ndarray, present: np.ndarray, *, labels: sitk.Image, midline_x_mm: float | None
) -> np.ndarray:
    midline = _fov_centre_x(labels) if midline_x_mm is None else midline_x_mm
    centroids = ndimage.center_of_mass(np.ones(array.shape), array, index=present)
    # center_of_mass gives numpy (k, j, i); SimpleITK wants (i, j, k).
    x = np.array([labels.TransformContinuousIndexToPhysicalPoint(c[::-1])[0] for c in centroids])
    keep = [
        _largest(array, present[side])[0]
        for side in (x < midline, x >= midline)  # patient right (-x), patient left (+x)
        if side.any()
    ]
    return np.array(keep)


def _fov_centre_x(image: sitk.Image) -> float:
    """Physical x (LPS mm) of the centre of the image's field of view."""
    centre_index = [(n - 1) / 2.0 for n in image.GetSize()]
    return float(image.TransformContinuousIndexToPhysicalPoint(centre_index)[0])


def lesion_side(mask: sitk.Image, *, midline_x_mm: float | None = None) -> str:
    """'left' or 'right' (patient side) of the centroid of a binary mask (LPS: left = +x)."""
    array = sitk.GetArrayFromImage(mask) > 0
    if not array.any():
        raise SubjectInputError("empty mask has no side", stage="segment")
    centroid = ndimage.center_of_mass(array)
    x = mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroid[::-1]])[0]
    midline = _fov_centre_x(mask) if midline_x_mm is None else midline_x_mm
    return "left" if x >= midline else "right"
