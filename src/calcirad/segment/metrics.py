"""Agreement between a segmentation and a reference (ground truth or a second reader)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from calcirad.segment._grid import array_spacing, distance_mm, mask_array, voxel_volume_ml
from calcirad.segment.carry import carry_mask, same_grid


def segmentation_metrics(mask: sitk.Image, truth: sitk.Image) -> dict[str, float]:
    """Dice, 95th-percentile Hausdorff distance (mm) and volumes (ml) of two masks.

    Non-zero voxels are foreground. ``truth`` is carried (nearest neighbour, physical coordinates)
    onto the grid of ``mask`` when their grids differ. HD95 is the larger of the two directed 95th
    percentiles of surface-voxel distances (the medpy/MONAI convention); it is ``inf`` when either
    mask is empty, and Dice is 0 then (1 when both are empty).
    """
    if not same_grid(mask, truth):
        truth = carry_mask(truth, mask, method="nearest")
    a, b = mask_array(mask), mask_array(truth)
    spacing = array_spacing(mask)
    total = int(a.sum() + b.sum())
    dice = 2.0 * float((a & b).sum()) / total if total else 1.0
    return {
        "dice": dice,
        "hd95_mm": _hd95(a, b, spacing),
        "volume_ml": float(a.sum()) * voxel_volume_ml(mask),
        "truth_volume_ml": float(b.sum()) * voxel_volume_ml(mask),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    if not a.any() or not b.any():
        return float("inf")
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = distance_mm(~surface_b, spacing)[surface_a]
    to_a = distance_mm(~surface_a, spacing)[surface_b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def overlap_ml(mask: sitk.Image, other: sitk.Image) -> float:
    """Volume (ml) of ``mask`` inside ``other`` (e.g. the phantom's normal bone), on the grid of
    ``mask``; ``other`` is carried onto it (nearest neighbour, physical coordinates) if needed."""
    if not same_grid(mask, other):
        other = carry_mask(other, mask, method="nearest")
    return float((mask_array(mask) & mask_array(other)).sum()) * voxel_volume_ml(mask)
