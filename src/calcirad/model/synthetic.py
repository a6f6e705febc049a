"""A small synthetic cohort shaped like the feature stage's output (tests and demos only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from calcirad.model.feature_sets import CLASSES

RADIOMIC_COUNTS = {"ct": 30, "t1": 15, "t2": 15, "pet": 20}
CONVENTIONAL = (
    "ct_conv_volume_ml", "ct_conv_mean_hu", "ct_conv_max_hu", "ct_conv_calcified_fraction",
    "pet_conv_suv_max", "pet_conv_suv_mean", "pet_conv_suv_peak", "t1_conv_lesion_muscle_ratio",
)  # fmt: skip


def make_cohort(
    *,
    n_per_class: int = 12,
    signal: float = 0.0,
    n_informative: int = 3,
    missing_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.Series, pd.Series, pd.DataFrame]:
    """Features, labels, sites and clinical covariates.

    ``signal`` shifts the first ``n_informative`` radiomic features of every modality (and the CT
    conventional measures) by ``signal`` SDs for TC subjects; 0 gives pure noise.
    ``missing_fraction`` of subjects lose PET and, separately, T2.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(CLASSES, n_per_class)
    subjects = [f"sub-{i:03d}" for i in range(labels.size)]
    is_tc = (labels == "tc").astype(float)[:, None]
    blocks = {}
    for modality, count in RADIOMIC_COUNTS.items():
        values = rng.normal(size=(labels.size, count))
        values[:, :n_informative] += signal * is_tc
        for j in range(count):
            blocks[f"{modality}_original_firstorder_f{j:02d}"] = values[:, j]
    conventional = rng.normal(size=(labels.size, len(CONVENTIONAL)))
    conventional[:, :4] += signal * is_tc
    blocks |= {name: conventional[:, j] for j, name in enumerate(CONVENTIONAL)}
    features = pd.DataFrame(blocks, index=pd.Index(subjects, name="subject"))
    for modality in ("pet", "t2"):
        lost = rng.random(labels.size) < missing_fraction
        features.loc[lost, [c for c in features.columns if c.startswith(f"{modality}_")]] = np.nan
    label_series = pd.Series(labels, index=features.index, name="label")
    sites = pd.Series(
        np.tile(["A", "B", "C"], labels.size // 3 + 1)[: labels.size], index=features.index
    )
    clinical = pd.DataFrame(
        {
            "age": rng.normal(50, 15, labels.size).round(),
            "sex": rng.choice(["F", "M"], labels.size),
            "eskd": rng.random(labels.size) < 0.3,
            "phosphate_mg_dl": rng.normal(4.5, 1.0, labels.size) + 0.5 * signal * is_tc[:, 0],
        },
        index=features.index,
    )
    return features, label_series, sites, clinical
