"""Model zoo: every model is one scikit-learn Pipeline, so every data-dependent step is refitted per fold.

Step order: [ComBat site harmonisation, with ``harmonize="combat"``] -> median imputation -> drop
constant features -> correlation filter -> standardise -> univariate selection (ANOVA F, top ``k``)
-> classifier. Grid keys use the usual ``step__param`` form; ``PARAM_GRIDS`` are deliberately
small (the demo cohort has 36 subjects).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from calcirad.errors import ConfigError
from calcirad.model.harmonize import ComBat
from calcirad.model.transformers import CorrelationFilter

DEFAULT_K = 10
DEFAULT_CORRELATION = 0.9
HARMONIZERS = ("combat",)


def _preprocessing(*, k: int = DEFAULT_K) -> list[tuple[str, object]]:
    """Shared steps before the classifier."""
    return [
        # keep_empty_features: a column can be all-missing in one training fold; it is imputed
        # to a constant and removed by the variance step instead of shifting column positions.
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("variance", VarianceThreshold(threshold=0.0)),
        ("correlation", CorrelationFilter(threshold=DEFAULT_CORRELATION)),
        ("scale", StandardScaler()),
        ("select", SelectKBest(score_func=f_classif, k=k)),
    ]


def logreg_elasticnet(seed: int) -> Pipeline:
    """Elastic-net logistic regression (saga); ``l1_ratio=1`` is the lasso."""
    classifier = LogisticRegression(
        solver="saga",
        C=1.0,
        l1_ratio=0.5,
        class_weight="balanced",
        max_iter=5000,
        random_state=seed,
    )
    return Pipeline([*_preprocessing(), ("classifier", classifier)])


def random_forest(seed: int) -> Pipeline:
    """Random forest with balanced class weights."""
    classifier = RandomForestClassifier(
        n_estimators=100,
        min_samples_leaf=1,
        class_weight="balanced",
        n_jobs=1,
        random_state=seed,
    )
    return Pipeline([*_preprocessing(), ("classifier", classifier)])


class PlattSVC(ClassifierMixin, BaseEstimator):
    """RBF support-vector machine with sigmoid (Platt) probabilities, needed for Brier and calibration.

    Probabilities come from ``CalibratedClassifierCV`` (``SVC(probability=True)`` is deprecated
    since scikit-learn 1.9) with ``cv`` internal folds, reduced to the smallest class: an inner
    training split of a small cohort can hold 2 subjects of a class, and a fixed 3-fold
    calibration then stops the whole row. With a class of a single subject the sigmoid is fitted
    on the SVM's own training decision values (optimistic; a warning says so). The internal
    split is unshuffled, hence deterministic.
    """

    def __init__(self, C=1.0, gamma="scale", class_weight="balanced", cv=3, random_state=None):
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.cv = cv
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_, counts = np.unique(y, return_counts=True)
        svc = SVC(
            kernel="rbf",
            C=self.C,
            gamma=self.gamma,
            class_weight=self.class_weight,
            random_state=self.random_state,
        )
        smallest = int(counts.min())
        if smallest >= 2:
            folds = min(self.cv, smallest)
            self.calibrated_ = CalibratedClassifierCV(
                svc, method="sigmoid", cv=folds, ensemble=False
            ).fit(X, y)
        else:
            warnings.warn(
                "svm_rbf: a class has 1 training subject; its probabilities are calibrated on "
                "the training data itself",
                UserWarning,
                stacklevel=2,
            )
            everything = np.arange(len(y))  # one "split": calibrate on the training rows
            self.calibrated_ = CalibratedClassifierCV(
                FrozenEstimator(svc.fit(X, y)), method="sigmoid", cv=[(everything, everything)]
            ).fit(X, y)
        self.n_features_in_ = self.calibrated_.n_features_in_
        return self

    def predict_proba(self, X):
        return self.calibrated_.predict_proba(X)

    def predict(self, X):
        return self.calibrated_.predict(X)


def svm_rbf(seed: int) -> Pipeline:
    """RBF support-vector machine with Platt probabilities (:class:`PlattSVC`)."""
    classifier = PlattSVC(C=1.0, gamma="scale", class_weight="balanced", random_state=seed)
    return Pipeline([*_preprocessing(), ("classifier", classifier)])


def gradient_boosting(seed: int) -> Pipeline:
    """Shallow stochastic gradient boosting."""
    classifier = GradientBoostingClassifier(
        n_estimators=100, max_depth=2, learning_rate=0.1, subsample=0.8, random_state=seed
    )
    return Pipeline([*_preprocessing(), ("classifier", classifier)])


MODELS: dict[str, Callable[[int], Pipeline]] = {
    "logreg_elasticnet": logreg_elasticnet,
    "random_forest": random_forest,
    "svm_rbf": svm_rbf,
    "gradient_boosting": gradient_boosting,
}

PARAM_GRIDS: dict[str, dict[str, list]] = {
    "logreg_elasticnet": {"classifier__C": [0.1, 1.0]},
    "random_forest": {"classifier__min_samples_leaf": [1, 3]},
    "svm_rbf": {"classifier__C": [0.5, 2.0]},
    "gradient_boosting": {"classifier__learning_rate": [0.05, 0.2]},
}


def build_model(
    model: str, *, seed: int, param_grid: dict | None = None, harmonize: str | None = None
) -> tuple[Pipeline, dict]:
    """The model's pipeline and its grid (``param_grid`` replaces the default grid when given).

    ``harmonize="combat"`` prepends :class:`~calcirad.model.harmonize.ComBat`, which expects the
    site as column :data:`~calcirad.model.harmonize.SITE_COLUMN` of ``X`` and drops it.
    """
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    if harmonize is not None and harmonize not in HARMONIZERS:
        raise ConfigError(f"unknown harmonize {harmonize!r}; expected null or one of {HARMONIZERS}")
    pipeline = MODELS[model](seed)
    if harmonize == "combat":
        pipeline.steps.insert(0, ("harmonize", ComBat()))
    grid = PARAM_GRIDS[model] if param_grid is None else param_grid
    unknown = sorted(set(grid) - set(pipeline.get_params()))
    if unknown:
        raise ConfigError(f"model {model!r}: unknown grid parameters {unknown}")
    return pipeline, {key: list(grid[key]) for key in sorted(grid)}
