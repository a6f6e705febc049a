"""Feature sets, task definitions and the missing-modality rule.

Feature-set contract (documented choice):
- modality sets (``ct``, ``t1``, ``t2``, ``mr``, ``pet``, ``ct+pet``) hold the *radiomic* columns of
  their modalities only (every ``<modality>_...`` column that is not ``<modality>_conv_...``), so the
  comparison against ``conventional`` measures what radiomics adds over radiologist measures;
- ``conventional`` holds the ``<modality>_conv_...`` columns of every modality;
- ``all`` holds every radiomic and conventional column of every modality;
- ``clinical`` holds the encoded clinical covariates (``clin_...``), ``clinical+all`` both.
Pyradiomics ``diagnostics`` columns and non-numeric columns are never features.

Missing-modality rule (``missing``):
- ``drop``: a subject is kept only if every block of the set (each modality, and the clinical block)
  has at least one measured value; remaining scattered gaps are imputed inside the training fold;
- ``impute``: a subject is kept if any block of the set has a measured value; everything missing
  is imputed inside the training fold (median), never on the whole cohort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from calcirad.errors import ConfigError

MODALITIES = ("ct", "t1", "t2", "pet")
CLASSES = ("tc", "sarcoma", "mimic")
MISSING_RULES = ("drop", "impute")
CLINICAL_PREFIX = "clin_"


@dataclass(frozen=True)
class FeatureSet:
    """Which modality blocks a feature set uses and which kind of column it takes from them."""

    modalities: tuple[str, ...]
    radiomic: bool
    conventional: bool
    clinical: bool = False


FEATURE_SETS: dict[str, FeatureSet] = {
    "ct": FeatureSet(("ct",), radiomic=True, conventional=False),
    "t1": FeatureSet(("t1",), radiomic=True, conventional=False),
    "t2": FeatureSet(("t2",), radiomic=True, conventional=False),
    "mr": FeatureSet(("t1", "t2"), radiomic=True, conventional=False),
    "pet": FeatureSet(("pet",), radiomic=True, conventional=False),
    "conventional": FeatureSet(MODALITIES, radiomic=False, conventional=True),
    "ct+pet": FeatureSet(("ct", "pet"), radiomic=True, conventional=False),
    "all": FeatureSet(MODALITIES, radiomic=True, conventional=True),
    "clinical": FeatureSet((), radiomic=False, conventional=False, clinical=True),
    "clinical+all": FeatureSet(MODALITIES, radiomic=True, conventional=True, clinical=True),
}


@dataclass(frozen=True)
class Task:
    """Subjects a task keeps and the class names in code order (binary: code 1 is positive)."""

    keep: tuple[str, ...]
    classes: tuple[str, ...]
    positive: str | None


# Binary tasks: TC is the positive class (code 1), so AUC > 0.5 means "higher score = more TC-like".
TASKS: dict[str, Task] = {
    "tc_vs_sarcoma": Task(keep=("tc", "sarcoma"), classes=("sarcoma", "tc"), positive="tc"),
    "tc_vs_mimics": Task(keep=CLASSES, classes=("non_tc", "tc"), positive="tc"),
    "multiclass": Task(keep=CLASSES, classes=CLASSES, positive=None),
}


def normalise_labels(labels: pd.Series) -> pd.Series:
    """Lower-case, strip and check labels; unknown labels are a configuration error."""
    clean = labels.astype("string").str.strip().str.lower()
    unknown = sorted(set(clean.dropna()) - set(CLASSES))
    if unknown:
        raise ConfigError(f"unknown labels {unknown}; expected one of {list(CLASSES)}")
    return clean.dropna().astype(str)


def task_labels(labels: pd.Series, task: str) -> pd.Series:
    """Integer codes (binary 0/1 with TC = 1, or multiclass codes in ``CLASSES`` order) on the task's subjects."""
    spec = get_task(task)
    clean = normalise_labels(labels)
    clean = clean[clean.isin(spec.keep)]
    if spec.positive is not None:
        codes = (clean == spec.positive).astype(int)
    else:
        codes = clean.map({name: code for code, name in enumerate(spec.classes)}).astype(int)
    codes.index = codes.index.astype(str)
    return codes.sort_index().rename("y")


def get_task(task: str) -> Task:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def _feature_set(name: str) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {name!r}; expected one of {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[name]


def _is_feature(column: str) -> bool:
    return "_diagnostics_" not in column and not column.startswith("diagnostics_")


def modality_columns(features: pd.DataFrame, modality: str, *, spec: FeatureSet) -> list[str]:
    """The columns of one modality that a feature set takes (sorted, numeric, no diagnostics)."""
    prefix, conv = f"{modality}_", f"{modality}_conv_"
    columns = []
    for column in features.columns:
        name = str(column)
        if not name.startswith(prefix) or not _is_feature(name):
            continue
        if not pd.api.types.is_numeric_dtype(features[column]):
            continue
        is_conv = name.startswith(conv)
        if (is_conv and spec.conventional) or (not is_conv and spec.radiomic):
            columns.append(name)
    return sorted(columns)


def encode_clinical(clinical: pd.DataFrame) -> pd.DataFrame:
    """Numeric ``clin_`` columns: numbers as is, booleans as 0/1, categories one-hot (first sorted level dropped).

    Encoding only uses the list of levels, never the labels, so doing it on the whole cohort leaks nothing.
    """
    out = {}
    for column in sorted(map(str, clinical.columns)):
        values = clinical[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[f"{CLINICAL_PREFIX}{column}"] = values.astype("float64")
            continue
        text = values.astype("string").str.strip().str.lower()
        levels = sorted(set(text.dropna()))
        for level in levels[1:]:
            indicator = (text == level).astype("float64")
            out[f"{CLINICAL_PREFIX}{column}_{level}"] = indicator.where(text.notna())
    encoded = pd.DataFrame(out, index=clinical.index.astype(str))
    return encoded.sort_index()


def _blocks(
    features: pd.DataFrame, spec: FeatureSet, clinical: pd.DataFrame | None
) -> dict[str, pd.DataFrame]:
    """The feature set as named blocks (one per modality plus ``clinical``), empty blocks left out."""
    blocks = {}
    for modality in spec.modalities:
        columns = modality_columns(features, modality, spec=spec)
        if columns:
            blocks[modality] = features[columns].astype("float64")
    if spec.clinical:
        if clinical is None or clinical.empty:
            raise ConfigError("feature set needs clinical covariates but none were given")
        blocks["clinical"] = encode_clinical(clinical)
    return blocks


def select_feature_set(
    features: pd.DataFrame,
    feature_set: str,
    *,
    clinical: pd.DataFrame | None = None,
    missing: str = "drop",
) -> pd.DataFrame:
    """Columns of ``feature_set`` on the subjects the ``missing`` rule keeps (sorted rows and columns)."""
    if missing not in MISSING_RULES:
        raise ConfigError(
            f"unknown missing rule {missing!r}; expected one of {list(MISSING_RULES)}"
        )
    spec = _feature_set(feature_set)
    features = features.copy()
    features.index = features.index.astype(str)
    blocks = _blocks(features, spec, clinical)
    if not blocks:
        raise ConfigError(f"feature set {feature_set!r} has no columns in the feature table")
    table = pd.concat(list(blocks.values()), axis=1, join="outer")
    present = pd.DataFrame(
        {name: block.reindex(table.index).notna().any(axis=1) for name, block in blocks.items()}
    )
    keep = present.all(axis=1) if missing == "drop" else present.any(axis=1)
    table = table.loc[keep.to_numpy()]
    return table.sort_index().reindex(columns=sorted(table.columns))


def class_counts(y: pd.Series) -> dict[int, int]:
    """Subjects per class code, every code present."""
    values, counts = np.unique(y.to_numpy(), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def drop_unstable(
    features: pd.DataFrame, stability: pd.DataFrame, *, min_icc: float
) -> tuple[pd.DataFrame, list[str]]:
    """Drop the wide-table columns whose ICC(3,1) under mask perturbation is below ``min_icc``.

    ``stability`` is ``results/tables/feature_stability.csv`` (modality, feature, icc, ...); its
    feature ``f`` of modality ``m`` is column ``m_f`` of the wide table. A column with no ICC
    (modality not assessed, ICC undefined for a constant feature) is kept: constant columns go in
    the pipeline's variance step. ICC uses no labels, so filtering on it before the
    cross-validation leaks no outcome information. Returns the kept table and the dropped columns.
    """
    known = stability.dropna(subset=["icc"])
    columns = known["modality"].astype(str) + "_" + known["feature"].astype(str)
    icc = dict(zip(columns, known["icc"].astype(float), strict=True))
    dropped = sorted(c for c in map(str, features.columns) if icc.get(c, math.inf) < min_icc)
    return features.drop(columns=dropped), dropped
