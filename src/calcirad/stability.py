"""Feature stability under segmentation perturbation (Zwanenburg et al., Sci Rep 2019;9:614).

A lesion mask is perturbed in a small, deterministic set of ways, the features are extracted
again on each perturbed mask with the same code (:func:`calcirad.features.extract_features`),
and each feature's agreement over the perturbations is summarised by the intraclass
correlation ICC(3,1) (Shrout & Fleiss 1979, Psychol Bull 86:420; two-way mixed, consistency,
single measure): subjects are the targets, perturbations the (fixed) raters.

Perturbations are named by short strings (config key ``stability.perturbations``):

- ``identity``: the mask as segmented;
- ``erode:N`` / ``dilate:N``: binary erosion / dilation by ``N`` voxels with the 6-connected
  (face-neighbour) structuring element, so the contour moves by ``N`` voxels along each image
  axis on that modality's own grid (outside the image counts as background);
- ``shift:I,J,K``: rigid translation by whole voxels along the image axes (i, j, k =
  SimpleITK index order, i.e. x, y, z of the grid, *not* numpy order); voxels shifted out of the
  field are lost, voxels shifted in are background. The physical displacement in LPS mm is
  ``direction @ (spacing * [I, J, K])`` (:func:`shift_mm`), so one voxel is ~0.8 mm on CT but
  4 mm on PET: the perturbation is defined on each modality's grid, as a contour drawn there.

The mask stays on the image grid (same origin, spacing, direction); only its voxels change.

ICC is label-free: computing it on the whole cohort (or a subsample of it) and using it to drop
unstable features before modelling does not leak labels into the cross-validation.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage, stats

from calcirad.errors import ConfigError, SubjectInputError

STAGE = "stability"
DEFAULT_PERTURBATIONS = (
    "identity",
    "erode:1",
    "dilate:1",
    "shift:1,0,0",
    "shift:-1,0,0",
    "shift:0,1,0",
    "shift:0,-1,0",
)
_PATTERN = re.compile(
    r"^(?:(?P<identity>identity)|(?P<morph>erode|dilate):(?P<radius>[1-9][0-9]*)"
    r"|shift:(?P<i>[+-]?[0-9]+),(?P<j>[+-]?[0-9]+),(?P<k>[+-]?[0-9]+))$"
)
TABLE_COLUMNS = (
    "modality",
    "feature",
    "icc",
    "icc_ci_low",
    "icc_ci_high",
    "n_subjects",
    "n_perturbations",
)
# Relative size below which a mean square counts as zero (float rounding of equal values).
_ZERO = 1e-24


# --------------------------------------------------------------------------- perturbations


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One mask perturbation: ``kind`` identity/erode/dilate/shift, ``radius`` in voxels,
    ``offset`` in voxels along the image axes (i, j, k)."""

    name: str
    kind: str
    radius: int = 0
    offset: tuple[int, int, int] = (0, 0, 0)


def parse_perturbation(name: str) -> Perturbation:
    """``identity``, ``erode:N``, ``dilate:N`` or ``shift:I,J,K`` as a :class:`Perturbation`."""
    match = _PATTERN.match(str(name).strip())
    if not match:
        raise ConfigError(
            f"unknown mask perturbation {name!r}; expected identity, erode:N, dilate:N or "
            f"shift:I,J,K (whole voxels along the image axes)"
        )
    if match["identity"]:
        return Perturbation(name=name, kind="identity")
    if match["morph"]:
        return Perturbation(name=name, kind=match["morph"], radius=int(match["radius"]))
    offset = (int(match["i"]), int(match["j"]), int(match["k"]))
    return Perturbation(name=name, kind="shift", offset=offset)


def perturb_array(mask: np.ndarray, perturbation: Perturbation) -> np.ndarray:
    """The perturbed copy of a boolean mask array in numpy order (k, j, i)."""
    mask = np.asarray(mask, dtype=bool)
    if perturbation.kind == "identity":
        return mask.copy()
    if perturbation.kind in ("erode", "dilate"):
        structure = ndimage.generate_binary_structure(3, 1)  # 6-connected: faces only
        morph = ndimage.binary_erosion if perturbation.kind == "erode" else ndimage.binary_dilation
        return morph(mask, structure=structure, iterations=perturbation.radius, border_value=0)
    # shift: (i, j, k) offsets -> numpy axes (k, j, i); zero fill, nothing wraps around
    shifted = np.zeros_like(mask)
    source, target = [], []
    for axis, step in enumerate(reversed(perturbation.offset)):
        n = mask.shape[axis]
        if abs(step) >= n:
            return shifted
        source.append(slice(max(-step, 0), n - max(step, 0)))
        target.append(slice(max(step, 0), n - max(-step, 0)))
    shifted[tuple(target)] = mask[tuple(source)]
    return shifted


def perturb_mask(mask: sitk.Image, perturbation: Perturbation) -> sitk.Image:
    """The perturbed mask (UInt8 0/1) on the same grid as ``mask``."""
    array = sitk.GetArrayFromImage(mask) > 0
    out = sitk.GetImageFromArray(perturb_array(array, perturbation).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def shift_mm(image: sitk.Image, perturbation: Perturbation) -> tuple[float, float, float]:
    """Physical displacement (LPS mm) of a shift perturbation on ``image``'s grid."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    step = np.asarray(image.GetSpacing(), dtype=float) * np.asarray(perturbation.offset, float)
    return tuple(float(v) for v in direction @ step)


# --------------------------------------------------------------------------- extraction


def perturbed_features(
    *,
    image_path: Path,
    mask_path: Path,
    params_file: Path,
    modality: str,
    perturbations: Sequence[str],
    muscle_mask_path: Path | None = None,
) -> dict[str, dict]:
    """Features of the lesion under each perturbation, through the feature stage's own code.

    Returns ``{perturbation: {"status": "ok", "features": {...}, "volume_ml": v, "shift_mm":
    [x, y, z]}}``, or ``"status": "failed"`` with a ``reason`` for a perturbation the extraction
    refused (an erosion that empties a small lesion, a shift out of the field). The muscle
    reference mask (MR lesion-to-muscle ratio) is not perturbed.
    """
    from calcirad.features import extract_features  # keeps the Snakefile's parse-time import light

    parsed = [parse_perturbation(p) for p in perturbations]
    mask = sitk.ReadImage(str(mask_path), sitk.sitkUInt8)
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="calcirad-stability-") as tmp:
        for index, perturbation in enumerate(parsed):
            perturbed = perturb_mask(mask, perturbation)
            path = Path(tmp) / f"mask_{index}.nii.gz"
            sitk.WriteImage(perturbed, str(path))
            entry: dict = {
                "volume_ml": float(sitk.GetArrayViewFromImage(perturbed).sum()) * voxel_ml,
                "shift_mm": list(shift_mm(mask, perturbation)),
            }
            try:
                entry["features"] = extract_features(
                    image_path=image_path,
                    mask_path=path,
                    params_file=params_file,
                    modality=modality,
                    muscle_mask_path=muscle_mask_path,
                )
                entry["status"] = "ok"
            except SubjectInputError as error:
                error.file = f"{mask_path} (perturbation {perturbation.name})"
                error.stage = STAGE
                entry.update(status="failed", reason=str(error))
            out[perturbation.name] = entry
    return out


# --------------------------------------------------------------------------- ICC


@dataclasses.dataclass(frozen=True)
class ICC:
    """ICC(3,1) with its F test and (1 - alpha) confidence interval."""

    icc: float
    ci_low: float
    ci_high: float
    f: float
    df1: int
    df2: int
    n_targets: int
    n_raters: int


def icc_3_1(ratings: np.ndarray, *, alpha: float = 0.05) -> ICC:
    """ICC(3,1) of an (n targets x k raters) matrix without missing values.

    Two-way mixed model, consistency, single measure (Shrout & Fleiss 1979, case 3;
    McGraw & Wong 1996 ICC(C,1)): ``(MS_R - MS_E) / (MS_R + (k - 1) MS_E)`` with MS_R the
    between-targets and MS_E the residual mean square of the two-way ANOVA without
    replication. The confidence interval is Shrout & Fleiss' exact F interval. The ICC lies in
    [-1/(k-1), 1]; it is 1 (CI 1-1) when raters agree exactly on targets that differ, and NaN
    when undefined (fewer than 2 targets or raters, a missing value, or a feature constant
    over every target and rater).
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"ratings must be 2-D (targets x raters), got shape {x.shape}")
    n, k = x.shape
    df1, df2 = max(n - 1, 0), max(n - 1, 0) * max(k - 1, 0)
    undefined = ICC(math.nan, math.nan, math.nan, math.nan, df1, df2, n, k)
    if n < 2 or k < 2 or not np.isfinite(x).all():
        return undefined
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((x - grand) ** 2).sum())
    ms_rows = ss_rows / df1
    # Rounding can leave a tiny negative residual when raters agree exactly.
    ms_error = max(ss_total - ss_rows - ss_cols, 0.0) / df2
    zero = _ZERO * max(float(np.abs(x).max()) ** 2, 1e-300)
    if ms_error <= zero:
        return undefined if ms_rows <= zero else ICC(1.0, 1.0, 1.0, math.inf, df1, df2, n, k)
    icc = (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error)
    f = ms_rows / ms_error
    f_low = f / stats.f.ppf(1 - alpha / 2, df1, df2)
    f_high = f * stats.f.ppf(1 - alpha / 2, df2, df1)
    return ICC(
        icc=float(icc),
        ci_low=float((f_low - 1) / (f_low + k - 1)),
        ci_high=float((f_high - 1) / (f_high + k - 1)),
        f=float(f),
        df1=df1,
        df2=df2,
        n_targets=n,
        n_raters=k,
    )


def stability_table(
    records: Sequence[Mapping], *, perturbations: Sequence[str], alpha: float = 0.05
) -> pd.DataFrame:
    """One row per (modality, feature): ICC(3,1) over ``perturbations`` and its CI.

    ``records`` are the per-subject, per-modality stability records (``subject``, ``modality``,
    ``status``, ``perturbations``). A subject enters a modality's ICCs only if every perturbation
    was extracted (a complete two-way design); for each feature, subjects with a missing value
    are left out of that feature's ICC (``n_subjects`` says how many remained).
    """
    names = list(perturbations)
    by_modality: dict[str, dict[str, list[dict[str, float]]]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        runs = record["perturbations"]
        if not all(runs.get(p, {}).get("status") == "ok" for p in names):
            continue
        subjects = by_modality.setdefault(record["modality"], {})
        subjects[record["subject"]] = [runs[p]["features"] for p in names]
    rows = []
    for modality, subjects in sorted(by_modality.items()):
        ordered = [subjects[s] for s in sorted(subjects)]
        features = sorted({name for runs in ordered for run in runs for name in run})
        for feature in features:
            matrix = np.array(
                [[_number(run.get(feature)) for run in runs] for runs in ordered], dtype=float
            )
            matrix = matrix[np.isfinite(matrix).all(axis=1)]
            result = icc_3_1(matrix, alpha=alpha)
            rows.append(
                {
                    "modality": modality,
                    "feature": feature,
                    "icc": result.icc,
                    "icc_ci_low": result.ci_low,
                    "icc_ci_high": result.ci_high,
                    "n_subjects": int(matrix.shape[0]),
                    "n_perturbations": len(names),
                }
            )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _number(value) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- subject choice
