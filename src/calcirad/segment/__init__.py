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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CARRY_METHODS": "carry",
    "carry_mask": "carry",
    "register_rigid": "carry",
    "same_grid": "carry",
    "DEFAULT_CALCIFICATION_HU": "defaults",
    "SEGMENTATION_METHODS": "ct",
    "ThresholdParams": "ct",
    "find_bone": "ct",
    "register_method": "ct",
    "segment_ct": "ct",
    "ExtendedMask": "extend",
    "ExtensionParams": "extend",
    "extend_mask": "extend",
    "muscle_reference_mask": "extend",
    "rasterise_contours": "masks",
    "read_mask_file": "masks",
    "overlap_ml": "metrics",
    "segmentation_metrics": "metrics",
    "SELECTION_POLICIES": "select",
    "lesion_side": "select",
    "select_lesions": "select",
}
__all__ = [
    "CARRY_METHODS",
    "DEFAULT_CALCIFICATION_HU",
    "ExtendedMask",
    "ExtensionParams",
    "SEGMENTATION_METHODS",
    "SELECTION_POLICIES",
    "ThresholdParams",
    "carry_mask",
    "extend_mask",
    "find_bone",
    "lesion_side",
    "muscle_reference_mask",
    "overlap_ml",
    "rasterise_contours",
    "read_mask_file",
    "register_method",
    "register_rigid",
    "same_grid",
    "segment_ct",
    "segmentation_metrics",
    "select_lesions",
]

if TYPE_CHECKING:
    from calcirad.segment.carry import CARRY_METHODS, carry_mask, register_rigid, same_grid
    from calcirad.segment.ct import (
        SEGMENTATION_METHODS,
        ThresholdParams,
        find_bone,
        register_method,
        segment_ct,
    )
    from calcirad.segment.defaults import DEFAULT_CALCIFICATION_HU
    from calcirad.segment.extend import (
        ExtendedMask,
        ExtensionParams,
        extend_mask,
        muscle_reference_mask,
    )
    from calcirad.segment.masks import rasterise_contours, read_mask_file
    from calcirad.segment.metrics import overlap_ml, segmentation_metrics
    from calcirad.segment.select import SELECTION_POLICIES, lesion_side, select_lesions


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
