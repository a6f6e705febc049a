"""Voxel-grid helpers shared by the segmentation modules.

SimpleITK indexes images (i, j, k) = (x, y, z); ``sitk.GetArrayFromImage`` returns numpy arrays
ordered (k, j, i). Every helper here takes and returns numpy arrays in that (k, j, i) order with the
matching spacing tuple (mm), so morphology can be written once in physical units.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def array_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing in mm in numpy (k, j, i) order."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))  # type: ignore[return-value]


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres (mm^3 / 1000)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def mask_array(image: sitk.Image) -> np.ndarray:
    """Boolean numpy (k, j, i) array of the non-zero voxels of ``image``."""
    return sitk.GetArrayViewFromImage(image) != 0


def to_image(
    array: np.ndarray, reference: sitk.Image, *, pixel_id: int = sitk.sitkUInt8
) -> sitk.Image:
    """Wrap a numpy (k, j, i) array as an image with the geometry of ``reference``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return sitk.Cast(image, pixel_id) if image.GetPixelID() != pixel_id else image


def slice_axis(image: sitk.Image) -> int:
    """Numpy axis whose index direction is closest to the patient's superior axis (LPS z).

    Axial hole filling must run in the plane that is axial in the patient, whatever the storage order.
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(direction[2, :])))
    return 2 - itk_axis


def ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Ellipsoidal structuring element of physical radius ``radius_mm`` on an anisotropic grid."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return dist2 <= radius_mm**2 + 1e-9


def fill_holes_2d(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill holes slice by slice in the planes perpendicular to ``axis``.

    Catches tubes that are open at the ends of the volume (a femoral shaft, an open capsule), which a
    3D fill misses because their lumen touches the border.
    """
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, axis)


def fill_holes(mask: np.ndarray, axis: int) -> np.ndarray:
    """3D hole filling combined with 2D filling in the planes perpendicular to ``axis``."""
    return ndimage.binary_fill_holes(mask) | fill_holes_2d(mask, axis)


def closing(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Binary closing with a physical-radius ball; the volume is padded so borders do not erode."""
    element = ball(radius_mm, spacing)
    if element.sum() <= 1:
        return mask.copy()
    pad = [(h // 2, h // 2) for h in element.shape]
    padded = np.pad(mask, pad)
    closed = ndimage.binary_closing(padded, structure=element)
    return closed[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))]


def opening(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Binary opening with a physical-radius ball: removes structures thinner than its diameter."""
    element = ball(radius_mm, spacing)
    return ndimage.binary_opening(mask, structure=element)


def touches_border(bbox: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """True when a bounding box (from ``ndimage.find_objects``) reaches any face of the volume."""
    return any(s.start == 0 or s.stop == n for s, n in zip(bbox, shape, strict=True))


def extent_mm(bbox: tuple[slice, ...], spacing: tuple[float, ...]) -> float:
    """Largest edge (mm) of a bounding box, measured between outer voxel faces."""
    return max((s.stop - s.start) * sp for s, sp in zip(bbox, spacing, strict=True))


MAX_LABELS = 255  # uint8 label maps


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber non-zero labels 1..k by decreasing voxel count (ties: lower old label first).

    Returns uint8; beyond 255 lesions the smallest ones are dropped (a uint8 map cannot hold them,
    and hundreds of specks mean the threshold is wrong rather than that they matter).
    """
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    order = sorted(range(len(values)), key=lambda n: (-counts[n], values[n]))[:MAX_LABELS]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    for new, n in enumerate(order, start=1):
        lookup[values[n]] = new
    return lookup[labels]
