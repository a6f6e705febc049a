"""Tests of calcirad.qc: slice choice, radiological orientation, reproducible PNG bytes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from calcirad.errors import SubjectInputError
from calcirad.qc import axial_view, display_windows, qc_figure


def _volume(array, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


@pytest.fixture(scope="module")
def case():
    """CT with a lesion on the patient's LEFT (+x) and anterior (-y); a coarser PET."""
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 10, (20, 40, 50)).astype(np.float32)  # (k, j, i)
    lesion = np.zeros(ct.shape, np.uint8)
    lesion[6:9, 8:14, 35:45] = 1  # left half in x, anterior half in y
    lesion[7, 6:16, 33:47] = 1  # slice 7 has the largest area
    ct[lesion > 0] = 900
    ct_image = _volume(ct, (2.0, 2.0, 3.0))
    mask = _volume(lesion, (2.0, 2.0, 3.0))
    mask.CopyInformation(ct_image)
    pet_grid = sitk.Image((25, 20, 15), sitk.sitkFloat32)
    pet_grid.SetSpacing((4.0, 4.0, 4.0))
    pet = sitk.Resample(ct_image / 200.0, pet_grid, sitk.Transform(), sitk.sitkLinear)
    return ct_image, mask, pet


def test_axial_view_picks_largest_slice_in_radiological_orientation(case):
    ct, mask, _ = case
    view = axial_view(ct, mask)
    assert view.z_mm == pytest.approx(7 * 3.0)
    assert view.area_mm2 == pytest.approx(10 * 14 * 4.0)
    columns = np.nonzero(view.mask.any(axis=0))[0]
    rows = np.nonzero(view.mask.any(axis=1))[0]
    # Patient left (+x) is drawn on the viewer's right; anterior at the top.
    assert columns.min() > view.mask.shape[1] / 2
    assert rows.max() < view.mask.shape[0] / 2
    assert view.aspect == pytest.approx(1.0)


def test_axial_view_is_independent_of_storage_orientation(case):
    ct, mask, _ = case
    flip = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # stored right-to-left, posterior-to-anterior (RAS-like)
    flipped = [sitk.Flip(im, [True, True, False]) for im in (ct, mask)]
    for im in flipped:
        assert np.allclose(im.GetDirection(), flip)
    view, reference = axial_view(*flipped), axial_view(ct, mask)
    assert np.array_equal(view.mask, reference.mask)
    assert np.array_equal(view.image, reference.image)


def test_display_windows():
    pixels = np.arange(1000, dtype=float)
    assert [w[0] for w in display_windows("ct", pixels)] == ["soft tissue", "bone"]
    assert display_windows("pet", pixels) == [("SUV 0-6", 0.0, 6.0)]
    ((_, low, high),) = display_windows("t2", pixels)
    assert low == pytest.approx(9.99) and high == pytest.approx(989.01)


def test_qc_png_is_reproducible_and_free_of_metadata(case, tmp_path):
    ct, mask, pet = case
    first, second = tmp_path / "a" / "qc.png", tmp_path / "b" / "qc.png"
    for out in (first, second):
        qc_figure(images={"ct": ct, "pet": pet}, masks={"ct": mask}, out_png=out, title="TC-007")
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as png:
        assert png.format == "PNG"
        width, height = png.size
        assert width > 2 * height  # three panels side by side (CT x2 windows + PET)
        text = {k: v for k, v in png.info.items() if isinstance(v, str)}
    assert not any("TC-007" in v or "atplotlib" in v for v in text.values()), text
    assert not any(p.name.startswith(".") for p in first.parent.iterdir())  # no temp leftovers


def test_qc_without_masks_shows_the_central_slice(case, tmp_path):
    """A failed segmentation still gets a QC figure (anatomy, no outline) to look at."""
    ct, mask, _ = case
    view = axial_view(ct, mask * 0)
    assert view.z_mm == pytest.approx(
        sitk.DICOMOrient(ct, "LPS").TransformIndexToPhysicalPoint((0, 0, ct.GetSize()[2] // 2))[2]
    )
    assert not view.mask.any()
    out = qc_figure(images={"ct": ct}, masks={}, out_png=tmp_path / "qc.png", title="x")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qc_without_images_is_an_error(tmp_path):
    with pytest.raises(SubjectInputError):
        qc_figure(images={}, masks={}, out_png=tmp_path / "qc.png", title="x")
