"""Carrying a mask drawn on one grid (usually the CT) onto another modality's grid.

Everything happens in physical LPS millimetres: series sharing a frame of reference need no
transform (identity); otherwise ``register_rigid`` estimates one. SimpleITK convention: a resampling
transform maps points of the *output* (reference) grid to points of the *input* (mask) grid.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from calcirad.errors import ConfigError

CARRY_METHODS = ("nearest", "partial_volume")
_MAX_SUPERSAMPLING = 5  # per axis; 125 sub-voxels already give fractions to < 1 %


def same_grid(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def carry_mask(
    mask: sitk.Image,
    reference: sitk.Image,
    *,
    method: str = "nearest",
    threshold: float = 0.5,
    transform: sitk.Transform | None = None,
) -> sitk.Image:
    """Resample a label/binary ``mask`` onto the grid of ``reference``; returns uint8.

    - ``nearest``: nearest-neighbour lookup of the label at each reference voxel centre;
    - ``partial_volume``: for each label, the fraction of each reference voxel it covers (the
      float mask, linearly interpolated at up to 5x5x5 sub-voxel points and averaged), kept where
      >= ``threshold``; overlapping labels go to the one with the largest fraction. Preserves
      volume when going to a coarser grid, where nearest neighbour aliases.

    ``transform`` maps reference points to mask points (identity when omitted: shared frame of
    reference); ``register_rigid(moving=<image of the mask>, fixed=reference)`` returns one.
    """
    if method not in CARRY_METHODS:
        raise ConfigError(f"unknown carry method {method!r}; choose one of {CARRY_METHODS}")
    transform = transform or sitk.Transform(3, sitk.sitkIdentity)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    if method == "nearest":
        return sitk.Resample(
            mask, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
    return _carry_partial_volume(mask, reference, transform=transform, threshold=threshold)


def _carry_partial_volume(
    mask: sitk.Image, reference: sitk.Image, *, transform: sitk.Transform, threshold: float
) -> sitk.Image:
    out = np.zeros(reference.GetSize()[::-1], np.uint8)
    window = _reference_window(mask, reference, transform)
    if window is None:
        return _wrap(out, reference)
    start, size = window
    sub = sitk.RegionOfInterest(reference, size, start)
    factors = _supersampling(mask, reference)
    fine = _supersampled_grid(sub, factors)
    array = sitk.GetArrayViewFromImage(mask)
    region = tuple(slice(b, b + n) for b, n in zip(start[::-1], size[::-1], strict=True))
    best = np.zeros(size[::-1], np.float32)
    for label in np.unique(array[array > 0]):
        binary = sitk.Cast(mask == int(label), sitk.sitkFloat32)
        sampled = sitk.Resample(binary, fine, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        fraction = _block_mean(sitk.GetArrayViewFromImage(sampled), factors[::-1])
        wins = (fraction >= threshold) & (fraction > best)
        out[region][wins] = label
        best = np.maximum(best, fraction)
    return _wrap(out, reference)


def _wrap(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _reference_window(
    mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform
) -> tuple[list[int], list[int]] | None:
    """Index start and size of the reference region covering the mask's bounding box (+1 voxel).

    Restricting the supersampled resampling to this window keeps it fast on large grids. Returns
    None when the mask is empty or falls outside the reference. Falls back to the whole grid if the
    transform cannot be inverted.
    """
    nonzero = np.nonzero(sitk.GetArrayViewFromImage(mask))
    if nonzero[0].size == 0:
        return None
    size = list(reference.GetSize())
    try:
        inverse = transform.GetInverse()
    except RuntimeError:
        return [0, 0, 0], size
    lows = [int(a.min()) - 1 for a in nonzero[::-1]]  # (i, j, k)
    highs = [int(a.max()) + 1 for a in nonzero[::-1]]
    corners = itertools.product(*zip(lows, highs, strict=True))
    points = [
        reference.TransformPhysicalPointToContinuousIndex(
            inverse.TransformPoint(mask.TransformContinuousIndexToPhysicalPoint(c))
        )
        for c in corners
    ]
    low = np.floor(np.min(points, axis=0)).astype(int) - 1
    high = np.ceil(np.max(points, axis=0)).astype(int) + 1
    start = np.clip(low, 0, np.array(size) - 1)
    stop = np.clip(high + 1, 0, np.array(size))
    if np.any(stop <= start):
        return None
    return [int(v) for v in start], [int(v) for v in stop - start]


def _supersampling(mask: sitk.Image, reference: sitk.Image) -> tuple[int, int, int]:
    """Sub-voxels per reference axis so each sub-voxel is no larger than the mask's finest voxel."""
    finest = min(mask.GetSpacing())
    return tuple(
        int(min(_MAX_SUPERSAMPLING, max(1, np.ceil(s / finest - 1e-6))))
        for s in reference.GetSpacing()
    )  # type: ignore[return-value]


def _supersampled_grid(reference: sitk.Image, factors: tuple[int, int, int]) -> sitk.Image:
    """Reference grid with each voxel split into ``factors`` sub-voxels (same physical extent)."""
    spacing = np.array(reference.GetSpacing()) / factors
    # The first sub-voxel centre sits half a sub-voxel inside the first voxel's lower face.
    offset_index = [(1.0 / f - 1.0) / 2.0 for f in factors]
    origin = reference.TransformContinuousIndexToPhysicalPoint(offset_index)
    fine = sitk.Image(
        [n * f for n, f in zip(reference.GetSize(), factors, strict=True)], sitk.sitkUInt8
    )
    fine.SetSpacing(tuple(spacing))
    fine.SetOrigin(origin)
    fine.SetDirection(reference.GetDirection())
    return fine


def _block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` (numpy axis order) -> coarse array."""
    shape = list(
        itertools.chain.from_iterable(
            (n // f, f) for n, f in zip(array.shape, factors, strict=True)
        )
    )
    return np.asarray(array, np.float32).reshape(shape).mean(axis=(1, 3, 5))


def register_rigid(
    moving: sitk.Image,
    fixed: sitk.Image,
    *,
    seed: int = 20240101,
    sampling_fraction: float = 0.2,
) -> sitk.Transform:
    """Rigid (Euler3D) registration by Mattes mutual information; for series without a shared frame.

    Returns the transform mapping ``fixed`` points to ``moving`` points (LPS mm), i.e. the one to
    give ``carry_mask(mask_on_moving, fixed, transform=...)``. Mutual information works across
    modalities (CT/MR/PET). Three resolution levels with geometry-centred initialisation; random
    metric sampling uses a fixed ``seed`` so reruns give the same transform.
    """
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling_fraction, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5
    )
    # Rotations (rad) and translations (mm) differ in scale; estimate per-parameter scales.
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed_f, moving_f)
