"""Radiomic features (pyradiomics) and the conventional measures a radiologist reports.

One code path serves every modality: the pyradiomics parameter file carries the modality's
preprocessing (bin width, normalisation, resampling), and :data:`CONVENTIONAL_MEASURES` names the
conventional measures computed for it on the *native* grid of the image (no resampling):

- all modalities: ``conv_volume_ml``;
- CT (HU): ``conv_mean_hu``, ``conv_max_hu``, ``conv_calcified_fraction`` (share of lesion voxels
  >= the calcification threshold);
- PET (SUV): ``conv_suv_max``, ``conv_suv_mean``, ``conv_suv_peak`` (highest mean SUV in a 1 cm^3
  sphere centred on any lesion voxel, voxels weighted by the fraction of them inside the sphere);
- any modality given a muscle mask on its grid (MR above all; see
  ``calcirad.segment.muscle_reference_mask``): ``conv_lesion_to_muscle_ratio``.

Images and masks are read with SimpleITK (LPS mm); the mask must be binary and on the image grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from calcirad.errors import ConfigError, SubjectInputError
from calcirad.segment.carry import same_grid
from calcirad.segment.defaults import DEFAULT_CALCIFICATION_HU

STAGE = "features"
PEAK_VOLUME_MM3 = 1000.0  # SUVpeak sphere: 1 cm^3 (PERCIST / IBSI local intensity peak)
MAX_GREY_LEVELS = 2000  # more bins than this means wrong units (e.g. PET in Bq/ml)
_GEOMETRY_TOLERANCE_MM = 1e-3  # NIfTI stores geometry as float32: allow its rounding


@dataclasses.dataclass(frozen=True)
class FeatureResult:
    """Numeric features plus the provenance pyradiomics reports about itself and its settings."""

    features: dict[str, float]
    provenance: dict[str, str]


# --------------------------------------------------------------------------- conventional measures

Measure = Callable[[np.ndarray, np.ndarray, tuple[float, float, float]], dict[str, float]]


def ct_measures(
    image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Mean and max HU and calcified fraction (HU >= calcification threshold) of the lesion."""
    values = image[mask].astype(np.float64)
    return {
        "conv_mean_hu": float(values.mean()),
        "conv_max_hu": float(values.max()),
        "conv_calcified_fraction": float((values >= DEFAULT_CALCIFICATION_HU).mean()),
    }


def pet_measures(
    image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """SUVmax, SUVmean and SUVpeak (1 cm^3 sphere) of the lesion."""
    values = image[mask].astype(np.float64)
    return {
        "conv_suv_max": float(values.max()),
        "conv_suv_mean": float(values.mean()),
        "conv_suv_peak": suv_peak(image, mask, spacing),
    }


CONVENTIONAL_MEASURES: dict[str, tuple[Measure, ...]] = {
    "ct": (ct_measures,),
    "pet": (pet_measures,),
    "t1": (),
    "t2": (),
    "mr": (),
}


def sphere_kernel(
    spacing: tuple[float, float, float],
    *,
    volume_mm3: float = PEAK_VOLUME_MM3,
    subsamples: int = 9,
) -> np.ndarray:
    """Weights (sum 1) of a sphere of ``volume_mm3`` centred on a voxel, on a grid of ``spacing``.

    Each weight is the fraction of that voxel inside the sphere, estimated on ``subsamples``^3
    points per voxel, so the kernel holds the sphere's volume even when voxels are 4 mm and the
    sphere radius only 6.2 mm (counting whole voxels by their centres would give 1.2 cm^3 there).
    """
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = [int(np.ceil(radius / s + 0.5)) for s in spacing]
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5  # sub-voxel centres in voxels
    weights = np.zeros([2 * h + 1 for h in half])
    for index in np.ndindex(weights.shape):
        centre = [(i - h) for i, h in zip(index, half, strict=True)]
        axes = [(c + offsets) * s for c, s in zip(centre, spacing, strict=True)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        weights[index] = (d2 <= radius**2).mean()
    return weights / weights.sum()


def suv_peak(image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Highest 1 cm^3-sphere mean of ``image`` over sphere centres at the lesion's voxel centres.

    Arrays are numpy (k, j, i) with ``spacing`` in mm in that order. The sphere averages every
    voxel it covers, inside the lesion or not (PERCIST/IBSI: the peak is a property of the uptake
    around the hottest region, not of the contour). Beyond the image border the edge value is
    repeated.
    """
    kernel = sphere_kernel(spacing)
    half = [n // 2 for n in kernel.shape]
    nonzero = np.nonzero(mask)
    # Only the lesion's bounding box (+ kernel reach) needs the local mean: keeps this fast.
    box = tuple(
        slice(max(int(idx.min()) - h, 0), min(int(idx.max()) + h + 1, n))
        for idx, h, n in zip(nonzero, half, image.shape, strict=True)
    )
    # Edge padding + 'valid' FFT convolution = correlation with edge repetition (kernel symmetric);
    # FFT keeps fine grids (27^3-voxel kernel at 0.5 mm) fast.
    padded = np.pad(image[box].astype(np.float64), [(h, h) for h in half], mode="edge")
    local_mean = convolve_valid(padded, kernel)
    return float(local_mean[mask[box]].max())


def _fast_length(n: int) -> int:
    """The smallest 2-3-5-smooth integer >= n (FFT lengths that pocketfft transforms fastest)."""
    best = 2 * n
    power2 = 1
    while power2 < best:
        power3 = power2
        while power3 < best:
            power5 = power3
            while power5 < n:
                power5 *= 5
            best = min(best, power5)
            power3 *= 3
        power2 *= 2
    return best


def convolve_valid(array: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """N-d convolution of ``array`` with ``kernel``, 'valid' part only (shape array - kernel + 1).

    By FFT with numpy (scipy.signal.fftconvolve gives the same to rounding, but importing
    scipy.signal costs a PET extraction job about 1.4 s of its 2 s: issue 10).
    """
    full = [a + k - 1 for a, k in zip(array.shape, kernel.shape, strict=True)]
    lengths = [_fast_length(n) for n in full]
    axes = tuple(range(array.ndim))
    spectrum = np.fft.rfftn(array, lengths, axes=axes) * np.fft.rfftn(kernel, lengths, axes=axes)
    convolved = np.fft.irfftn(spectrum, lengths, axes=axes)
    valid = tuple(slice(k - 1, a) for a, k in zip(array.shape, kernel.shape, strict=True))
    return convolved[valid]


def _muscle_ratio(image: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> float:
    """Mean intensity of the lesion divided by that of muscle (MR signal has no absolute unit)."""
    return float(image[mask].mean() / image[reference].mean())


# --------------------------------------------------------------------------- extraction


def extract_features(
    *,
    image_path: Path,
    mask_path: Path,
    params_file: Path,
    modality: str,
    muscle_mask_path: Path | None = None,
) -> dict[str, float]:
    """Numeric pyradiomics features + ``conv_*`` measures of the lesion in one modality.

    See :func:`extract_with_provenance`, which also returns pyradiomics' version and configuration
    diagnostics.
    """
    return extract_with_provenance(
        image_path=image_path,
        mask_path=mask_path,
        params_file=params_file,
        modality=modality,
        muscle_mask_path=muscle_mask_path,
    ).features


def extract_with_provenance(
    *,
    image_path: Path,
    mask_path: Path,
    params_file: Path,
    modality: str,
    muscle_mask_path: Path | None = None,
) -> FeatureResult:
    """Features of the lesion in ``mask_path`` (binary, image grid) on ``image_path``.

    ``modality`` (ct, t1, t2, mr, pet) selects the conventional measures; ``params_file`` is the
    pyradiomics parameter file for that modality. ``muscle_mask_path`` (same grid) adds the
    lesion-to-muscle ratio of mean intensities. Raises ``SubjectInputError`` if the
    mask is empty on this grid, does not match the image geometry, or is too small for pyradiomics.
    """
    if modality not in CONVENTIONAL_MEASURES:
        raise ConfigError(f"unknown modality {modality!r}; known: {sorted(CONVENTIONAL_MEASURES)}")
    image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
    mask = _read_mask(mask_path, image, series=modality)
    conventional = conventional_measures(image, mask, modality=modality)
    if muscle_mask_path is not None:
        reference = _read_mask(muscle_mask_path, image, series=modality)
        conventional["conv_lesion_to_muscle_ratio"] = _muscle_ratio(
            sitk.GetArrayViewFromImage(image),
            sitk.GetArrayViewFromImage(mask) > 0,
            sitk.GetArrayViewFromImage(reference) > 0,
        )
    raw = _run_pyradiomics(image, mask, params_file=params_file, mask_path=mask_path)
    features = {k: float(v) for k, v in raw.items() if not k.startswith("diagnostics_")}
    features.update(conventional)
    provenance = feature_provenance(params_file)
    provenance.update(_diagnostics(raw))
    return FeatureResult(features=features, provenance=provenance)


def conventional_measures(
    image: sitk.Image, mask: sitk.Image, *, modality: str
) -> dict[str, float]:
    """``conv_*`` measures on the native grid: volume (ml) + the modality's own measures.

    Each measure casts the voxels it reads to float64 itself: a float64 copy of a whole
    512 x 512 x 160 CT cost each CT extraction job 0.7 s (issue 10)."""
    array = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    measures = {"conv_volume_ml": float(inside.sum()) * float(np.prod(spacing)) / 1000.0}
    for measure in CONVENTIONAL_MEASURES[modality]:
        measures.update(measure(array, inside, spacing))
    return measures


def _read_mask(path: Path, image: sitk.Image, *, series: str) -> sitk.Image:
    """Read a binary mask, check it lies on the image grid and is not empty."""
    mask = sitk.ReadImage(str(path), sitk.sitkUInt8)
    if not same_grid(mask, image, tolerance=_GEOMETRY_TOLERANCE_MM):
        raise SubjectInputError(
            "mask geometry differs from the image grid",
            stage=STAGE,
            series=series,
            file=str(path),
            hint="carry the mask onto this modality's grid first (calcirad.segment.carry_mask)",
        )
    mask.CopyInformation(image)  # drop float32 rounding so pyradiomics sees identical geometry
    if not sitk.GetArrayViewFromImage(mask).any():
        raise SubjectInputError(
            "lesion mask is empty on this modality's grid (lesion too small after carrying?)",
            stage=STAGE,
            series=series,
            file=str(path),
            hint="carry the mask with method='partial_volume' and a lower threshold, or drop "
            "this modality for the subject",
        )
    return sitk.Cast(mask > 0, sitk.sitkUInt8)


def _run_pyradiomics(
    image: sitk.Image, mask: sitk.Image, *, params_file: Path, mask_path: Path
) -> Mapping[str, object]:
    from radiomics import featureextractor  # slow import; only where features are computed

    # pyradiomics logs every setting and a GLCM notice at WARNING; keep job logs readable.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(str(params_file))
    _check_bin_count(image, mask, extractor.settings, mask_path=mask_path)
    try:
        return extractor.execute(image, mask, label=1)
    except (ValueError, AssertionError) as error:  # ROI too small / single voxel after resampling
        raise SubjectInputError(
            f"pyradiomics rejected the lesion mask: {error}",
            stage=STAGE,
            file=str(mask_path),
            hint="lesion too small on this grid for texture features",
        ) from error


def _check_bin_count(
    image: sitk.Image, mask: sitk.Image, settings: Mapping[str, object], *, mask_path: Path
) -> None:
    """Refuse a fixed bin width that would give absurdly many grey levels.

    That happens when the image is not in the units the parameter file assumes (PET in Bq/ml
    instead of SUV, CT without rescale to HU) and would exhaust memory in the texture matrices.
    """
    width = settings.get("binWidth")
    if settings.get("binCount") or not width:
        return
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    levels = (float(values.max()) - float(values.min())) / float(width)
    if levels > MAX_GREY_LEVELS:
        raise SubjectInputError(
            f"lesion intensities span {levels:.0f} bins of width {width}: image not in the "
            f"units the parameter file expects",
            stage=STAGE,
            file=str(mask_path),
            hint="PET must be in SUV and CT in HU (check the conversion stage)",
        )


def _diagnostics(raw: Mapping[str, object]) -> dict[str, str]:
    """pyradiomics' Versions_* and Configuration_* diagnostics, as JSON-friendly strings."""
    kept = {}
    for key, value in raw.items():
        if key.startswith(("diagnostics_Versions_", "diagnostics_Configuration_")):
            kept[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return kept


def feature_provenance(params_file: Path) -> dict[str, str]:
    """Versions and the parameter file's sha256, to store beside every feature table."""
    import radiomics

    data = Path(params_file).read_bytes()
    return {
        "pyradiomics_version": str(radiomics.__version__),
        "simpleitk_version": sitk.Version.VersionString(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "params_file": Path(params_file).name,
        "params_sha256": hashlib.sha256(data).hexdigest(),
    }
