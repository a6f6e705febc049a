"""Tests of calcirad.features: parameter files, pyradiomics wrapper, conventional measures."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from calcirad.errors import ConfigError, SubjectInputError
from calcirad.features import (
    _fast_length,
    convolve_valid,
    extract_features,
    extract_with_provenance,
    feature_provenance,
    sphere_kernel,
    suv_peak,
)

PARAMS = Path(__file__).resolve().parents[1] / "config" / "radiomics"


def _image(array, spacing, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _coords(shape, spacing):
    """Physical (x, y, z) mm of voxel centres for a numpy (k, j, i) shape, origin 0."""
    k, j, i = np.indices(shape, dtype=float)
    return i * spacing[0], j * spacing[1], k * spacing[2]


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    """~100 ml lobulated calcified lesion on a 2.2 x 2.2 x 3 mm CT."""
    folder = tmp_path_factory.mktemp("ct")
    spacing = (2.2, 2.2, 3.0)
    shape = (50, 80, 80)
    x, y, z = _coords(shape, spacing)
    rng = np.random.default_rng(1)
    hu = 45 + rng.normal(0, 15, shape)
    lesion = ((x - 88) ** 2 + (y - 88) ** 2 + (z - 75) ** 2) <= 27**2
    lesion |= ((x - 110) ** 2 + (y - 100) ** 2 + (z - 85) ** 2) <= 14**2
    hu[lesion] = rng.uniform(0, 1400, lesion.sum())  # mixed fluid .. dense calcium
    image = _image(hu.astype(np.int16), spacing)
    mask = _image(lesion.astype(np.uint8), spacing)
    return (
        _write(image, folder / "ct.nii.gz"),
        _write(mask, folder / "mask.nii.gz"),
        lesion.sum() * np.prod(spacing) / 1000,
        hu[lesion],
    )


def test_parameter_files_load_with_pyradiomics_and_hold_the_documented_defaults():
    from radiomics import featureextractor

    expected = {
        "ct": {"binWidth": 25, "resampledPixelSpacing": [2.0, 2.0, 2.0]},
        "mr": {"binCount": 32, "normalize": True, "resampledPixelSpacing": [3.0, 3.0, 3.0]},
        "pet": {"binWidth": 0.25, "resampledPixelSpacing": [4.0, 4.0, 4.0]},
    }
    for name, settings in expected.items():
        extractor = featureextractor.RadiomicsFeatureExtractor(str(PARAMS / f"{name}.yaml"))
        for key, value in settings.items():
            assert extractor.settings[key] == value, (name, key)
        assert list(extractor.enabledImagetypes) == ["Original"]
        assert extractor.settings["interpolator"] == "sitkLinear"


def test_ct_features_are_finite_deterministic_and_fast(ct_case):
    image, mask, volume_ml, values = ct_case
    start = time.perf_counter()
    first = extract_features(
        image_path=image, mask_path=mask, params_file=PARAMS / "ct.yaml", modality="ct"
    )
    seconds = time.perf_counter() - start
    second = extract_features(
        image_path=image, mask_path=mask, params_file=PARAMS / "ct.yaml", modality="ct"
    )
    assert first == second
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())
    assert not any(k.startswith("diagnostics_") for k in first)
    assert len([k for k in first if k.startswith("original_")]) >= 100
    assert first["conv_volume_ml"] == pytest.approx(volume_ml)
    assert 85 <= volume_ml <= 115
    assert first["original_shape_MeshVolume"] / 1000 == pytest.approx(volume_ml, rel=0.05)
    assert first["conv_mean_hu"] == pytest.approx(values.mean(), abs=0.5)  # int16 rounding
    assert first["conv_max_hu"] == pytest.approx(np.floor(values.max()), abs=1)
    assert first["conv_calcified_fraction"] == pytest.approx((values >= 150).mean(), abs=0.01)
    assert seconds < 10


def test_provenance_records_versions_and_parameter_hash(ct_case):
    image, mask, _, _ = ct_case
    result = extract_with_provenance(
        image_path=image, mask_path=mask, params_file=PARAMS / "ct.yaml", modality="ct"
    )
    params = (PARAMS / "ct.yaml").read_bytes()
    assert result.provenance["params_sha256"] == hashlib.sha256(params).hexdigest()
    assert result.provenance["pyradiomics_version"].lstrip("v").startswith("3.0.1")
    assert result.provenance["diagnostics_Versions_PyRadiomics"].lstrip("v").startswith("3.0.1")
    assert '"binWidth": 25' in result.provenance["diagnostics_Configuration_Settings"]
    assert feature_provenance(PARAMS / "pet.yaml")["params_file"] == "pet.yaml"


def test_empty_or_misplaced_mask_is_a_subject_error(ct_case, tmp_path):
    image, mask, _, _ = ct_case
    reference = sitk.ReadImage(str(mask))
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    with pytest.raises(SubjectInputError, match="empty"):
        extract_features(
            image_path=image,
            mask_path=_write(empty, tmp_path / "empty.nii.gz"),
            params_file=PARAMS / "ct.yaml",
            modality="ct",
        )
    moved = sitk.Image(reference)
    moved.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(SubjectInputError, match="geometry"):
        extract_features(
            image_path=image,
            mask_path=_write(moved, tmp_path / "moved.nii.gz"),
            params_file=PARAMS / "ct.yaml",
            modality="ct",
        )
    with pytest.raises(ConfigError):
        extract_features(
            image_path=image, mask_path=mask, params_file=PARAMS / "ct.yaml", modality="us"
        )


# --------------------------------------------------------------------------- PET


def test_sphere_kernel_holds_one_millilitre_on_coarse_grids():
    for spacing in [(4.0, 4.0, 4.0), (2.0, 2.0, 3.27), (1.0, 1.0, 1.0)]:
        kernel = sphere_kernel(spacing)
        assert kernel.sum() == pytest.approx(1.0)
        assert all(n % 2 == 1 for n in kernel.shape)
        assert np.allclose(kernel, kernel[::-1, ::-1, ::-1])  # symmetric: exact on linear fields


def test_fft_convolution_equals_the_direct_sum():
    rng = np.random.default_rng(7)
    array, kernel = rng.normal(size=(9, 11, 8)), rng.random((3, 5, 4))  # kernel not symmetric
    direct = np.zeros((7, 7, 5))
    flipped = kernel[::-1, ::-1, ::-1]  # convolution, not correlation
    for k, j, i in np.ndindex(direct.shape):
        direct[k, j, i] = (array[k : k + 3, j : j + 5, i : i + 4] * flipped).sum()
    assert np.allclose(convolve_valid(array, kernel), direct, rtol=0, atol=1e-12)
    assert [_fast_length(n) for n in (1, 7, 11, 97, 121, 1001)] == [1, 8, 12, 100, 125, 1024]


def test_suv_peak_on_a_linear_ramp_is_the_value_at_the_best_centre():
    spacing = (4.0, 4.0, 4.0)  # numpy (k, j, i) order; isotropic here
    shape = (30, 30, 30)
    x, _, _ = _coords(shape, spacing)
    image = 1.0 + 0.05 * x  # SUV rises towards patient left
    mask = np.zeros(shape, bool)
    mask[10:20, 12:18, 8:15] = True
    # A symmetric kernel averages a linear field to its centre value: peak at the max-x lesion voxel.
    assert suv_peak(image, mask, spacing) == pytest.approx(1.0 + 0.05 * 14 * 4.0)


def test_suv_peak_on_a_known_sphere(tmp_path):
    """Hot sphere (SUV 8, r = 15 mm) in background SUV 1 on a 4 mm grid."""
    spacing = (4.0, 4.0, 4.0)
    shape = (32, 32, 32)
    x, y, z = _coords(shape, spacing)
    r = np.sqrt((x - 62) ** 2 + (y - 62) ** 2 + (z - 62) ** 2)
    suv = np.where(r <= 15, 8.0, 1.0).astype(np.float32)
    mask = r <= 15
    image_path = _write(_image(suv, spacing), tmp_path / "pet.nii.gz")
    mask_path = _write(_image(mask.astype(np.uint8), spacing), tmp_path / "mask.nii.gz")
    features = extract_features(
        image_path=image_path, mask_path=mask_path, params_file=PARAMS / "pet.yaml", modality="pet"
    )
    assert features["conv_suv_max"] == pytest.approx(8.0)
    assert features["conv_suv_mean"] == pytest.approx(8.0)
    # The 6.2 mm sphere around the central voxels lies wholly inside the 15 mm hot sphere.
    assert features["conv_suv_peak"] == pytest.approx(8.0)
    assert features["conv_volume_ml"] == pytest.approx(mask.sum() * 64 / 1000)
    # A lesion mask of one voxel at the sphere's rim: the 1 ml sphere mixes hot and background.
    rim = np.zeros(shape, bool)
    rim[15, 15, 19] = True  # 14.3 mm from the centre: inside, but its 1 ml sphere pokes out
    peak = suv_peak(suv.astype(float), rim, spacing)
    assert 1.0 < peak < 8.0


def test_suv_peak_of_a_one_millilitre_hot_sphere_on_a_fine_grid():
    spacing = (0.5, 0.5, 0.5)
    shape = (40, 40, 40)
    x, y, z = _coords(shape, spacing)
    radius = (3 * 1000 / (4 * np.pi)) ** (1 / 3)
    centre = 10.0  # the centre of voxel 20
    inside = (x - centre) ** 2 + (y - centre) ** 2 + (z - centre) ** 2 <= radius**2
    image = inside * 10.0
    # The lesion is the whole ball: the best centre is the ball's, where the 1 ml sphere matches it
    # up to the voxelised ball surface: centre-sampled voxels vs fractional weights cost ~3 %.
    assert suv_peak(image, inside, spacing) == pytest.approx(10.0, rel=0.04)
    off_centre = np.zeros(shape, bool)
    off_centre[20, 20, 28] = True  # 4 mm off-centre: the sphere only partly covers the ball
    assert suv_peak(image, off_centre, spacing) < 8.0


def test_pet_and_mr_features_share_one_code_path(tmp_path):
    spacing = (2.0, 2.0, 4.0)
    shape = (24, 48, 48)
    x, y, z = _coords(shape, spacing)
    rng = np.random.default_rng(3)
    lesion = (x - 48) ** 2 + (y - 48) ** 2 + (z - 48) ** 2 <= 18**2
    muscle = (x < 20) & (z > 20) & (z < 70)
    mr = rng.normal(300, 20, shape)
    mr[lesion] = rng.normal(900, 60, lesion.sum())
    image_path = _write(_image(mr.astype(np.float32), spacing), tmp_path / "t2.nii.gz")
    mask_path = _write(_image(lesion.astype(np.uint8), spacing), tmp_path / "mask.nii.gz")
    muscle_path = _write(_image(muscle.astype(np.uint8), spacing), tmp_path / "muscle.nii.gz")
    start = time.perf_counter()
    features = extract_features(
        image_path=image_path,
        mask_path=mask_path,
        params_file=PARAMS / "mr.yaml",
        modality="t2",
        muscle_mask_path=muscle_path,
    )
    assert time.perf_counter() - start < 10
    assert all(math.isfinite(v) for v in features.values())
    assert features["conv_lesion_to_muscle_ratio"] == pytest.approx(3.0, rel=0.03)
    assert not any(k.startswith(("conv_suv", "conv_mean_hu")) for k in features)


def test_pet_in_wrong_units_is_refused_before_pyradiomics(tmp_path):
    """A PET left in Bq/ml would make 0.25-SUV bins by the hundred thousand."""
    spacing = (4.0, 4.0, 4.0)
    bqml = np.full((20, 20, 20), 5000.0, np.float32)
    bqml[8:12, 8:12, 8:12] = 40000.0
    mask = np.zeros(bqml.shape, np.uint8)
    mask[7:13, 7:13, 7:13] = 1
    with pytest.raises(SubjectInputError, match="units"):
        extract_features(
            image_path=_write(_image(bqml, spacing), tmp_path / "pet.nii.gz"),
            mask_path=_write(_image(mask, spacing), tmp_path / "mask.nii.gz"),
            params_file=PARAMS / "pet.yaml",
            modality="pet",
        )
