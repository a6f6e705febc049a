"""evaluate(): one (task, feature set, model) row, from feature table to a JSON-serialisable result.

AUC definition (documented): within each repeat, the outer-fold predictions of all subjects are
pooled into one ROC; the row's AUC is the mean over repeats. The 95% CI is the percentile interval
of the same statistic over a stratified bootstrap of subjects (fixed seed). Threshold metrics,
Brier score and calibration are computed per repeat and averaged over repeats.

Site harmonisation (``harmonize="combat"``): the site is carried as an extra column of ``X``
(``SITE_COLUMN``) that the pipeline's first step fits ComBat with inside each training fold and
then drops; see :mod:`calcirad.model.harmonize` for test sites absent from their training fold.
"""

from __future__ import annotations

import math
import re
import warnings as pywarnings
from collections import Counter

import numpy as np
import pandas as pd

from calcirad.errors import ConfigError
from calcirad.model import metrics
from calcirad.model.feature_sets import get_task, select_feature_set, task_labels
from calcirad.model.harmonize import SITE_COLUMN
from calcirad.model.pipelines import build_model
from calcirad.model.validation import CVConfig, CVRun, run_nested_cv, with_repeats

# Expected on small feature sets (k larger than what survives the filters): all features are kept.
_IGNORED_WARNINGS = (re.compile(r"k=\d+ is greater than n_features=\d+"),)


def design(
    *,
    features: pd.DataFrame,
    labels: pd.Series,
    task: str,
    feature_set: str,
    clinical: pd.DataFrame | None,
    missing: str,
) -> tuple[pd.DataFrame, pd.Series, int]:
    """Feature matrix and task codes on the same sorted subjects; also the task subjects dropped."""
    y = task_labels(labels, task)
    X = select_feature_set(features, feature_set, clinical=clinical, missing=missing)
    subjects = sorted(set(X.index) & set(y.index))
    return X.loc[subjects], y.loc[subjects], int(y.size - len(subjects))


def _align_sites(sites: pd.Series | None, subjects: pd.Index) -> np.ndarray:
    """Every subject's site (cv.group_by_site and model.harmonize need them all)."""
    if sites is None:
        raise ConfigError("no sites given (cv.group_by_site and model.harmonize need them)")
    sites = sites.copy()
    sites.index = sites.index.astype(str)
    aligned = sites.reindex(subjects)
    if aligned.isna().any():
        missing = sorted(aligned.index[aligned.isna()])[:5]
        raise ConfigError(
            f"no site for subjects {missing} (cv.group_by_site and model.harmonize need every site)"
        )
    return aligned.astype(str).to_numpy()


def _summarise_warnings(caught: list[pywarnings.WarningMessage]) -> list[str]:
    """Distinct library warnings with their counts, in a stable order."""
    counts = Counter(
        f"{item.category.__name__}: {str(item.message).strip()}"
        for item in caught
        if not any(pattern.search(str(item.message)) for pattern in _IGNORED_WARNINGS)
    )
    return [f"{text} (x{count})" for text, count in sorted(counts.items())]


def _run_quietly(run, notes: list[str]):
    """Run ``run()`` recording library warnings into ``notes`` instead of the log."""
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        value = run()
    notes.extend(_summarise_warnings(caught))
    return value


def discrimination(y: np.ndarray, run: CVRun, *, n_boot: int, seed: int) -> dict[str, float]:
    """AUC (pooled per repeat, mean over repeats), its SD over repeats and bootstrap 95% CI."""
    per_repeat = metrics.auc(y, run.proba)
    low, high = metrics.percentile_ci(
        metrics.bootstrap_aucs(y, run.proba, n_boot=n_boot, seed=seed)
    )
    return {
        "auc": float(per_repeat.mean()),
        "auc_sd_repeats": float(per_repeat.std()),
        "auc_ci_low": low,
        "auc_ci_high": high,
    }


def threshold_and_calibration(y: np.ndarray, run: CVRun) -> dict[str, float]:
    """Balanced accuracy, Youden sensitivity/specificity, Brier and calibration, mean over repeats."""
    rows = []
    for proba, predicted in zip(run.proba, run.predicted, strict=True):
        row = {
            "brier": metrics.brier(y, proba),
            "balanced_accuracy": metrics.balanced_accuracy(y, predicted),
        }
        if proba.shape[1] == 2:
            row |= metrics.threshold_metrics(y, predicted)
            row |= metrics.calibration(y, proba[:, 1])
        rows.append(row)
    columns = ["balanced_accuracy", "sensitivity", "specificity", "brier"]
    columns += ["calibration_slope", "calibration_intercept"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    return {column: _nanmean(table[column].to_numpy(dtype=float)) for column in columns}


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def prediction_records(
    subjects: list[str], y: np.ndarray, run: CVRun, *, classes: tuple[str, ...]
) -> list[dict]:
    """One record per subject and repeat: the outer-fold prediction and the fold's threshold."""
    records = []
    for fit in run.folds:
        split = fit.split
        for position, index in enumerate(split.test):
            proba = fit.proba[position]
            records.append(
                {
                    "subject": subjects[index],
                    "repeat": split.repeat,
                    "fold": split.fold,
                    "y_true": int(y[index]),
                    "label": classes[y[index]],
                    "y_score": float(proba[1]) if proba.size == 2 else None,
                    "proba": [float(p) for p in proba],
                    "y_pred": int(run.predicted[split.repeat, index]),
                    "threshold": fit.threshold,
                }
            )
    return sorted(records, key=lambda r: (r["repeat"], r["subject"]))


def top_features(run: CVRun) -> list[dict]:
    """Selection frequency over outer fits and mean normalised importance (0 when not selected)."""
    n_fits = len(run.folds)
    selected: Counter[str] = Counter()
    importance: Counter[str] = Counter()
    for fit in run.folds:
        selected.update(fit.importance.keys())
        importance.update(fit.importance)
    rows = [
        {
            "feature": name,
            "selection_frequency": selected[name] / n_fits,
            "mean_importance": importance[name] / n_fits,
        }
        for name in selected
    ]
    return sorted(
        rows, key=lambda r: (-r["selection_frequency"], -r["mean_importance"], r["feature"])
    )


def permutation_null(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    pipeline,
    grid: dict,
    config: CVConfig,
    seed: int,
    sites: np.ndarray | None,
    n_permutations: int,
    notes: list[str],
) -> list[float]:
    """AUCs of the whole nested procedure refitted on permuted labels (the leakage guard)."""
    null_config = with_repeats(config, config.permutation_repeats)
    null = []
    for index in range(n_permutations):
        permuted = np.random.default_rng([seed, index]).permutation(y)
        scratch: list[str] = []  # fold-reduction notes repeat the observed run's; keep them out
        run = run_nested_cv(
            X, permuted, pipeline=pipeline, grid=grid, config=null_config, seed=seed,
            sites=sites, warnings=scratch, with_importance=False,
        )  # fmt: skip
        null.append(float(metrics.auc(permuted, run.proba).mean()))
    if n_permutations:
        notes.append(
            f"permutation null: {n_permutations} permutations x {null_config.outer_repeats} repeat(s)"
        )
    return null


def _null_summary(null: list[float], observed: float) -> dict[str, float]:
    if not null:
        return {"null_auc_mean": math.nan, "null_auc_sd": math.nan, "permutation_p": math.nan}
    values = np.asarray(null)
    return {
        "null_auc_mean": float(values.mean()),
        "null_auc_sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        # +1 in numerator and denominator: the observed labelling is one of the permutations.
        "permutation_p": float((1 + np.sum(values >= observed)) / (1 + values.size)),
    }


def json_safe(value):
    """Recursively turn numpy scalars into Python ones and NaN/inf into None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cohort_counts(y: pd.Series, classes: tuple[str, ...], positive: str | None) -> dict:
    per_class = {name: int((y == code).sum()) for code, name in enumerate(classes)}
    n_positive = per_class[positive] if positive else per_class["tc"]
    return {"n_subjects": int(y.size), "n_positive": n_positive, "n_per_class": per_class}


def evaluate(
    *,
    features: pd.DataFrame,
    labels: pd.Series,
    task: str,
    feature_set: str,
    model: str,
    cv: dict,
    seed: int,
    sites: pd.Series | None = None,
    clinical: pd.DataFrame | None = None,
    missing: str = "drop",
    n_permutations: int = 0,
    param_grid: dict | None = None,
    harmonize: str | None = None,
) -> dict:
    """Nested-CV evaluation of one (task, feature set, model) row; see the module docstring."""
    config = CVConfig.from_dict(cv)
    spec = get_task(task)
    X, y_series, n_dropped = design(
        features=features, labels=labels, task=task, feature_set=feature_set,
        clinical=clinical, missing=missing,
    )  # fmt: skip
    pipeline, grid = build_model(model, seed=seed, param_grid=param_grid, harmonize=harmonize)
    needs_sites = config.group_by_site or harmonize is not None
    site_array = _align_sites(sites, X.index) if needs_sites else None
    # The design as the pipeline sees it: with harmonisation, plus the site column its first step consumes.
    X_fit = X.assign(**{SITE_COLUMN: site_array}) if harmonize is not None else X
    y = y_series.to_numpy()
    notes: list[str] = []
    if n_dropped:
        notes.append(
            f"{n_dropped} task subject(s) dropped: no features for this set (missing={missing})"
        )
    common = {
        "pipeline": pipeline,
        "grid": grid,
        "config": config,
        "seed": seed,
        "sites": site_array if config.group_by_site else None,
    }
    run = _run_quietly(lambda: run_nested_cv(X_fit, y, warnings=notes, **common), notes)
    result = {
        "task": task,
        "feature_set": feature_set,
        "model": model,
        "missing": missing,
        "harmonize": harmonize,
        "seed": seed,
    }
    result |= _cohort_counts(y_series, spec.classes, spec.positive)
    result |= {"n_dropped": n_dropped, "n_features": int(X.shape[1])}
    result |= {"classes": list(spec.classes), "positive_class": spec.positive}
    result |= discrimination(y, run, n_boot=config.bootstrap, seed=seed)
    result |= threshold_and_calibration(y, run)
    if len(spec.classes) == 2 and math.isnan(result["calibration_slope"]):
        notes.append(
            "calibration slope/intercept undefined: predictions separate the classes perfectly"
        )
    null = _run_quietly(
        lambda: permutation_null(X_fit, y, n_permutations=n_permutations, notes=notes, **common),
        notes,
    )
    result |= _null_summary(null, result["auc"]) | {
        "n_permutations": n_permutations,
        "null_auc": null,
    }
    result |= {"cv": config.as_dict(), "param_grid": grid}
    result["best_params"] = [fit.best_params for fit in run.folds]
    result["predictions"] = prediction_records(list(X.index), y, run, classes=spec.classes)
    result["top_features"] = top_features(run)
    result["warnings"] = notes
    return json_safe(result)
