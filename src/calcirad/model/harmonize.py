"""ComBat site harmonisation as the first step of a model pipeline, fitted on the training fold only.

Why not a package: neuroHarmonize 2.5.2 (the maintained one) requires numpy < 2 and pandas < 3,
and neuroCombat 0.2.12 (2021, its dependency) learns but cannot apply a fitted model under numpy
2.x (``neuroCombatFromTraining`` raises TypeError). :class:`ComBat` is the same model, parametric
empirical Bayes (Johnson, Li & Rabinovic, Biostatistics 2007; Fortin et al., NeuroImage 2018),
with neuroCombat's estimates (``B_hat``, pooled variance, ``gamma*``, ``delta*``) and
``neuroCombatFromTraining``'s adjustment of new rows.

The site reaches the step as a column of ``X`` (:data:`SITE_COLUMN`, added by
:func:`calcirad.model.evaluate.evaluate`), which the step consumes and drops; every later step sees
features only. All estimates come from the rows passed to ``fit`` (in the nested CV: the
training fold, or an inner training split of it), never from the rows it transforms later.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

SITE_COLUMN = "__site__"


class ComBat(TransformerMixin, BaseEstimator):
    """Remove additive and multiplicative site effects, feature by feature, in the feature's units.

    Model (per feature): ``x = alpha + class effect + gamma_site + delta_site ** 0.5 * sigma * e``.
    ``fit`` estimates, on its rows only: ``alpha`` and the class effects by least squares on
    [site one-hot, class one-hot], the pooled residual variance ``sigma**2``, and the site effects
    ``gamma*``, ``delta*`` (standardised units) shrunk towards their across-feature means by
    parametric empirical Bayes. ``transform`` maps a row of a site seen in ``fit`` to
    ``m + sigma * ((x - m) / sigma - gamma*) / delta* ** 0.5``, where ``m`` is ``alpha`` plus the
    mean class effect of the fitted rows: the same function for training and test rows, using no
    label (``neuroCombatFromTraining``'s adjustment).

    Parameters
    ----------
    site_column : str
        Column of ``X`` holding the site; consumed and dropped.
    preserve_label : bool, default True
        Use ``y`` in ``fit`` (training labels only) so that a site's case mix is not mistaken for
        a site effect; ``transform`` never uses labels. False gives site-only ComBat, which
        equalises site variances better when case mix is the same at every site but, when it
        differs, removes part of the class difference along with the site means.

    As the transform cannot know a row's class, a row's whole deviation from ``m``, class effect
    included, is rescaled by ``delta*`` of its site: right for a scanner gain that scales every
    difference (intensity-derived features), approximate when the class effect is the same in
    every site's units.

    Sites not seen in ``fit`` (leave-one-site-out: the test site is never in its training fold)
    are returned unchanged with a warning: nothing learnt applies to them, and estimating their
    effect from the rows being transformed would make it depend on that site's case mix. With
    fewer than two sites in ``fit`` the step only drops the site column. Missing values stay
    missing (estimates use the observed values; the pipeline imputes afterwards). Constant or
    all-missing features of the fitted rows are passed through.
    """

    def __init__(self, site_column: str = SITE_COLUMN, preserve_label: bool = True):
        self.site_column = site_column
        self.preserve_label = preserve_label

    def _split(self, X) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(X, pd.DataFrame) or self.site_column not in X.columns:
            raise ValueError(f"ComBat needs a DataFrame with a {self.site_column!r} column")
        sites = X[self.site_column].astype(str).to_numpy()
        return X.drop(columns=self.site_column).to_numpy(dtype=np.float64), sites

    def fit(self, X, y=None):
        """Estimate the site effects from the rows of ``X`` (and their labels ``y``) only."""
        values, sites = self._split(X)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.features_ = np.asarray([c for c in X.columns if c != self.site_column], dtype=object)
        self.sites_, codes = np.unique(sites, return_inverse=True)
        n_features = values.shape[1]
        # Identity defaults (m = 0, sigma = 1, gamma* = 0, delta* = 1), kept where nothing is estimable.
        self.mean_ = np.zeros(n_features)
        self.scale_ = np.ones(n_features)
        self.gamma_ = np.zeros((self.sites_.size, n_features))
        self.delta_ = np.ones((self.sites_.size, n_features))
        if self.sites_.size < 2:
            warnings.warn("ComBat: one site in the fitted rows, nothing to harmonise", stacklevel=2)
            return self
        site_design = np.eye(self.sites_.size)[codes]
        design = site_design
        if self.preserve_label and y is not None:
            design = np.hstack([site_design, pd.get_dummies(np.asarray(y)).to_numpy(float)[:, 1:]])
        mean, scale, standardised = _standardise(values, design, self.sites_.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns
            spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
        # constant (up to rounding) or all-missing features are passed through
        valid = (spread > 0) & np.isfinite(scale) & (scale > 1e-9 * spread)
        gamma, delta = _empirical_bayes(standardised[:, valid], codes, self.sites_.size)
        self.mean_[valid], self.scale_[valid] = mean[valid], scale[valid]
        self.gamma_[:, valid], self.delta_[:, valid] = gamma, delta
        return self

    def transform(self, X):
        """Harmonised features (site column dropped); rows of unseen sites unchanged, with a warning."""
        check_is_fitted(self, "features_")
        values, sites = self._split(X)
        seen = np.isin(sites, self.sites_)
        if not seen.all():
            unseen = sorted(set(sites[~seen]))
            warnings.warn(
                f"ComBat: site(s) {unseen} not in the fitted rows are left unharmonised",
                stacklevel=2,
            )
        out = values.copy()
        codes = np.searchsorted(self.sites_, sites[seen])
        z = (values[seen] - self.mean_) / self.scale_
        z = (z - self.gamma_[codes]) / np.sqrt(self.delta_[codes])
        out[seen] = self.mean_ + self.scale_ * z
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "features_")
        return self.features_.copy()


def _standardise(
    values: np.ndarray, design: np.ndarray, n_sites: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: ``m`` (alpha + mean class effect), ``sigma`` and the standardised residuals.

    Least squares on the observed rows of each feature (one solve per missingness pattern);
    ``alpha`` is the site coefficients averaged with the sites' observed counts as weights, and
    ``sigma**2`` the mean squared residual (divisor n, as in neuroCombat).
    """
    observed = np.isfinite(values)
    coef = np.full((design.shape[1], values.shape[1]), np.nan)
    patterns, which = np.unique(observed.T, axis=0, return_inverse=True)
    for index, rows in enumerate(patterns):
        columns = which.ravel() == index
        if rows.any():
            coef[:, columns] = np.linalg.lstsq(design[rows], values[rows][:, columns])[0]
    counts = design[:, :n_sites].T @ observed  # observed rows per site and feature
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = (counts * coef[:n_sites]).sum(axis=0) / counts.sum(axis=0)
        label_effect = design[:, n_sites:] @ coef[n_sites:]  # per row, zero without labels
        residual = values - design @ coef
        scale = np.sqrt(np.nanmean(residual**2, axis=0))
        standardised = (values - alpha - label_effect) / scale
        mean = alpha + np.nanmean(np.where(observed, label_effect, np.nan), axis=0)
    return mean, scale, standardised


def _empirical_bayes(
    s: np.ndarray, codes: np.ndarray, n_sites: int, *, tol: float = 1e-4, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """``gamma*``, ``delta*`` (sites x features) from standardised data ``s`` (rows x features).

    Johnson et al. 2007 parametric priors: normal for ``gamma`` (mean, variance over features),
    inverse gamma for ``delta`` (method of moments), posterior means iterated to convergence
    (relative change < ``tol``, as neuroCombat's ``it_sol`` and sva's ``it.sol`` measure it). A site whose priors are undefined
    (fewer than two features) keeps its plain estimates.
    """
    gamma = np.zeros((n_sites, s.shape[1]))
    delta = np.ones((n_sites, s.shape[1]))
    for site in range(n_sites):
        x = s[codes == site]
        n = np.isfinite(x).sum(axis=0)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # nan statistics of empty columns
            g_hat = np.nan_to_num(np.nanmean(x, axis=0))
            d_hat = np.nanvar(x, axis=0, ddof=1)
            d_hat = np.where(np.isfinite(d_hat) & (d_hat > 0), d_hat, 1.0)
            g_bar, t2 = g_hat.mean(), g_hat.var(ddof=1)
            m, s2 = d_hat.mean(), d_hat.var(ddof=1)
            a, b = (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2
            if not all(np.isfinite(v) and v > 0 for v in (t2, s2, a, b)):
                gamma[site], delta[site] = g_hat, d_hat
                continue
            g_old, d_old = g_hat, d_hat
            for _ in range(max_iter):
                g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
                sum2 = np.nansum((x - g_new) ** 2, axis=0)
                d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
                change = max(
                    np.nanmax(np.abs(g_new - g_old) / g_old),
                    np.nanmax(np.abs(d_new - d_old) / d_old),
                )
                g_old, d_old = g_new, d_new
                if not change > tol:
                    break
        gamma[site], delta[site] = g_new, d_new
    return gamma, delta
