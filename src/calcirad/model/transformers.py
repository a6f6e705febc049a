"""CorrelationFilter: drop near-duplicate features, fitted inside the training fold like any other step."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class CorrelationFilter(SelectorMixin, BaseEstimator):
    """Keep a feature only if its |correlation| with every feature kept before it is <= ``threshold``.

    Features are visited in column order (the feature table is sorted by name, so the result is
    deterministic). Constant features are never correlated with anything; a variance filter
    earlier in the pipeline removes them.

    Parameters
    ----------
    threshold : float, default 0.9
        Largest absolute correlation allowed between two kept features.
    method : {"pearson", "spearman"}, default "pearson"
        Spearman ranks every column first (robust to the heavy tails of texture features).
    """

    def __init__(self, threshold: float = 0.9, method: str = "pearson"):
        self.threshold = threshold
        self.method = method

    def fit(self, X, y=None):
        """Choose the features to keep from ``X`` (``y`` is ignored: the filter is unsupervised)."""
        X = validate_data(self, X, dtype=np.float64)
        if self.method not in ("pearson", "spearman"):
            raise ValueError(f"method must be 'pearson' or 'spearman', got {self.method!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold!r}")
        self.support_ = _greedy_support(_standardise(X, self.method), self.threshold)
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


def _standardise(X: np.ndarray, method: str) -> np.ndarray:
    """Columns scaled so that ``z_i @ z_j`` is their correlation (constant columns become zeros)."""
    if method == "spearman":
        X = rankdata(X, axis=0)
    centred = X - X.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, centred / safe, 0.0)


def _greedy_support(Z: np.ndarray, threshold: float) -> np.ndarray:
    """Visit columns in order, keeping those not too correlated with an already kept one.

    One small matrix-vector product per column keeps memory at O(n * p) even for thousands
    of radiomic features (a full p x p correlation matrix would not fit comfortably).
    """
    n_features = Z.shape[1]
    support = np.zeros(n_features, dtype=bool)
    # Kept columns are packed to the left of a preallocated array: slicing it is a view, not a copy.
    kept = np.empty_like(Z)
    n_kept = 0
    for j in range(n_features):
        if n_kept and np.max(np.abs(kept[:, :n_kept].T @ Z[:, j])) > threshold:
            continue
        kept[:, n_kept] = Z[:, j]
        n_kept += 1
        support[j] = True
    return support
