"""Tests of calcirad.segment on synthetic SimpleITK volumes with known lesions and bones.

The phantom is a small pelvis: two femora (cortical tube + marrow, femoral neck and a closed head
shell, shafts leaving the bottom of the scan), a pelvic wall (closed cortical shell around marrow)
whose axial slices enclose the pelvic cavity, a bladder, and lesions placed against the bone.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from calcirad.errors import ConfigError, SubjectInputError
from calcirad.segment import (
    SEGMENTATION_METHODS,
    carry_mask,
    find_bone,
    register_method,
    register_rigid,
    segment_ct,
    segmentation_metrics,
    select_lesions,
)
from calcirad.segment._grid import (
    array_spacing,
    distance_mm,
    enclosing_directions,
    grown_box,
    label_maximum,
    label_median,
    slice_axis,
)
from calcirad.segment.extend import extend_mask, muscle_reference_mask
from calcirad.segment.masks import read_mask_file

SPACING = (2.2, 2.2, 3.0)  # mm, (x, y, z)
SIZE = (150, 110, 60)  # voxels, (x, y, z)


# --------------------------------------------------------------------------- phantom builders


def _grid(spacing=SPACING, size=SIZE):
    """Physical LPS coordinates (mm) of voxel centres, numpy (k, j, i) order, centred on 0."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, spacing, strict=True)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    origin = tuple(float(a[0]) for a in axes)
    return x, y, z, origin


def _sphere(x, y, z, centre, radius):
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def _capsule(x, y, z, a, b, radius):
    """Solid cylinder with hemispherical ends between points a and b (mm)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / ab.dot(ab)
    t = np.clip(t, 0, 1)
    d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    return d2 <= radius**2


def _femur(x, y, z, side):
    """Outer solid and marrow of a femur on ``side`` (+1 patient left, -1 right)."""
    shaft = ((side * 95, 0, -200), (side * 95, 0, 10))
    neck = ((side * 95, 0, 10), (side * 75, 0, 40))
    head = (side * 72, 0, 48)
    outer = (
        _capsule(x, y, z, *shaft, 14) | _capsule(x, y, z, *neck, 13) | _sphere(x, y, z, head, 23)
    )
    inner = _capsule(x, y, z, *shaft, 9) | _capsule(x, y, z, *neck, 9) | _sphere(x, y, z, head, 19)
    return outer, inner


def _pelvic_wall(x, y, z):
    """Elliptic wall (closed shell: cortex both sides, marrow between) from z = 62 mm upwards."""
    r = np.sqrt((x / 85.0) ** 2 + (y / 60.0) ** 2)
    band = z >= 62
    outer = band & (r >= 0.95) & (r <= 1.15) & (z <= 200)
    inner = (z >= 66) & (r >= 1.0) & (r <= 1.10)
    return outer, inner


def _body(x, y, z, rng):
    """Soft tissue background in HU: air, fat, muscle, bladder."""
    hu = np.full(x.shape, -1000.0, np.float32)
    body = (x / 160.0) ** 2 + (y / 115.0) ** 2 <= 1
    hu[body] = -100.0
    hu[(x / 145.0) ** 2 + (y / 100.0) ** 2 <= 1] = 50.0
    hu[_sphere(x, y, z, (0, -20, 75), 30)] = 10.0
    return hu


def _add_bone(hu, x, y, z, *, pelvis=True):
    parts = [_femur(x, y, z, -1), _femur(x, y, z, +1)]
    if pelvis:
        parts.append(_pelvic_wall(x, y, z))
    bone = np.zeros(hu.shape, bool)
    for outer, inner in parts:
        hu[outer & ~inner] = 1400.0
        hu[inner] = 180.0
        bone |= outer
    return bone


def _tc_lesion(hu, x, y, z, rng, *, centre=(-62, 8, -40)):
    """Multilobulated tumoral calcinosis against the right femoral shaft; returns its mask.

    Lobule 1 touches the cortex (dense calcification), lobule 2 is a fluid lobule in a calcified
    capsule with a dependent (posterior = +y) sediment layer, lobule 3 amorphous calcification.
    """
    cx, cy, cz = centre
    dense = _sphere(x, y, z, (cx, cy, cz), 16)
    fluid_outer = _sphere(x, y, z, (cx + 12, cy + 16, cz + 14), 14)
    fluid_inner = _sphere(x, y, z, (cx + 12, cy + 16, cz + 14), 11.5)
    amorphous = _sphere(x, y, z, (cx + 14, cy - 12, cz - 12), 12)
    hu[dense] = rng.uniform(500, 1500, dense.sum())
    hu[amorphous] = rng.uniform(250, 900, amorphous.sum())
    hu[fluid_outer] = 700.0
    hu[fluid_inner] = 15.0
    sediment = fluid_inner & (y > cy + 16 + 5)
    hu[sediment] = 500.0
    return dense | fluid_outer | amorphous


def _to_image(hu, origin, spacing=SPACING, rng=None, noise=15.0):
    if rng is not None:
        hu = hu + rng.normal(0, noise, hu.shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _mask_image(mask, like):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def tc_case():
    """CT with a lobulated TC lesion touching the right femur; (ct, truth mask, bone mask)."""
    rng = np.random.default_rng(7)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    bone = _add_bone(hu, x, y, z)
    truth = _tc_lesion(hu, x, y, z, rng)
    bone &= ~truth
    ct = _to_image(hu, origin, rng=rng)
    return ct, _mask_image(truth, ct), bone


@pytest.fixture(scope="module")
def tc_labels(tc_case):
    ct, _, _ = tc_case
    start = time.perf_counter()
    labels = segment_ct(ct)
    return labels, time.perf_counter() - start


# --------------------------------------------------------------------------- segment_ct


def test_lesion_touching_femur_is_segmented_without_the_bone(tc_case, tc_labels):
    ct, truth, bone = tc_case
    labels, seconds = tc_labels
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert labels.GetSize() == ct.GetSize() and labels.GetSpacing() == ct.GetSpacing()
    mask = select_lesions(labels, policy="largest")
    metrics = segmentation_metrics(mask, truth)
    assert metrics["dice"] >= 0.85, metrics
    assert metrics["hd95_mm"] <= 6.0, metrics
    in_bone = (sitk.GetArrayViewFromImage(mask) > 0) & bone
    assert in_bone.sum() <= 0.01 * bone.sum()
    assert in_bone.sum() <= 0.02 * sitk.GetArrayViewFromImage(mask).sum()
    assert seconds < 10


def test_fluid_lobule_and_sediment_belong_to_the_mass(tc_case, tc_labels):
    ct, truth, _ = tc_case
    labels = sitk.GetArrayViewFromImage(tc_labels[0])
    # Centre of the fluid lobule (15 HU inside a calcified capsule), physical -> index.
    index = ct.TransformPhysicalPointToIndex((-62 + 12, 8 + 16 - 4, -40 + 14))
    assert sitk.GetArrayViewFromImage(ct)[index[::-1]] < 100
    assert labels[index[::-1]] == 1


def test_bone_finder_keeps_femora_and_pelvis_and_rejects_the_pelvic_cavity(tc_case):
    ct, truth, bone = tc_case
    hu = sitk.GetArrayFromImage(ct)
    found = find_bone(hu, spacing=array_spacing(ct), axis=slice_axis(ct))
    overlap = (found & bone).sum() / bone.sum()
    assert overlap >= 0.9
    bladder = ct.TransformPhysicalPointToIndex((0, -20, 75))
    assert not found[bladder[::-1]]
    assert (found & (sitk.GetArrayViewFromImage(truth) > 0)).sum() <= 0.05 * bone.sum()


def test_bone_alone_raises_no_lesion():
    rng = np.random.default_rng(3)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    _add_bone(hu, x, y, z)
    with pytest.raises(SubjectInputError, match="no lesion above threshold"):
        segment_ct(_to_image(hu, origin, rng=rng))


def test_nothing_above_threshold_raises():
    rng = np.random.default_rng(4)
    x, y, z, origin = _grid(size=(60, 50, 30))
    hu = _body(x, y, z, rng)
    with pytest.raises(SubjectInputError, match="no lesion above threshold"):
        segment_ct(_to_image(hu, origin, rng=rng))


@pytest.fixture(scope="module")
def two_lesions():
    """A TC on the right femur and a smaller isolated calcification on the patient's left."""
    rng = np.random.default_rng(11)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    _add_bone(hu, x, y, z)
    right = _tc_lesion(hu, x, y, z, rng)
    left = _sphere(x, y, z, (50, 30, -20), 10)
    hu[left] = 800.0
    ct = _to_image(hu, origin, rng=rng)
    return ct, segment_ct(ct), _mask_image(right, ct), _mask_image(left, ct)


def test_two_lesions_are_labelled_by_decreasing_volume(two_lesions):
    _, labels, right, left = two_lesions
    array = sitk.GetArrayViewFromImage(labels)
    assert set(np.unique(array)) == {0, 1, 2}
    assert (array == 1).sum() > (array == 2).sum()
    assert segmentation_metrics(_mask_image(array == 1, labels), right)["dice"] >= 0.85
    assert segmentation_metrics(_mask_image(array == 2, labels), left)["dice"] >= 0.85


def test_selection_policies(two_lesions):
    _, labels, right, left = two_lesions
    largest = select_lesions(labels, policy="largest")
    both = select_lesions(labels, policy="per_side")
    everything = select_lesions(labels, policy="all")
    assert largest.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(both))) == {0, 1}
    assert segmentation_metrics(largest, right)["dice"] >= 0.85
    union = _mask_image(sitk.GetArrayViewFromImage(right) | sitk.GetArrayViewFromImage(left), right)
    assert segmentation_metrics(both, union)["dice"] >= 0.85
    assert np.array_equal(sitk.GetArrayViewFromImage(both), sitk.GetArrayViewFromImage(everything))
    # Both lesions on the patient's right: per_side keeps only the larger one.
    shifted = select_lesions(labels, policy="per_side", midline_x_mm=100.0)
    assert segmentation_metrics(shifted, right)["dice"] >= 0.85
    with pytest.raises(ConfigError):
        select_lesions(labels, policy="biggest")


def test_myositis_ossificans_rim_keeps_its_soft_core():
    rng = np.random.default_rng(5)
    x, y, z, origin = _grid(size=(80, 70, 40))
    hu = _body(x, y, z, rng)
    outer = _sphere(x, y, z, (10, 5, 0), 20)
    hu[outer] = 900.0
    hu[_sphere(x, y, z, (10, 5, 0), 16)] = 45.0
    ct = _to_image(hu, origin, rng=rng)
    labels = segment_ct(ct)
    assert segmentation_metrics(labels, _mask_image(outer, ct))["dice"] >= 0.9


def test_parosteal_lesion_wrapping_the_femur_spares_the_femur():
    rng = np.random.default_rng(6)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    bone = _add_bone(hu, x, y, z)
    # Half-shell of calcified matrix hugging the anterior-lateral right shaft over 6 cm.
    r = np.sqrt((x + 95) ** 2 + y**2)
    lesion = (r > 14) & (r <= 30) & (y < 5) & (z > -80) & (z < -20)
    hu[lesion] = rng.uniform(500, 1200, lesion.sum())
    ct = _to_image(hu, origin, rng=rng)
    mask = select_lesions(segment_ct(ct), policy="largest")
    metrics = segmentation_metrics(mask, _mask_image(lesion, ct))
    assert metrics["dice"] >= 0.8, metrics
    assert ((sitk.GetArrayViewFromImage(mask) > 0) & bone).sum() <= 0.02 * lesion.sum()


def test_method_registry_and_unknown_parameters(tc_case):
    ct, truth, _ = tc_case

    @register_method("truth_oracle")
    def oracle(image, params):
        return truth

    try:
        labels = segment_ct(ct, method="truth_oracle")
        assert segmentation_metrics(labels, truth)["dice"] == 1.0
    finally:
        del SEGMENTATION_METHODS["truth_oracle"]
    with pytest.raises(ConfigError, match="unknown segmentation method"):
        segment_ct(ct, method="unet")
    with pytest.raises(ConfigError, match="threshold_hU"):
        segment_ct(ct, params={"threshold_hU": 200})


def test_higher_threshold_is_honoured(tc_case):
    ct, truth, _ = tc_case
    with pytest.raises(SubjectInputError, match="2000"):
        segment_ct(ct, params={"threshold_hu": 2000})


# --------------------------------------------------------------------------- carry_mask


def _rotated_reference(spacing, angle_deg, size=(40, 40, 30)):
    """Grid centred on 0 rotated by ``angle_deg`` about z (LPS)."""
    a = np.deg2rad(angle_deg)
    direction = (np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetDirection(direction)
    centre = ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
    ref.SetOrigin(tuple(-c for c in centre))
    return ref


@pytest.fixture(scope="module")
def ellipsoid_mask():
    x, y, z, origin = _grid(spacing=(1.0, 1.0, 1.5), size=(90, 90, 60))
    inside = (x / 28) ** 2 + (y / 20) ** 2 + ((z - 3) / 25) ** 2 <= 1
    image = _mask_image(inside, _to_image(np.zeros(x.shape), origin, spacing=(1.0, 1.0, 1.5)))
    return image, 4 / 3 * np.pi * 28 * 20 * 25 / 1000  # ml


def _volume_ml(mask):
    return float((sitk.GetArrayViewFromImage(mask) > 0).sum()) * np.prod(mask.GetSpacing()) / 1000


@pytest.mark.parametrize(("method", "tolerance"), [("partial_volume", 0.03), ("nearest", 0.06)])
def test_carry_mask_to_coarser_oblique_grid_preserves_volume(ellipsoid_mask, method, tolerance):
    mask, volume = ellipsoid_mask
    reference = _rotated_reference((3.0, 3.5, 4.0), 30)
    carried = carry_mask(mask, reference, method=method)
    assert carried.GetPixelID() == sitk.sitkUInt8
    assert carried.GetSize() == reference.GetSize()
    assert carried.GetDirection() == reference.GetDirection()
    assert _volume_ml(mask) == pytest.approx(volume, rel=0.02)
    assert _volume_ml(carried) == pytest.approx(volume, rel=tolerance)
    # Same physical place: carrying back lands on the original.
    back = carry_mask(carried, mask, method="nearest")
    assert segmentation_metrics(back, mask)["dice"] >= 0.9


def test_carry_mask_partial_volume_keeps_labels_and_threshold(ellipsoid_mask):
    mask, _ = ellipsoid_mask
    labels = sitk.GetArrayFromImage(mask).astype(np.uint8)
    labels[:, :, :45] *= 2  # two labels split at the midline
    image = _mask_image(labels, mask)
    image = sitk.Cast(image, sitk.sitkUInt8)
    image.CopyInformation(mask)
    reference = _rotated_reference((3.0, 3.0, 3.0), 0)
    carried = sitk.GetArrayFromImage(carry_mask(image, reference, method="partial_volume"))
    assert set(np.unique(carried)) == {0, 1, 2}
    strict = carry_mask(mask, reference, method="partial_volume", threshold=0.99)
    loose = carry_mask(mask, reference, method="partial_volume", threshold=0.01)
    assert _volume_ml(strict) < _volume_ml(mask) < _volume_ml(loose)


def test_carry_mask_with_transform_moves_the_mask(ellipsoid_mask):
    mask, _ = ellipsoid_mask
    shift = sitk.TranslationTransform(3, (6.0, 0.0, 0.0))  # reference point -> mask point
    carried = carry_mask(mask, mask, transform=shift)
    shifted = sitk.GetArrayViewFromImage(carried)
    original = sitk.GetArrayViewFromImage(mask)
    # Output voxel at x samples the mask at x + 6 mm: the mask moves 6 voxels towards -x.
    assert np.array_equal(shifted[:, :, :-6], original[:, :, 6:])


# --------------------------------------------------------------------------- metrics


def test_metrics_on_known_boxes():
    base = sitk.Image((40, 40, 40), sitk.sitkUInt8)
    base.SetSpacing((1.0, 1.0, 2.0))
    a = sitk.GetArrayFromImage(base)
    b = a.copy()
    a[10:20, 10:30, 10:30] = 1  # 10 slices x 20 x 20 = 4000 voxels, 2 mm slices
    b[12:22, 10:30, 10:30] = 1  # shifted two slices = 4 mm
    ma, mb = _mask_image(a, base), _mask_image(b, base)
    m = segmentation_metrics(ma, mb)
    assert m["dice"] == pytest.approx(0.8)
    assert m["volume_ml"] == pytest.approx(4000 * 2 / 1000)
    assert m["truth_volume_ml"] == pytest.approx(8.0)
    assert m["hd95_mm"] == pytest.approx(4.0)
    assert segmentation_metrics(ma, ma)["hd95_mm"] == 0.0
    empty = segmentation_metrics(_mask_image(np.zeros_like(a), base), mb)
    assert empty["dice"] == 0.0 and empty["hd95_mm"] == float("inf")


# --------------------------------------------------------------------------- registration


def test_register_rigid_recovers_a_known_shift():
    rng = np.random.default_rng(2)
    x, y, z, origin = _grid(spacing=(2.0, 2.0, 2.0), size=(64, 64, 48))
    volume = np.zeros(x.shape, np.float32)
    for _ in range(12):  # asymmetric blobs so the optimum is unique
        c = rng.uniform(-40, 40, 3) * (1, 1, 0.8)
        volume += rng.uniform(50, 200) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * rng.uniform(5, 12) ** 2)
        )
    fixed = _to_image(volume, origin, spacing=(2.0, 2.0, 2.0))
    truth = sitk.Euler3DTransform()
    truth.SetRotation(0.0, 0.0, np.deg2rad(3.0))
    truth.SetTranslation((4.3, -2.7, 3.1))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    estimate = register_rigid(moving, fixed)
    errors = [
        np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))
        for p in [(0, 0, 0), (30, 20, 10), (-30, 25, -20), (20, -30, 25)]
    ]
    assert max(errors) < 1.0, errors


# --------------------------------------------------------------------------- user masks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"third-party DICOM test data not found at {SHARED}"
)


def _dicom_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_nifti_mask_on_another_grid_is_carried_and_label_selected(ellipsoid_mask, tmp_path):
    mask, volume = ellipsoid_mask
    labels = sitk.GetArrayFromImage(mask) * 3
    path = tmp_path / "user.nii.gz"
    sitk.WriteImage(_mask_image(labels, mask), str(path))
    reference = _rotated_reference((2.0, 2.0, 2.0), 15)
    read = read_mask_file(path, reference)
    assert read.GetSize() == reference.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(read))) == {0, 1}
    assert _volume_ml(read) == pytest.approx(volume, rel=0.05)
    assert segmentation_metrics(read_mask_file(path, mask, roi=3), mask)["dice"] == 1.0
    with pytest.raises(SubjectInputError, match="no voxel"):
        read_mask_file(path, mask, roi=2)


def test_rtstruct_even_odd_holes(tmp_path):
    """A contour inside another on the same slice is a hole; slices map by z (LPS mm)."""
    reference = sitk.Image((40, 40, 5), sitk.sitkInt16)
    reference.SetSpacing((1.0, 1.0, 2.0))
    reference.SetOrigin((-20.0, -20.0, 0.0))

    def square(half, z):
        return [
            v
            for x, y in [(-half, -half), (half, -half), (half, half), (-half, half)]
            for v in (x, y, z)
        ]

    dataset = _rtstruct(
        {"LESION": [square(9.5, 4.0), square(4.5, 4.0)], "OTHER": [square(3.5, 2.0)]}
    )
    path = tmp_path / "rs.dcm"
    dataset.save_as(path, enforce_file_format=True)
    mask = sitk.GetArrayFromImage(read_mask_file(path, reference, roi="lesion"))
    assert mask[2].sum() == 19 * 19 - 9 * 9  # voxel centres inside the outer square, not the hole
    assert mask.sum() == mask[2].sum()
    with pytest.raises(SubjectInputError, match="several ROIs"):
        read_mask_file(path, reference)
    assert sitk.GetArrayFromImage(read_mask_file(path, reference, roi=2))[1].sum() == 7 * 7


def _rtstruct(rois):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points) // 3
            contour.ContourData = points
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    return ds


@needs_shared
def test_dicom_seg_decodes_exactly_onto_its_ct():
    folder = SHARED / "dcmqi_seg"
    ct = _dicom_series(folder / "ct-3slice")
    mask = sitk.GetArrayFromImage(read_mask_file(folder / "liver.dcm", ct))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "liver_seg.nrrd")))
    assert mask.sum() == 107_098
    assert mask.sum(axis=(1, 2)).tolist() == [36_233, 35_645, 35_220]
    assert np.array_equal(mask > 0, expected > 0)


@needs_shared
def test_dicom_seg_with_overlapping_segments_reads_each_segment():
    folder = SHARED / "dcmqi_seg"
    ct = _dicom_series(folder / "ct-3slice")
    expected = [
        sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
        for p in sorted(folder.glob("partial_overlaps-*.nrrd"))
    ]
    for segment in range(1, 6):
        truth = next(e == segment for e in expected if (e == segment).any())
        mask = sitk.GetArrayFromImage(
            read_mask_file(folder / "partial_overlaps.dcm", ct, roi=segment)
        )
        assert np.array_equal(mask > 0, truth), segment
    with pytest.raises(SubjectInputError, match="several segments"):
        read_mask_file(folder / "partial_overlaps.dcm", ct)


@needs_shared
@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
@pytest.mark.parametrize(("modality", "minimum"), [("CT", 0.95), ("MR_T1", 0.95), ("PET", 0.90)])
def test_rtstruct_matches_upstream_masks(patient, modality, minimum):
    root = SHARED / "ibsi_sts_sample"
    image = _dicom_series(root / "dicom" / patient / modality / "image")
    mask = read_mask_file(root / "dicom" / patient / modality / "mask" / "RS.dcm", image)
    truth = sitk.ReadImage(str(root / "nifti" / patient / f"{modality}_mask.nii.gz"))
    assert segmentation_metrics(mask, truth)["dice"] >= minimum


# --------------------------------------------------------------------------- T2 / PET extension


@pytest.fixture(scope="module")
def osteosarcoma():
    """Central calcification (r 14 mm) in a solid non-calcified mass (r 25 mm, 35-60 HU)."""
    rng = np.random.default_rng(9)
    x, y, z, origin = _grid(size=(90, 80, 40))
    hu = _body(x, y, z, rng)
    whole = _sphere(x, y, z, (20, 0, 0), 25)
    core = _sphere(x, y, z, (20, 0, 0), 14)
    hu[whole] = rng.uniform(35, 60, whole.sum())
    hu[core] = rng.uniform(300, 1200, core.sum())
    ct = _to_image(hu, origin, rng=rng, noise=10)
    body = hu > -500
    t2 = np.where(body, 300.0, 5.0)
    t2[hu < -50] = 700.0  # fat is T2-bright too, but it is not connected to the lesion
    t2[whole], t2[core] = 900.0, 100.0
    pet = np.where(body, 0.8, 0.0)
    pet[whole], pet[core] = 6.0, 3.0
    coarse = _rotated_reference((4.0, 4.0, 4.0), 0, size=(50, 44, 30))
    images = {
        name: sitk.Resample(_to_image(v, origin), coarse, sitk.Transform(), sitk.sitkLinear)
        for name, v in (("t2", t2), ("pet", pet))
    }
    return ct, _mask_image(whole, ct), images


def test_extension_adds_the_non_calcified_part_and_records_sources(osteosarcoma):
    ct, whole, images = osteosarcoma
    lesion = select_lesions(segment_ct(ct), policy="largest")
    assert segmentation_metrics(lesion, whole)["dice"] < 0.5  # CT sees the calcified core only
    for available, sources in [({"t2"}, ("ct", "t2")), ({"pet"}, ("ct", "pet"))]:
        extended = extend_mask(ct, lesion, images={k: images[k] for k in available})
        assert extended.sources == sources
        assert segmentation_metrics(extended.mask, whole)["dice"] >= 0.85
    alone = extend_mask(ct, lesion, images={})
    assert alone.sources == ("ct",)
    assert segmentation_metrics(alone.mask, lesion)["dice"] == 1.0


def test_extension_avoids_the_bone_of_the_configured_parameters(
    osteosarcoma, monkeypatch, tmp_path
):
    """The workflow step gives the extension the bone the CT method found with the user's
    parameters: one bone search per subject, not a second one with the defaults."""
    from calcirad.segment import ct as ct_module
    from calcirad.steps.segment import _auto_ct_mask

    ct, whole, images = osteosarcoma
    searches = []
    real = ct_module._find_bone

    def counted(hu, *, spacing, axis, params):
        searches.append(params)
        return real(hu, spacing=spacing, axis=axis, params=params)

    monkeypatch.setattr(ct_module, "_find_bone", counted)
    ct_module._BONE_CACHE.clear()
    segmentation = {
        "method": "threshold_components",
        "threshold_hu": 150.0,
        "lesions": "largest",
        "extend_with": ["t2", "pet"],
        "params": {"cortex_hu": 500.0},
    }
    mask, sources, _ = _auto_ct_mask(
        subject="S1", images={"ct": ct, **images}, segmentation=segmentation, out_dir=tmp_path
    )
    assert [p.cortex_hu for p in searches] == [500.0]
    assert sources == ["ct", "pet"]  # with PET, T2 adds fluid only (none here)
    assert segmentation_metrics(mask, whole)["dice"] >= 0.85


def test_muscle_reference_is_muscle_near_the_lesion(osteosarcoma):
    ct, whole, _ = osteosarcoma
    muscle = sitk.GetArrayFromImage(muscle_reference_mask(ct, whole)) > 0
    hu = sitk.GetArrayFromImage(ct)
    assert muscle.sum() > 1000
    assert not (muscle & (sitk.GetArrayViewFromImage(whole) > 0)).any()
    assert 35 <= np.median(hu[muscle]) <= 65


# --------------------------------------------------------------------------- bone vs lesion edge cases


def _femur_case(seed, size=(150, 110, 40)):
    """Body with both femora (marrow 200 HU: above the calcification threshold); (x, y, z, hu...)."""
    rng = np.random.default_rng(seed)
    x, y, z, origin = _grid(size=size)
    z = z - 60.0  # shafts only: the slab sits below the femoral necks
    origin = (origin[0], origin[1], origin[2] - 60.0)
    hu = _body(x, y, z, rng)
    bone = np.zeros(hu.shape, bool)
    marrow = np.zeros(hu.shape, bool)
    for side in (-1, 1):
        outer, inner = _femur(x, y, z, side)
        hu[outer & ~inner] = 1300.0
        hu[inner] = 200.0
        bone |= outer
        marrow |= inner
    return rng, x, y, z, origin, hu, bone, marrow


def test_gappy_cortex_still_encloses_marrow():
    """A thin cortex sampled with gaps (partial volume) still holds its marrow: no lesion."""
    rng, x, y, z, origin, hu, bone, marrow = _femur_case(21)
    cortex = bone & ~marrow
    # Knock out three short bands of the right shaft's cortex (2-3 voxels wide).
    for angle in (0.3, 2.2, 4.0):
        band = cortex & (x < 0) & (np.abs(np.arctan2(y, x + 95) % (2 * np.pi) - angle) < 0.18)
        hu[band & (np.abs(z + 60) < 25)] = 200.0
    with pytest.raises(SubjectInputError, match="no lesion above threshold"):
        segment_ct(_to_image(hu, origin, rng=rng))


def test_fluid_lobule_eroding_the_femur_leaves_its_marrow_out():
    rng, x, y, z, origin, hu, bone, marrow = _femur_case(22)
    centre = (-95 - 14 - 10 + 6, 0, -60)  # sinks 6 mm into the right shaft
    capsule = _sphere(x, y, z, centre, 13)
    hu[capsule] = 800.0
    hu[_sphere(x, y, z, centre, 10)] = 12.0
    ct = _to_image(hu, origin, rng=rng)
    mask = select_lesions(segment_ct(ct), policy="largest")
    # The capsule wall within a cortical thickness of the marrow stays bone (it reads as cortex).
    assert segmentation_metrics(mask, _mask_image(capsule, ct))["dice"] >= 0.7
    inside = sitk.GetArrayViewFromImage(mask) > 0
    assert (inside & marrow & ~capsule).sum() <= 0.02 * (marrow & (x < 0)).sum()


def test_tophus_eroding_the_femur_is_lesion_not_marrow():
    """A 180 HU tophus has marrow density; it bulges out of the bone outline, marrow does not."""
    rng, x, y, z, origin, hu, bone, marrow = _femur_case(23)
    tophus = _sphere(x, y, z, (-95 - 14 - 12 + 4, 0, -60), 12)
    hu[tophus] = 180.0
    ct = _to_image(hu, origin, rng=rng)
    mask = select_lesions(segment_ct(ct), policy="largest")
    assert segmentation_metrics(mask, _mask_image(tophus, ct))["dice"] >= 0.7
    inside = sitk.GetArrayViewFromImage(mask) > 0
    assert (inside & marrow & ~tophus).sum() <= 0.02 * (marrow & (x < 0)).sum()


def test_myositis_shell_on_the_femur_is_lesion():
    """A calcified shell with a fatty core lying on the femur is not taken for skeleton."""
    rng, x, y, z, origin, hu, bone, marrow = _femur_case(24)
    centre = (-95 + 14 + 24, 0, -60)  # medial to the right shaft, touching it
    outer = _sphere(x, y, z, centre, 25) & ~bone
    hu[outer] = 900.0
    hu[_sphere(x, y, z, centre, 21)] = -20.0
    ct = _to_image(hu, origin, rng=rng)
    mask = select_lesions(segment_ct(ct), policy="largest")
    assert segmentation_metrics(mask, _mask_image(outer, ct))["dice"] >= 0.85
    assert ((sitk.GetArrayViewFromImage(mask) > 0) & bone).sum() <= 0.02 * outer.sum()


def test_calcified_shell_leaving_the_field_of_view_is_lesion():
    """A shell cut by the edge of the scan is bone only if it holds marrow; this one holds fat."""
    rng = np.random.default_rng(25)
    x, y, z, origin = _grid(size=(80, 70, 30))
    hu = _body(x, y, z, rng)
    centre = (10, 5, 30)  # the top slices cut through the shell
    outer = _sphere(x, y, z, centre, 24)
    hu[outer] = 900.0
    hu[_sphere(x, y, z, centre, 20)] = -30.0
    ct = _to_image(hu, origin, rng=rng)
    assert segmentation_metrics(segment_ct(ct), _mask_image(outer, ct))["dice"] >= 0.85


def test_short_bone_partly_replaced_by_a_mass_stays_bone():
    """A short tubular bone (60 mm, inside the field of view) whose lower half a soft mass has
    replaced is open on the mass's side: nothing is enclosed topologically, but its cortex still
    surrounds the remaining marrow (demo S001: 10.6 ml of bone inside an osteosarcoma's mask)."""
    rng = np.random.default_rng(26)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    shaft = ((40, -50, -60), (40, -50, 0))
    outer, inner = _capsule(x, y, z, *shaft, 14), _capsule(x, y, z, *shaft, 11)
    hu[outer & ~inner] = 1400.0
    hu[inner] = 250.0
    # The solid part of the mass lies along the tube and replaces its lower half end to end.
    mass = _capsule(x, y, z, (40, -30, -75), (40, -30, 15), 22)
    hu[mass] = 40.0
    blobs = _sphere(x, y, z, (32, -22, -30), 7) | _sphere(x, y, z, (50, -24, -10), 6)
    hu[blobs] = 800.0
    bone = outer & ~mass
    ct = _to_image(hu, origin, rng=rng)
    found = find_bone(sitk.GetArrayFromImage(ct), spacing=array_spacing(ct), axis=slice_axis(ct))
    assert (found & bone).sum() >= 0.95 * bone.sum()
    mask = sitk.GetArrayViewFromImage(segment_ct(ct)) > 0
    assert (mask & bone).sum() <= 0.02 * bone.sum()
    assert segmentation_metrics(segment_ct(ct), _mask_image(blobs, ct))["dice"] >= 0.8


@pytest.mark.parametrize(
    ("half_mm", "radius", "marrow_radius"),
    [(5.0, 13.0, 9.5), (2.0, 11.0, 8.0)],
    ids=["36mm", "26mm"],
)
def test_short_bone_fragment_cut_off_by_a_mass_stays_bone(half_mm, radius, marrow_radius):
    """A 36 mm piece of bone that a mass cut off from the rest of its bone and opened on its side
    (realistic S012: a 35 mm piece of ischium, 11.5 ml of bone in a TC mask) is mostly marrow,
    so it stays bone, unlike a small solid calcified mass of the same length (osteosarcoma test).
    So does a 26 mm piece (held-out S007: 7.3 ml of greater trochanter in a TC mask)."""
    rng = np.random.default_rng(27)
    x, y, z, origin = _grid()
    hu = _body(x, y, z, rng)
    axis_ends = ((20, 4, -20 - half_mm), (20, 4, -20 + half_mm))  # 2 x (half + radius) long in z
    outer = _capsule(x, y, z, *axis_ends, radius)
    inner = _capsule(x, y, z, *axis_ends, marrow_radius)
    hu[outer & ~inner] = 1400.0
    hu[inner] = 220.0
    lesion = _tc_lesion(hu, x, y, z, rng, centre=(40, 10, -20))  # replaces the piece's far side
    fragment = outer & ~lesion
    ct = _to_image(hu, origin, rng=rng)
    found = find_bone(sitk.GetArrayFromImage(ct), spacing=array_spacing(ct), axis=slice_axis(ct))
    assert (found & fragment).sum() >= 0.9 * fragment.sum()
    mask = select_lesions(segment_ct(ct), policy="largest")
    assert ((sitk.GetArrayViewFromImage(mask) > 0) & fragment).sum() <= 0.05 * fragment.sum()
    assert segmentation_metrics(mask, _mask_image(lesion, ct))["dice"] >= 0.8


def test_find_bone_is_memoised_and_read_only(tc_case):
    ct, _, _ = tc_case
    hu = sitk.GetArrayFromImage(ct)
    first = find_bone(hu, spacing=array_spacing(ct), axis=slice_axis(ct))
    again = find_bone(hu.copy(), spacing=array_spacing(ct), axis=slice_axis(ct))
    assert again is first and not first.flags.writeable


# --------------------------------------------------------------------------- grid helpers


def test_grown_box_is_clipped_to_the_volume():
    bbox = (slice(0, 2), slice(5, 7), slice(8, 10))
    assert grown_box(bbox, 1, (4, 10, 10)) == (slice(0, 3), slice(4, 8), slice(7, 10))
    assert grown_box(bbox, [0, 2, 3], (4, 10, 10)) == (slice(0, 2), slice(3, 9), slice(5, 10))


def test_label_median_and_maximum_match_ndimage():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 13, 14))
    labels = rng.integers(0, 6, size=values.shape)
    labels[labels == 4] = 0  # an absent label
    index = np.arange(1, 6)
    expected = np.asarray(ndimage.median(values, labels, index=index), float)
    got = label_median(values, labels, 5)[1:]
    assert np.allclose(got[[0, 1, 2, 4]], expected[[0, 1, 2, 4]]) and np.isnan(got[3])
    assert np.allclose(
        label_maximum(values, labels, 5)[[1, 2, 3, 5]],
        ndimage.maximum(values, labels, index=[1, 2, 3, 5]),
    )


def test_distance_mm_matches_scipy_on_an_anisotropic_grid():
    rng = np.random.default_rng(1)
    mask = ~ndimage.binary_dilation(rng.random((30, 40, 50)) > 0.997, iterations=2)
    for sampling in ((2.5, 0.8, 0.7), (1e9, 0.8, 0.7)):  # 3-D, and in-plane only
        expected = ndimage.distance_transform_edt(mask, sampling=sampling)
        got = distance_mm(mask, sampling)
        assert got.dtype == np.float32
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert np.isinf(distance_mm(np.ones((4, 5, 6), bool), (1.0, 1.0, 1.0))).all()


def test_nearest_marrow_matches_the_whole_volume_feature_transform():
    """Per-region distance maps in grown boxes give the same distance and owner, within reach,
    as scipy's whole-volume transform with nearest-voxel indices."""
    from calcirad.segment.ct import _nearest_marrow

    x, y, z, _ = _grid(size=(80, 60, 30))
    regions = _capsule(x, y, z, (-40, 0, -30), (-40, 0, 30), 8) | _sphere(x, y, z, (30, 10, 0), 9)
    labels, count = ndimage.label(regions)
    spacing = (3.0, 2.2, 2.2)
    distance, owner = _nearest_marrow(labels, spacing=spacing, reach_mm=11.5)
    expected, nearest = ndimage.distance_transform_edt(
        labels == 0, sampling=spacing, return_indices=True
    )
    within = expected <= 11.5
    assert count == 2 and within.sum() > 2 * regions.sum()
    assert np.allclose(distance[within], expected[within], atol=1e-4)
    assert (owner[within] == labels[tuple(nearest)][within]).all()
    assert np.isinf(distance[~within]).all() and (owner[~within] == 0).all()


def test_enclosing_directions_sees_a_ring_with_a_gap():
    jj, ii = np.mgrid[:21, :21]
    r = np.hypot(jj - 10, ii - 10)
    ring = (r >= 7) & (r < 8.5)
    ring[10, 17:] = False  # a gap on the right
    inside = (r < 7) | (~ring & (r < 8.5))
    outside_blob = (np.abs(jj - 10) <= 1) & (ii >= 18)  # marrow density leaking out of the gap
    inside |= outside_blob
    count = enclosing_directions(inside[None], ring[None], 0, reach_voxels=30)[0]
    assert count[10, 10] >= 7  # centre: only the ray through the gap escapes
    assert count[10, 19] <= 3  # outside the ring: most rays end in the background


# --------------------------------------------------------------------------- extension reach and bladder


def test_extension_reaches_a_large_solid_mass_and_stops_at_the_bladder():
    """Sarcoma (r 45 mm) with one small calcification at its edge, pressing on the bladder."""
    rng = np.random.default_rng(26)
    x, y, z, origin = _grid(size=(120, 100, 40))
    hu = _body(x, y, z, rng)
    bladder = _sphere(x, y, z, (-50, 0, 0), 30)
    mass = _sphere(x, y, z, (35, 0, 0), 45) & ~bladder
    calcification = _sphere(x, y, z, (65, 0, 0), 6)
    hu[bladder] = 8.0
    hu[mass] = rng.uniform(35, 55, mass.sum())
    hu[calcification] = 900.0
    ct = _to_image(hu, origin, rng=rng, noise=10)
    body = hu > -500
    t2 = np.where(body, 300.0, 5.0)
    t2[hu < -50] = 700.0
    t2[mass], t2[calcification], t2[bladder] = 750.0, 60.0, 1800.0
    pet = np.where(body, 0.8, 0.0)
    pet[mass], pet[calcification], pet[bladder] = 7.0, 3.0, 25.0
    coarse = _rotated_reference((4.0, 4.0, 4.0), 0, size=(66, 56, 30))
    images = {
        name: sitk.Resample(_to_image(v, origin), coarse, sitk.Transform(), sitk.sitkLinear)
        for name, v in (("t2", t2), ("pet", pet))
    }
    lesion = select_lesions(segment_ct(ct), policy="largest")
    extended = extend_mask(ct, lesion, images=images)
    # With PET present, a solid part (T2 2.5 x muscle, as bright as oedema) comes from PET alone.
    assert extended.sources == ("ct", "pet")
    assert segmentation_metrics(extended.mask, _mask_image(mass, ct))["dice"] >= 0.85
    inside = sitk.GetArrayViewFromImage(extended.mask) > 0
    assert (inside & bladder).sum() <= 0.02 * bladder.sum()


def _mr_pet(origin, *, hu, parts):
    """T2 (muscle 300) and PET (background SUV 0.8) on a coarse 4 mm grid; ``parts`` maps a mask to
    (T2 x muscle, SUV)."""
    body = hu > -500
    t2 = np.where(body, 300.0, 5.0)
    t2[hu < -50] = 700.0
    pet = np.where(body, 0.8, 0.0)
    for region, (t2_ratio, suv) in parts:
        t2[region], pet[region] = 300.0 * t2_ratio, suv
    coarse = _rotated_reference((4.0, 4.0, 4.0), 0, size=(50, 44, 30))
    return {
        name: sitk.Resample(_to_image(v, origin), coarse, sitk.Transform(), sitk.sitkLinear)
        for name, v in (("t2", t2), ("pet", pet))
    }


def test_oedema_is_left_out_when_pet_tells_it_from_the_tumour():
    """Solid mass (r 22 mm, FDG-avid) with a necrotic centre, a calcified core and a 12 mm shell of
    perilesional oedema: oedema is as T2-bright as the tumour (2.5 x muscle) but FDG-cold."""
    rng = np.random.default_rng(31)
    x, y, z, origin = _grid(size=(90, 80, 40))
    hu = _body(x, y, z, rng)
    centre = (20, 0, 0)
    oedema = _sphere(x, y, z, centre, 34)
    mass = _sphere(x, y, z, centre, 22)
    necrosis = _sphere(x, y, z, (28, 0, 0), 7)
    core = _sphere(x, y, z, (12, 0, 0), 7)
    hu[oedema] = rng.uniform(25, 40, oedema.sum())
    hu[mass] = rng.uniform(35, 60, mass.sum())
    hu[necrosis], hu[core] = 20.0, rng.uniform(300, 1200, core.sum())
    ct = _to_image(hu, origin, rng=rng, noise=10)
    images = _mr_pet(
        origin,
        hu=hu,
        parts=[
            (oedema & ~mass, (2.5, 1.0)),
            (mass, (2.5, 7.0)),
            (necrosis, (5.0, 1.0)),
            (core, (0.2, 3.0)),
        ],
    )
    lesion = select_lesions(segment_ct(ct), policy="largest")
    extended = extend_mask(ct, lesion, images=images)
    assert segmentation_metrics(extended.mask, _mask_image(mass, ct))["dice"] >= 0.85
    inside = sitk.GetArrayViewFromImage(extended.mask) > 0
    # at most the partial-volume layer at the tumour's edge (the oedema shell is 5 voxels thick)
    assert (inside & oedema & ~mass).sum() <= 0.10 * (oedema & ~mass).sum()
    assert inside[necrosis].mean() >= 0.9  # the necrotic centre (T2 5 x, FDG-cold) is tumour


def test_cystic_lesion_keeps_its_septa_and_capsule():
    """Tumoral calcinosis of fluid lobules (15 HU) and one calcified lobule, each walled by
    septa (1.5 mm) of muscle density inside muscle: the walls belong to the mass, the muscle does not."""
    rng = np.random.default_rng(32)
    x, y, z, origin = _grid(size=(90, 80, 40))
    hu = _body(x, y, z, rng)
    centres = [(0, 0, 0), (21, 0, 0), (10, 18, 0), (10, 6, 18)]
    truth = np.zeros(hu.shape, bool)
    for n, c in enumerate(centres):
        wall, lumen = _sphere(x, y, z, c, 11.5), _sphere(x, y, z, c, 10)
        truth |= wall
        hu[wall & ~lumen] = rng.uniform(40, 60, (wall & ~lumen).sum())
        hu[lumen] = 900.0 if n == 0 else 15.0
    ct = _to_image(hu, origin, rng=rng, noise=10)
    truth_image = _mask_image(truth, ct)
    walled = segmentation_metrics(select_lesions(segment_ct(ct), policy="largest"), truth_image)
    bare = segmentation_metrics(
        select_lesions(segment_ct(ct, params={"capsule_mm": 0}), policy="largest"), truth_image
    )
    assert walled["dice"] >= bare["dice"] + 0.08, (walled, bare)
    assert walled["volume_ml"] <= 1.15 * walled["truth_volume_ml"], walled  # no muscle swallowed


def test_thin_calcified_wall_touching_the_femur_is_not_a_cortical_rind():
    """Chronic calcified haematoma (r 30 mm, 3 mm wall of 700 HU, 45 HU content) lying on the
    right femoral shaft: its thin wall touches the bone at one place, unlike leftover cortex."""
    rng, x, y, z, origin, hu, bone, marrow = _femur_case(33)
    centre = (-95 + 14 + 31, 0, -60)
    outer = _sphere(x, y, z, centre, 30) & ~bone
    hu[outer] = 700.0
    hu[_sphere(x, y, z, centre, 27)] = rng.uniform(35, 55, _sphere(x, y, z, centre, 27).sum())
    ct = _to_image(hu, origin, rng=rng)
    mask = select_lesions(segment_ct(ct), policy="largest")
    assert segmentation_metrics(mask, _mask_image(outer, ct))["dice"] >= 0.85
    assert ((sitk.GetArrayViewFromImage(mask) > 0) & bone).sum() <= 0.02 * outer.sum()


# --------------------------------------------------------------------------- sub-millimetre voxels
# A researcher's CT has 0.7-0.9 mm pixels: partial volume then spans several voxels. These cases
# come from the realistic benchmark cohort (issue 10), where the 2 mm tuning failed.

FINE_SPACING = (0.8, 0.8, 1.25)  # mm, (x, y, z)


def _blurred(hu, sigma_mm=0.7, spacing=FINE_SPACING):
    """Scanner point-spread: Gaussian blur in mm (numpy k, j, i order)."""
    return ndimage.gaussian_filter(hu, [sigma_mm / s for s in spacing[::-1]]).astype(np.float32)


def _fine_shaft(x, y, z, hu, centre_xy, *, radius=14.0, cortex=4.5, marrow_hu=200.0):
    """A femoral shaft crossing the whole slab (it leaves the field of view: skeleton)."""
    d = np.hypot(x - centre_xy[0], y - centre_xy[1])
    hu[(d <= radius) & (d > radius - cortex)] = 1300.0
    hu[d <= radius - cortex] = marrow_hu
    return d <= radius


def test_haematoma_shell_on_the_femur_keeps_its_core_at_submillimetre_voxels():
    """Calcified haematoma (r 34 mm, 3 mm wall of 900 HU, 50 HU content over a 280 HU sediment)
    lying on a femoral shaft, blurred at 0.8 mm pixels (realistic S004: 'no lesion above
    threshold'). The inner partial-volume rim of the wall and the sediment have marrow density
    and are walled by the shell: they must not make the wall cortex."""
    rng = np.random.default_rng(41)
    x, y, z, origin = _grid(spacing=FINE_SPACING, size=(140, 130, 64))
    hu = _body(x, y, z, rng)
    bone = _fine_shaft(x, y, z, hu, (-30, -30))
    centre = (-30 + 14 + 34, -30 + 18, 0)
    outer = _sphere(x, y, z, centre, 34) & ~bone
    core = _sphere(x, y, z, centre, 31)
    hu[outer] = 900.0
    hu[core] = 50.0
    hu[core & (y > centre[1] + 18)] = 280.0  # dependent sediment (posterior = +y)
    ct = _to_image(_blurred(hu), origin, spacing=FINE_SPACING, rng=rng, noise=12.0)
    mask = select_lesions(segment_ct(ct), policy="largest")
    assert segmentation_metrics(mask, _mask_image(outer, ct))["dice"] >= 0.9
    assert ((sitk.GetArrayViewFromImage(mask) > 0) & bone).sum() <= 0.01 * bone.sum()


def test_cortices_across_a_narrow_joint_space_are_not_a_mass_at_submillimetre_voxels():
    """Femoral head cortex, a 1.5 mm joint space and a thin acetabular wall (cortex, 1.5 mm of
    marrow, cortex) blur into one band above 450 HU at 0.8 mm pixels, thick enough to hold the
    9 mm ball that tells lesion material from cortex (realistic S009: 16 ml of acetabulum in a
    gout mask). The gaps are HU valleys; the bone stays bone, and a tophus nearby is found."""
    rng = np.random.default_rng(42)
    x, y, z, origin = _grid(spacing=FINE_SPACING, size=(120, 120, 64))
    hu = _body(x, y, z, rng)
    head = (0.0, 0.0, 0.0)
    r = np.sqrt((x - head[0]) ** 2 + (y - head[1]) ** 2 + (z - head[2]) ** 2)
    # Cup open laterally (+x); a pelvic plate carries it out of the field of view (skeleton).
    cup = (r >= 23.5) & (r <= 30.0) & (x <= 8.0)
    plate = (np.abs(x + 27.0) <= 4.0) & (np.abs(y) <= 40.0)
    hu[cup | plate] = 1300.0
    hu[
        ((r >= 26.0) & (r <= 27.5) & (x <= 8.0)) | ((np.abs(x + 27.0) <= 1.5) & (np.abs(y) <= 37))
    ] = 200.0
    hu[r <= 22.0] = 1300.0
    hu[r <= 19.5] = 200.0
    bone = (r <= 22.0) | cup | plate
    # The neck takes the head out of the field of view too.
    neck = (np.hypot(y, z) <= 12.0) & (x > 0) & ~(r <= 22.0)
    hu[neck] = 1300.0
    hu[neck & (np.hypot(y, z) <= 9.5)] = 200.0
    bone |= neck
    tophus = _sphere(x, y, z, (20.0, 35.0, 10.0), 6.0)
    hu[tophus] = 600.0
    ct = _to_image(_blurred(hu, sigma_mm=0.9), origin, spacing=FINE_SPACING, rng=rng, noise=12.0)
    mask = sitk.GetArrayViewFromImage(segment_ct(ct)) > 0
    assert (mask & bone).sum() * np.prod(FINE_SPACING) / 1000 <= 0.2  # ml
    assert segmentation_metrics(_mask_image(mask, ct), _mask_image(tophus, ct))["dice"] >= 0.7


def _early_myositis_in_oedema(seed, *, noise):
    """Early myositis ossificans (r 18 mm: faint 3 mm shell of 270 HU around a 41 HU core) in
    oedematous muscle (29 HU, 45 x 40 x 30 mm ellipsoid) at 0.8 mm pixels: held-out S022."""
    rng = np.random.default_rng(seed)
    x, y, z, origin = _grid(spacing=FINE_SPACING, size=(140, 140, 60))
    hu = _body(x, y, z, rng)
    oedema = (x / 45.0) ** 2 + (y / 40.0) ** 2 + (z / 30.0) ** 2 <= 1
    hu[oedema] = 29.0
    lesion = _sphere(x, y, z, (0, 0, 0), 18)
    hu[lesion] = 270.0
    hu[_sphere(x, y, z, (0, 0, 0), 15)] = 41.0
    ct = _to_image(_blurred(hu, sigma_mm=0.5), origin, spacing=FINE_SPACING, rng=rng, noise=noise)
    return ct, lesion


@pytest.mark.parametrize("seed", [51, 52])
def test_oedema_around_a_mass_is_not_taken_for_fluid_lobules_at_submillimetre_voxels(seed):
    """Oedema (25-40 HU) is just above the fluid range (<= 22 HU after a 3x3x3 median). At 0.8 mm
    pixels the median spans 2.4 mm, and the noise-low voxels of the oedema form a sponge of
    'fluid' touching the mass; read as lobules (with their capsules) it made a 351 ml mask of a
    57 ml myositis (held-out S022, Dice 0.28). At such pixels a fluid region must be 3 mm deep
    in-plane (fluid_min_depth_mm); the sponge never is."""
    ct, lesion = _early_myositis_in_oedema(seed, noise=20.0)
    mask = select_lesions(segment_ct(ct), policy="all")
    voxels = sitk.GetArrayViewFromImage(mask) > 0
    assert voxels.sum() <= 1.2 * lesion.sum()
    assert segmentation_metrics(mask, _mask_image(lesion, ct))["dice"] >= 0.9
