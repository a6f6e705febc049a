"""Extending a CT (calcification-defined) lesion mask with its non-calcified parts seen on T2 or PET.

The CT threshold finds calcified matrix only; the solid part of an osteosarcoma or the soft core of
a mass is invisible to it but bright on T2 or hot on FDG-PET. Each extra modality is resampled onto
the CT grid (shared frame of reference, linear interpolation) and voxels meeting its criterion are
added when they are connected to the CT lesion within ``max_extension_mm``, are not bone and are
soft tissue or fluid on CT (>= ``min_soft_tissue_hu``; fat is T2-bright too):

- ``t2``: T2 signal >= ``t2_ratio`` x the median T2 of nearby muscle (muscle found on CT). With PET
  present, T2 adds only fluid-bright voxels (>= ``t2_fluid_ratio`` x muscle: necrosis, cystic and
  fluid lobules), because perilesional oedema (2-3.5 x muscle) is as T2-bright as a solid tumour
  part (1.5-3.5 x) and only FDG uptake tells them apart; the solid part then comes from PET.
  T2 >= ``t2_ratio`` x muscle at water density on CT (<= ``t2_fluid_max_hu``; oedema is 25-40 HU,
  cystic lobules 0-25 HU before partial volume with their septa) counts as fluid too;
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
    distance_mm,
    fill_holes,
    grown_box,
    in_plane_sampling,
    label_maximum,
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
    t2_fluid_ratio: float = 3.6  # above oedema (2-3.5 x muscle), below necrosis/fluid (3-6 x)
    t2_fluid_max_hu: float = 25.0  # T2 >= t2_ratio at water density on CT counts as fluid too
    suv_fraction: float = 0.41
    suv_floor: float = 2.5
    max_extension_mm: float = 80.0  # a sarcoma's solid part may lie far from its few calcifications
    fluid_hu: tuple[float, float] = (-30.0, 30.0)  # water density after a 3x3x3 median
    max_fluid_radius_mm: float = 25.0  # deeper fluid (in-plane) is the bladder, not a lesion locule
    bridge_mm: float = 2.5  # candidate bands thinner than twice this do not carry the growth
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
    spacing = array_spacing(ct)
    lesion_voxels = mask_array(lesion)
    muscle = np.zeros(lesion_voxels.shape, bool)
    if lesion_voxels.any():
        # Work in the lesion's box grown by the shell's outer radius: the whole-volume median
        # filter and distance map of a 512 x 512 x 160 CT cost minutes and gigabytes.
        box = _box_around(lesion_voxels, margin_mm=shell_mm[1] + 2 * max(spacing), spacing=spacing)
        hu = ndimage.median_filter(sitk.GetArrayViewFromImage(ct)[box].astype(np.float32), size=3)
        distance = distance_mm(~lesion_voxels[box], spacing)
        candidate = (hu >= hu_range[0]) & (hu <= hu_range[1])
        candidate &= (distance >= shell_mm[0]) & (distance <= shell_mm[1])
        muscle[box] = ndimage.binary_erosion(
            candidate, structure=ball(min(spacing) * 1.01, spacing)
        )
    if not muscle.any():
        raise SubjectInputError(
            f"no muscle ({hu_range[0]:g}-{hu_range[1]:g} HU) within {shell_mm[1]:g} mm of the lesion",
            stage="segment",
        )
    return to_image(muscle.astype(np.uint8), ct)


def _box_around(
    mask: np.ndarray, *, margin_mm: float, spacing: tuple[float, float, float]
) -> tuple[slice, ...]:
    """Numpy slices of the bounding box of ``mask`` grown by ``margin_mm`` (clipped to the array)."""
    where = np.argwhere(mask)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    bbox = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    return grown_box(bbox, [int(np.ceil(margin_mm / s)) for s in spacing], mask.shape)


def extend_mask(
    ct: sitk.Image,
    lesion: sitk.Image,
    *,
    images: Mapping[str, sitk.Image],
    params: ExtensionParams | None = None,
    bone_params: ThresholdParams | None = None,
) -> ExtendedMask:
    """Add non-calcified lesion parts from ``images`` (keys ``t2`` and/or ``pet``) to ``lesion``.

    ``lesion`` is a binary/label mask on the CT grid; ``images`` share the CT's frame of reference.
    Other keys are ignored. ``bone_params`` find the normal bone the extension must not enter:
    give those the CT segmentation used, so both see the same bone (and it is computed once).
    Returns the extended binary mask and the contributing modalities.
    """
    p = params or ExtensionParams()
    spacing = array_spacing(ct)
    core = mask_array(lesion)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    axis = slice_axis(ct)
    bone = find_bone(hu, spacing=spacing, axis=axis, params=bone_params or ThresholdParams())
    allowed = ~bone
    # Fat is bright on T2 and air is nothing: a lesion part is soft tissue or fluid on CT.
    smooth = median3(hu)
    allowed &= smooth >= p.min_soft_tissue_hu
    allowed &= ~_large_fluid(smooth, spacing=spacing, axis=axis, params=p)
    allowed &= distance_mm(~core, spacing) <= p.max_extension_mm
    extended, sources = core.copy(), ["ct"]
    for modality in ("t2", "pet"):
        if modality not in images:
            continue
        on_ct = sitk.Resample(images[modality], ct, sitk.Transform(), sitk.sitkLinear, 0.0)
        values = sitk.GetArrayFromImage(on_ct).astype(np.float32)
        threshold = _threshold(
            modality, values, ct=ct, lesion=lesion, core=core, params=p, with_pet="pet" in images
        )
        candidate = values >= threshold
        if modality == "t2" and "pet" in images:
            # Fluid by density as well as by signal: a cystic lobule blurred onto the CT grid
            # falls below the fluid ratio at its edges, while oedema is soft tissue on CT.
            ratio = threshold / p.t2_fluid_ratio
            candidate |= (values >= p.t2_ratio * ratio) & (smooth <= p.t2_fluid_max_hu)
        grown = _grow(core, candidate & allowed, spacing=spacing, params=p)
        if (grown & ~extended).any():
            sources.append(modality)
        extended |= grown
    if len(sources) > 1:
        # A necrotic or cystic centre (cold on PET, below the fluid ratio once blurred onto the CT
        # grid) enclosed by the tumour is tumour; bone wrapped by a mass is not.
        extended |= fill_holes(extended, axis) & ~bone
    return ExtendedMask(mask=to_image(extended.astype(np.uint8), ct), sources=tuple(sources))


def _large_fluid(
    smooth: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    axis: int,
    params: ExtensionParams,
) -> np.ndarray:
    """Water-density regions deeper in-plane than ``max_fluid_radius_mm``: the bladder.

    The bladder is T2-bright and FDG-hot (urinary activity) like a lesion; a mass pressing on it
    would otherwise grow into it. Necrotic and cystic parts of a lesion are smaller.
    """
    fluid = (smooth >= params.fluid_hu[0]) & (smooth <= params.fluid_hu[1])
    labels, count = ndimage.label(fluid)
    if count == 0:
        return fluid
    sampling = in_plane_sampling(spacing, axis)
    depth = distance_mm(fluid, sampling)
    deep = label_maximum(depth, labels, count) > params.max_fluid_radius_mm
    deep[0] = False
    return deep[labels]


def _threshold(
    modality: str,
    values: np.ndarray,
    *,
    ct: sitk.Image,
    lesion: sitk.Image,
    core: np.ndarray,
    params: ExtensionParams,
    with_pet: bool,
) -> float:
    if modality == "pet":
        return max(params.suv_floor, params.suv_fraction * float(values[core].max()))
    muscle = mask_array(
        muscle_reference_mask(
            ct, lesion, hu_range=params.muscle_hu, shell_mm=params.muscle_shell_mm
        )
    )
    ratio = params.t2_fluid_ratio if with_pet else params.t2_ratio
    return ratio * float(np.median(values[muscle]))


def _grow(
    core: np.ndarray,
    candidate: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    params: ExtensionParams,
) -> np.ndarray:
    """``core`` plus the bulk of ``candidate`` connected to it, edges restored.

    Candidates are opened first (radius ``bridge_mm``): partial-volume bands (a fat-muscle edge is
    T2-bright and above -30 HU) and thin tails of PET blur would otherwise connect the lesion to
    anything of the same signal within reach. The opened candidates connected to the core are
    then dilated back by the same radius inside the original candidates.
    """
    element = ball(params.bridge_mm, spacing)
    bulk = ndimage.binary_opening(candidate, structure=element) if element.sum() > 1 else candidate
    reached = _connected_to(core, bulk)
    edge = ndimage.binary_dilation(reached, structure=element) & candidate
    return reached | edge


def _connected_to(core: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Components of ``candidate | core`` that touch ``core`` (geodesic reconstruction)."""
    labels, _ = ndimage.label(candidate | core, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(labels[core])
    return np.isin(labels, touching[touching > 0])
