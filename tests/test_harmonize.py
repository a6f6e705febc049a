"""ComBat site harmonisation: removes site effects, is fitted on training rows only, runs in nested CV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from calcirad.errors import ConfigError
from calcirad.model import build_model, evaluate
from calcirad.model.harmonize import SITE_COLUMN, ComBat
from calcirad.model.synthetic import make_cohort
from calcirad.steps.model import run_model

FAST_CV = {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 3, "bootstrap": 200}
# Per site: additive shift and multiplicative scale (in SDs of the site-free feature).
SITE_EFFECTS = {"A": (0.0, 1.0), "B": (3.0, 2.5), "C": (-2.0, 0.4)}


def with_site_effects(features: pd.DataFrame, sites: pd.Series, seed: int = 0) -> pd.DataFrame:
    """Each feature scaled and shifted per site, by the site's effect times a per-feature jitter."""
    rng = np.random.default_rng(seed)
    out = features.copy()
    for site, (shift, scale) in SITE_EFFECTS.items():
        rows = (sites == site).to_numpy()
        jitter = rng.uniform(0.7, 1.3, size=features.shape[1])
        out.loc[rows] = features.loc[rows].to_numpy() * scale**jitter + shift * jitter
    return out


def frame(values: np.ndarray, sites: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=[f"f{j:02d}" for j in range(values.shape[1])])
    return table.assign(**{SITE_COLUMN: sites})


def site_gaps(values: np.ndarray, sites: np.ndarray) -> tuple[float, float]:
    """Largest spread of site means (pooled-SD units) and largest site variance ratio, over features."""
    levels = np.unique(sites)
    means = np.array([values[sites == s].mean(axis=0) for s in levels])
    variances = np.array([values[sites == s].var(axis=0, ddof=1) for s in levels])
    pooled_sd = np.sqrt(variances.mean(axis=0))
    mean_gap = np.max((means.max(axis=0) - means.min(axis=0)) / pooled_sd)
    var_ratio = np.max(variances.max(axis=0) / variances.min(axis=0))
    return float(mean_gap), float(var_ratio)


def simulate(n: int, *, seed: int, p_tc: dict[str, float] | None = None):
    """``n`` rows, 3 sites (sizes 2:2:1), 20 features, class effect +1 SD on the first 5.

    Site effects (``SITE_EFFECTS``) scale and shift the class effect too, as a scanner gain would.
    ``p_tc``: probability of class 1 per site (0.5 everywhere by default). First half = training.
    """
    rng = np.random.default_rng(seed)
    sites = np.tile(["A", "B", "C", "A", "B"], n // 5)
    prob = pd.Series(sites).map(p_tc or {}).fillna(0.5).to_numpy()
    y = (rng.random(n) < prob).astype(int)
    clean = rng.normal(size=(n, 20)) + 1.0 * y[:, None] * (np.arange(20) < 5)
    values = with_site_effects(pd.DataFrame(clean), pd.Series(sites)).to_numpy()
    return values, sites, y, np.arange(n) < n // 2, clean


@pytest.fixture(scope="module")
def site_data():
    return simulate(1000, seed=11)[:4]


def test_combat_removes_additive_and_multiplicative_site_effects_on_test_rows(site_data):
    values, sites, y, train = site_data
    test = ~train
    before = site_gaps(values[test], sites[test])
    after = {}
    for preserve_label in (True, False):
        combat = ComBat(preserve_label=preserve_label).fit(
            frame(values[train], sites[train]), y[train]
        )
        after[preserve_label] = site_gaps(
            combat.transform(frame(values[test], sites[test])), sites[test]
        )
    print(f"test rows: site-mean gap {before[0]:.2f} -> {after[True][0]:.2f} SD "
          f"(site-only {after[False][0]:.2f}), variance ratio {before[1]:.1f} -> "
          f"{after[True][1]:.2f} (site-only {after[False][1]:.2f})")  # fmt: skip
    assert before[0] > 3.0 and before[1] > 50.0
    assert after[True][0] < 0.5 and after[True][1] < 4.0
    assert after[False][0] < 0.5 and after[False][1] < 2.0
    assert list(combat.get_feature_names_out()) == [f"f{j:02d}" for j in range(values.shape[1])]


def test_preserving_the_label_keeps_the_class_difference_when_case_mix_differs_by_site():
    """Site B 80 % class 1, site C 20 %: site-only ComBat takes the case mix for a site effect."""
    values, sites, y, train, clean = simulate(1500, seed=5, p_tc={"B": 0.8, "C": 0.2})
    test = ~train

    def signal_auc(table):  # mean AUC of the 5 class features on the test rows
        return np.mean([roc_auc_score(y[test], table[test, j]) for j in range(5)])

    aucs = {"clean": signal_auc(clean), "raw": signal_auc(values)}
    for preserve_label in (True, False):
        combat = ComBat(preserve_label=preserve_label).fit(
            frame(values[train], sites[train]), y[train]
        )
        aucs[preserve_label] = signal_auc(combat.transform(frame(values, sites)))
    print({k: round(v, 3) for k, v in aucs.items()})
    assert aucs[False] < aucs["clean"] - 0.03  # site-only removes real signal
    assert aucs[True] > aucs["clean"] - 0.01  # the label-preserving default keeps it


def test_combat_is_fitted_on_its_rows_only_and_transforms_row_by_row(site_data):
    values, sites, y, train = site_data
    combat = ComBat().fit(frame(values[train], sites[train]), y[train])
    fitted = {
        name: getattr(combat, name).copy() for name in ("mean_", "scale_", "gamma_", "delta_")
    }
    altered = values.copy()
    altered[~train] = altered[~train] * 10 + 100  # test rows changed beyond recognition
    original = combat.transform(frame(values, sites))
    changed = combat.transform(frame(altered, sites))
    np.testing.assert_array_equal(original[train], changed[train])
    for name, value in fitted.items():
        np.testing.assert_array_equal(getattr(combat, name), value)
    # the same training rows give the same fit whatever else is in the cohort
    refit = ComBat().fit(frame(altered[train], sites[train]), y[train])
    np.testing.assert_array_equal(refit.gamma_, combat.gamma_)


# neuroCombat 0.2.12 under numpy 1.26 (it cannot run under our numpy 2) on the data of the test below.
NEUROCOMBAT_GAMMA = [
    [-0.549846, -1.213871, -2.155822, -3.467961],
    [0.075176, 0.075305, 0.075261, 0.074930],
    [0.627564, 1.192290, 2.029016, 3.246138],
]
NEUROCOMBAT_DELTA = [
    [0.853723, 0.850312, 0.850116, 0.899681],
    [0.993063, 0.957264, 0.944531, 0.938085],
    [2.105385, 2.111916, 2.114172, 2.109470],
]


def test_combat_matches_neurocombat_on_a_fixed_example():
    """gamma* and delta* of site-only ComBat equal neuroCombat's (to 1e-6 here)."""
    i, j = np.meshgrid(np.arange(12), np.arange(4), indexing="ij")
    values = np.sin(1.3 * i + 0.7 * j) + 0.1 * i * (j + 1)
    sites = np.repeat(["A", "B", "C"], 4)
    combat = ComBat(preserve_label=False).fit(frame(values, sites))
    np.testing.assert_allclose(combat.gamma_, NEUROCOMBAT_GAMMA, atol=2e-6)
    np.testing.assert_allclose(combat.delta_, NEUROCOMBAT_DELTA, atol=2e-6)


def test_unseen_site_is_left_unharmonised_with_a_warning(site_data):
    values, sites, y, train = site_data
    seen = train & (sites != "C")
    combat = ComBat().fit(frame(values[seen], sites[seen]), y[seen])
    rows = ~train
    with pytest.warns(UserWarning, match=r"\['C'\] not in the fitted rows are left unharmonised"):
        out = combat.transform(frame(values[rows], sites[rows]))
    is_c = sites[rows] == "C"
    np.testing.assert_array_equal(out[is_c], values[rows][is_c])
    assert not np.allclose(out[~is_c], values[rows][~is_c])
    with pytest.warns(UserWarning, match="one site in the fitted rows"):
        single = ComBat().fit(frame(values[sites == "A"], sites[sites == "A"]), y[sites == "A"])
    np.testing.assert_array_equal(single.transform(frame(values[:5], ["A"] * 5)), values[:5])


def test_missing_values_stay_missing_and_do_not_spoil_the_other_features(site_data):
    values, sites, y, train = site_data
    gappy = values.copy()
    gappy[::7, 3] = np.nan
    gappy[:, 4] = 1.0  # constant: passed through
    combat = ComBat().fit(frame(gappy[train], sites[train]), y[train])
    out = combat.transform(frame(gappy, sites))
    assert np.isnan(out[::7, 3]).all() and np.isfinite(np.delete(out, 3, axis=1)).all()
    np.testing.assert_array_equal(out[:, 4], 1.0)
    test = ~train & np.isfinite(gappy[:, 3])
    assert site_gaps(out[test][:, [3]], sites[test])[0] < 0.6


# --- in the nested cross-validation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def site_cohort():
    features, labels, sites, clinical = make_cohort(signal=2.5, seed=3)
    return with_site_effects(features, sites, seed=1), labels, sites, clinical


def run(cohort, **overrides):
    features, labels, sites, clinical = cohort
    kwargs = {
        "features": features, "labels": labels, "task": "tc_vs_sarcoma", "feature_set": "ct",
        "model": "logreg_elasticnet", "cv": FAST_CV, "seed": 5, "sites": sites,
        "clinical": clinical, "harmonize": "combat",
    }  # fmt: skip
    return evaluate(**(kwargs | overrides))


def test_nested_cv_with_combat_fits_inside_training_folds(site_cohort, monkeypatch):
    fitted_rows: list[set[str]] = []
    original_fit = ComBat.fit

    def spy(self, X, y=None):
        fitted_rows.append(set(X.index))
        return original_fit(self, X, y)

    monkeypatch.setattr(ComBat, "fit", spy)
    result = run(site_cohort)
    plain = run(site_cohort, harmonize=None)
    print(f"AUC with ComBat {result['auc']:.3f}, without {plain['auc']:.3f}")
    assert result["harmonize"] == "combat" and result["auc"] > 0.8
    assert result["n_features"] == plain["n_features"]
    assert not any(SITE_COLUMN in row["feature"] for row in result["top_features"])
    tests = {}
    for record in result["predictions"]:
        tests.setdefault(record["fold"], set()).add(record["subject"])
    subjects = set().union(*tests.values())
    assert fitted_rows and all(len(rows) < len(subjects) for rows in fitted_rows)
    assert all(any(not rows & test for test in tests.values()) for rows in fitted_rows)
    # one outer refit per fold, on exactly its training fold
    for test in tests.values():
        assert subjects - test in fitted_rows


def test_leave_one_site_out_with_combat_leaves_the_test_site_unharmonised(site_cohort):
    result = run(site_cohort, cv=FAST_CV | {"group_by_site": True})
    assert {r["fold"] for r in result["predictions"]} == {0, 1, 2}
    for site in "ABC":
        assert any(f"['{site}'] not in the fitted rows are left unharmonised" in w
                   for w in result["warnings"])  # fmt: skip
    assert 0.0 <= result["auc"] <= 1.0


def test_harmonize_setting_is_checked_and_needs_sites(site_cohort):
    with pytest.raises(ConfigError, match="unknown harmonize"):
        build_model("logreg_elasticnet", seed=0, harmonize="zscore")
    assert build_model("random_forest", seed=0, harmonize="combat")[0].steps[0][0] == "harmonize"
    with pytest.raises(ConfigError, match="model.harmonize need"):
        run(site_cohort, sites=None)


def test_run_model_passes_sites_when_harmonizing(site_cohort, tmp_path):
    features, labels, sites, clinical = site_cohort
    features.to_csv(tmp_path / "all.csv")
    settings = {"cv": FAST_CV | {"group_by_site": False}, "seed": 1, "missing": "drop",
                "n_permutations": 0, "harmonize": "combat"}  # fmt: skip
    result = run_model(
        features_csv=tmp_path / "all.csv", labels=labels.to_dict(), sites=sites.to_dict(),
        clinical={}, task="tc_vs_sarcoma", feature_set="ct", model="logreg_elasticnet",
        settings=settings, out_json=tmp_path / "out.json",
    )  # fmt: skip
    assert result["harmonize"] == "combat" and result["auc"] > 0.8
