"""Modelling stage: feature sets, model zoo, nested cross-validation, metrics and result tables.

Public API (used by the Snakemake rules): ``FEATURE_SETS``, ``MODELS``, ``TASKS``,
:func:`select_feature_set`, :func:`task_labels`, :func:`evaluate`, :func:`performance_table`,
:func:`comparison_table`, :func:`top_features_table`.
"""

from calcirad.model.evaluate import evaluate
from calcirad.model.feature_sets import (
    CLASSES,
    FEATURE_SETS,
    MISSING_RULES,
    MODALITIES,
    TASKS,
    select_feature_set,
    task_labels,
)
from calcirad.model.pipelines import MODELS, PARAM_GRIDS, build_model
from calcirad.model.summary import comparison_table, performance_table, top_features_table
from calcirad.model.transformers import CorrelationFilter
from calcirad.model.validation import CVConfig

DEFAULT_CV = CVConfig().as_dict()

__all__ = [
    "CLASSES",
    "DEFAULT_CV",
    "FEATURE_SETS",
    "MISSING_RULES",
    "MODALITIES",
    "MODELS",
    "PARAM_GRIDS",
    "TASKS",
    "CVConfig",
    "CorrelationFilter",
    "build_model",
    "comparison_table",
    "evaluate",
    "performance_table",
    "select_feature_set",
    "task_labels",
    "top_features_table",
]
