"""Nested, repeated, stratified cross-validation.

Outer loop: performance (``outer_repeats`` x stratified ``outer_folds``, or leave-one-site-out when
``group_by_site``). Inner loop (training fold only): GridSearchCV for hyper-parameters, then
out-of-fold inner predictions of the chosen configuration give the Youden threshold, so the
threshold never sees the outer test subjects.

Small-class guard (documented choice): when a class has fewer subjects than the requested folds,
the folds are reduced to that class size and a warning is recorded in the result; fewer than two
subjects in a class is a :class:`~calcirad.errors.ConfigError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.inspection import permutation_importance
from sklearn.model_selection import (
    GridSearchCV,
    LeaveOneGroupOut,
    StratifiedKFold,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline

from calcirad.errors import ConfigError
from calcirad.model.metrics import youden_threshold

# Spreads per-repeat split seeds far apart so repeat r of one row never equals repeat r+1 of another.
REPEAT_STRIDE = 1000


@dataclass(frozen=True)
class CVConfig:
    """Cross-validation settings (the ``cv`` block of the configuration)."""

    outer_folds: int = 5
    outer_repeats: int = 2
    inner_folds: int = 3
    group_by_site: bool = False
    bootstrap: int = 1000
    permutation_repeats: int = 1

    @classmethod
    def from_dict(cls, cv: dict | None) -> CVConfig:
        """Validate a ``cv`` mapping; unknown keys are an error rather than silently ignored."""
        cv = dict(cv or {})
        unknown = sorted(set(cv) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown cv settings {unknown}; allowed {sorted(cls.__dataclass_fields__)}"
            )
        config = cls(**cv)
        for name in ("outer_folds", "inner_folds"):
            if int(getattr(config, name)) < 2:
                raise ConfigError(f"cv.{name} must be >= 2, got {getattr(config, name)}")
        if config.outer_repeats < 1 or config.bootstrap < 1 or config.permutation_repeats < 1:
            raise ConfigError(
                "cv.outer_repeats, cv.bootstrap and cv.permutation_repeats must be >= 1"
            )
        return config

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    """One outer training/test split."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray


@dataclass
class FoldFit:
    """What one outer fold produced."""

    split: Split
    proba: np.ndarray
    threshold: float | None
    best_params: dict
    importance: dict[str, float] = field(default_factory=dict)


def _smallest_class(y: np.ndarray) -> int:
    return int(np.bincount(y).min()) if y.size else 0


def guarded_folds(y: np.ndarray, requested: int, *, where: str, warnings: list[str]) -> int:
    """Number of stratified folds the smallest class allows (reduced with a recorded warning)."""
    smallest = _smallest_class(y)
    if smallest < 2:
        raise ConfigError(
            f"{where}: a class has {smallest} subject(s); stratified CV needs at least 2 per class"
        )
    if smallest < requested:
        warnings.append(
            f"{where}: smallest class has {smallest} subjects < {requested} folds; using {smallest} folds"
        )
        return smallest
    return requested


def outer_splits(
    y: np.ndarray, *, config: CVConfig, seed: int, sites: np.ndarray | None, warnings: list[str]
) -> list[Split]:
    """Outer splits: repeated stratified K-fold, or leave-one-site-out (a single, deterministic repeat)."""
    if config.group_by_site:
        return _site_splits(y, sites, config=config, warnings=warnings)
    folds = guarded_folds(y, config.outer_folds, where="outer CV", warnings=warnings)
    splits = []
    for repeat in range(config.outer_repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + REPEAT_STRIDE * repeat)
        for fold, (train, test) in enumerate(splitter.split(np.zeros(y.size), y)):
            splits.append(Split(repeat, fold, train, test))
    return splits


def _site_splits(
    y: np.ndarray, sites: np.ndarray | None, *, config: CVConfig, warnings: list[str]
) -> list[Split]:
    if sites is None:
        raise ConfigError("cv.group_by_site is set but no site was given for the subjects")
    if len(np.unique(sites)) < 2:
        raise ConfigError("cv.group_by_site needs at least two sites")
    if config.outer_repeats > 1:
        warnings.append("leave-one-site-out is deterministic: outer_repeats ignored (1 repeat)")
    splits = []
    for fold, (train, test) in enumerate(LeaveOneGroupOut().split(np.zeros(y.size), y, sites)):
        if np.unique(y[train]).size < np.unique(y).size:
            raise ConfigError(
                f"leaving out site {sites[test][0]!r} removes a whole class from training; "
                "leave-one-site-out is not possible for this task"
            )
        splits.append(Split(0, fold, train, test))
    return splits


def scoring_for(n_classes: int) -> str:
    return "roc_auc" if n_classes == 2 else "roc_auc_ovr"


def fit_fold(
    X: pd.DataFrame,
    y: np.ndarray,
    split: Split,
    *,
    pipeline: Pipeline,
    grid: dict,
    config: CVConfig,
    seed: int,
    warnings: list[str],
    with_importance: bool,
) -> FoldFit:
    """Tune on the training fold, predict the test fold, pick the threshold on the training fold."""
    X_train, y_train = X.iloc[split.train], y[split.train]
    n_classes = np.unique(y).size
    where = f"inner CV (repeat {split.repeat}, fold {split.fold})"
    folds = guarded_folds(y_train, config.inner_folds, where=where, warnings=warnings)
    inner = StratifiedKFold(
        folds, shuffle=True, random_state=seed + REPEAT_STRIDE * split.repeat + split.fold + 1
    )
    search = GridSearchCV(
        clone(pipeline),
        grid,
        scoring=scoring_for(n_classes),
        cv=inner,
        n_jobs=1,
        error_score="raise",
    )
    search.fit(X_train, y_train)
    proba = search.best_estimator_.predict_proba(X.iloc[split.test])
    threshold = None
    if n_classes == 2:
        inner_proba = cross_val_predict(
            clone(search.best_estimator_), X_train, y_train, cv=inner, method="predict_proba"
        )
        threshold = youden_threshold(y_train, inner_proba[:, 1])
    importance = {}
    if with_importance:
        importance = fold_importance(search.best_estimator_, X_train, y_train, seed=seed)
    return FoldFit(split, proba, threshold, dict(search.best_params_), importance)


def fold_importance(
    fitted: Pipeline, X_train: pd.DataFrame, y_train: np.ndarray, *, seed: int
) -> dict[str, float]:
    """Importance of the features that reached the classifier, normalised to sum to 1.

    |coefficients| (mean over classes) for linear models, impurity importance for trees, and
    permutation importance on the training fold otherwise (SVM).
    """
    names = [str(name) for name in fitted[:-1].get_feature_names_out()]
    classifier = fitted[-1]
    if hasattr(classifier, "coef_"):
        raw = np.abs(np.atleast_2d(classifier.coef_)).mean(axis=0)
    elif hasattr(classifier, "feature_importances_"):
        raw = np.asarray(classifier.feature_importances_, dtype=float)
    else:
        reduced = fitted[:-1].transform(X_train)
        result = permutation_importance(
            classifier, reduced, y_train, n_repeats=5, random_state=seed, n_jobs=1
        )
        raw = np.clip(result.importances_mean, 0.0, None)
    total = raw.sum()
    weights = raw / total if total > 0 else np.zeros_like(raw)
    return {name: float(w) for name, w in zip(names, weights, strict=True)}


@dataclass
class CVRun:
    """Outer predictions of every repeat: ``proba[repeat, subject, class]`` plus per-fold details."""

    proba: np.ndarray
    predicted: np.ndarray
    folds: list[FoldFit]


def run_nested_cv(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    pipeline: Pipeline,
    grid: dict,
    config: CVConfig,
    seed: int,
    sites: np.ndarray | None,
    warnings: list[str],
    with_importance: bool = True,
) -> CVRun:
    """Every outer fold of every repeat; each subject is predicted exactly once per repeat."""
    splits = outer_splits(y, config=config, seed=seed, sites=sites, warnings=warnings)
    n_repeats = 1 + max(split.repeat for split in splits)
    n_classes = np.unique(y).size
    proba = np.full((n_repeats, y.size, n_classes), np.nan)
    predicted = np.full((n_repeats, y.size), -1, dtype=int)
    folds = []
    for split in splits:
        fit = fit_fold(
            X, y, split, pipeline=pipeline, grid=grid, config=config, seed=seed,
            warnings=warnings, with_importance=with_importance,
        )  # fmt: skip
        proba[split.repeat, split.test] = fit.proba
        predicted[split.repeat, split.test] = _predict(fit.proba, fit.threshold)
        folds.append(fit)
    return CVRun(proba, predicted, folds)


def _predict(proba: np.ndarray, threshold: float | None) -> np.ndarray:
    """Binary: positive when P(code 1) >= training-fold Youden threshold; multiclass: arg max."""
    if threshold is None:
        return np.argmax(proba, axis=1)
    return (proba[:, 1] >= threshold).astype(int)


def with_repeats(config: CVConfig, repeats: int) -> CVConfig:
    """The same CV with another number of outer repeats (the permutation null uses fewer)."""
    return replace(config, outer_repeats=repeats)
