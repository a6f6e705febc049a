"""IBSI 1 standard compliance: the digital phantom through calcirad's own feature extraction.

The IBSI 1 reference manual gives 482 reference values for its digital phantom (one per feature
and aggregation method). :func:`compliance_table` extracts the phantom with
:func:`calcirad.features.extract_features` -- the function the workflow uses for every subject --
and the pyradiomics parameter files ``config/radiomics/ibsi_phantom*.yaml``, then compares each
reference entry with its pyradiomics counterpart.

Everything that decides a comparison is data in this module:

- :data:`VARIANTS`: which parameter file reproduces which extraction (3D, merged, 2.5D, per-slice
  2D); per-slice 2D runs the same function on one-slice images (:func:`extract_per_slice`);
- :data:`AGGREGATIONS`: IBSI aggregation method -> variant;
- :data:`FEATURE_MAP`: IBSI family + feature -> pyradiomics feature + conversion, or why there is
  no counterpart (``not_in_pyradiomics``) or why pyradiomics' feature is a different quantity
  (``different_definition``); :data:`FAMILY_DEFAULTS` covers whole families pyradiomics lacks;
- :data:`CONVERSIONS`: the convention differences (excess kurtosis, asphericity, PCA normaliser).

Status of a row: ``match`` / ``mismatch`` (a counterpart exists; the converted value is / is not
within tolerance), ``not_in_pyradiomics``, ``different_definition`` (pyradiomics has a feature of
that name but it is another quantity; its value is still shown, for information, and never
counted as a match).

Tolerance: IBSI values are rounded to 3 significant digits (trailing zeros dropped when printed:
"0.2" is 0.200) and most have tolerance 0, i.e. a value matches when it rounds to the reference.
A value is within tolerance when ``|calcirad - reference| <= max(tolerance, half a unit of the
reference's 3rd significant digit)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from calcirad.atomic import atomic_path
from calcirad.features import extract_features

# The phantom has no physical unit; "mr" adds no unit-dependent conventional measure (only
# conv_volume_ml, which is not compared).
MODALITY = "mr"
STATUSES = ("match", "mismatch", "not_in_pyradiomics", "different_definition")
COLUMNS = (
    "family",
    "feature",
    "ibsi_code",
    "aggregation",
    "reference",
    "tolerance",
    "calcirad",
    "pyradiomics_feature",
    "conversion",
    "status",
    "relative_difference",
    "within_tolerance",
    "note",
)


# --------------------------------------------------------------------------- extraction variants


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pyradiomics extraction of the phantom: a parameter file, whole volume or per slice."""

    params: str  # file name under the params directory
    per_slice: bool  # True: extract each axial slice on its own and average over slices
    description: str


VARIANTS: dict[str, Variant] = {
    "3d": Variant("ibsi_phantom.yaml", False, "3D neighbourhoods, directions averaged"),
    "3d_merged": Variant(
        "ibsi_phantom_3d_merged.yaml", False, "3D, directional matrices merged (no_weighting)"
    ),
    "2_5d": Variant(
        "ibsi_phantom_2_5d.yaml", False, "force2D: in-plane, matrices merged over slices"
    ),
    "2_5d_merged": Variant(
        "ibsi_phantom_2_5d_merged.yaml", False, "force2D + no_weighting: all merged"
    ),
    "2d": Variant("ibsi_phantom_2d.yaml", True, "per slice (force2D), averaged over slices"),
    "2d_merged": Variant(
        "ibsi_phantom_2d_merged.yaml", True, "per slice, directions merged, slice average"
    ),
}

# IBSI aggregation (reference CSV column; "" = not a texture family) -> variant.
AGGREGATIONS: dict[str, str] = {
    "": "3d",
    "3D, averaged": "3d",
    "3D, merged": "3d_merged",
    "3D": "3d",
    "2.5D, direction-merged": "2_5d",
    "2.5D, merged": "2_5d_merged",
    "2.5D": "2_5d",
    "2D, averaged": "2d",
    "2D, slice-merged": "2d_merged",
    "2D": "2d",
}


# --------------------------------------------------------------------------- conversions

# Conversion(value, features of the same extraction, voxel volume in mm^3) -> IBSI value.
Conversion = Callable[[float, Mapping[str, float], float], float]


def _pca_sample_covariance(value: float, features: Mapping[str, float], voxel_mm3: float) -> float:
    """PCA axis length with the N-1 covariance normaliser of the IBSI reference values.

    pyradiomics divides the voxel-coordinate covariance by N (shape.py: coordinates / sqrt(Np));
    the IBSI reference values were computed with the sample covariance (N - 1). Axis lengths are
    4 sqrt(eigenvalue), so they scale by sqrt(N / (N - 1)); N = voxel count of the ROI.
    """
    n = round(features["original_shape_VoxelVolume"] / voxel_mm3)
    return value * math.sqrt(n / (n - 1))


CONVERSIONS: dict[str, Conversion] = {
    "identity": lambda value, features, voxel: value,
    # IBSI kurtosis is excess kurtosis; pyradiomics reports m4 / m2^2 (3 for a normal law).
    "minus_3": lambda value, features, voxel: value - 3.0,
    # IBSI asphericity = (A^3 / (36 pi V^2))^(1/3) - 1 = spherical disproportion - 1.
    "minus_1": lambda value, features, voxel: value - 1.0,
    "pca_sample_covariance": _pca_sample_covariance,
}


# --------------------------------------------------------------------------- the mapping table


@dataclasses.dataclass(frozen=True)
class FeatureMapping:
    """IBSI feature -> pyradiomics. ``pyradiomics`` is ``class_Feature`` (e.g. ``glcm_Contrast``)."""

    pyradiomics: str | None = None
    conversion: str = "identity"
    status: str = "counterpart"  # counterpart | not_in_pyradiomics | different_definition
    note: str = ""


def _to(feature: str, note: str = "", conversion: str = "identity") -> FeatureMapping:
    return FeatureMapping(feature, conversion, "counterpart", note)


def _none(note: str) -> FeatureMapping:
    return FeatureMapping(None, "", "not_in_pyradiomics", note)


def _differs(feature: str | None, note: str, conversion: str = "identity") -> FeatureMapping:
    return FeatureMapping(feature, conversion if feature else "", "different_definition", note)


_PCA = (
    "pyradiomics normalises the coordinate covariance by N, the IBSI reference by N-1: "
    "calcirad rescales by sqrt(N/(N-1)), N = ROI voxel count"
)
_IH_RAW = (
    "pyradiomics first-order features use the intensities before discretisation; IBSI "
    "intensity-histogram features use the discretised grey levels. Equal here only because bin "
    "width 1 leaves the phantom's integer levels unchanged; value shown for information"
)
_NGLDM_GLNU_NORM = (
    "pyradiomics deprecated GLDM GrayLevelNonUniformityNormalized (no value) because it equals "
    "first-order Uniformity of the discretised ROI (sum_i p_i^2); 2D: slice average"
)

# Keys: (family short code, IBSI feature name as in the reference CSV with rst markup removed).
FEATURE_MAP: dict[tuple[str, str], FeatureMapping] = {
    # --- morphology (3D mesh / voxel features)
    ("morph", "Volume (mesh)"): _to("shape_MeshVolume"),
    ("morph", "Volume (voxel counting)"): _to("shape_VoxelVolume"),
    ("morph", "Surface area (mesh)"): _to("shape_SurfaceArea"),
    ("morph", "Surface to volume ratio"): _to("shape_SurfaceVolumeRatio"),
    ("morph", "Compactness 1"): _to("shape_Compactness1", "deprecated in pyradiomics; named"),
    ("morph", "Compactness 2"): _to("shape_Compactness2", "deprecated in pyradiomics; named"),
    ("morph", "Spherical disproportion"): _to(
        "shape_SphericalDisproportion", "deprecated in pyradiomics; named"
    ),
    ("morph", "Sphericity"): _to("shape_Sphericity"),
    ("morph", "Asphericity"): _to(
        "shape_SphericalDisproportion",
        "IBSI asphericity = (A^3/(36 pi V^2))^(1/3) - 1 = spherical disproportion - 1",
        "minus_1",
    ),
    ("morph", "Centre of mass shift"): _none("no intensity-weighted centre of mass in pyradiomics"),
    ("morph", "Maximum 3D diameter"): _to("shape_Maximum3DDiameter"),
    ("morph", "Major axis length"): _to("shape_MajorAxisLength", _PCA, "pca_sample_covariance"),
    ("morph", "Minor axis length"): _to("shape_MinorAxisLength", _PCA, "pca_sample_covariance"),
    ("morph", "Least axis length"): _to("shape_LeastAxisLength", _PCA, "pca_sample_covariance"),
    ("morph", "Elongation"): _to("shape_Elongation", "ratio of axes: normaliser cancels"),
    ("morph", "Flatness"): _to("shape_Flatness", "ratio of axes: normaliser cancels"),
    ("morph", "Volume density (axis-aligned bounding box)"): _none("no bounding-box densities"),
    ("morph", "Area density (axis-aligned bounding box)"): _none("no bounding-box densities"),
    ("morph", "Volume density (approximate enclosing ellipsoid)"): _none(
        "no enclosing-ellipsoid densities"
    ),
    ("morph", "Area density (approximate enclosing ellipsoid)"): _none(
        "no enclosing-ellipsoid densities"
    ),
    ("morph", "Volume density (convex hull)"): _none("no convex hull in pyradiomics"),
    ("morph", "Area density (convex hull)"): _none("no convex hull in pyradiomics"),
    ("morph", "Integrated intensity"): _none(
        "not a pyradiomics feature (would be mesh volume x mean intensity)"
    ),
    ("morph", "Moran's I index"): _none("no spatial autocorrelation in pyradiomics"),
    ("morph", "Geary's C measure"): _none("no spatial autocorrelation in pyradiomics"),
    # --- intensity-based statistics (non-discretised intensities, like pyradiomics first order)
    ("stat", "Mean intensity"): _to("firstorder_Mean"),
    ("stat", "Intensity variance"): _to("firstorder_Variance"),
    ("stat", "Intensity skewness"): _to("firstorder_Skewness"),
    ("stat", "(Excess) intensity kurtosis"): _to(
        "firstorder_Kurtosis", "IBSI reports excess kurtosis = pyradiomics Kurtosis - 3", "minus_3"
    ),
    ("stat", "Median intensity"): _to("firstorder_Median"),
    ("stat", "Minimum intensity"): _to("firstorder_Minimum"),
    ("stat", "10th intensity percentile"): _to("firstorder_10Percentile"),
    ("stat", "90th intensity percentile"): _to("firstorder_90Percentile"),
    ("stat", "Maximum intensity"): _to("firstorder_Maximum"),
    ("stat", "Intensity interquartile range"): _to("firstorder_InterquartileRange"),
    ("stat", "Intensity range"): _to("firstorder_Range"),
    ("stat", "Intensity-based mean absolute deviation"): _to("firstorder_MeanAbsoluteDeviation"),
    ("stat", "Intensity-based robust mean absolute deviation"): _to(
        "firstorder_RobustMeanAbsoluteDeviation"
    ),
    ("stat", "Intensity-based median absolute deviation"): _none(
        "pyradiomics has only the mean absolute deviation from the mean, not from the median"
    ),
    ("stat", "Intensity-based coefficient of variation"): _none("no coefficient of variation"),
    ("stat", "Intensity-based quartile coefficient of dispersion"): _none(
        "no quartile coefficient of dispersion"
    ),
    ("stat", "Intensity-based energy"): _to(
        "firstorder_Energy", "voxelArrayShift 0 (pyradiomics default)"
    ),
    ("stat", "Root mean square intensity"): _to("firstorder_RootMeanSquared"),
    # --- intensity histogram (discretised grey levels)
    ("ih", "Mean discretised intensity"): _differs("firstorder_Mean", _IH_RAW),
    ("ih", "Discretised intensity variance"): _differs("firstorder_Variance", _IH_RAW),
    ("ih", "Discretised intensity skewness"): _differs("firstorder_Skewness", _IH_RAW),
    ("ih", "(Excess) discretised intensity kurtosis"): _differs(
        "firstorder_Kurtosis", _IH_RAW + "; excess kurtosis = Kurtosis - 3", "minus_3"
    ),
    ("ih", "Median discretised intensity"): _differs("firstorder_Median", _IH_RAW),
    ("ih", "Minimum discretised intensity"): _differs("firstorder_Minimum", _IH_RAW),
    ("ih", "10th discretised intensity percentile"): _differs("firstorder_10Percentile", _IH_RAW),
    ("ih", "90th discretised intensity percentile"): _differs("firstorder_90Percentile", _IH_RAW),
    ("ih", "Maximum discretised intensity"): _differs("firstorder_Maximum", _IH_RAW),
    ("ih", "Intensity histogram mode"): _none("no histogram mode"),
    ("ih", "Discretised intensity interquartile range"): _differs(
        "firstorder_InterquartileRange", _IH_RAW
    ),
    ("ih", "Discretised intensity range"): _differs("firstorder_Range", _IH_RAW),
    ("ih", "Intensity histogram mean absolute deviation"): _differs(
        "firstorder_MeanAbsoluteDeviation", _IH_RAW
    ),
    ("ih", "Intensity histogram robust mean absolute deviation"): _differs(
        "firstorder_RobustMeanAbsoluteDeviation", _IH_RAW
    ),
    ("ih", "Intensity histogram median absolute deviation"): _none(
        "no mean absolute deviation from the median"
    ),
    ("ih", "Intensity histogram coefficient of variation"): _none("no coefficient of variation"),
    ("ih", "Intensity histogram quartile coefficient of dispersion"): _none(
        "no quartile coefficient of dispersion"
    ),
    ("ih", "Discretised intensity entropy"): _to(
        "firstorder_Entropy", "pyradiomics Entropy uses the discretised grey levels (log2)"
    ),
    ("ih", "Discretised intensity uniformity"): _to(
        "firstorder_Uniformity", "pyradiomics Uniformity uses the discretised grey levels"
    ),
    ("ih", "Maximum histogram gradient"): _none("no histogram gradient"),
    ("ih", "Maximum histogram gradient intensity"): _none("no histogram gradient"),
    ("ih", "Minimum histogram gradient"): _none("no histogram gradient"),
    ("ih", "Minimum histogram gradient intensity"): _none("no histogram gradient"),
    # --- GLCM
    ("cm", "Joint maximum"): _to("glcm_MaximumProbability"),
    ("cm", "Joint average"): _to("glcm_JointAverage"),
    ("cm", "Joint variance"): _to("glcm_SumSquares"),
    ("cm", "Joint entropy"): _to("glcm_JointEntropy"),
    ("cm", "Difference average"): _to("glcm_DifferenceAverage"),
    ("cm", "Difference variance"): _to("glcm_DifferenceVariance"),
    ("cm", "Difference entropy"): _to("glcm_DifferenceEntropy"),
    ("cm", "Sum average"): _to("glcm_SumAverage"),
    ("cm", "Sum variance"): _to(
        "glcm_ClusterTendency",
        "pyradiomics deprecated SumVariance (no value): identical to ClusterTendency",
    ),
    ("cm", "Sum entropy"): _to("glcm_SumEntropy"),
    ("cm", "Angular second moment"): _to("glcm_JointEnergy"),
    ("cm", "Contrast"): _to("glcm_Contrast"),
    ("cm", "Dissimilarity"): _to(
        "glcm_DifferenceAverage",
        "pyradiomics deprecated Dissimilarity (no value): identical to DifferenceAverage",
    ),
    ("cm", "Inverse difference"): _to("glcm_Id"),
    ("cm", "Normalised inverse difference"): _to("glcm_Idn"),
    ("cm", "Inverse difference moment"): _to("glcm_Idm"),
    ("cm", "Normalised inverse difference moment"): _to("glcm_Idmn"),
    ("cm", "Inverse variance"): _to("glcm_InverseVariance"),
    ("cm", "Correlation"): _to("glcm_Correlation"),
    ("cm", "Autocorrelation"): _to("glcm_Autocorrelation"),
    ("cm", "Cluster tendency"): _to("glcm_ClusterTendency"),
    ("cm", "Cluster shade"): _to("glcm_ClusterShade"),
    ("cm", "Cluster prominence"): _to("glcm_ClusterProminence"),
    ("cm", "Information correlation 1"): _to("glcm_Imc1"),
    ("cm", "Information correlation 2"): _to("glcm_Imc2"),
    # --- GLRLM
    ("rlm", "Short runs emphasis"): _to("glrlm_ShortRunEmphasis"),
    ("rlm", "Long runs emphasis"): _to("glrlm_LongRunEmphasis"),
    ("rlm", "Low grey level run emphasis"): _to("glrlm_LowGrayLevelRunEmphasis"),
    ("rlm", "High grey level run emphasis"): _to("glrlm_HighGrayLevelRunEmphasis"),
    ("rlm", "Short run low grey level emphasis"): _to("glrlm_ShortRunLowGrayLevelEmphasis"),
    ("rlm", "Short run high grey level emphasis"): _to("glrlm_ShortRunHighGrayLevelEmphasis"),
    ("rlm", "Long run low grey level emphasis"): _to("glrlm_LongRunLowGrayLevelEmphasis"),
    ("rlm", "Long run high grey level emphasis"): _to("glrlm_LongRunHighGrayLevelEmphasis"),
    ("rlm", "Grey level non-uniformity"): _to("glrlm_GrayLevelNonUniformity"),
    ("rlm", "Normalised grey level non-uniformity"): _to("glrlm_GrayLevelNonUniformityNormalized"),
    ("rlm", "Run length non-uniformity"): _to("glrlm_RunLengthNonUniformity"),
    ("rlm", "Normalised run length non-uniformity"): _to("glrlm_RunLengthNonUniformityNormalized"),
    ("rlm", "Run percentage"): _to("glrlm_RunPercentage"),
    ("rlm", "Grey level variance"): _to("glrlm_GrayLevelVariance"),
    ("rlm", "Run length variance"): _to("glrlm_RunVariance"),
    ("rlm", "Run entropy"): _to("glrlm_RunEntropy"),
    # --- GLSZM
    ("szm", "Small zone emphasis"): _to("glszm_SmallAreaEmphasis"),
    ("szm", "Large zone emphasis"): _to("glszm_LargeAreaEmphasis"),
    ("szm", "Low grey level zone emphasis"): _to("glszm_LowGrayLevelZoneEmphasis"),
    ("szm", "High grey level zone emphasis"): _to("glszm_HighGrayLevelZoneEmphasis"),
    ("szm", "Small zone low grey level emphasis"): _to("glszm_SmallAreaLowGrayLevelEmphasis"),
    ("szm", "Small zone high grey level emphasis"): _to("glszm_SmallAreaHighGrayLevelEmphasis"),
    ("szm", "Large zone low grey level emphasis"): _to("glszm_LargeAreaLowGrayLevelEmphasis"),
    ("szm", "Large zone high grey level emphasis"): _to("glszm_LargeAreaHighGrayLevelEmphasis"),
    ("szm", "Grey level non-uniformity"): _to("glszm_GrayLevelNonUniformity"),
    ("szm", "Normalised grey level non-uniformity"): _to("glszm_GrayLevelNonUniformityNormalized"),
    ("szm", "Zone size non-uniformity"): _to("glszm_SizeZoneNonUniformity"),
    ("szm", "Normalised zone size non-uniformity"): _to("glszm_SizeZoneNonUniformityNormalized"),
    ("szm", "Zone percentage"): _to("glszm_ZonePercentage"),
    ("szm", "Grey level variance"): _to("glszm_GrayLevelVariance"),
    ("szm", "Zone size variance"): _to("glszm_ZoneVariance"),
    ("szm", "Zone size entropy"): _to("glszm_ZoneEntropy"),
    # --- NGTDM
    ("ngt", "Coarseness"): _to("ngtdm_Coarseness"),
    ("ngt", "Contrast"): _to("ngtdm_Contrast"),
    ("ngt", "Busyness"): _to("ngtdm_Busyness"),
    ("ngt", "Complexity"): _to("ngtdm_Complexity"),
    ("ngt", "Strength"): _to("ngtdm_Strength"),
    # --- NGLDM (pyradiomics GLDM, alpha = gldm_a = 0)
    ("ngl", "Low dependence emphasis"): _to("gldm_SmallDependenceEmphasis"),
    ("ngl", "High dependence emphasis"): _to("gldm_LargeDependenceEmphasis"),
    ("ngl", "Low grey level count emphasis"): _to("gldm_LowGrayLevelEmphasis"),
    ("ngl", "High grey level count emphasis"): _to("gldm_HighGrayLevelEmphasis"),
    ("ngl", "Low dependence low grey level emphasis"): _to(
        "gldm_SmallDependenceLowGrayLevelEmphasis"
    ),
    ("ngl", "Low dependence high grey level emphasis"): _to(
        "gldm_SmallDependenceHighGrayLevelEmphasis"
    ),
    ("ngl", "High dependence low grey level emphasis"): _to(
        "gldm_LargeDependenceLowGrayLevelEmphasis"
    ),
    ("ngl", "High dependence high grey level emphasis"): _to(
        "gldm_LargeDependenceHighGrayLevelEmphasis"
    ),
    ("ngl", "Grey level non-uniformity"): _to("gldm_GrayLevelNonUniformity"),
    ("ngl", "Normalised grey level non-uniformity"): _to("firstorder_Uniformity", _NGLDM_GLNU_NORM),
    ("ngl", "Dependence count non-uniformity"): _to("gldm_DependenceNonUniformity"),
    ("ngl", "Normalised dependence count non-uniformity"): _to(
        "gldm_DependenceNonUniformityNormalized"
    ),
    ("ngl", "Dependence count percentage"): _none(
        "pyradiomics deprecated DependencePercentage (always 1) and returns no value for it"
    ),
    ("ngl", "Grey level variance"): _to("gldm_GrayLevelVariance"),
    ("ngl", "Dependence count variance"): _to("gldm_DependenceVariance"),
    ("ngl", "Dependence count entropy"): _to("gldm_DependenceEntropy"),
    ("ngl", "Dependence count energy"): _none("no dependence count energy in pyradiomics"),
}

# Families pyradiomics 3.0.1 lacks altogether: every entry gets this mapping.
FAMILY_DEFAULTS: dict[str, FeatureMapping] = {
    "li": _none("pyradiomics has no local/global intensity peak (1 cm^3 sphere mean)"),
    "ivh": _none("pyradiomics has no intensity-volume histogram"),
    "dzm": _none("pyradiomics has no grey level distance zone matrix (distance to ROI edge)"),
}

FAMILIES: dict[str, str] = {
    "Morphological features": "morph",
    "Local intensity features": "li",
    "Intensity-based statistical features": "stat",
    "Intensity histogram features": "ih",
    "Intensity-volume histogram features": "ivh",
    "Grey level co-occurrence based features": "cm",
    "Grey level run length based features": "rlm",
    "Grey level size zone based features": "szm",
    "Grey level distance zone based features": "dzm",
    "Neighbourhood grey tone difference based features": "ngt",
    "Neighbouring grey level dependence based features": "ngl",
}


def clean_name(name: str) -> str:
    """IBSI feature name without reST markup (``10\\ :sup:`th``` -> ``10th``, curly quotes)."""
    return name.replace("\\ :sup:`th`", "th").replace("\u2019", "'").strip()


def mapping_for(family: str, feature: str) -> FeatureMapping:
    """The :data:`FEATURE_MAP` entry of an IBSI reference row (KeyError if unmapped)."""
    short = FAMILIES[family]
    if short in FAMILY_DEFAULTS:
        return FAMILY_DEFAULTS[short]
    return FEATURE_MAP[(short, clean_name(feature))]


# --------------------------------------------------------------------------- extraction


def extract_per_slice(
    *, image: Path, mask: Path, params_file: Path, workdir: Path
) -> list[dict[str, float]]:
    """Features of each axial slice (numpy axis 0) with a non-empty mask, via extract_features.

    Each slice is written as a one-slice image + mask (same spacing, direction and physical
    position, one background voxel added around it in-plane) under ``workdir`` and extracted with
    :func:`calcirad.features.extract_features`; slices without ROI voxels are skipped.
    """
    img = sitk.ReadImage(str(image))
    msk = sitk.ReadImage(str(mask))
    img_array = sitk.GetArrayFromImage(img)
    msk_array = sitk.GetArrayFromImage(msk)
    results = []
    for k in range(img_array.shape[0]):
        if not msk_array[k].any():
            continue
        paths = []
        for array, name in ((img_array, "image"), (msk_array, "mask")):
            # One background voxel around the slice in-plane: pyradiomics refuses a mask with a
            # single label value ("nothing is segmented") when the ROI fills the whole slice.
            # Voxels outside the mask take no part in any feature.
            padded = np.pad(array[k : k + 1], ((0, 0), (1, 1), (1, 1)), constant_values=0)
            piece = sitk.GetImageFromArray(padded)
            piece.SetSpacing(img.GetSpacing())
            piece.SetDirection(img.GetDirection())
            piece.SetOrigin(img.TransformContinuousIndexToPhysicalPoint((-1.0, -1.0, float(k))))
            path = workdir / f"slice{k:03d}_{name}.nii.gz"
            sitk.WriteImage(piece, str(path))
            paths.append(path)
        results.append(
            extract_features(
                image_path=paths[0], mask_path=paths[1], params_file=params_file, modality=MODALITY
            )
        )
    return results


def average_slices(per_slice: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """IBSI 2D aggregation: each feature averaged over slices (keys common to all slices)."""
    keys = set.intersection(*(set(features) for features in per_slice))
    return {key: float(np.mean([features[key] for features in per_slice])) for key in keys}


def extract_variants(*, image: Path, mask: Path, params_dir: Path) -> dict[str, dict[str, float]]:
    """Features of every :data:`VARIANTS` extraction of the phantom."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="calcirad-ibsi-") as tmp:
        for name, variant in VARIANTS.items():
            params = Path(params_dir) / variant.params
            if variant.per_slice:
                workdir = Path(tmp) / name
                workdir.mkdir()
                slices = extract_per_slice(
                    image=image, mask=mask, params_file=params, workdir=workdir
                )
                out[name] = average_slices(slices)
            else:
                out[name] = extract_features(
                    image_path=image, mask_path=mask, params_file=params, modality=MODALITY
                )
    return out


# --------------------------------------------------------------------------- comparison


def allowed_deviation(reference: float, tolerance: float) -> float:
    """max(tolerance, half a unit of the reference's 3rd significant digit)."""
    if reference == 0 or not math.isfinite(reference):
        return float(tolerance)
    half_unit = 0.5 * 10.0 ** (math.floor(math.log10(abs(reference))) - 2)
    return max(float(tolerance), half_unit)


def relative_difference(value: float, reference: float) -> float:
    """(value - reference) / |reference|; 0 when both are 0, NaN without a value."""
    if not math.isfinite(value):
        return math.nan
    if reference == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - reference) / abs(reference)


def _voxel_volume(image: Path) -> float:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    reader.ReadImageInformation()
    return float(np.prod(reader.GetSpacing()))


def compliance_table(
    *,
    reference_csv: Path,
    image: Path,
    mask: Path,
    params_dir: Path,
    correct_pca: bool = True,
) -> pd.DataFrame:
    """One row per IBSI reference entry (all 482): reference, calcirad value, status, note.

    ``correct_pca=False`` compares pyradiomics' PCA axis lengths as they are (N normaliser), to
    show what the correction changes.
    """
    reference = pd.read_csv(reference_csv, keep_default_na=False, na_values={"value": [""]})
    features = extract_variants(image=image, mask=mask, params_dir=params_dir)
    voxel_mm3 = _voxel_volume(image)
    rows = []
    for ref in reference.itertuples(index=False):
        entry = mapping_for(ref.family, ref.feature)
        variant = AGGREGATIONS[ref.aggregation]
        value, key = math.nan, ""
        notes = [entry.note] if entry.note else []
        conversion = entry.conversion
        if conversion == "pca_sample_covariance" and not correct_pca:
            conversion = "identity"
            notes = ["uncorrected: pyradiomics normalises the covariance by N, IBSI by N-1"]
        if entry.pyradiomics is not None:
            key = f"original_{entry.pyradiomics}"
            extracted = features[variant]
            if key not in extracted:
                raise KeyError(f"{key} missing from the {variant!r} extraction ({ref.feature})")
            raw = extracted[key]
            value = CONVERSIONS[conversion](raw, extracted, voxel_mm3)
            if conversion != "identity":
                notes.append(f"pyradiomics value {raw:.6g}")
            notes.append(f"extraction {variant} ({VARIANTS[variant].params})")
        tol = float(ref.tolerance)
        within = bool(
            math.isfinite(value)
            and abs(value - ref.value) <= allowed_deviation(ref.value, tol) * (1 + 1e-9)
        )
        if entry.status == "counterpart":
            status = "match" if within else "mismatch"
        else:
            status = entry.status
        rows.append(
            {
                "family": ref.family,
                "feature": clean_name(ref.feature),
                "ibsi_code": ref.ibsi_code,
                "aggregation": ref.aggregation,
                "reference": float(ref.value),
                "tolerance": tol,
                "calcirad": value,
                "pyradiomics_feature": key,
                "conversion": conversion,
                "status": status,
                "relative_difference": relative_difference(value, float(ref.value)),
                "within_tolerance": within,
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_compliance(
    *, reference_csv: Path, image: Path, mask: Path, params_dir: Path, out_csv: Path
) -> pd.DataFrame:
    """:func:`compliance_table` written atomically to ``out_csv`` (deterministic CSV)."""
    table = compliance_table(
        reference_csv=reference_csv, image=image, mask=mask, params_dir=params_dir
    )
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")
    return table


def summary(table: pd.DataFrame) -> str:
    """One line: counterparts, matches, and which counterparts do not match."""
    counterparts = table["status"].isin(["match", "mismatch"])
    mismatches = table[table["status"] == "mismatch"]
    text = (
        f"IBSI 1 digital phantom: {int((table['status'] == 'match').sum())} of "
        f"{int(counterparts.sum())} entries with a pyradiomics counterpart match within "
        f"tolerance ({len(table)} reference entries)"
    )
    if len(mismatches):
        text += "; mismatches: " + ", ".join(
            f"{r.feature} [{r.aggregation or '-'}]" for r in mismatches.itertuples()
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m calcirad.ibsi --reference-csv ... --out-csv ...`` (for the workflow rule)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-csv", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--params-dir", type=Path, required=True)
    parser.add_argument("--out-csv", type=Path, required=True)
    args = parser.parse_args(argv)
    table = write_compliance(
        reference_csv=args.reference_csv,
        image=args.image,
        mask=args.mask,
        params_dir=args.params_dir,
        out_csv=args.out_csv,
    )
    print(summary(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
