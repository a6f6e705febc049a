"""Discrimination and calibration metrics, vectorised where bootstrapping needs it.

Score arrays carry the subjects on their last axis (or on the axis before the class axis for
class probabilities) so a whole bootstrap of AUCs is one rank computation.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import roc_curve

EPS = 1e-6


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties count half) of ``scores[..., n]`` for the boolean ``positive[..., n]``."""
    positive = np.broadcast_to(positive, scores.shape)
    ranks = stats.rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Binary AUC of P(code 1), or macro one-vs-rest AUC for more classes; ``proba[..., n, C]``."""
    n_classes = proba.shape[-1]
    if n_classes == 2:
        return rank_auc(y == 1, proba[..., 1])
    per_class = [rank_auc(y == c, proba[..., c]) for c in range(n_classes)]
    return np.mean(per_class, axis=0)


def stratified_bootstrap(y: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` subject indices resampled within each class, so every resample has every class."""
    rng = np.random.default_rng(seed)
    columns = []
    for code in np.unique(y):
        members = np.flatnonzero(y == code)
        columns.append(rng.choice(members, size=(n_boot, members.size), replace=True))
    return np.concatenate(columns, axis=1)


def repeat_mean_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """AUC pooled over the outer folds of each repeat, then averaged over repeats; ``proba[R, n, C]``."""
    return float(np.mean(auc(y, proba)))


def bootstrap_aucs(y: np.ndarray, proba: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap distribution of :func:`repeat_mean_auc` over subjects; ``proba[R, n, C]``."""
    index = stratified_bootstrap(y, n_boot=n_boot, seed=seed)
    resampled = proba[:, index, :]  # (R, B, n, C)
    return auc(y[index], resampled).mean(axis=0)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution (NaN resamples ignored)."""
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Score cut-off maximising sensitivity + specificity - 1 (predict positive when score >= cut-off).

    Ties are broken towards the lowest false-positive rate (the first maximum along the ROC).
    """
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def threshold_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity and balanced accuracy of binary predictions."""
    positive, negative = y == 1, y == 0
    sensitivity = float(np.mean(predicted[positive] == 1)) if positive.any() else np.nan
    specificity = float(np.mean(predicted[negative] == 0)) if negative.any() else np.nan
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": float(np.nanmean([sensitivity, specificity])),
    }


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall (any number of classes)."""
    return float(np.mean([np.mean(predicted[y == c] == c) for c in np.unique(y)]))


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Brier score; for C classes ``sum_c (p_c - y_c)^2 / 2`` so the binary case is the usual score."""
    onehot = np.eye(proba.shape[-1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=-1) / 2))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _separated(y: np.ndarray, lp: np.ndarray) -> bool:
    """True when the linear predictor separates the classes (the slope is then unbounded)."""
    return bool(lp[y == 0].max() < lp[y == 1].min() or lp[y == 1].max() < lp[y == 0].min())


def calibration(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Calibration slope (logistic recalibration of logit p) and intercept (calibration-in-the-large,
    slope fixed at 1). Ideal: slope 1, intercept 0. NaN when the classes are perfectly separated."""
    lp = _logit(p)
    if len(np.unique(y)) < 2 or _separated(y, lp):
        return {"calibration_slope": np.nan, "calibration_intercept": np.nan}
    return {"calibration_slope": _slope(y, lp), "calibration_intercept": _intercept(y, lp)}


def _neg_log_likelihood(params: np.ndarray, y: np.ndarray, lp: np.ndarray) -> float:
    eta = params[0] + params[1] * lp
    return float(np.sum(np.logaddexp(0.0, eta) - y * eta))


def _slope(y: np.ndarray, lp: np.ndarray) -> float:
    result = optimize.minimize(
        _neg_log_likelihood, x0=np.array([0.0, 1.0]), args=(y, lp), method="BFGS"
    )
    return float(result.x[1])


def _intercept(y: np.ndarray, lp: np.ndarray) -> float:
    # Score equation of the offset model: sum(y - expit(a + lp)) = 0 is monotone in a.
    def score(a: float) -> float:
        return float(np.sum(y - 1 / (1 + np.exp(-(a + lp)))))

    return float(optimize.brentq(score, -50.0, 50.0))


def _midranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1)


def delong_paired(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong test of two correlated AUCs on the same subjects (fast algorithm of Sun & Xu 2014)."""
    order = np.argsort(y != 1, kind="stable")  # positives first
    y, scores = y[order], np.vstack([score_a[order], score_b[order]])
    m = int(np.sum(y == 1))
    n = y.size - m
    positives, negatives = scores[:, :m], scores[:, m:]
    tx, ty, tz = _midranks(positives), _midranks(negatives), _midranks(scores)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    covariance = np.cov(v01) / m + np.cov(v10) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = aucs[0] - aucs[1]
    if variance <= 0:
        p_value = 1.0 if difference == 0 else 0.0
    else:
        p_value = float(2 * stats.norm.sf(abs(difference) / np.sqrt(variance)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "p_value": p_value}
