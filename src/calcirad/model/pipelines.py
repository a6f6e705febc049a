"""Model zoo: every model is one scikit-learn Pipeline, so every data-dependent step is refitted per fold.

Step order: [ComBat site harmonisation, with ``harmonize="combat"``] -> median imputation -> drop
constant features -> correlation filter -> standardise -> univariate selection (ANOVA F, top ``k``)
-> classifier. Grid keys use the usual ``step__param`` form; ``PARAM_GRIDS`` are deliberately
small (the demo cohort has 36 subjects).
"""

from __future__ import annotations

from collections.abc import Callable

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
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


def svm_rbf(seed: int) -> Pipeline:
    """RBF support-vector machine with sigmoid (Platt) probabilities, needed for Brier and calibration.

    Probabilities come from CalibratedClassifierCV (``SVC(probability=True)`` is deprecated since
    scikit-learn 1.9); its internal 3-fold split is unshuffled, hence deterministic.
    """
    svc = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed)
    classifier = CalibratedClassifierCV(svc, method="sigmoid", cv=3, ensemble=False)
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
    "svm_rbf": {"classifier__estimator__C": [0.5, 2.0]},
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
