"""Automatic CT segmentation of calcific soft-tissue masses, with normal bone excluded.

Methods live in a registry (name -> callable) so a learned model can be added later without touching
the pipeline: a method takes the CT (HU, any orientation) and a parameter mapping and returns an
integer label image on the CT grid (0 = background). ``segment_ct`` then renumbers lesions 1..k by
decreasing volume and refuses an empty result.

The default ``threshold_components`` method (CPU, a few seconds per subject):

1. ``calcified`` = CT >= ``threshold_hu`` (optionally after a light Gaussian smoothing).
2. Bone is recognised by its architecture, not its density, because calcifications reach cortical
   values (up to ~1600 HU). Dense voxels (>= ``cortex_hu``, above any marrow) are split by a
   morphological opening with a ball of diameter ``max_cortex_mm``: cortex is a thin shell and
   vanishes, the bulk of a calcific mass survives (*thick* = lesion material). The thin remainder is
   cortex only where it belongs to the skeleton: a connected shell that leaves the field of view or
   spans at least ``min_skeleton_mm`` (femora, pelvis), or an isolated shell around
   marrow-density content (a bone cut off by a mass; a short one must be mostly marrow). Thin
   shells of lesions (myositis rim, chondromatosis rings, sediment caps) are small, or enclose soft
   tissue or their own matrix, so they stay lesion.
3. Bone = skeletal shell + the marrow it encloses (closing by ``marrow_closing_mm`` for flat bones
   whose marrow is a few mm thick; axial 2D + 3D hole filling for tubes and closed shells; enclosed
   regions deeper in-plane than ``max_marrow_radius_mm`` are body cavities, e.g. the pelvic inlet
   inside the bony ring, and are rejected) + marrow-density voxels connected to that marrow where
   a mass has replaced the cortex + the partial-volume rim within ``bone_margin_mm``.
   Thick lesion material is never bone, so a mass sitting on the cortex keeps its base.
4. Lesions = calcified voxels not in bone; thin rinds left on the bone surface are dropped; fluid
   lobules (0-30 HU) reached from the calcification across a few thin septa join (tumoral
   calcinosis is largely cystic; at sub-millimetre pixels, fluid never ``fluid_min_depth_mm``
   deep is noise in oedema); a closing and hole filling return septa, sediment and soft cores
   enclosed by calcification to the mass; components smaller than ``min_volume_ml`` are noise or
   phleboliths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from calcirad.errors import ConfigError, SubjectInputError
from calcirad.segment._grid import (
    array_key,
    array_spacing,
    ball,
    closing,
    distance_mm,
    enclosing_directions,
    extent_mm,
    fill_holes,
    grown_box,
    in_plane_sampling,
    in_plane_spacing,
    in_plane_structure,
    label_maximum,
    label_median,
    median3,
    opening,
    relabel_by_size,
    slice_axis,
    to_image,
    touches_border,
    voxel_volume_ml,
)
from calcirad.segment.defaults import DEFAULT_CALCIFICATION_HU

SegmentationMethod = Callable[[sitk.Image, Mapping[str, Any]], sitk.Image]
SEGMENTATION_METHODS: dict[str, SegmentationMethod] = {}


def register_method(name: str) -> Callable[[SegmentationMethod], SegmentationMethod]:
    """Decorator adding a CT segmentation method to :data:`SEGMENTATION_METHODS` under ``name``."""

    def decorate(function: SegmentationMethod) -> SegmentationMethod:
        SEGMENTATION_METHODS[name] = function
        return function

    return decorate


@dataclasses.dataclass(frozen=True)
class ThresholdParams:
    """Parameters of ``threshold_components`` (HU, mm, ml)."""

    threshold_hu: float = DEFAULT_CALCIFICATION_HU
    smoothing_mm: float = 0.0  # Gaussian sigma before thresholding; 0 keeps thin rims sharp
    cortex_hu: float = 450.0  # above marrow (<= 300 HU + noise), below partial-volumed cortex
    max_cortex_mm: float = 9.0  # thicker dense structures are lesion material, not cortex
    valley_mm: float = 3.0  # gaps this narrow between dense structures (joint space, thin marrow)
    valley_hu: float = 200.0  # ... blurred above cortex_hu but this far below their walls: gaps
    grain_closing_mm: float = 0.0  # >0: close speckled calcification first (thickens flat bone)
    min_skeleton_mm: float = 150.0  # shells this long are skeleton even inside the field of view
    min_isolated_bone_mm: float = 20.0  # shorter isolated shells are never bone
    short_bone_mm: float = 40.0  # shorter isolated shells need marrow of short_bone_marrow ...
    short_bone_marrow: float = 0.5  # ... x their own volume: a fragment is mostly marrow
    marrow_min_hu: float = 90.0  # median HU inside an isolated bone (marrow 100-300; MO core < 50)
    marrow_max_hu: float = 400.0  # above: calcific matrix (sediment, lobules), not marrow
    marrow_wall_fraction: float = 0.5  # marrow-density region walled at least this much by cortex
    marrow_enclosure: float = 0.5  # ... and each voxel sees cortex in this fraction of 8 directions
    fragment_enclosure: float = 0.375  # as marrow_enclosure, for a bone cut off by a mass
    marrow_closing_mm: float = 3.0  # seals the few-mm marrow of flat bones (acetabulum, pelvis)
    min_marrow_mm: float = 3.0  # thinner marrow-density layers inside a shell are partial volume
    max_marrow_radius_mm: float = 30.0  # deeper enclosed regions are body cavities, not marrow
    bone_margin_mm: float = 2.5  # partial-volume rim of the cortex (about one voxel)
    rind_depth_mm: float = 3.5  # touching bone and at most ~1 voxel deep (3 mm slices): bone rind
    fluid_reach_mm: float = 25.0  # fluid lobules within this of calcification join (0: off)
    fluid_min_hu: float = -30.0  # fluid range after a 3x3x3 median (fat is ~-100)
    fluid_max_hu: float = 22.0  # TC fluid is 0-25 HU; oedematous muscle 25-40 and muscle 40-60 HU
    fluid_max_radius_mm: float = 25.0  # deeper fluid is bladder / effusion, not a lobule
    fluid_min_depth_mm: float = 3.0  # shallower fluid regions are noise (sub-mm pixels only)
    septum_mm: float = 3.5  # soft-tissue wall a hop may cross between lobules
    fluid_hops: float = 3.0  # lobule walls crossed from the calcification at most
    closing_mm: float = 3.0  # merges lobules and seals capsules before hole filling
    capsule_mm: float = 4.0  # soft-tissue wall (septa, capsule) kept around cystic lesions
    capsule_min_hu: float = 20.0  # wall density (3x3x3 median HU): soft tissue, not fat or fluid
    capsule_max_hu: float = 100.0
    rind_contact: float = 0.5  # a thin rind lies along the bone: this fraction within one voxel
    min_volume_ml: float = 0.1  # smaller components are noise, phleboliths

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any] | None) -> ThresholdParams:
        """Build from a config mapping; unknown keys are a configuration error (typos)."""
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"unknown threshold_components parameter(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: float(v) for k, v in params.items()})


def segment_ct(
    ct: sitk.Image,
    *,
    method: str = "threshold_components",
    params: Mapping[str, Any] | None = None,
) -> sitk.Image:
    """Segment calcific lesions on a CT in HU; return a uint8 label map on the CT grid.

    Labels are 1..k by decreasing volume (0 = background). ``method`` names an entry of
    :data:`SEGMENTATION_METHODS`; ``params`` are passed to it. Raises ``SubjectInputError`` when no
    lesion is found and ``ConfigError`` for an unknown method.
    """
    if method not in SEGMENTATION_METHODS:
        raise ConfigError(
            f"unknown segmentation method {method!r}; available: {sorted(SEGMENTATION_METHODS)}"
        )
    raw = SEGMENTATION_METHODS[method](ct, params or {})
    labels = relabel_by_size(sitk.GetArrayFromImage(raw).astype(np.int64))
    if not labels.any():
        threshold = (params or {}).get("threshold_hu", DEFAULT_CALCIFICATION_HU)
        raise SubjectInputError(
            f"no lesion above threshold ({threshold} HU) outside normal bone",
            stage="segment",
            hint="check the CT is in HU, lower threshold_hu, or supply a mask file",
        )
    return to_image(labels, ct)


@register_method("threshold_components")
def threshold_components(ct: sitk.Image, params: Mapping[str, Any]) -> sitk.Image:
    """Calcification threshold + anatomical bone exclusion (see module docstring)."""
    p = ThresholdParams.from_mapping(params)
    hu = hu_raw = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing = array_spacing(ct)
    axis = slice_axis(ct)
    bone = find_bone(hu, spacing=spacing, axis=axis, params=p)
    if p.smoothing_mm > 0:
        hu = ndimage.gaussian_filter(hu, [p.smoothing_mm / s for s in spacing])
    calcified = hu >= p.threshold_hu
    candidates = _drop_bone_rinds(
        calcified & ~bone, bone=bone, spacing=spacing, axis=axis, params=p
    )
    lobules = np.zeros_like(candidates)
    if p.fluid_reach_mm > 0:
        fluid = _fluid(hu_raw, bone=bone, spacing=spacing, axis=axis, params=p)
        lobules = _fluid_lobules(candidates, fluid, spacing=spacing, params=p)
        candidates |= lobules
    lesions = _lesion_mask(candidates, bone=bone, spacing=spacing, axis=axis, params=p)
    if p.capsule_mm > 0:
        lesions |= _capsule(lesions, lobules, hu_raw, bone=bone, spacing=spacing, params=p)
    labels, _ = ndimage.label(lesions, structure=np.ones((3, 3, 3), bool))
    labels = _drop_small(labels, min_voxels=p.min_volume_ml / voxel_volume_ml(ct))
    return to_image(relabel_by_size(labels), ct)


_BONE_CACHE: dict[tuple, np.ndarray] = {}


def find_bone(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams | None = None,
) -> np.ndarray:
    """Boolean mask of normal bone (cortex, marrow, partial-volume rim) on a CT array in HU.

    ``hu`` is numpy (k, j, i) with ``spacing`` (mm) in that order; ``axis`` is the numpy axis
    closest to the patient's z (see ``slice_axis``). See the module docstring for the method.
    The result is read-only and memoised (segmentation and extension ask for the same CT).
    """
    p = params or ThresholdParams()
    key = array_key(hu, tuple(spacing), axis, p)
    if key not in _BONE_CACHE:
        bone = _find_bone(hu, spacing=spacing, axis=axis, params=p)
        bone.setflags(write=False)
        _BONE_CACHE.clear()  # one CT at a time
        _BONE_CACHE[key] = bone
    return _BONE_CACHE[key]


def _find_bone(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    p = params
    dense = hu >= p.cortex_hu
    solid = dense & ~_valleys(hu, spacing=spacing, params=p) if p.valley_hu > 0 else dense
    # Optionally close the gaps of speckled calcification, which the opening would otherwise
    # dissolve like thin cortex. Off by default: it also fuses the two cortices of flat bones.
    grains = closing(solid, p.grain_closing_mm, spacing) if p.grain_closing_mm > 0 else solid
    thick = opening(grains, p.max_cortex_mm / 2.0, spacing) & (hu >= p.threshold_hu)
    smooth = median3(hu)
    shell = _skeletal_shell(dense & ~thick, hu, thick=thick, spacing=spacing, axis=axis, params=p)
    if not shell.any():
        return shell
    # Marrow: enclosed by cortex (topologically), or of marrow density, walled mostly by cortex
    # and surrounded by it in-plane (thin or eroded cortex leaves gaps).
    marrow, soft_cavities = _enclosed_marrow(
        shell, thick, smooth=smooth, spacing=spacing, axis=axis, params=p
    )
    marrow &= ~thick
    surrounded = _ray_enclosed(smooth, shell, thick=thick, spacing=spacing, axis=axis, params=p)
    walled = _walled_marrow(smooth, shell, thick=thick, spacing=spacing, axis=axis, params=p)
    # At sub-millimetre voxels the inner partial-volume rim of a thin calcified shell (a
    # haematoma's) has marrow density and is walled by that shell all round; marrow is thicker.
    marrow |= _without_thin_layers(walled & surrounded & ~soft_cavities, spacing=spacing, params=p)
    # Marrow-density rims of soft cavities (partial volume with their calcified wall) are no
    # evidence that the wall is cortex.
    anchors = marrow & ~ndimage.binary_dilation(soft_cavities, iterations=2)
    shell = _drop_lesion_shells(
        shell, anchors, hu, thick=thick, spacing=spacing, axis=axis, params=p
    )
    marrow |= _exposed_marrow(hu, marrow, thick=thick, spacing=spacing, params=p) & surrounded
    core = shell | marrow
    if marrow.any():
        core |= _cortex_under_lesions(dense & thick, marrow, shell=shell, spacing=spacing, params=p)
    rim = ndimage.binary_dilation(core, structure=ball(p.bone_margin_mm, spacing))
    return core | (rim & (hu >= p.threshold_hu) & ~thick)


def _without_thin_layers(
    marrow: np.ndarray, *, spacing: tuple[float, float, float], params: ThresholdParams
) -> np.ndarray:
    """Marrow candidates without layers thinner than ``min_marrow_mm`` (an opening): at sub-mm
    voxels the partial-volume rim inside a thin calcified shell has marrow density. At voxels
    larger than ``min_marrow_mm`` / 2 the ball is one voxel and nothing changes."""
    return opening(marrow, params.min_marrow_mm / 2.0, spacing)


def _valleys(
    hu: np.ndarray, *, spacing: tuple[float, float, float], params: ThresholdParams
) -> np.ndarray:
    """Voxels at the bottom of a narrow HU valley: a grey closing across ``valley_mm`` raises
    them by at least ``valley_hu``.

    At sub-millimetre voxels two cortices a millimetre or two apart (femoral head and acetabulum
    across a narrow joint space, the two cortices of a thin acetabular wall) blur into one band
    above ``cortex_hu``, thick enough to pass for lesion material; the gap still shows as a
    valley. A calcific mass is dense throughout once its voxel-scale texture is smoothed.
    The box spans one voxel either side at least, so coarse grids see one-voxel gaps.
    """
    size = [2 * max(1, round(params.valley_mm / (2 * s))) + 1 for s in spacing]
    # Voxel-scale texture (heterogeneous calcific matrix, noise) is no gap: smoothed out first.
    smooth = ndimage.gaussian_filter(hu, 0.7)
    return ndimage.grey_closing(smooth, size=size) - smooth >= params.valley_hu


def _skeletal_shell(
    shell: np.ndarray,
    hu: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Thin dense components that are skeleton.

    Skeleton is very long (``min_skeleton_mm``). A shorter shell is bone only when it encloses
    marrow-density content (median within ``marrow_min_hu``-``marrow_max_hu``, lesion material
    not counted), which tells it from the soft or fatty core of myositis ossificans and from the
    calcified content of a lobulated mass: a bone cut off by the field of view (a femoral shaft
    at the bottom of the scan) at any length, and a bone cut off from the rest by a mass that
    replaced part of it (an isolated ischium) when it is at least ``min_isolated_bone_mm`` long.
    A calcified mass shell that leaves the field of view is therefore still a lesion.

    Below ``short_bone_mm`` an isolated shell must hold marrow of at least ``short_bone_marrow``
    times its own volume: a bone fragment is mostly marrow, while a small solid calcified mass
    with a heterogeneous matrix (300-1200 HU) is mostly its own matrix, with marrow-density
    texture voxels scattered through it. The marrow of an isolated shell needs cortex in only
    ``fragment_enclosure`` of 8 in-plane directions: the mass that cut the fragment off lies on
    one side of it, where its marrow is open.
    """
    isolated = dataclasses.replace(params, marrow_enclosure=params.fragment_enclosure)
    labels, count = ndimage.label(shell, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(count + 1, bool)
    for n, bbox in enumerate(ndimage.find_objects(labels), start=1):
        length = extent_mm(bbox, spacing)
        if length >= params.min_skeleton_mm:
            keep[n] = True
            continue
        border = touches_border(bbox, shell.shape)
        if border or length >= params.min_isolated_bone_mm:
            short = not border and length < params.short_bone_mm
            keep[n] = _encloses_marrow(
                labels[bbox] == n,
                hu[bbox],
                thick=thick[bbox],
                spacing=spacing,
                axis=axis,
                params=params if border else isolated,
                min_marrow_of_shell=params.short_bone_marrow if short else 0.0,
            )
    return keep[labels]


def _encloses_marrow(
    component: np.ndarray,
    hu: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
    min_marrow_of_shell: float = 0.0,
) -> bool:
    """Whether a shell encloses marrow: cavities of marrow density (median within
    ``marrow_min_hu``-``marrow_max_hu``, lesion material not counted) make at least a quarter of
    what it encloses, and at least ``min_marrow_of_shell`` times the shell's own volume. A bone
    merged with a calcified lesion shell encloses both marrow and the lesion's soft core; the
    shell of a lesion alone encloses no marrow.

    A bone that a mass has partly replaced is open on the mass's side, so nothing is enclosed
    topologically; its cortex still surrounds the remaining marrow in-plane (rays meet it in at
    least ``marrow_enclosure`` of 8 directions). Such marrow counts when it is at least a quarter
    (or ``min_marrow_of_shell``, if more) of the shell's own volume.
    """
    closed = closing(component, params.marrow_closing_mm, spacing)
    inside = fill_holes(closed, axis) & ~component & ~thick
    labels, count = ndimage.label(inside, structure=np.ones((3, 3, 3), bool))
    if count > 0:
        median = label_median(hu, labels, count)[1:]
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        marrow = (median >= params.marrow_min_hu) & (median <= params.marrow_max_hu)
        enclosed = sizes[marrow].sum()
        if enclosed >= 0.25 * sizes.sum() and enclosed >= min_marrow_of_shell * component.sum():
            return True
    return _surrounds_marrow(
        component,
        hu,
        thick=thick,
        spacing=spacing,
        axis=axis,
        params=params,
        min_marrow_of_shell=max(0.25, min_marrow_of_shell),
    )


def _surrounds_marrow(
    component: np.ndarray,
    hu: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
    min_marrow_of_shell: float,
) -> bool:
    """Whether a shell that encloses nothing still surrounds marrow in-plane (eroded bone): at
    least ``min_marrow_of_shell`` times its own volume."""
    smooth = ndimage.median_filter(hu, size=3)
    medium = (
        (smooth >= params.marrow_min_hu) & (smooth <= params.marrow_max_hu) & ~component & ~thick
    )
    in_plane = in_plane_spacing(spacing, axis)
    reach = int(np.ceil(2 * params.max_marrow_radius_mm / in_plane))
    hits = enclosing_directions(medium, component, axis, reach_voxels=reach)
    surrounded = _without_thin_layers(
        medium & (hits >= params.marrow_enclosure * 8), spacing=spacing, params=params
    )
    return bool(surrounded.sum() >= min_marrow_of_shell * component.sum())


def _drop_lesion_shells(
    shell: np.ndarray,
    marrow: np.ndarray,
    hu: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Skeletal shell minus the calcified lesion shells that merely touch a bone.

    Cortex wraps marrow: shell farther than ``max_cortex_mm`` from any marrow is checked again.
    A part that walls (with the rest of the skeleton and any lesion material) a cavity of soft
    tissue, fat or fluid (median below ``marrow_min_hu``: the core of myositis ossificans or of a
    calcified haematoma lying on a bone) is lesion; the rest (flat-bone cortex whose thin marrow
    was not found) stays bone.
    """
    if not marrow.any():
        return shell
    far = shell & (distance_mm(~marrow, spacing) > params.max_cortex_mm)
    labels, count = ndimage.label(far, structure=np.ones((3, 3, 3), bool))
    drop = np.zeros(count + 1, bool)
    margin = [int(np.ceil(params.max_cortex_mm / s)) for s in spacing]
    touching = np.ones((3, 3, 3), bool)
    for n, bbox in enumerate(ndimage.find_objects(labels), start=1):
        if extent_mm(bbox, spacing) < params.max_cortex_mm:
            continue
        box = grown_box(bbox, margin, shell.shape)
        wall = closing(shell[box], params.marrow_closing_mm, spacing) | thick[box]
        cavities, _ = ndimage.label(fill_holes(wall, axis) & ~wall)
        near = ndimage.binary_dilation(labels[box] == n, structure=touching)
        inside = np.isin(cavities, np.unique(cavities[near & (cavities > 0)]))
        if inside.sum() >= (labels[box] == n).sum():
            drop[n] = float(np.median(hu[box][inside])) < params.marrow_min_hu
    return shell & ~drop[labels]


def _marrow_density(
    smooth: np.ndarray, shell: np.ndarray, *, thick: np.ndarray, params: ThresholdParams
) -> np.ndarray:
    """Voxels of marrow density (3x3x3 median within ``marrow_min_hu``-``cortex_hu``)."""
    return (smooth >= params.marrow_min_hu) & (smooth < params.cortex_hu) & ~shell & ~thick


def _ray_enclosed(
    smooth: np.ndarray,
    shell: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Marrow-density voxels that cortex surrounds in-plane: rays through marrow density meet
    the skeletal shell in at least ``marrow_enclosure`` of 8 directions, within twice
    ``max_marrow_radius_mm``. A gout tophus or a sediment layer merged with the marrow of the bone
    it erodes bulges out of the bone outline: its outer rays end in soft tissue."""
    medium = _marrow_density(smooth, shell, thick=thick, params=params)
    in_plane = in_plane_spacing(spacing, axis)
    reach = int(np.ceil(2 * params.max_marrow_radius_mm / in_plane))
    hits = enclosing_directions(medium, shell, axis, reach_voxels=reach)
    return medium & (hits >= params.marrow_enclosure * 8)


def _walled_marrow(
    smooth: np.ndarray,
    shell: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Marrow-density regions walled mostly by skeletal cortex, slice by slice.

    A thin cortex sampled on a 2 mm grid has gaps, and a mass that erodes a bone opens its cavity:
    then nothing is topologically enclosed. A radiologist still reads the cavity as marrow: a
    region of marrow density (``smooth``, 3x3x3 median HU, within ``marrow_min_hu`` and
    ``cortex_hu``) whose in-plane outline is at least ``marrow_wall_fraction`` cortex. Lesion
    material of that density (sediment, gout) is walled by fluid, soft tissue or calcification.
    """
    medium = _marrow_density(smooth, shell, thick=thick, params=params)
    structure = in_plane_structure(axis)
    labels, count = ndimage.label(medium, structure=structure)
    if count == 0:
        return medium
    ring = ndimage.binary_dilation(medium, structure=structure) & ~medium
    facing = ndimage.grey_dilation(labels, footprint=structure)[ring]
    wall = np.bincount(facing, weights=shell[ring], minlength=count + 1)
    outline = np.bincount(facing, minlength=count + 1)
    walled = wall >= params.marrow_wall_fraction * np.maximum(outline, 1)
    sampling = in_plane_sampling(spacing, axis)
    depth = distance_mm(labels > 0, sampling)
    shallow = label_maximum(depth, labels, count) <= params.max_marrow_radius_mm
    keep = walled & shallow
    keep[0] = False
    return keep[labels]


def _enclosed_marrow(
    shell: np.ndarray,
    thick: np.ndarray,
    *,
    smooth: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Regions enclosed by the skeletal shell that are shallow enough to be marrow.

    Lesion material counts as wall too: where a mass sits on the cortex the opening gives the
    cortex under it to the mass, and the marrow must still be enclosed. A region is marrow only if
    the skeletal shell makes most of its wall (a fluid lobule is walled by the lesion itself) and
    its median density (``smooth``, 3x3x3 median HU) is at least ``marrow_min_hu``: the soft or
    fluid core of a calcified shell lying on a bone is walled by a shell merged with the cortex.
    Returns (marrow, soft cavities): the latter are those cores, dependent sediment included.
    """
    closed = closing(shell, params.marrow_closing_mm, spacing)
    # Thin marrow sealed by the closing (flat bones), not the soft edge of a cavity it narrows,
    # nor the partial-volume rim that the closing adds along a curved shell at sub-mm voxels.
    sealed = _without_thin_layers(
        closed & ~shell & (smooth >= params.marrow_min_hu), spacing=spacing, params=params
    )
    wall = closed | thick
    holes = fill_holes(wall, axis) & ~wall
    labels, count = ndimage.label(holes)
    if count == 0:
        return sealed, np.zeros_like(shell)
    # In-plane depth (huge spacing along the slice axis makes the EDT two-dimensional): the pelvic
    # inlet is enclosed only within axial slices and may be short in z.
    sampling = in_plane_sampling(spacing, axis)
    depth = distance_mm(holes, sampling)
    shallow = label_maximum(depth, labels, count)[1:] <= params.max_marrow_radius_mm
    del depth
    # Wall voxels facing each hole (a wall voxel takes the label of a neighbouring hole); counts
    # by bincount of the selected voxels only (ndimage.sum_labels makes float64 volume copies).
    facing = ndimage.grey_dilation(labels, size=(3, 3, 3))
    bony = np.bincount(facing[closed & ~thick], minlength=count + 1)[1:]
    walls = np.bincount(facing[wall], minlength=count + 1)[1:]
    del facing
    mostly_bone = bony >= 0.5 * np.maximum(walls, 1)
    dense_enough = label_median(smooth, labels, count)[1:] >= params.marrow_min_hu
    keep = np.concatenate([[False], shallow & mostly_bone & dense_enough])
    soft = np.concatenate([[False], shallow & mostly_bone & ~dense_enough])
    return sealed | keep[labels], soft[labels]


def _cortex_under_lesions(
    dense_thick: np.ndarray,
    marrow: np.ndarray,
    *,
    shell: np.ndarray,
    spacing: tuple[float, float, float],
    params: ThresholdParams,
) -> np.ndarray:
    """Cortex that the opening gave to a mass sitting on it, taken back as bone.

    Each bone's cortical thickness is the median distance from its marrow of its outer shell
    voxels (shell voxels not next to marrow); dense voxels of the mass closer to that marrow than
    this thickness (+ ``bone_margin_mm``) are cortex.
    """
    labels, count = ndimage.label(marrow, structure=np.ones((3, 3, 3), bool))
    distance, owner = _nearest_marrow(
        labels, spacing=spacing, reach_mm=params.max_cortex_mm + params.bone_margin_mm
    )
    outer = shell & ~ndimage.binary_dilation(marrow) & (distance <= params.max_cortex_mm)
    thickness = label_median(distance, np.where(outer, owner, 0), count)
    limit = np.minimum(np.nan_to_num(thickness, nan=0.0), params.max_cortex_mm)
    limit = (limit + params.bone_margin_mm).astype(np.float32)
    return dense_thick & (distance <= limit[owner])


def _nearest_marrow(
    labels: np.ndarray, *, spacing: tuple[float, float, float], reach_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to the nearest labelled marrow region and that region's label, up to
    ``reach_mm`` from it (farther: inf and 0).

    One distance map per region, in its box grown by ``reach_mm``: a whole-volume transform with
    nearest-voxel indices takes gigabytes at 512 x 512 x 160.
    """
    distance = np.full(labels.shape, np.inf, np.float32)
    owner = np.zeros(labels.shape, np.int32)
    margin = [int(np.ceil(reach_mm / s)) + 1 for s in spacing]
    for n, bbox in enumerate(ndimage.find_objects(labels), start=1):
        if bbox is None:
            continue
        box = grown_box(bbox, margin, labels.shape)
        to_region = distance_mm(labels[box] != n, spacing)
        closer = to_region < distance[box]
        distance[box] = np.where(closer, to_region, distance[box])
        owner[box] = np.where(closer, n, owner[box])
    distance[distance > reach_mm] = np.inf
    owner[np.isinf(distance)] = 0
    return distance, owner


def _exposed_marrow(
    hu: np.ndarray,
    marrow: np.ndarray,
    *,
    thick: np.ndarray,
    spacing: tuple[float, float, float],
    params: ThresholdParams,
) -> np.ndarray:
    """Marrow-density voxels connected to enclosed marrow where the cortex is missing.

    A mass can erode or replace the cortex, leaving marrow (above ``threshold_hu`` but below
    ``cortex_hu``) open to it; without this step that marrow would join the lesion. The growth is
    geodesic through marrow-density voxels only, up to ``max_marrow_radius_mm``.
    """
    medium = (hu >= params.threshold_hu) & (hu < params.cortex_hu) & ~thick
    steps = int(np.ceil(params.max_marrow_radius_mm / min(spacing)))
    return ndimage.binary_dilation(marrow, iterations=steps, mask=medium | marrow) & ~marrow


def _fluid(
    hu: np.ndarray,
    *,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Fluid-density regions (median-filtered HU in the fluid range) that could be lesion lobules.

    The 3x3x3 median brings noise below the 10-40 HU gap between fluid and muscle; an opening
    removes the one-voxel bands where fat and muscle average to fluid values; regions deeper
    in-plane than ``fluid_max_radius_mm`` are the bladder or large effusions, not lobules.

    Regions never ``fluid_min_depth_mm`` deep in-plane are dropped where pixels are at most half
    that: a 3x3x3 median then spans only 2-3 mm, and the noise-low voxels of oedematous muscle
    (25-40 HU, next to the 0-25 HU of a lobule) form a sponge of shallow 'fluid' around a mass.
    The cost: a lobule near the top of the fluid range (20-25 HU) in a noisy scan is as patchy
    and can be lost with it. At coarser pixels the median already spans that scale (and any voxel
    is one pixel deep), so nothing changes there.
    """
    smooth = median3(hu)
    fluid = (smooth >= params.fluid_min_hu) & (smooth <= params.fluid_max_hu) & ~bone
    fluid = opening(fluid, min(spacing) * 1.01, spacing)
    labels, count = ndimage.label(fluid)
    if count == 0:
        return fluid
    sampling = in_plane_sampling(spacing, axis)
    deepest = label_maximum(distance_mm(fluid, sampling), labels, count)
    keep = deepest <= params.fluid_max_radius_mm
    in_plane = in_plane_spacing(spacing, axis)
    if in_plane <= params.fluid_min_depth_mm / 2:
        keep &= deepest >= params.fluid_min_depth_mm
    keep[0] = False
    return keep[labels]


def _fluid_lobules(
    calcified: np.ndarray,
    fluid: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    params: ThresholdParams,
) -> np.ndarray:
    """Fluid reached from the calcification across lobule walls (``septum_mm``), within reach.

    Tumoral calcinosis is a cluster of lobules, many of them fluid (0-30 HU) or fluid over a
    calcium sediment, separated by thin soft-tissue septa. Each hop crosses one septum and floods
    the fluid lobule behind it; ``fluid_hops`` hops at most, never beyond ``fluid_reach_mm`` of
    the calcification.
    """
    if not calcified.any():
        return calcified
    distance = distance_mm(~calcified, spacing)
    allowed = fluid & (distance <= params.fluid_reach_mm)
    septum = ball(params.septum_mm, spacing)
    reached = calcified
    for _ in range(int(params.fluid_hops)):
        front = ndimage.binary_dilation(reached, structure=septum) & allowed & ~reached
        if not front.any():
            break
        reached = reached | ndimage.binary_propagation(front, mask=allowed)
    return reached & ~calcified


def _lesion_mask(
    candidates: np.ndarray,
    *,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Lesion voxels -> whole lesions: closing merges lobules across septa, holes are filled,
    including holes that a bone closes (see ``_holes_closed_by_bone``)."""
    closed = closing(candidates, params.closing_mm, spacing) & ~bone
    filled = fill_holes(closed, axis)
    return (filled | _holes_closed_by_bone(filled, bone, axis=axis)) & ~bone


def _holes_closed_by_bone(lesions: np.ndarray, bone: np.ndarray, *, axis: int) -> np.ndarray:
    """Regions enclosed by lesion and bone together whose wall is mostly lesion.

    The calcified shell of a haematoma or a bursa lying on a bone gives the bone the part of its
    wall that touches the cortex; the shell alone is then open and its soft core would be lost.
    The bone closes it. A region walled mostly by bone (the pelvic inlet next to a lesion) is not
    the lesion's. Searched in the lesions' box grown by one voxel: a region reaching the box's
    edge is not enclosed by the lesion.
    """
    if not lesions.any() or not bone.any():
        return np.zeros_like(lesions)
    box = grown_box(ndimage.find_objects(lesions.astype(np.uint8))[0], 1, lesions.shape)
    lesion, wall = lesions[box], lesions[box] | bone[box]
    labels, count = ndimage.label(fill_holes(wall, axis) & ~wall)
    out = np.zeros_like(lesions)
    if count == 0:
        return out
    facing = ndimage.grey_dilation(labels, size=(3, 3, 3))
    by_lesion = np.bincount(facing[lesion], minlength=count + 1)
    by_bone = np.bincount(facing[wall & ~lesion], minlength=count + 1)
    keep = by_lesion > by_bone
    keep[0] = False
    out[box] = keep[labels]
    return out


def _capsule(
    lesions: np.ndarray,
    lobules: np.ndarray,
    hu: np.ndarray,
    *,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    params: ThresholdParams,
) -> np.ndarray:
    """The soft-tissue walls of fluid lobules: septa and capsule within ``capsule_mm`` of them.

    Tumoral calcinosis is encapsulated and its lobules share septa (1-3 mm, muscle density), which
    belong to the mass but are invisible against muscle. Voxels of soft-tissue density
    (``capsule_min_hu``-``capsule_max_hu``, 3x3x3 median; not fat, not bone) that close to a fluid
    lobule of a lesion are kept. Solid lesions (a tendinitis deposit, a myositis shell) and a
    lobule walled by calcification end at their calcification.
    """
    fluid = lobules & lesions
    if not fluid.any():
        return fluid
    smooth = median3(hu)
    wall = (smooth >= params.capsule_min_hu) & (smooth <= params.capsule_max_hu) & ~bone
    return ndimage.binary_dilation(fluid, structure=ball(params.capsule_mm, spacing)) & wall


def _drop_bone_rinds(
    candidates: np.ndarray,
    *,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    axis: int,
    params: ThresholdParams,
) -> np.ndarray:
    """Remove thin components stuck to bone: residual cortex where it is locally thicker.

    Thickness is measured with what a component encloses (against the bone too): the thin
    calcified wall of a lobule sitting in an erosion is a capsule, not a rind.
    """
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3, 3), bool))
    if count == 0 or not bone.any():
        return candidates
    filled = candidates | (fill_holes(candidates | bone, axis) & ~bone)
    depth = np.where(candidates, distance_mm(filled, spacing), 0.0)
    max_depth = label_maximum(depth, labels, count)[1:]
    near_bone = ndimage.binary_dilation(bone, structure=np.ones((3, 3, 3), bool))
    touching = np.zeros(count + 1, bool)
    touching[np.unique(labels[near_bone & candidates])] = True
    # A haematoma's or bursa's thin calcified wall touches the bone at one place; cortex left
    # over by the bone mask lies along it.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    contact = np.bincount(labels[near_bone], minlength=count + 1)[1:] / np.maximum(sizes, 1)
    along = contact >= params.rind_contact
    rind = touching[1:] & along & (max_depth < params.rind_depth_mm)
    drop = np.concatenate([[False], rind])
    return candidates & ~drop[labels]


def _drop_small(labels: np.ndarray, *, min_voxels: float) -> np.ndarray:
    """Zero the labels with fewer than ``min_voxels`` voxels."""
    counts = np.bincount(labels.ravel())
    small = counts < min_voxels
    small[0] = True
    return np.where(small[labels], 0, labels)
