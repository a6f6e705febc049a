"""Lesion segmentation: automatic CT method, lesion selection, masks on other grids, agreement.

Public API (all images are SimpleITK, physical space LPS mm; CT in HU, PET in SUV):

- ``segment_ct(ct, *, method, params)`` -> uint8 label map, lesions 1..k by decreasing volume
- ``SEGMENTATION_METHODS`` / ``register_method(name)``: pluggable methods
- ``select_lesions(labels, *, policy)`` -> binary uint8 mask
- ``carry_mask(mask, reference, *, method, threshold, transform)`` -> mask on another grid
- ``register_rigid(moving, fixed)`` -> rigid transform (fixed -> moving points)
- ``segmentation_metrics(mask, truth)`` -> Dice, HD95 (mm), volumes (ml)
- ``read_mask_file(path, reference, *, roi)`` -> user mask (NIfTI/NRRD, DICOM SEG, RTSTRUCT)
- ``extend_mask(ct, lesion, *, images, params)`` -> mask + non-calcified parts from T2/PET
- ``muscle_reference_mask(ct, lesion)`` -> muscle near the lesion (for MR lesion/muscle ratio)
"""

from calcirad.segment.carry import CARRY_METHODS, carry_mask, register_rigid, same_grid
from calcirad.segment.ct import (
    DEFAULT_CALCIFICATION_HU,
    SEGMENTATION_METHODS,
    ThresholdParams,
    find_bone,
    register_method,
    segment_ct,
)
from calcirad.segment.extend import (
    ExtendedMask,
    ExtensionParams,
    extend_mask,
    muscle_reference_mask,
)
from calcirad.segment.masks import rasterise_contours, read_mask_file
from calcirad.segment.metrics import overlap_ml, segmentation_metrics
from calcirad.segment.select import SELECTION_POLICIES, lesion_side, select_lesions

__all__ = [
    "CARRY_METHODS",
    "ExtendedMask",
    "ExtensionParams",
    "extend_mask",
    "muscle_reference_mask",
    "rasterise_contours",
    "read_mask_file",
    "DEFAULT_CALCIFICATION_HU",
    "SEGMENTATION_METHODS",
    "SELECTION_POLICIES",
    "ThresholdParams",
    "carry_mask",
    "find_bone",
    "lesion_side",
    "register_method",
    "register_rigid",
    "same_grid",
    "segment_ct",
    "overlap_ml",
    "segmentation_metrics",
    "select_lesions",
]
