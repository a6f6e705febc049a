"""Extending a CT (calcification-defined) lesion mask with its non-calcified parts seen on T2 or PET.

The CT threshold finds calcified matrix only; the solid part of an osteosarcoma or the soft core of
a mass is invisible to it but bright on T2 or hot on FDG-PET. Each extra modality is resampled onto
the CT grid (shared frame of reference, linear interpolation) and voxels meeting its criterion are
added when they are connected to the CT lesion within ``max_extension_mm``, are not bone and are
soft tissue or fluid on CT (>= ``min_soft_tissue_hu``; fat is T2-bright too):

- ``t2``: T2 signal >= ``t2_ratio`` x the median T2 of nearby muscle (muscle found on CT);
- ``pet``: SUV >= max(``suv_floor``, ``suv_fraction`` x the lesion's SUVmax) (the 41 %-of-max
  contour used in PET volumetry, with an absolute floor so a cold lesion does not grow into noise).

The result records which modalities contributed voxels, for provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from calcirad.errors import SubjectInputError
from calcirad.segment._grid import (
    array_spacing,
    ball,
    mask_array,
    median3,
    slice_axis,
    to_image,
)
from calcirad.segment.ct import ThresholdParams, find_bone


@dataclasses.dataclass(frozen=True)
class ExtensionParams:
    """Criteria for the non-calcified extension (ratios, SUV, mm, HU)."""

    t2_ratio: float = 1.8
    suv_fraction: float = 0.41
    suv_floor: float = 2.5
    max_extension_mm: float = 30.0
    min_soft_tissue_hu: float = -30.0  # below: fat or air on CT, never lesion
    muscle_hu: tuple[float, float] = (30.0, 80.0)
    muscle_shell_mm: tuple[float, float] = (10.0, 60.0)


@dataclasses.dataclass(frozen=True)
class ExtendedMask:
    """Binary uint8 mask on the CT grid and the modalities that defined it (``ct`` first)."""

    mask: sitk.Image
    sources: tuple[str, ...]


def muscle_reference_mask(
    ct: sitk.Image,
    lesion: sitk.Image,
    *,
    hu_range: tuple[float, float] = (30.0, 80.0),
    shell_mm: tuple[float, float] = (10.0, 60.0),
) -> sitk.Image:
    """Muscle near the lesion on CT (HU within ``hu_range``), as a uint8 mask on the CT grid.

    Muscle is taken in a shell ``shell_mm`` (min, max distance from the lesion, mm) so it shares
    the lesion's coil/field inhomogeneity on MR, eroded by one voxel to avoid partial volume with
    fat and bone. Carry it onto an MR grid to get a lesion-to-muscle ratio. Raises
    ``SubjectInputError`` if no muscle is found.
    """
    hu = median3(sitk.GetArrayFromImage(ct).astype(np.float32))
    spacing = array_spacing(ct)
    distance = ndimage.distance_transform_edt(~mask_array(lesion), sampling=spacing)
    candidate = (hu >= hu_range[0]) & (hu <= hu_range[1])
    candidate &= (distance >= shell_mm[0]) & (distance <= shell_mm[1])
    muscle = ndimage.binary_erosion(candidate, structure=ball(min(spacing) * 1.01, spacing))
    if not muscle.any():
        raise SubjectInputError(
            f"no muscle ({hu_range[0]:g}-{hu_range[1]:g} HU) within {shell_mm[1]:g} mm of the lesion",
            stage="segment",
        )
    return to_image(muscle.astype(np.uint8), ct)


def extend_mask(
    ct: sitk.Image,
    lesion: sitk.Image,
    *,
    images: Mapping[str, sitk.Image],
    params: ExtensionParams | None = None,
) -> ExtendedMask:
    """Add non-calcified lesion parts from ``images`` (keys ``t2`` and/or ``pet``) to ``lesion``.

    ``lesion`` is a binary/label mask on the CT grid; ``images`` share the CT's frame of reference.
    Other keys are ignored. Returns the extended binary mask and the contributing modalities.
    """
    p = params or ExtensionParams()
    spacing = array_spacing(ct)
    core = mask_array(lesion)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    allowed = ~find_bone(hu, spacing=spacing, axis=slice_axis(ct), params=ThresholdParams())
    # Fat is bright on T2 and air is nothing: a lesion part is soft tissue or fluid on CT.
    allowed &= median3(hu) >= p.min_soft_tissue_hu
    allowed &= ndimage.distance_transform_edt(~core, sampling=spacing) <= p.max_extension_mm
    extended, sources = core.copy(), ["ct"]
    for modality in ("t2", "pet"):
        if modality not in images:
            continue
        on_ct = sitk.Resample(images[modality], ct, sitk.Transform(), sitk.sitkLinear, 0.0)
        values = sitk.GetArrayFromImage(on_ct).astype(np.float32)
        threshold = _threshold(modality, values, ct=ct, lesion=lesion, core=core, params=p)
        grown = _connected_to(core, (values >= threshold) & allowed)
        if (grown & ~extended).any():
            sources.append(modality)
        extended |= grown
    return ExtendedMask(mask=to_image(extended.astype(np.uint8), ct), sources=tuple(sources))


def _threshold(
    modality: str,
    values: np.ndarray,
    *,
    ct: sitk.Image,
    lesion: sitk.Image,
    core: np.ndarray,
    params: ExtensionParams,
) -> float:
    if modality == "pet":
        return max(params.suv_floor, params.suv_fraction * float(values[core].max()))
    muscle = mask_array(
        muscle_reference_mask(
            ct, lesion, hu_range=params.muscle_hu, shell_mm=params.muscle_shell_mm
        )
    )
    return params.t2_ratio * float(np.median(values[muscle]))


def _connected_to(core: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Components of ``candidate | core`` that touch ``core`` (geodesic reconstruction)."""
    labels, _ = ndimage.label(candidate | core, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(labels[core])
    return np.isin(labels, touching[touching > 0])
